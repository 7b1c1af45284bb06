"""Giving up root for good: the parts of ktpy that parse what the network sends run
as the invoking user (``nobody`` for plain root), never as root."""

from __future__ import annotations

import errno
import os
import stat
import sysconfig
from collections.abc import Callable, MutableMapping
from pathlib import Path


def drop_privileges(
    uid: int,
    gid: int,
    *,
    environ: MutableMapping[str, str] | None = None,
    home: str | None = None,
    user: str | None = None,
) -> None:
    """Become uid:gid for good: no supplementary groups, no way back. With ``environ``,
    HOME, USER and LOGNAME follow (what sudo left are root's), so that what runs from
    here on (an exec credential plugin) finds that user's files."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise OSError(errno.EPERM, f"could not become uid {uid}")
    if environ is not None:
        for name, value in (("HOME", home), ("USER", user), ("LOGNAME", user)):
            if value is not None:
                environ[name] = value


def readable_by(
    path: Path, uid: int, gid: int, *, stat_of: Callable[[Path], os.stat_result] = Path.stat
) -> bool:
    """Whether uid:gid (no supplementary groups) may read path: judged by the permission
    bits of path (read, and search for a directory) and of every directory above it
    (search), as the kernel would judge that user."""

    def allowed(info: os.stat_result, bits: int) -> bool:
        if info.st_uid == uid:
            shift = 6
        elif info.st_gid == gid:
            shift = 3
        else:
            shift = 0
        return (info.st_mode >> shift) & bits == bits

    try:
        info = stat_of(path)
        if not allowed(info, 0o5 if stat.S_ISDIR(info.st_mode) else 0o4):
            return False
        return all(allowed(stat_of(parent), 0o1) for parent in path.parents)
    except OSError:
        return False


def interpreter_paths() -> list[Path]:
    """What this process still imports from once it has given root up: the standard
    library and the installed packages, ktpy among them."""
    names = ("stdlib", "platstdlib", "purelib", "platlib")
    found = [Path(sysconfig.get_path(name)) for name in names]
    found.append(Path(__file__).resolve().parent)
    return list(dict.fromkeys(found))
