"""Read an OCI image archive (what `buildah push oci-archive:` writes).

`extract_rootfs` applies the layers the way a container runtime does,
whiteouts included. It runs in a child process that chroots into the
destination first: Debian's rootfs has absolute symlinks (/var/run -> /run),
and extracting through them from outside would write into the host.
"""

from __future__ import annotations

import gzip  # noqa: F401  (tarfile imports it lazily; after chroot it could not)
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zlib  # noqa: F401  (same reason as gzip)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
# Layers are ours and applied inside a chroot: keep owners, modes and
# absolute symlinks exactly (the default filter changes in Python 3.14).
_TRUSTED: dict[str, Any] = (
    {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
)


@dataclass(frozen=True)
class OciImage:
    ref_name: str  # org.opencontainers.image.ref.name of the index entry
    manifest: dict[str, Any]
    config: dict[str, Any]  # the image configuration blob (with "config", "rootfs", ...)


def _blob(archive: tarfile.TarFile, digest: str) -> bytes:
    algo, _, hexd = digest.partition(":")
    f = archive.extractfile(f"blobs/{algo}/{hexd}")
    assert f is not None, digest
    return f.read()


def read_image(path: Path) -> OciImage:
    with tarfile.open(path) as archive:
        index = json.loads(_file(archive, "index.json"))
        (entry,) = index["manifests"]
        manifest = json.loads(_blob(archive, entry["digest"]))
        config = json.loads(_blob(archive, manifest["config"]["digest"]))
        ref = entry.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
        return OciImage(ref_name=ref, manifest=manifest, config=config)


def _file(archive: tarfile.TarFile, name: str) -> bytes:
    f = archive.extractfile(name)
    assert f is not None, name
    return f.read()


def extract_rootfs(archive: Path, dest: Path) -> None:
    """Unpack the image's layers into dest (which must not exist yet)."""
    dest.mkdir(parents=True)
    subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(archive), str(dest)],
        check=True,
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


def _apply_layer(layer: tarfile.TarFile) -> None:
    # Runs chrooted into the rootfs, so "/" is the rootfs.
    for member in layer:
        rel = member.name
        while rel.startswith("./"):
            rel = rel[2:]
        rel = rel.strip("/")
        if rel in ("", "."):
            continue  # the root itself: keep the directory we were given
        target = Path("/", rel)
        if target.name == _OPAQUE:
            for child in target.parent.iterdir():
                _remove(child)
            continue
        if target.name.startswith(_WHITEOUT):
            _remove(target.parent / target.name[len(_WHITEOUT) :])
            continue
        # Never write through what a lower layer left at this path (a
        # symlink would redirect the write); directories merge.
        if not (member.isdir() and target.is_dir() and not target.is_symlink()):
            _remove(target)
        layer.extract(member, "/", numeric_owner=True, **_TRUSTED)


def _main(archive_path: str, dest: str) -> None:
    outer = tarfile.open(archive_path)  # noqa: SIM115  (kept open across chroot)
    index = json.loads(_file(outer, "index.json"))
    manifest = json.loads(_blob(outer, index["manifests"][0]["digest"]))
    os.chroot(dest)
    os.chdir("/")
    for layer in manifest["layers"]:
        algo, _, hexd = layer["digest"].partition(":")
        blob = outer.extractfile(f"blobs/{algo}/{hexd}")
        with tarfile.open(fileobj=blob, mode="r|*") as tar:
            _apply_layer(tar)


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
