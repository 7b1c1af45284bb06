"""One self-contained kubeconfig from several, the files they name read in: what a
connect that gives root up keeps of kubeconfigs only root may read."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from ktpy.cluster.api.kubeconfig import flattened


def _write(path: Path, content: object) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def test_named_files_are_read_in_relative_to_their_kubeconfig(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(b"CA")
    (certs / "me.crt").write_bytes(b"CERT")
    (certs / "me.key").write_bytes(b"KEY")
    (certs / "token").write_text("s3cret\n")
    config = _write(tmp_path / "config", {
        "clusters": [
            {"name": "c", "cluster": {
                "server": "https://x", "certificate-authority": "certs/ca.crt",
            }},
        ],
        "users": [
            {"name": "u", "user": {
                "client-certificate": "certs/me.crt", "client-key": str(certs / "me.key"),
            }},
            {"name": "t", "user": {"tokenFile": "certs/token"}},
        ],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    })  # fmt: skip
    flat = flattened([config])
    cluster = flat["clusters"][0]["cluster"]
    assert cluster == {"server": "https://x", "certificate-authority-data": _b64(b"CA")}
    assert flat["users"][0]["user"] == {
        "client-certificate-data": _b64(b"CERT"),
        "client-key-data": _b64(b"KEY"),
    }
    assert flat["users"][1]["user"] == {"token": "s3cret"}
    assert flat["current-context"] == "x"


def test_the_first_file_to_name_an_entry_wins_and_a_missing_file_is_skipped(
    tmp_path: Path,
) -> None:
    first = _write(tmp_path / "a", {
        "clusters": [{"name": "c", "cluster": {"server": "https://first"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c"}}],
    })  # fmt: skip
    second = _write(tmp_path / "b", {
        "clusters": [
            {"name": "c", "cluster": {"server": "https://second"}},
            {"name": "d", "cluster": {"server": "https://d"}},
        ],
        "current-context": "x",
    })  # fmt: skip
    flat = flattened([first, tmp_path / "missing", second])
    assert [c["cluster"]["server"] for c in flat["clusters"]] == ["https://first", "https://d"]
    assert flat["current-context"] == "x"  # the first file that sets one


def test_inline_data_is_kept_and_exec_plugins_are_left_alone(tmp_path: Path) -> None:
    user = {
        "client-key-data": _b64(b"K"),
        "exec": {"command": "aws", "args": ["eks", "get-token"]},
    }
    config = _write(tmp_path / "c", {"users": [{"name": "u", "user": user}]})
    assert flattened([config])["users"][0]["user"] == user


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
