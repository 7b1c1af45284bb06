"""Become the pod's container process: chroot into the rootfs, take the
pod's uid, gid and fsGroup, drop every capability, set no_new_privs, and
exec the image's entrypoint with exactly the given environment.

Run as root by the pod launcher (_pod.py), as PID 1 of the pod's PID
namespace. It does what a runtime does from outside the image, so the
image needs no tool of its own for it (the image ships no setpriv or env).

    python _become.py ROOT UID GID WORKDIR [NAME=VALUE ...] -- ARGV...
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def main(argv: list[str]) -> None:
    sep = argv.index("--")
    (root, uid, gid, workdir, *assignments), command = argv[:sep], argv[sep + 1 :]
    env = dict(a.split("=", 1) for a in assignments)
    libc = ctypes.CDLL(None, use_errno=True)
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    os.chroot(root)
    os.chdir(workdir)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    for cap in range(last_cap + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop cap {cap}")
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "ambient caps")
    os.setgroups([int(gid)])  # the fsGroup as supplementary group
    os.setresgid(int(gid), int(gid), int(gid))
    os.setresuid(int(uid), int(uid), int(uid))
    # Inheritable caps survive a uid change: clear them with the rest.
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc.capset(ctypes.byref(header), data), "capset")
    os.execve(command[0], command, env)  # noqa: S606  (the image's entrypoint, as a runtime runs it)


if __name__ == "__main__":
    main(sys.argv[1:])
