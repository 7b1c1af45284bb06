"""The test bed's container images, built locally: there is no registry to pull from.

Small images (pause, CoreDNS, ktbed-echo) are static binaries written straight into
OCI archives by `oci.py`; Debian-based ones (nginx, client) are ordinary Dockerfiles
built by buildah on a base made with debootstrap. Every archive is cached under a key
that hashes its inputs, so a warm `build_all` only reads and hashes files.

    python -m tests.e2e.testbed.images build      # prints "ref -> archive" per image
    python -m tests.e2e.testbed.images import --address /path/to/containerd.sock
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import oci

HERE = Path(__file__).resolve().parent
IMAGES_DIR = HERE / "images"
COREDNS_DIR = HERE / "build" / "coredns"
WORKLOADS_DIR = IMAGES_DIR / "workloads"

DEFAULT_CACHE_ROOT = Path("/var/cache/ktpy-testbed")

PAUSE_REF = "ktbed.local/pause:3.10"
ECHO_REF = "ktbed.local/echo:0.1.0"
NGINX_REF = "ktbed.local/nginx:1.22-bookworm"
CLIENT_REF = "ktbed.local/client:0.1.0"
DEBIAN_BASE_REF = "docker.io/library/debian:bookworm-slim"
DEBIAN_SUITE = "bookworm"
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Marks a base made by ensure_debian_base; bump it when the base recipe changes.
BASE_LABEL = "io.ktpy.testbed.base"
BASE_RECIPE = "debootstrap-minbase-bookworm-1"

NONROOT = "65532:65532"  # distroless' "nonroot", as upstream CoreDNS uses
_PASSWD = (
    b"root:x:0:0:root:/root:/sbin/nologin\n"
    b"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
)
_GROUP = b"root:x:0:\nnonroot:x:65532:\n"


def _coredns_version() -> str:
    """The CoreDNS version is the one go.mod requires, so image tag and code agree."""
    for line in (COREDNS_DIR / "go.mod").read_text().splitlines():
        words = line.replace("require", "").split()
        if len(words) >= 2 and words[0] == "github.com/coredns/coredns":
            return words[1]
    raise RuntimeError(f"{COREDNS_DIR / 'go.mod'} does not require github.com/coredns/coredns")


COREDNS_REF = f"ktbed.local/coredns:{_coredns_version()}"
ALL_REFS = (PAUSE_REF, COREDNS_REF, ECHO_REF, NGINX_REF, CLIENT_REF)


# ktbed-echo's /bytes?n=N body: byte i is i % 251 (see images/workloads/pattern.go).
ECHO_BYTES_PERIOD = 251


def echo_bytes_sha256(n: int) -> str:
    """The sha256 hex digest of ktbed-echo's `/bytes?n=N` body, without building it whole."""
    block = bytes(range(ECHO_BYTES_PERIOD)) * 4096  # whole periods, so blocks chain
    h = hashlib.sha256()
    while n > 0:
        chunk = block[: min(n, len(block))]
        h.update(chunk)
        n -= len(chunk)
    return h.hexdigest()


class ImageBuildError(RuntimeError):
    """A build step failed; the message names the command and ends with its output."""


def cache_root() -> Path:
    return Path(os.environ.get("KTBED_CACHE", str(DEFAULT_CACHE_ROOT)))


def default_cache_dir() -> Path:
    return cache_root() / "images"


