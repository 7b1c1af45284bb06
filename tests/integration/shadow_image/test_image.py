"""The image as built: its config, its users and what is (not) in it."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from . import _image

pytestmark = [pytest.mark.integration, pytest.mark.root]

DOCKERFILE = _image.IMAGE_DIR / "Dockerfile"


def test_dockerfile_base_is_pinned_to_bookworm_slim_never_latest() -> None:
    text = DOCKERFILE.read_text()
    assert "latest" not in text.lower()
    # Debian installs the packages; the image itself starts empty.
    assert re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE) == ["${BASE_IMAGE}", "scratch"]
    assert re.findall(r"^ARG\s+BASE_IMAGE=(\S+)", text, re.MULTILINE) == [
        "docker.io/library/debian:bookworm-slim"
    ]
    assert re.findall(r"^USER\s+(\S+)", text, re.MULTILINE) == ["10001"]


def test_image_config_runs_as_10001_with_the_entrypoint(built: _image.BuiltImage) -> None:
    cfg = built.config["config"]
    assert cfg["User"] == "10001"  # numeric, so runAsNonRoot can verify it
    assert cfg["Entrypoint"] == ["/usr/local/bin/ktpy-shadow-entrypoint"]
    assert not cfg.get("Cmd")
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["KTPY_SSH_PORT"] == "2222"
    assert env["KTPY_DNS_PORT"] == "5353"
    assert {"2222/tcp", "5353/udp", "5353/tcp"} <= set(cfg["ExposedPorts"])
    version = _image.ktpy_version()
    assert built.image.ref_name == f"ghcr.io/ktpy/shadow:{version}"
    assert cfg["Labels"]["org.opencontainers.image.version"] == version


def test_kt_user_and_read_only_config(built: _image.BuiltImage) -> None:
    root = built.rootfs
    passwd = (root / "etc/passwd").read_text().splitlines()
    assert "kt:x:10001:10001::/home/kt:/bin/bash" in passwd
    assert "kt:x:10001:" in (root / "etc/group").read_text()
    # "*" rather than "!": with UsePAM no, sshd refuses a locked account.
    (shadow,) = [x for x in (root / "etc/shadow").read_text().splitlines() if x.startswith("kt:")]
    assert shadow.split(":")[1] == "*"
    home = (root / "home/kt").stat()
    assert (home.st_uid, home.st_gid) == (10001, 10001)
    for path, mode in [
        ("usr/local/bin/ktpy-shadow-entrypoint", 0o755),
        ("etc/ktpy/sshd_config", 0o644),
        ("etc/ktpy/dnsmasq.conf", 0o644),
    ]:
        st = (root / path).stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, mode), path


def test_no_baked_host_keys(built: _image.BuiltImage) -> None:
    assert list((built.rootfs / "etc/ssh").glob("ssh_host_*")) == []


def test_no_setuid_or_setgid_files(built: _image.BuiltImage) -> None:
    found = []
    for path in built.rootfs.rglob("*"):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            found.append(str(path.relative_to(built.rootfs)))
    assert found == []


@pytest.mark.parametrize(
    "tool", ["curl", "wget", "ping", "netstat", "ifconfig", "lsof", "nc", "telnet", "dig"]
)
def test_no_debug_bloat(built: _image.BuiltImage, tool: str) -> None:
    dirs = [Path("usr/bin"), Path("usr/sbin"), Path("usr/local/bin")]
    assert not any((built.rootfs / d / tool).exists() for d in dirs)


def test_daemons_present(built: _image.BuiltImage) -> None:
    assert (built.rootfs / "usr/sbin/sshd").exists()
    assert (built.rootfs / "usr/sbin/dnsmasq").exists()
    assert (built.rootfs / "usr/sbin/haproxy").exists()


@pytest.mark.parametrize(
    "path", ["usr/bin/apt", "usr/bin/dpkg", "var/lib/dpkg", "usr/bin/perl", "usr/bin/dash"]
)
def test_no_package_tooling_or_second_shell(built: _image.BuiltImage, path: str) -> None:
    """A minimal root: bash is the only shell, and nothing can install more."""
    assert not (built.rootfs / path).exists()
    assert (built.rootfs / "usr/bin/sh").readlink() == Path("bash")


MAX_UNPACKED = 40_000_000  # issue 17's target: at most 40 MB uncompressed


def test_image_is_at_most_40_mb_unpacked(built: _image.BuiltImage) -> None:
    sizes = [p.lstat().st_size for p in built.rootfs.rglob("*") if p.is_file()]
    assert sum(sizes) <= MAX_UNPACKED, f"{sum(sizes) / 1e6:.1f} MB unpacked"
