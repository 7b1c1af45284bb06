import errno
import threading
from collections.abc import Iterator

import pytest

from ktpy.net.forwarding import open_with_retries
from ktpy.net.relay import FlowOpener


class FakeFlow:
    def __init__(self) -> None:
        self.closed = threading.Event()
        self.sent: list[bytes] = []

    def recv(self, size: int, /) -> bytes:
        self.closed.wait(5)
        return b""

    def sendall(self, data: bytes, /) -> None:
        self.sent.append(data)

    def shutdown_write(self) -> None:
        pass

    def close(self) -> None:
        self.closed.set()


def scripted(*outcomes: OSError | FakeFlow) -> tuple[list[tuple[str, int]], FlowOpener]:
    calls: list[tuple[str, int]] = []
    queue: Iterator[OSError | FakeFlow] = iter(outcomes)

    def open_flow(host: str, port: int) -> FakeFlow:
        calls.append((host, port))
        outcome = next(queue)
        if isinstance(outcome, OSError):
            raise outcome
        return outcome

    return calls, open_flow


class TestOpenWithRetries:
    @pytest.mark.parametrize(
        "code", [errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.ECONNABORTED]
    )
    def test_a_passing_failure_is_tried_again(self, code: int) -> None:
        flow = FakeFlow()
        calls, open_flow = scripted(OSError(code, "x"), flow)
        sleeps: list[float] = []
        got = open_with_retries(open_flow, "10.96.0.20", 80, sleep=sleeps.append)
        assert got is flow
        assert calls == [("10.96.0.20", 80)] * 2
        assert sleeps == [0.2]

    def test_gives_up_after_the_last_attempt_with_its_error(self) -> None:
        last = ConnectionRefusedError(errno.ECONNREFUSED, "fourth")
        calls, open_flow = scripted(
            OSError(errno.ETIMEDOUT, "first"),
            OSError(errno.EHOSTUNREACH, "second"),
            OSError(errno.ECONNABORTED, "third"),
            last,
        )
        with pytest.raises(ConnectionRefusedError) as err:
            open_with_retries(open_flow, "h", 1, sleep=lambda _: None)
        assert err.value is last
        assert len(calls) == 4

    def test_a_lasting_failure_is_not_retried(self) -> None:
        calls, open_flow = scripted(PermissionError(errno.EACCES, "prohibited"))
        with pytest.raises(PermissionError):
            open_with_retries(open_flow, "h", 1, sleep=lambda _: None)
        calls2, open_flow2 = scripted(ConnectionError("the tunnel to the shadow pod is down"))
        with pytest.raises(ConnectionError):
            open_with_retries(open_flow2, "h", 1, sleep=lambda _: None)
        assert len(calls) == len(calls2) == 1
