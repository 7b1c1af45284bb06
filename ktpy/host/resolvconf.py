"""/etc/resolv.conf: ktpy's marked edit, its exact undo, and the in-place write.

The text functions are pure and work on bytes, so the file comes back byte for
byte (a resolv.conf need not be UTF-8, and its last line need not end in a
newline). ktpy's lines sit between two markers naming the session::

    # ktpy session ab12cd34 begin (removed on exit or by 'sudo ktpy clean --local')
    nameserver 169.254.0.1
    # ktpy session ab12cd34 end

at the top of the file, so ktpy's DNS server is the first nameserver and the
original ones follow unchanged. No ``search`` or ``options`` line is added:
ktpy's DNS server answers single-label names itself and forwards every other
name to the original nameservers, so nothing sends non-cluster names to the
cluster first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

RESOLV_CONF = Path("/etc/resolv.conf")

_MARKER = re.compile(rb"^#\s*ktpy session (?P<session>\S+) (?P<edge>begin|end)\b")


def begin_marker(session: str) -> bytes:
    return (
        f"# ktpy session {session} begin (removed on exit or by 'sudo ktpy clean --local')"
    ).encode()


def end_marker(session: str) -> bytes:
    return f"# ktpy session {session} end".encode()


def _marker(line: bytes) -> tuple[str, str] | None:
    found = _MARKER.match(line.strip())
    if found is None:
        return None
    return found["session"].decode("ascii", "replace"), found["edge"].decode()


def with_nameservers(original: bytes, session: str, servers: Sequence[str]) -> bytes:
    """``original`` with ktpy's marked block of nameservers in front of everything."""
    if not servers:
        raise ValueError("at least one nameserver is needed")
    lines = [begin_marker(session)]
    lines += [f"nameserver {server}".encode() for server in servers]
    lines.append(end_marker(session))
    return b"\n".join(lines) + b"\n" + original


def _ktpy_line_numbers(lines: Sequence[bytes], session: str | None) -> set[int]:
    """Indexes of lines inside ktpy blocks (of ``session``, or of any session if None),
    markers included. A begin without its end covers only itself and the nameserver
    lines right after it: a user who deleted an end marker keeps the rest of the file."""
    marked: set[int] = set()
    index = 0
    while index < len(lines):
        found = _marker(lines[index])
        if found is None or found[1] != "begin" or session not in (None, found[0]):
            if found is not None and session in (None, found[0]):
                marked.add(index)  # a stray end marker of ours
            index += 1
            continue
        end = next(
            (
                later
                for later in range(index + 1, len(lines))
                if _marker(lines[later]) == (found[0], "end")
            ),
            None,
        )
        if end is not None:
            marked.update(range(index, end + 1))
            index = end + 1
            continue
        marked.add(index)
        index += 1
        while index < len(lines) and lines[index].split()[:1] == [b"nameserver"]:
            marked.add(index)
            index += 1
    return marked


def without_session(text: bytes, session: str) -> bytes | None:
    """``text`` without the lines of ``session``'s block, or None if it has none."""
    lines = text.splitlines(keepends=True)
    marked = _ktpy_line_numbers(lines, session)
    if not marked:
        return None
    return b"".join(line for number, line in enumerate(lines) if number not in marked)


def repaired(current: bytes, session: str, servers: Sequence[str]) -> bytes | None:
    """What the file must become for ``session``'s block to be in effect again, or None
    if it is: the block first and whole. Another program (a DHCP client, NetworkManager,
    a VPN) that rewrote the file keeps its lines; ktpy's block goes back in front."""
    base = without_session(current, session)
    if base is None:
        base = current
    wanted = with_nameservers(base, session, servers)
    return None if wanted == current else wanted


def sessions_in(text: bytes) -> list[str]:
    """Sessions that have a block in ``text`` (a crashed one not yet cleaned, say)."""
    found: list[str] = []
    for line in text.splitlines():
        marker = _marker(line)
        if marker is not None and marker[1] == "begin" and marker[0] not in found:
            found.append(marker[0])
    return found


def nameservers(text: bytes) -> list[str]:
    """The nameserver addresses of ``text``, in order, leaving out every ktpy block: these
    are the laptop's own resolvers, which ktpy's DNS server forwards other names to."""
    lines = text.splitlines()
    ours = _ktpy_line_numbers(lines, None)
    servers: list[str] = []
    for number, line in enumerate(lines):
        words = line.split()
        if number in ours or len(words) < 2 or words[0] != b"nameserver":
            continue
        servers.append(words[1].decode("ascii", "replace"))
    return servers


def search_domains(text: bytes) -> list[str]:
    """The search list of ``text``: the last ``search`` or ``domain`` line wins, as in
    glibc. ktpy's DNS server leaves names under these to the laptop (the stub made
    them), even when their last label is a namespace."""
    found: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] in ([b"search"], [b"domain"]):
            found = [word.decode("ascii", "replace") for word in words[1:]]
    return [domain for domain in found if domain.strip(".")]


def rotates(text: bytes) -> bool:
    """``options rotate`` spreads queries over all nameservers, so cluster names would
    sometimes go to the original ones: worth a warning."""
    return any(
        words[:1] == [b"options"] and b"rotate" in words[1:]
        for words in (line.split() for line in text.splitlines())
    )


@dataclass(frozen=True)
class Restore:
    """What undoing ktpy's edit means for the file as it is now."""

    content: bytes | None  # write this, or None: leave the file alone
    note: str | None  # say this to the user, or None


def restore(current: bytes, original: bytes, written: bytes, session: str) -> Restore:
    if current == written:
        return Restore(original, None)
    if current == original:
        return Restore(None, None)  # never changed, or already put back
    if len(written) > len(original) and current == original + written[len(original) :]:
        # A restore killed between writing the original and cutting the file to length.
        return Restore(original, None)
    pruned = without_session(current, session)
    if pruned is not None:
        return Restore(
            pruned,
            "it was edited while ktpy ran: removed only ktpy's marked lines, kept the rest",
        )
    return Restore(None, "it no longer holds ktpy's lines (replaced since); left as it is")


def write_in_place(path: Path, data: bytes) -> None:
    """Overwrite ``path`` keeping its inode: /etc/resolv.conf may be a bind mount (rename
    over it fails with EBUSY) or a symlink another tool owns (rename would replace the
    link by a file). The new bytes go first, then the file is cut to length, so a reader
    never sees an empty file; a cut interrupted by kill -9 is recognised by ``restore``."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)
