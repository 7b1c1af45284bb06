import socket
import threading

from ktpy.net.relay import CHUNK, SocketFlow, relay


class ScriptedChannel:
    """A channel-like flow: hands out its script, one item per read, and records
    the size each read asked for."""

    def __init__(self, *chunks: bytes) -> None:
        self.script = list(chunks)
        self.asked: list[int] = []
        self.received = bytearray()
        self.write_closed = False

    def recv(self, size: int, /) -> bytes:
        self.asked.append(size)
        return self.script.pop(0) if self.script else b""

    def sendall(self, data: bytes, /) -> None:
        self.received += data

    def shutdown_write(self) -> None:
        self.write_closed = True

    def close(self) -> None:
        pass


def test_a_channel_is_read_whole_and_a_socket_in_chunks() -> None:
    # paramiko moves what a partial read leaves behind on every read: a channel
    # is asked for more than its window holds; a socket's read allocates what is
    # asked, so it is asked for a chunk.
    ours, theirs = socket.socketpair()
    channel = ScriptedChannel(b"a" * (4 << 20), b"b")
    relaying = threading.Thread(target=relay, args=(SocketFlow(ours), channel))
    relaying.start()
    theirs.sendall(b"up" * CHUNK)
    theirs.shutdown(socket.SHUT_WR)
    got = bytearray()
    while data := theirs.recv(1 << 20):
        got.extend(data)
    relaying.join(10)
    theirs.close()
    assert not relaying.is_alive()
    assert bytes(got) == b"a" * (4 << 20) + b"b"
    assert bytes(channel.received) == b"up" * CHUNK
    assert min(channel.asked) > 4 << 20
    assert channel.write_closed
