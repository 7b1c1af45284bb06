"""The OCI archive writer: layout, digests that match contents, determinism."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.testbed import oci

REF = "ktbed.local/demo:1.2.3"


def _members(archive: Path) -> dict[str, bytes | None]:
    """Every entry of the outer tar: file contents, or None for directories."""
    out: dict[str, bytes | None] = {}
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isfile() else None
            out[m.name] = f.read() if f else None
    return out


def _blob(members: dict[str, bytes | None], digest: str) -> bytes:
    data = members[f"blobs/sha256/{digest.removeprefix('sha256:')}"]
    assert data is not None
    return data


def _layer_tar(members: dict[str, bytes | None], digest: str) -> tarfile.TarFile:
    return tarfile.open(fileobj=io.BytesIO(gzip.decompress(_blob(members, digest))))


def _simple(tmp_path: Path, name: str = "img.tar") -> Path:
    out = tmp_path / name
    oci.write_image(
        out,
        REF,
        [{"bin/tool": (b"#!/bin/sh\necho hi\n", 0o755), "etc/motd": (b"hello\n", 0o644)}],
        oci.ImageConfig(
            entrypoint=["/bin/tool"],
            cmd=["serve"],
            env=["PATH=/bin", "A=1"],
            user="65532:65532",
            workdir="/work",
            exposed_ports=["8080", "53/udp"],
            labels={"org.example": "yes"},
        ),
    )
    return out


def test_archive_has_the_oci_layout_and_names_the_image(tmp_path: Path) -> None:
    members = _members(_simple(tmp_path))
    assert {"oci-layout", "index.json"} <= members.keys()
    assert json.loads(members["oci-layout"] or b"") == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(members["index.json"] or b"")
    assert index["schemaVersion"] == 2
    [entry] = index["manifests"]
    assert entry["mediaType"] == oci.MEDIA_MANIFEST
    assert entry["annotations"] == {
        "io.containerd.image.name": REF,
        "org.opencontainers.image.ref.name": "1.2.3",
    }
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    blobs = {n for n in members if n.startswith("blobs/sha256/")}
    # manifest, config, one layer: nothing else is shipped
    assert len(blobs) == 3


def test_config_carries_the_runtime_settings(tmp_path: Path) -> None:
    members = _members(_simple(tmp_path))
    [entry] = json.loads(members["index.json"] or b"")["manifests"]
    manifest = json.loads(_blob(members, entry["digest"]))
    assert manifest["mediaType"] == oci.MEDIA_MANIFEST
    assert manifest["config"]["mediaType"] == oci.MEDIA_CONFIG
    assert [layer["mediaType"] for layer in manifest["layers"]] == [oci.MEDIA_LAYER_GZIP]
    config = json.loads(_blob(members, manifest["config"]["digest"]))
    assert config["architecture"] == "amd64"
    assert config["os"] == "linux"
    assert config["config"] == {
        "Entrypoint": ["/bin/tool"],
        "Cmd": ["serve"],
        "Env": ["PATH=/bin", "A=1"],
        "User": "65532:65532",
        "WorkingDir": "/work",
        "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
        "Labels": {"org.example": "yes"},
    }


def test_every_digest_and_size_matches_its_content(tmp_path: Path) -> None:
    members = _members(_simple(tmp_path))
    for name, data in members.items():
        if name.startswith("blobs/sha256/") and data is not None:
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    [entry] = json.loads(members["index.json"] or b"")["manifests"]
    manifest_bytes = _blob(members, entry["digest"])
    assert entry["size"] == len(manifest_bytes)
    manifest = json.loads(manifest_bytes)
    config = json.loads(_blob(members, manifest["config"]["digest"]))
    assert manifest["config"]["size"] == len(_blob(members, manifest["config"]["digest"]))
    for desc, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        compressed = _blob(members, desc["digest"])
        assert desc["size"] == len(compressed)
        # diff_id is the digest of the uncompressed tar, as containerd checks on unpack
        assert diff_id == "sha256:" + hashlib.sha256(gzip.decompress(compressed)).hexdigest()


def test_mapped_layer_has_parents_modes_and_no_ownership(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(b"\x7fELF fake")
    out = tmp_path / "img.tar"
    oci.write_image(
        out,
        REF,
        [
            {
                "usr/local/bin/tool": (source, 0o755),
                "/etc/conf": (b"x=1\n", 0o600),
                "usr/bin/tool": oci.Symlink("../local/bin/tool"),
                "tmp": oci.Directory(0o1777),
            }
        ],
        oci.ImageConfig(),
    )
    info = oci.read_archive(out)
    members = _members(out)
    with _layer_tar(members, info.manifest["layers"][0]["digest"]) as tar:
        entries = {m.name: m for m in tar.getmembers()}
        assert list(entries) == sorted(entries)
        assert set(entries) == {
            "etc",
            "etc/conf",
            "tmp",
            "usr",
            "usr/bin",
            "usr/bin/tool",
            "usr/local",
            "usr/local/bin",
            "usr/local/bin/tool",
        }
        assert entries["usr/local"].isdir()
        assert entries["usr/local"].mode == 0o755
        assert entries["usr/local/bin/tool"].mode == 0o755
        assert entries["etc/conf"].mode == 0o600
        assert entries["tmp"].isdir()
        assert entries["tmp"].mode == 0o1777
        assert entries["usr/bin/tool"].issym()
        assert entries["usr/bin/tool"].linkname == "../local/bin/tool"
        for m in entries.values():
            assert (m.uid, m.gid, m.mtime, m.uname, m.gname) == (0, 0, 0, "", "")
        f = tar.extractfile("usr/local/bin/tool")
        assert f is not None
        assert f.read() == b"\x7fELF fake"


def _make_tree(root: Path, mtime: int) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "run").write_bytes(b"run")
    (root / "bin" / "run").chmod(0o750)
    (root / "data").mkdir()
    (root / "data" / "z.txt").write_text("z")
    (root / "data" / "a.txt").write_text("a")
    (root / "link").symlink_to("bin/run")
    for p in [root / "bin", root / "bin" / "run", root / "data", *(root / "data").iterdir()]:
        os.utime(p, (mtime, mtime))


def test_directory_layer_keeps_modes_links_and_sorts(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    _make_tree(root, 1_700_000_000)
    out = tmp_path / "img.tar"
    oci.write_image(out, REF, [root], oci.ImageConfig())
    info = oci.read_archive(out)
    with _layer_tar(_members(out), info.manifest["layers"][0]["digest"]) as tar:
        names = [m.name for m in tar.getmembers()]
        assert names == ["bin", "bin/run", "data", "data/a.txt", "data/z.txt", "link"]
        assert tar.getmember("bin/run").mode == 0o750
        assert tar.getmember("link").linkname == "bin/run"
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())


def test_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    # Same content, different file times and build directories: same archive.
    for n, mtime in ((1, 1_600_000_000), (2, 1_700_000_000)):
        root = tmp_path / f"tree{n}"
        _make_tree(root, mtime)
        oci.write_image(
            tmp_path / f"out{n}.tar",
            REF,
            [root, {"extra": (b"1", 0o644)}],
            oci.ImageConfig(cmd=["x"], labels={"b": "2", "a": "1"}),
        )
    first = (tmp_path / "out1.tar").read_bytes()
    assert first == (tmp_path / "out2.tar").read_bytes()
    assert oci.read_archive(tmp_path / "out1.tar").manifest_digest.startswith("sha256:")


def test_different_content_gives_a_different_digest(tmp_path: Path) -> None:
    digests = {
        oci.write_image(tmp_path / f"{n}.tar", REF, [{"f": (content, 0o644)}], oci.ImageConfig())
        for n, content in enumerate([b"a", b"b"])
    }
    assert len(digests) == 2


def test_write_image_returns_the_digest_in_the_index(tmp_path: Path) -> None:
    out = tmp_path / "img.tar"
    digest = oci.write_image(out, REF, [{"f": (b"1", 0o644)}], oci.ImageConfig())
    assert oci.read_archive(out).manifest_digest == digest
    assert oci.read_archive(out).ref == REF


def test_read_archive_detects_a_corrupted_blob(tmp_path: Path) -> None:
    out = _simple(tmp_path)
    info = oci.read_archive(out)
    layer = f"blobs/sha256/{info.manifest['layers'][0]['digest'].removeprefix('sha256:')}"
    bad = tmp_path / "bad.tar"
    with tarfile.open(out) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            f = src.extractfile(m) if m.isfile() else None
            data = f.read() if f else b""
            if m.name == layer:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            dst.addfile(m, io.BytesIO(data) if f else None)
    with pytest.raises(oci.ArchiveError, match="does not match"):
        oci.read_archive(bad)


def test_set_archive_ref_renames_and_keeps_blobs(tmp_path: Path) -> None:
    out = _simple(tmp_path)
    before = oci.read_archive(out)
    oci.set_archive_ref(out, "ktbed.local/other:9")
    after = oci.read_archive(out)
    assert after.ref == "ktbed.local/other:9"
    assert after.manifest_digest == before.manifest_digest
    annotations: dict[str, Any] = after.index["manifests"][0]["annotations"]
    assert annotations["org.opencontainers.image.ref.name"] == "9"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("ktbed.local/pause:3.10", ("ktbed.local/pause", "3.10")),
        ("localhost:5000/a/b:v1", ("localhost:5000/a/b", "v1")),
    ],
)
def test_split_ref(ref: str, expected: tuple[str, str]) -> None:
    assert oci.split_ref(ref) == expected


@pytest.mark.parametrize("ref", ["ktbed.local/pause", "localhost:5000/a", "a@sha256:00", ":x"])
def test_untagged_refs_are_refused(ref: str) -> None:
    with pytest.raises(ValueError, match=r"tag|digest"):
        oci.split_ref(ref)


def test_a_path_that_is_both_file_and_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both"):
        oci.write_image(
            tmp_path / "x.tar",
            REF,
            [{"a": (b"1", 0o644), "a/b": (b"2", 0o644)}],
            oci.ImageConfig(),
        )