def _log(message: str) -> None:
    # One write per line: the two build lanes log from two threads.
    sys.stderr.write(f"[ktbed images {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def _run(
    cmd: list[str],
    *,
    log_file: Path | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run a build step; its output goes to `log_file` (if given) and is returned."""
    result = subprocess.run(
        cmd,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if log_file is not None:
        with log_file.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{result.stdout}\n")
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-40:])
        where = f" (log: {log_file})" if log_file else ""
        raise ImageBuildError(f"{' '.join(cmd)} exited {result.returncode}{where}:\n{tail}")
    return result.stdout


# --- cache keys ---------------------------------------------------------------------


def _hash_tree(root: Path) -> str:
    """Hash of every file under root: relative paths, modes and contents."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(oct(path.stat().st_mode & 0o111).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _go_version() -> str:
    """The Go toolchain's version, read from GOROOT/VERSION rather than by running go."""
    go = shutil.which("go")
    if go is None:
        return "no-go"
    version_file = Path(go).resolve().parent.parent / "VERSION"
    if version_file.is_file():
        return version_file.read_text().splitlines()[0]
    return _run(["go", "env", "GOVERSION"]).strip()


def _gcc_identity() -> str:
    gcc = shutil.which("gcc")
    return str(Path(gcc).resolve()) if gcc else "no-gcc"


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class _Keys:
    """One cache key per artifact: any change to an input gives a new key."""

    pause: str
    coredns: str
    echo_bin: str
    echo: str
    nginx: str
    client: str

    @classmethod
    def compute(cls) -> _Keys:
        # The builder itself is an input: a change here or in oci.py rebuilds everything.
        builder = _key(_hash_file(Path(__file__)), _hash_file(HERE / "oci.py"))
        go = _go_version()
        debian = _key(BASE_RECIPE, DEBIAN_SUITE)
        echo_bin = _key("echo-bin", builder, go, _hash_tree(WORKLOADS_DIR))
        return cls(
            pause=_key(PAUSE_REF, builder, _gcc_identity(), _hash_tree(IMAGES_DIR / "pause")),
            coredns=_key(COREDNS_REF, builder, go, _hash_tree(COREDNS_DIR)),
            echo_bin=echo_bin,
            echo=_key(ECHO_REF, echo_bin),
            nginx=_key(NGINX_REF, builder, debian, _hash_tree(IMAGES_DIR / "nginx")),
            client=_key(CLIENT_REF, builder, debian, echo_bin, _hash_tree(IMAGES_DIR / "client")),
        )


def _hash_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _archive_name(ref: str, key: str) -> str:
    name, tag = oci.split_ref(ref)
    return f"{name.rsplit('/', 1)[-1]}_{tag}-{key[:16]}.tar"


def _prune(directory: Path, keep: Path) -> None:
    """Remove older archives of the same image, so the cache does not grow forever."""
    stem = keep.name.rsplit("-", 1)[0]
    for old in directory.glob(f"{stem}-*.tar"):
        if old != keep:
            old.unlink(missing_ok=True)


@contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    """One builder per cache at a time (the bed and a test may both call build_all)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- static images ------------------------------------------------------------------


def _static_base() -> oci.LayerMap:
    """/etc/passwd and /etc/group naming the nonroot user, and a writable /tmp."""
    return {
        "etc/passwd": (_PASSWD, 0o644),
        "etc/group": (_GROUP, 0o644),
        "etc/nsswitch.conf": (b"hosts: files dns\n", 0o644),
        "tmp": oci.Directory(0o1777),
    }


def build_pause(out: Path, *, log_file: Path | None = None) -> Path:
    """`ktbed.local/pause:3.10`: images/pause/pause.c, static, as the only file."""
    with tempfile.TemporaryDirectory(prefix="ktbed-pause-") as tmp:
        binary = Path(tmp) / "pause"
        source = IMAGES_DIR / "pause" / "pause.c"
        cmd = ["gcc", "-Os", "-static", "-s", "-Wall", "-Wextra", "-o", str(binary), str(source)]
        _run(cmd, log_file=log_file)
        oci.write_image(
            out,
            PAUSE_REF,
            [{"pause": (binary, 0o755)}],
            oci.ImageConfig(entrypoint=["/pause"], env=(), user="65535:65535"),
        )
    return out


def go_build(
    module_dir: Path, out: Path, *, ldflags: str = "-s -w", log_file: Path | None = None
) -> Path:
    """A static, reproducible build of the main package of `module_dir`.

    The normal GOMODCACHE and GOCACHE are used, so warm rebuilds are quick.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    cmd = [
        "go", "build", "-trimpath", "-buildvcs=false", "-mod=readonly",
        f"-ldflags={ldflags}", "-o", str(tmp), ".",
    ]  # fmt: skip
    _run(cmd, cwd=module_dir, env={"CGO_ENABLED": "0"}, log_file=log_file)
    tmp.replace(out)
    return out


def build_coredns(out: Path, *, log_file: Path | None = None) -> Path:
    """`ktbed.local/coredns:<version>` from build/coredns (only the bed's plugins)."""
    with tempfile.TemporaryDirectory(prefix="ktbed-coredns-") as tmp:
        version = COREDNS_REF.rsplit(":", 1)[1]
        ldflags = f"-s -w -X github.com/coredns/coredns/coremain.GitCommit=ktbed-{version}"
        binary = go_build(COREDNS_DIR, Path(tmp) / "coredns", ldflags=ldflags, log_file=log_file)
        oci.write_image(
            out,
            COREDNS_REF,
            [_static_base(), {"coredns": (binary, 0o755)}],
            oci.ImageConfig(
                entrypoint=["/coredns"],
                env=(),
                user=NONROOT,
                exposed_ports=["53/udp", "53/tcp", "8080/tcp", "8181/tcp", "9153/tcp"],
            ),
        )
    return out


def build_echo(out: Path, binary: Path) -> Path:
    """`ktbed.local/echo:0.1.0`: the ktbed-echo binary alone."""
    oci.write_image(
        out,
        ECHO_REF,
        [_static_base(), {"ktbed-echo": (binary, 0o755)}],
        oci.ImageConfig(
            entrypoint=["/ktbed-echo"],
            cmd=["http"],
            env=(),
            user=NONROOT,
            exposed_ports=["8080/tcp", "9090/tcp"],
        ),
    )
    return out


# --- Debian base and Dockerfile images ----------------------------------------------


def _buildah_label(ref: str, label: str) -> str | None:
    """A label of an image in buildah's storage; None if there is no such image."""
    # buildah 1.28's --format has no `json` function: read the whole document.
    result = subprocess.run(
        ["buildah", "inspect", "--type", "image", ref],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return None
    labels = json.loads(result.stdout).get("OCIv1", {}).get("config", {}).get("Labels") or {}
    return str(labels.get(label, ""))


def _host_debian_mirror() -> str:
    """The host's Debian mirror (first `URIs:` or `deb` line for the main archive)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file() or path.suffix not in (".list", ".sources"):
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "URIs:" and words[1].rstrip("/").endswith("/debian"):
                return words[1]
            if len(words) >= 3 and words[0] == "deb" and DEBIAN_SUITE in words:
                uri = next(w for w in words[1:] if "://" in w)
                if uri.rstrip("/").endswith("/debian"):
                    return uri
    return DEFAULT_DEBIAN_MIRROR


def _signed_by(sources: str) -> set[str]:
    """Keyring files named by a one-line (`[signed-by=...]`) or deb822 (`Signed-By:`) source."""
    found = set(re.findall(r"signed-by=([^\s\]]+)", sources))
    found.update(re.findall(r"(?im)^\s*Signed-By:\s*(/\S+)\s*$", sources))
    return {k for k in found if k.startswith("/")}


def _copy_host_apt_config(rootfs: Path) -> None:
    """Give the base the host's apt sources and its Acquire settings (proxy, validity).

    The build's apt must reach Debian's archive exactly as the host does: a mirror or
    a snapshot the host is pinned to (with Check-Valid-Until off) would otherwise be
    refused inside the build.
    """
    apt = rootfs / "etc" / "apt"
    copied = False
    host_list = Path("/etc/apt/sources.list")
    if host_list.is_file() and host_list.read_text().strip():
        shutil.copy2(host_list, apt / "sources.list")
        copied = True
    else:
        (apt / "sources.list").unlink(missing_ok=True)
    for src in sorted(Path("/etc/apt/sources.list.d").glob("*")):
        # Only enabled sources: apt ignores other suffixes, and so do we.
        if src.suffix not in (".list", ".sources") or not src.is_file():
            continue
        shutil.copy2(src, apt / "sources.list.d" / src.name)
        copied = True
        for keyring in _signed_by(src.read_text()):
            dest = rootfs / keyring.lstrip("/")
            if not dest.exists() and Path(keyring).is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(keyring, dest)
    if not copied:
        mirror = _host_debian_mirror()
        (apt / "sources.list").write_text(
            f"deb {mirror} {DEBIAN_SUITE} main\ndeb {mirror} {DEBIAN_SUITE}-updates main\n"
        )
    for conf in sorted(Path("/etc/apt/apt.conf.d").glob("*")):
        if conf.is_file() and "Acquire::" in conf.read_text(errors="replace"):
            shutil.copy2(conf, apt / "apt.conf.d" / conf.name)


def _slim_rootfs(rootfs: Path) -> None:
    """What the Debian project's slim images do, and what a rootfs must not carry."""
    (rootfs / "etc" / "dpkg" / "dpkg.cfg.d" / "ktbed-slim").write_text(
        "# Like debian:*-slim: no docs, man pages or translations in packages installed later\n"
        "path-exclude /usr/share/doc/*\n"
        "path-include /usr/share/doc/*/copyright\n"
        "path-exclude /usr/share/man/*\n"
        "path-exclude /usr/share/info/*\n"
        "path-exclude /usr/share/locale/*\n"
        "path-include /usr/share/locale/locale.alias\n"
        "path-exclude /usr/share/lintian/*\n"
    )
    junk = [
        *(rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb"),
        *(rootfs / "var" / "cache" / "apt").glob("*.bin"),
        *(p for p in (rootfs / "var" / "lib" / "apt" / "lists").glob("*") if p.is_file()),
        rootfs / "etc" / "resolv.conf",  # buildah and the runtime provide their own
        rootfs / "etc" / "hostname",
    ]
    for path in junk:
        path.unlink(missing_ok=True)
    # Device nodes are the runtime's job; an image must not ship them.
    for entry in (rootfs / "dev").iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def ensure_debian_base(*, force: bool = False, log_file: Path | None = None) -> None:
    """Make `docker.io/library/debian:bookworm-slim` in buildah's storage, unless ours is there.

    An image under that name without our label (made by something else, or by an
    older recipe) is replaced, so Dockerfiles saying `FROM debian:bookworm-slim` get
    apt sources that work here. The old image is only untagged, never deleted.
    """
    if not force and _buildah_label(DEBIAN_BASE_REF, BASE_LABEL) == BASE_RECIPE:
        return
    started = time.monotonic()
    mirror = _host_debian_mirror()
    with tempfile.TemporaryDirectory(prefix="ktbed-debian-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(
            ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs), mirror],
            log_file=log_file,
        )
        _copy_host_apt_config(rootfs)
        _slim_rootfs(rootfs)
        container = _run(["buildah", "from", "--quiet", "scratch"], log_file=log_file).strip()
        try:
            mount = Path(_run(["buildah", "mount", container], log_file=log_file).strip())
            _run(["cp", "-a", f"{rootfs}/.", f"{mount}/"], log_file=log_file)
            _run(["buildah", "umount", container], log_file=log_file)
            _run(
                [
                    "buildah", "config",
                    "--env", oci.DEFAULT_PATH_ENV,
                    "--cmd", "bash",
                    "--label", f"{BASE_LABEL}={BASE_RECIPE}",
                    container,
                ],
                log_file=log_file,
            )  # fmt: skip
            _run(
                ["buildah", "commit", "--quiet", "--rm", container, DEBIAN_BASE_REF],
                log_file=log_file,
            )
        except BaseException:
            subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
            raise
    _log(f"Debian base {DEBIAN_BASE_REF} made from {mirror} in {time.monotonic() - started:.0f}s")


def build_dockerfile_image(
    context_dir: Path,
    ref: str,
    out: Path,
    *,
    extra_files: Mapping[str, Path] | None = None,
    build_args: Mapping[str, str] | None = None,
    keep_in_storage: bool = False,
    log_file: Path | None = None,
) -> Path:
    """Build `context_dir/Dockerfile` with buildah into an OCI archive `out` named `ref`.

    No registry is reached (`--pull=never`): the base must be in buildah's storage
    (`ensure_debian_base` makes debian:bookworm-slim). RUN steps use the host's
    network. `extra_files` ({name-in-context: file}) are added to a copy of the
    context, for build outputs that must not live in the source tree.
    """
    oci.split_ref(ref)
    ensure_debian_base(log_file=log_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ktbed-ctx-") as tmp:
        context = context_dir
        if extra_files:
            context = Path(tmp) / "context"
            shutil.copytree(context_dir, context, symlinks=True)
            for name, source in extra_files.items():
                shutil.copy2(source, context / name)
        cmd = [
            "buildah", "bud", "--pull=never", "--network=host", "--isolation=chroot",
            "--layers=false", "--quiet", "-f", str(context / "Dockerfile"), "-t", ref,
        ]  # fmt: skip
        for arg, value in (build_args or {}).items():
            cmd += ["--build-arg", f"{arg}={value}"]
        _run([*cmd, str(context)], log_file=log_file)
        tmp_out = out.with_name(f".{out.name}.tmp")
        tmp_out.unlink(missing_ok=True)
        try:
            _run(
                ["buildah", "push", "--quiet", ref, f"oci-archive:{tmp_out}:{ref}"],
                log_file=log_file,
            )
            # buildah names the image only by org.opencontainers.image.ref.name,
            # which `ctr images import` does not read as the image's name.
            oci.set_archive_ref(tmp_out, ref)
            tmp_out.replace(out)
        finally:
            tmp_out.unlink(missing_ok=True)
            if not keep_in_storage:
                subprocess.run(["buildah", "rmi", ref], capture_output=True, check=False)
    return out


# --- everything ---------------------------------------------------------------------


@dataclass
class _Builder:
    cache_dir: Path
    keys: _Keys
    timings: dict[str, float]
    _echo_lock: threading.Lock

    def log_file(self, name: str) -> Path:
        logs = self.cache_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"{name}.log"
        path.write_text(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        return path

    def archive(self, ref: str, key: str, build: Callable[[Path, Path], object]) -> Path:
        out = self.cache_dir / _archive_name(ref, key)
        if out.exists():
            return out
        started = time.monotonic()
        name = out.name.rsplit("-", 1)[0]
        _log(f"building {ref}")
        build(out, self.log_file(name))
        self.timings[ref] = time.monotonic() - started
        _log(f"built {ref} in {self.timings[ref]:.1f}s -> {out}")
        _prune(self.cache_dir, out)
        return out

    def echo_binary(self) -> Path:
        # Both the echo and the client image need it: whoever comes first builds it.
        with self._echo_lock:
            path = self.cache_dir / "bin" / f"ktbed-echo-{self.keys.echo_bin[:16]}"
            if not path.exists():
                started = time.monotonic()
                go_build(WORKLOADS_DIR, path, log_file=self.log_file("ktbed-echo"))
                self.timings["ktbed-echo binary"] = time.monotonic() - started
                for old in path.parent.glob("ktbed-echo-*"):
                    if old != path:
                        old.unlink(missing_ok=True)
            return path

    def static_lane(self) -> dict[str, Path]:
        k = self.keys
        return {
            PAUSE_REF: self.archive(PAUSE_REF, k.pause, lambda o, lf: build_pause(o, log_file=lf)),
            ECHO_REF: self.archive(
                ECHO_REF, k.echo, lambda o, _: build_echo(o, self.echo_binary())
            ),
            COREDNS_REF: self.archive(
                COREDNS_REF, k.coredns, lambda o, lf: build_coredns(o, log_file=lf)
            ),
        }

    def debian_lane(self) -> dict[str, Path]:
        k = self.keys
        nginx = self.archive(
            NGINX_REF,
            k.nginx,
            lambda o, lf: build_dockerfile_image(IMAGES_DIR / "nginx", NGINX_REF, o, log_file=lf),
        )
        client = self.archive(
            CLIENT_REF,
            k.client,
            lambda o, lf: build_dockerfile_image(
                IMAGES_DIR / "client",
                CLIENT_REF,
                o,
                extra_files={"ktbed-echo": self.echo_binary()},
                log_file=lf,
            ),
        )
        return {NGINX_REF: nginx, CLIENT_REF: client}


def build_all(
    cache_dir: Path | None = None,
    *,
    parallel: bool = True,
    timings: dict[str, float] | None = None,
) -> dict[str, Path]:
    """Build (or find in the cache) every image of the bed; return {ref: archive}.

    Two lanes run side by side on the 2 cores: the static images (gcc and Go, CPU
    bound) and the Debian ones (debootstrap and apt, mostly waiting on the network).
    `timings`, if given, receives the seconds spent on each artifact actually built.
    """
    cache_dir = cache_dir or default_cache_dir()
    spent: dict[str, float] = {} if timings is None else timings
    with _locked(cache_dir):
        builder = _Builder(cache_dir, _Keys.compute(), spent, threading.Lock())
        if parallel:
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ktbed-images") as pool:
                lanes = [pool.submit(builder.static_lane), pool.submit(builder.debian_lane)]
                results = [lane.result() for lane in lanes]
        else:
            results = [builder.static_lane(), builder.debian_lane()]
        archives = {ref: path for result in results for ref, path in result.items()}
        ordered = {ref: archives[ref] for ref in ALL_REFS}
        # ref -> archive for shell scripts; rewritten only when it changes, so a
        # warm call writes nothing.
        index_file = cache_dir / "images.json"
        index = json.dumps({ref: str(path) for ref, path in ordered.items()}, indent=2) + "\n"
        if not index_file.exists() or index_file.read_text() != index:
            index_file.write_text(index)
        return ordered


def import_images(archives: Iterable[Path], address: str, *, namespace: str = "k8s.io") -> None:
    """Import archives into the containerd at `address`, in the namespace the CRI reads."""
    for archive in archives:
        _run(["ctr", "--address", address, "-n", namespace, "images", "import", str(archive)])


# --- CLI ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.testbed.images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build every image (cached) and print ref -> archive")
    build.add_argument("--cache-dir", type=Path, default=None, help="default: $KTBED_CACHE/images")
    build.add_argument("--serial", action="store_true", help="one build at a time")
    imp = sub.add_parser("import", help="build, then import every archive into a containerd")
    imp.add_argument("--address", required=True, help="containerd socket")
    imp.add_argument("--cache-dir", type=Path, default=None)
    sub.add_parser("base", help="make the Debian base image in buildah's storage if missing")
    args = parser.parse_args(argv)

    try:
        if args.command == "base":
            ensure_debian_base()
            return 0
        spent: dict[str, float] = {}
        started = time.monotonic()
        archives = build_all(
            args.cache_dir, parallel=not getattr(args, "serial", False), timings=spent
        )
        _log(f"build_all took {time.monotonic() - started:.1f}s ({len(spent)} built)")
        if args.command == "import":
            import_images(archives.values(), args.address)
        for ref, path in archives.items():
            print(f"{ref} -> {path}")
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
