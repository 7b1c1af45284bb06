"""Run a command inside a bed laptop, a machine of its own: its network, mount, PID
and UTS namespaces (``hostnet.laptop_command`` builds the argv).

Entering a PID namespace takes a fork (only children land in it), and
``nsenter --pid`` then forwards no signal: a test that signalled it would
stop nsenter and leave the command running. So this runner stays outside as
the command's parent and forwards every signal a test sends (INT, TERM, HUP,
QUIT, USR1, USR2) to the command itself, and the command gets
``PR_SET_PDEATHSIG=SIGKILL``: a ``kill -9`` of the runner is a ``kill -9`` of
the command. The runner ends as the command did (same exit code, or killed
by the same signal). With ``init`` instead of a command it is the laptop's
pid 1, which reaps orphans.

Run as a script with ``python -I -S``: nothing but the standard library, and
nothing of the caller's environment changes how it runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
PR_SET_PDEATHSIG = 1
# Entered in this order, the mount namespace last (it changes what paths mean; every
# namespace file is opened before the first setns anyway).
NAMESPACES = (("--uts", CLONE_NEWUTS), ("--net", CLONE_NEWNET), ("--pid", CLONE_NEWPID))
NAMESPACES += (("--mount", CLONE_NEWNS),)
FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)

libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, kind: int) -> None:
    if libc.setns(fd, kind) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _init() -> None:
    """Pid 1 of a laptop: reap every orphan that is handed to it, for ever."""
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(0.5)


def _exec(cmd: list[str]) -> None:
    # Python ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored across exec.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(cmd[0], cmd)  # noqa: S606 - an argv, no shell
    except OSError as exc:
        print(f"laptop_exec: {cmd[0]}: {exc.strerror}", file=sys.stderr)
        os._exit(127)


def _end_as(status: int) -> None:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # these two take no handler
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    sys.exit(os.waitstatus_to_exitcode(status))


def main(argv: list[str]) -> None:
    sep = argv.index("--")
    options, cmd = argv[:sep], argv[sep + 1 :]
    given = dict(zip(options[0::2], options[1::2], strict=True))
    cwd = os.getcwd()  # noqa: PTH109 - the standard library only, kept plain
    opened = [
        (os.open(given[o], os.O_RDONLY | os.O_CLOEXEC), k) for o, k in NAMESPACES if o in given
    ]
    for fd, kind in opened:
        _setns(fd, kind)
        os.close(fd)
    try:
        os.chdir(cwd)  # entering a mount namespace moves to its root
    except OSError:
        os.chdir("/")
    if cmd == ["init"]:
        _init()
    if "--pid" not in given:
        _exec(cmd)
    # Blocked until the handlers are in place, so no signal is lost around the fork.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    child = os.fork()
    if child == 0:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != 0:  # the runner (outside this PID namespace) already died
            os._exit(137)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        _exec(cmd)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):  # ended: waitpid returns at once
            os.kill(child, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    _, status = os.waitpid(child, 0)  # retried after each forwarded signal (PEP 475)
    _end_as(status)


if __name__ == "__main__":
    main(sys.argv[1:])
