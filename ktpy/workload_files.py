"""A workload's environment and files, written on this machine for local code to
run with, and removed again afterwards (only what was written): used by
``ktpy env`` and by exchange's ``--env-file`` and ``--mount-dir``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

import click

from ktpy.cluster.api import ClusterApi
from ktpy.cluster.workload_env import EnvProblem, VolumeFile, read_environment
from ktpy.errors import WorkloadUnreadable

FORMATS = ("dotenv", "json", "shell")
SECRET_WARNING = "Warning: {what} may hold Secret values; keep it to yourself."  # noqa: S105


def render(env: Mapping[str, str], output: str) -> str:
    if output == "json":
        return json.dumps(dict(sorted(env.items())), indent=2)
    if output == "shell":
        return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    return "\n".join(f"{k}={json.dumps(v)}" for k, v in sorted(env.items()))


def write_private(path: Path, data: bytes) -> None:
    """A file only this user can read, in directories only this user can enter."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    path.chmod(0o600)  # an existing file keeps its mode on open: make it private


def write_files(
    root: Path, files: list[VolumeFile], made: list[Path] | None = None
) -> dict[str, str]:
    """The volume files under ROOT at their mount paths; returns a variable per
    mount directory saying where its files are (KTPY_MOUNT_<PATH>). ``made`` gets
    every file and directory this created, to remove exactly those afterwards."""
    made = made if made is not None else []
    where: dict[str, str] = {}
    for item in files:
        target = root / item.path.lstrip("/")
        for directory in [root, *(root / p for p in reversed(target.relative_to(root).parents))]:
            if not directory.exists():
                directory.mkdir(mode=0o700)
                made.append(directory)
        target.parent.chmod(0o700)
        if not target.exists():
            made.append(target)
        write_private(target, item.data)
        name = "KTPY_MOUNT_" + re.sub(r"[^A-Za-z0-9]", "_", item.mount.strip("/")).upper()
        where[name] = str(root / item.mount.lstrip("/"))
    return where


def remove_session_files(written: list[Path]) -> list[str]:
    """At a session's end: remove what was written for it; what was undone, in words."""
    remove_made(written)
    return ["removed the environment files"] if written else []


def remove_made(made: list[Path]) -> None:
    """Remove what write_files made (files, then directories left empty), nothing else."""
    for path in reversed(made):
        with contextlib.suppress(OSError):
            if path.is_dir():
                path.rmdir()  # only if empty: something else may be in it
            else:
                path.unlink()


def write_environment(
    api: ClusterApi, namespace: str, service: str, env_file: Path | None, mount_dir: Path | None
) -> list[Path]:
    """The environment and files of a Service's pods, written for a session (exchange,
    mesh) before it changes the Service (after an exchange's switch it selects the
    shadow); returns what was written, for the session to remove at its end."""
    if env_file is None and mount_dir is None:
        return []
    try:
        found = read_environment(api, namespace, f"svc/{service}", None)
    except EnvProblem as exc:
        raise WorkloadUnreadable(str(exc)) from None
    written: list[Path] = []
    if env_file is not None:
        if not env_file.exists():
            written.append(env_file)
        write_private(env_file, (render(found.env, "dotenv") + "\n").encode())
        click.echo(SECRET_WARNING.format(what=str(env_file)), err=True)
    if mount_dir is not None:
        write_files(mount_dir, found.files, written)
        click.echo(SECRET_WARNING.format(what=str(mount_dir)), err=True)
    return written
