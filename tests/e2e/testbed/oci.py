"""OCI image archives written without a registry, a daemon or root.

An archive is what `ctr -n k8s.io images import` and `buildah pull oci-archive:` read: a
tar of `oci-layout`, `index.json` and `blobs/sha256/*` (manifest, config, gzip layers).
Everything written is deterministic (mtime 0, uid/gid 0, sorted entries, canonical JSON,
gzip without a timestamp), so the same inputs give the same manifest digest and a
cache can compare archives by digest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeAlias

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Not the Unix epoch literally: some tools treat a zero "created" as "unknown".
EPOCH = "1970-01-01T00:00:00Z"
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Symlink:
    """A symbolic link in a mapped layer, pointing at `target` (taken verbatim)."""

    target: str


@dataclass(frozen=True)
class Directory:
    """An explicit directory in a mapped layer (e.g. /tmp with mode 0o1777)."""

    mode: int = 0o755


FileSource: TypeAlias = bytes | Path
# {path-in-image: (content, mode)}, a Symlink or a Directory; parent directories
# that are not listed are added with mode 0755.
LayerMap: TypeAlias = Mapping[str, "tuple[FileSource, int] | Symlink | Directory"]
Layer: TypeAlias = Path | LayerMap


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (the `config` object of the OCI spec)."""

    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Sequence[str] = (DEFAULT_PATH_ENV,)
    user: str = ""
    workdir: str = ""
    exposed_ports: Sequence[str] = ()  # "8080/tcp", "53/udp"
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.env:
            out["Env"] = list(self.env)
        if self.user:
            out["User"] = self.user
        if self.workdir:
            out["WorkingDir"] = self.workdir
        if self.exposed_ports:
            out["ExposedPorts"] = {_port_key(p): {} for p in self.exposed_ports}
        if self.labels:
            out["Labels"] = dict(self.labels)
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        return out


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str  # "sha256:<hex>"
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class ImageInfo:
    """What an archive holds, as read back by `read_archive`."""

    ref: str
    manifest_digest: str
    index: dict[str, Any]
    manifest: dict[str, Any]
    config: dict[str, Any]


class ArchiveError(Exception):
    """An archive is malformed, or a blob does not match its digest."""


def split_ref(ref: str) -> tuple[str, str]:
    """Split `registry/name:tag` into name and tag; a tag is required.

    Untagged refs are refused because in a pod spec they mean `:latest`, which
    kubelet always tries to pull, and there is no registry to pull from.
    """
    if "@" in ref:
        raise ValueError(f"{ref!r}: digest references cannot name an archive")
    name, sep, tag = ref.rpartition(":")
    if not sep or not name or not tag or "/" in tag:
        raise ValueError(f"{ref!r} has no tag")
    return name, tag


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _port_key(port: str) -> str:
    return port if "/" in port else f"{port}/tcp"


# --- layers -------------------------------------------------------------------------


