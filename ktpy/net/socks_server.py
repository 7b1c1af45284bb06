"""The SOCKS5 proxy's I/O: a loopback listener driving the pure handshake.

Each accepted client gets a thread: it feeds the client's bytes to
Socks5Handshake, opens the flow the handshake asks for with the injected
`open_flow` (an SSH direct-tcpip channel, wired by the command), answers, and
relays. The server does not know SSH: it only calls open_flow.
"""

from __future__ import annotations

import contextlib
import errno
import socket

from ktpy.logs import get_logger
from ktpy.net.listener import ThreadedListener
from ktpy.net.relay import Flow, FlowOpener, SocketFlow, relay
from ktpy.net.socks5 import (
    Close,
    FlowOpened,
    FlowOpenFailed,
    OpenFlow,
    ReplyCode,
    Send,
    Socks5Handshake,
    SocksAction,
    StartRelay,
)

log = get_logger(__name__)

HANDSHAKE_TIMEOUT = 10.0


def reply_code_for(exc: OSError) -> ReplyCode:
    """The SOCKS5 reply for a flow that could not be opened."""
    if isinstance(exc, ConnectionRefusedError):
        return ReplyCode.CONNECTION_REFUSED
    if isinstance(exc, PermissionError):
        return ReplyCode.NOT_ALLOWED
    if exc.errno == errno.ENETUNREACH:
        return ReplyCode.NETWORK_UNREACHABLE
    if exc.errno in (errno.EHOSTUNREACH, errno.ETIMEDOUT):
        return ReplyCode.HOST_UNREACHABLE
    return ReplyCode.GENERAL_FAILURE


class SocksServer(ThreadedListener):
    def __init__(
        self,
        open_flow: FlowOpener,
        host: str = "127.0.0.1",
        port: int = 2223,
        *,
        listener: socket.socket | None = None,
    ) -> None:
        super().__init__(host, port, "socks", listener=listener)
        self.open_flow = open_flow

    def serve(self, client: socket.socket, conn: int) -> None:
        clog = log.bind(conn=conn)
        handshake = Socks5Handshake()
        client.settimeout(HANDSHAKE_TIMEOUT)
        try:
            while True:
                data = client.recv(4096)
                if not data:
                    client.close()
                    return
                if self._carry_out(client, handshake, handshake.receive(data)):
                    return
        except OSError as exc:
            clog.debug("socks client gone", reason=str(exc))
            with contextlib.suppress(OSError):
                client.close()

    def _carry_out(
        self, client: socket.socket, handshake: Socks5Handshake, actions: list[SocksAction]
    ) -> bool:
        """Carry out actions; True once the connection is handed off or closed.

        What is to be sent waits until the end of the actions or a close or relay, not
        for an open: an OpenFlow among these actions means the client sent its request
        without waiting for the greeting's answer (ktpy's TUN child does), so both
        answers go in one write and wake the client once."""
        queue: list[SocksAction] = list(actions)
        flow: Flow | None = None
        pending = b""
        while queue:
            action = queue.pop(0)
            if isinstance(action, Send):
                pending += action.data
                continue
            if pending and not isinstance(action, OpenFlow):
                client.sendall(pending)
                pending = b""
            if isinstance(action, Close):
                client.close()
                return True
            elif isinstance(action, OpenFlow):
                try:
                    flow = self.open_flow(action.host, action.port)
                except OSError as exc:
                    log.info(
                        "socks target failed",
                        target=f"{action.host}:{action.port}",
                        reason=str(exc),
                    )
                    failed = FlowOpenFailed(reply_code_for(exc))
                    queue = list(handshake.handle(failed)) + queue
                    continue
                queue = list(handshake.handle(FlowOpened())) + queue
            elif isinstance(action, StartRelay):
                assert flow is not None, "the handshake relays only after a flow opened"
                client.settimeout(None)
                if action.early_data:
                    flow.sendall(action.early_data)
                relay(SocketFlow(client), flow, name="socks")
                return True
        if pending:
            client.sendall(pending)
        return False
