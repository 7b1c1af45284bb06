"""ktpy's own port-forward client without SSH, as a local listener: a baseline of the
suite (the hop under ktpy's tunnel). Each connection to 127.0.0.1:LISTEN is a new
port-forward stream to the pod's port, relayed by ktpy's ForwardServer, as
kubectl port-forward relays each connection over a stream of its own.

    python -m benchmarks.raw_forward NAMESPACE POD PORT --listen 18101

Prints "listening" once it listens, serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

from ktpy.cluster.api import KubernetesApi
from ktpy.logs import configure
from ktpy.net.forwarding import ForwardServer
from ktpy.net.relay import Flow
from ktpy.tunnel import portforward


class StreamFlow:
    """A port-forward stream as a relay Flow. The port-forward protocol has no
    half-close: the end of the client's side is left to the closing of both."""

    def __init__(self, stream: portforward.Stream) -> None:
        # The WebSocket's timeout would end an idle relay (a recv timing out reads as
        # the end of the stream there); paramiko, ktpy's own user, handles its own.
        stream.settimeout(None)
        self.stream = stream

    def recv(self, size: int, /) -> bytes:
        return self.stream.recv(size)

    def sendall(self, data: bytes, /) -> None:
        self.stream.sendall(data)

    def shutdown_write(self) -> None:
        pass

    def close(self) -> None:
        self.stream.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("namespace")
    parser.add_argument("pod")
    parser.add_argument("port", type=int)
    parser.add_argument("--listen", type=int, default=18101)
    args = parser.parse_args()
    # Logs to stderr (the suite's log file), at INFO: unconfigured, structlog prints
    # every API call's debug line to stdout, which nobody reads after "listening",
    # and once that pipe is full every relay thread blocks in a log call.
    configure()
    api = KubernetesApi.from_kubeconfig([os.environ["KUBECONFIG"]])
    target = portforward.Target(args.namespace, args.pod, args.port)

    def open_flow(_host: str, _port: int) -> Flow:
        return StreamFlow(portforward.open_stream(api.open_websocket, target))

    server = ForwardServer(open_flow, args.pod, args.port, listen_port=args.listen).start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print("listening", flush=True)
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
