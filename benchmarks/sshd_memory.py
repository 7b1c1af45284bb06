"""What an open direct-tcpip channel costs OpenSSH's sshd, and what it keeps once
the channels close, with glibc's malloc as it is and with a fixed mmap threshold
(``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=32768``). The shadow image's sshd
is Debian 12's, as is this machine's: a local A/B of the setting without
building an image. Loopback only, bounded; run as root:

    sudo .venv/bin/python -m benchmarks.sshd_memory [--channels 1000]

Starts a private sshd on 127.0.0.1 (its own config, host key and authorized
key in a temporary directory; root may log in with that key only), a target
on 127.0.0.1 that answers each connection once and keeps it, and opens the
channels with paramiko (ktpy's window and packet size), one request and answer
each. Prints the sshd session process's RSS and heap (smaps) idle, with all the
channels held, and after they closed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko

from ktpy.tunnel.ssh import MAX_PACKET, WINDOW_SIZE

TUNED = "glibc.malloc.mmap_threshold=32768"
ANSWER = b"x" * 100


def _target() -> int:
    """A loopback server answering one line per connection, keeping each open."""
    server = socket.create_server(("127.0.0.1", 0), backlog=2048)
    kept: list[socket.socket] = []

    def answer(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(ANSWER)

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            kept.append(conn)
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    port: int = server.getsockname()[1]
    return port


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def _sshd(workdir: Path, tunables: str | None) -> Iterator[tuple[int, int]]:
    """A private sshd; yields (its pid, its port)."""
    for name in ("host", "client"):
        key = workdir / name
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True)  # fmt: skip
    port = _free_port()
    (workdir / "config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {workdir}/host\n"
        f"AuthorizedKeysFile {workdir}/client.pub\nPermitRootLogin prohibit-password\n"
        f"UsePAM no\nStrictModes no\nAllowTcpForwarding yes\nPidFile {workdir}/sshd.pid\n"
        "Ciphers aes128-gcm@openssh.com\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(workdir / "config")],
                            env=env, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the private sshd did not start")
            time.sleep(0.05)
        yield proc.pid, port
    finally:
        proc.terminate()
        proc.wait(10)


def _session_process(listener: int) -> int:
    """The deepest process under the listener: listener -> monitor -> session."""
    pid = listener
    while True:
        found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        if not found.stdout.split():
            return pid
        pid = int(found.stdout.split()[0])


def _memory(pid: int) -> tuple[int, int]:
    """VmRSS and the heap's resident part, KiB."""
    rss = int(re.findall(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[0])
    heap, in_heap = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
            in_heap = line.endswith("[heap]")
        elif in_heap and line.startswith("Rss:"):
            heap = int(line.split()[1])
    return rss, heap


def run(channels: int, tunables: str | None) -> dict[str, tuple[int, int]]:
    target = _target()
    out: dict[str, tuple[int, int]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="ktpy-sshd-") as tmp,
        _sshd(Path(tmp), tunables) as (
            listener,
            port,
        ),
    ):
        transport = paramiko.Transport(("127.0.0.1", port), default_window_size=WINDOW_SIZE,
                                       default_max_packet_size=MAX_PACKET)  # fmt: skip
        try:
            key = paramiko.Ed25519Key.from_private_key_file(str(Path(tmp) / "client"))
            transport.connect(username="root", pkey=key)
            time.sleep(0.3)
            session = _session_process(listener)
            out["idle"] = _memory(session)
            held = []
            for i in range(channels):
                chan = transport.open_channel("direct-tcpip", ("127.0.0.1", target),
                                              ("127.0.0.1", 40000 + i % 20000))  # fmt: skip
                chan.settimeout(10)
                chan.sendall(b"GET\n")
                got = b""
                while len(got) < len(ANSWER):
                    got += chan.recv(len(ANSWER))
                held.append(chan)
            time.sleep(0.5)
            out["held"] = _memory(session)
            for chan in held:
                chan.close()
            time.sleep(2)  # sshd closes its side once our close arrives
            out["closed"] = _memory(session)
        finally:
            transport.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sshd_memory", description=__doc__)
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2, help="A/B pairs, alternated")
    args = parser.parse_args(argv)
    for _ in range(args.rounds):
        for label, tunables in (("stock", None), (TUNED, TUNED)):
            result = run(args.channels, tunables)
            print(f"{label}: " + ", ".join(f"{moment} VmRSS {rss} KiB heap {heap} KiB"
                                           for moment, (rss, heap) in result.items()))  # fmt: skip


if __name__ == "__main__":
    main()