def _tarinfo(
    name: str, kind: bytes, mode: int, size: int = 0, linkname: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = linkname
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _clean(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"bad path in image: {path!r}")
    return "/".join(parts)


def _map_entries(
    layer: LayerMap,
) -> Iterator[tuple[tarfile.TarInfo, FileSource | None]]:
    entries = {_clean(k): v for k, v in layer.items()}
    files = {k: v for k, v in entries.items() if not isinstance(v, Directory)}
    dirs = {k: v.mode for k, v in entries.items() if isinstance(v, Directory)}
    parents = {"/".join(p.split("/")[:i]) for p in entries for i in range(1, p.count("/") + 1)}
    clash = parents & files.keys()
    if clash:
        raise ValueError(f"paths used both as file and directory: {sorted(clash)}")
    for name in sorted(parents | entries.keys()):
        if name not in files:
            yield _tarinfo(name, tarfile.DIRTYPE, dirs.get(name, 0o755) & 0o7777), None
            continue
        value = files[name]
        if isinstance(value, Symlink):
            yield _tarinfo(name, tarfile.SYMTYPE, 0o777, linkname=value.target), None
            continue
        source, mode = value
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        yield _tarinfo(name, tarfile.REGTYPE, mode & 0o7777, size), source


def _dir_entries(root: Path) -> Iterator[tuple[tarfile.TarInfo, FileSource | None]]:
    """Walk `root` in sorted order; ownership and times are dropped, modes kept.

    Device nodes, sockets and fifos are skipped (a rootfs' /dev is the runtime's);
    hard links are stored as separate copies, which costs space but never order.
    """
    if not root.is_dir():
        raise ValueError(f"layer directory {root} does not exist")

    def walk(directory: Path, prefix: str) -> Iterator[tuple[tarfile.TarInfo, FileSource | None]]:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            name = f"{prefix}{entry.name}"
            st = entry.stat(follow_symlinks=False)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                yield (
                    _tarinfo(
                        name, tarfile.SYMTYPE, 0o777, linkname=str(Path(entry.path).readlink())
                    ),
                    None,
                )
            elif stat.S_ISDIR(st.st_mode):
                yield _tarinfo(name, tarfile.DIRTYPE, mode), None
                yield from walk(Path(entry.path), f"{name}/")
            elif stat.S_ISREG(st.st_mode):
                yield _tarinfo(name, tarfile.REGTYPE, mode, st.st_size), Path(entry.path)

    return walk(root, "")


def _layer_entries(layer: Layer) -> Iterator[tuple[tarfile.TarInfo, FileSource | None]]:
    if isinstance(layer, Path):
        return _dir_entries(layer)
    return _map_entries(layer)


class _HashingWriter(io.RawIOBase):
    """Passes writes on to `sink` while hashing and counting them."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self.size += len(view)
        self.sink.write(view)
        return len(view)


@dataclass(frozen=True)
class _Blob:
    path: Path
    descriptor: Descriptor


def _write_layer(layer: Layer, tmp: Path, compresslevel: int) -> tuple[_Blob, str]:
    """Write one gzip layer blob to `tmp`; return it and its diff_id."""
    with tmp.open("wb") as raw:
        compressed = _HashingWriter(raw)
        # filename="" and mtime=0 keep the gzip header free of anything variable.
        with gzip.GzipFile(
            filename="", fileobj=compressed, mode="wb", compresslevel=compresslevel, mtime=0
        ) as gz:
            plain = _HashingWriter(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for info, source in _layer_entries(layer):
                    if source is None:
                        tar.addfile(info)
                    elif isinstance(source, bytes):
                        tar.addfile(info, io.BytesIO(source))
                    else:
                        with source.open("rb") as f:
                            tar.addfile(info, f)
    digest = f"sha256:{compressed.sha.hexdigest()}"
    blob = _Blob(tmp, Descriptor(MEDIA_LAYER_GZIP, digest, compressed.size))
    return blob, f"sha256:{plain.sha.hexdigest()}"


# --- archives -----------------------------------------------------------------------


def _bytes_blob(media_type: str, data: bytes) -> tuple[Descriptor, bytes]:
    return Descriptor(media_type, f"sha256:{hashlib.sha256(data).hexdigest()}", len(data)), data


def _index(ref: str, manifest: Descriptor, platform: Mapping[str, str] | None) -> bytes:
    _, tag = split_ref(ref)
    entry = manifest.to_json()
    entry["annotations"] = {ANNOTATION_CONTAINERD_NAME: ref, ANNOTATION_REF_NAME: tag}
    if platform:
        entry["platform"] = dict(platform)
    return canonical_json({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [entry]})


def _write_outer_tar(out: Path, index: bytes, blobs: Mapping[str, bytes | Path]) -> None:
    """Write the archive to a temporary file next to `out`, then rename it in place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as f,
            tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for name in ("blobs", "blobs/sha256"):
                tar.addfile(_tarinfo(name, tarfile.DIRTYPE, 0o755))
            for digest in sorted(blobs):
                source = blobs[digest]
                name = f"blobs/sha256/{digest.removeprefix('sha256:')}"
                if isinstance(source, bytes):
                    tar.addfile(
                        _tarinfo(name, tarfile.REGTYPE, 0o644, len(source)), io.BytesIO(source)
                    )
                else:
                    with source.open("rb") as blob:
                        info = _tarinfo(name, tarfile.REGTYPE, 0o644, source.stat().st_size)
                        tar.addfile(info, blob)
            layout = canonical_json({"imageLayoutVersion": "1.0.0"})
            tar.addfile(
                _tarinfo("index.json", tarfile.REGTYPE, 0o644, len(index)), io.BytesIO(index)
            )
            tar.addfile(
                _tarinfo("oci-layout", tarfile.REGTYPE, 0o644, len(layout)), io.BytesIO(layout)
            )
        tmp.chmod(0o644)  # mkstemp makes 0600; archives are not secret
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_image(
    out: Path,
    ref: str,
    layers: Sequence[Layer],
    config: ImageConfig,
    *,
    architecture: str = "amd64",
    os_name: str = "linux",
    compresslevel: int = 6,
) -> str:
    """Write an image archive for `ref` to `out`; return the manifest digest.

    `layers` go bottom to top. Each is a directory (its contents become the image
    root) or a map {path-in-image: (bytes or source file, mode)} / Symlink.
    """
    split_ref(ref)  # refuse a bad ref before doing any work
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ktbed-oci-")))
        blobs: dict[str, bytes | Path] = {}
        layer_descs: list[Descriptor] = []
        diff_ids: list[str] = []
        for n, layer in enumerate(layers):
            blob, diff_id = _write_layer(layer, work / f"layer-{n}.tar.gz", compresslevel)
            blobs[blob.descriptor.digest] = blob.path
            layer_descs.append(blob.descriptor)
            diff_ids.append(diff_id)
        image_config = {
            "created": EPOCH,
            "architecture": architecture,
            "os": os_name,
            "config": config.to_json(),
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": EPOCH, "created_by": "ktpy testbed oci.py"} for _ in layers],
        }
        config_desc, config_bytes = _bytes_blob(MEDIA_CONFIG, canonical_json(image_config))
        blobs[config_desc.digest] = config_bytes
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [d.to_json() for d in layer_descs],
        }
        manifest_desc, manifest_bytes = _bytes_blob(MEDIA_MANIFEST, canonical_json(manifest))
        blobs[manifest_desc.digest] = manifest_bytes
        platform = {"architecture": architecture, "os": os_name}
        _write_outer_tar(out, _index(ref, manifest_desc, platform), blobs)
        return manifest_desc.digest


# --- reading and renaming -----------------------------------------------------------


def _read_member(tar: tarfile.TarFile, name: str) -> bytes:
    try:
        f = tar.extractfile(name)
    except KeyError:
        raise ArchiveError(f"archive has no {name}") from None
    if f is None:
        raise ArchiveError(f"{name} is not a regular file")
    return f.read()


def _blob_name(digest: str) -> str:
    algo, _, hexdigest = digest.partition(":")
    if algo != "sha256" or len(hexdigest) != 64:
        raise ArchiveError(f"unsupported digest {digest!r}")
    return f"blobs/sha256/{hexdigest}"


def _check_blob(tar: tarfile.TarFile, desc: Mapping[str, Any]) -> None:
    member = tar.getmember(_blob_name(desc["digest"]))
    f = tar.extractfile(member)
    if f is None:
        raise ArchiveError(f"blob {desc['digest']} is not a regular file")
    h = hashlib.sha256()
    size = 0
    while chunk := f.read(_COPY_CHUNK):
        h.update(chunk)
        size += len(chunk)
    if f"sha256:{h.hexdigest()}" != desc["digest"] or size != desc["size"]:
        raise ArchiveError(f"blob {desc['digest']} does not match its content")


def read_archive(path: Path, *, verify: bool = True) -> ImageInfo:
    """Read the (single) image of an archive; with `verify`, check every blob's digest."""
    with tarfile.open(path) as tar:
        index = json.loads(_read_member(tar, "index.json"))
        manifests = index.get("manifests", [])
        if len(manifests) != 1:
            raise ArchiveError(f"{path}: expected one manifest, found {len(manifests)}")
        mdesc = manifests[0]
        manifest_bytes = _read_member(tar, _blob_name(mdesc["digest"]))
        if f"sha256:{hashlib.sha256(manifest_bytes).hexdigest()}" != mdesc["digest"]:
            raise ArchiveError(f"{path}: manifest does not match its digest")
        manifest = json.loads(manifest_bytes)
        config = json.loads(_read_member(tar, _blob_name(manifest["config"]["digest"])))
        if verify:
            for desc in [manifest["config"], *manifest["layers"]]:
                _check_blob(tar, desc)
        annotations = mdesc.get("annotations", {})
        ref = annotations.get(ANNOTATION_CONTAINERD_NAME) or annotations.get(
            ANNOTATION_REF_NAME, ""
        )
        return ImageInfo(ref, mdesc["digest"], index, manifest, config)


def set_archive_ref(path: Path, ref: str) -> None:
    """Rewrite an archive's index.json so its one image is named `ref`.

    buildah's oci-archive output names the image only with
    org.opencontainers.image.ref.name, which `ctr images import` does not use as
    the image name; this adds io.containerd.image.name as well.
    """
    split_ref(ref)
    with tarfile.open(path) as src:
        index = json.loads(_read_member(src, "index.json"))
        manifests = index.get("manifests", [])
        if len(manifests) != 1:
            raise ArchiveError(f"{path}: expected one manifest, found {len(manifests)}")
        _, tag = split_ref(ref)
        annotations = dict(manifests[0].get("annotations", {}))
        annotations[ANNOTATION_CONTAINERD_NAME] = ref
        annotations[ANNOTATION_REF_NAME] = tag
        manifests[0]["annotations"] = annotations
        new_index = canonical_json(index)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with (
                os.fdopen(fd, "wb") as f,
                tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as dst,
            ):
                for member in src.getmembers():
                    if member.name.lstrip("./") == "index.json":
                        info = _tarinfo("index.json", tarfile.REGTYPE, 0o644, len(new_index))
                        dst.addfile(info, io.BytesIO(new_index))
                    elif member.isfile():
                        dst.addfile(member, src.extractfile(member))
                    else:
                        dst.addfile(member)
            tmp.chmod(0o644)
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
