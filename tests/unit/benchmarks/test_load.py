"""The suite's load tool and its accounting, without a bed: what a scenario
reports moving is what it moved, and the suite flags anything short of it."""

from __future__ import annotations

import socket
import threading

import pytest

from benchmarks import load, suite


def test_split_gives_every_part_and_nothing_more() -> None:
    assert load._split(100, 8) == [13, 13, 13, 13, 12, 12, 12, 12]
    assert sum(load._split(2 << 20, 8)) == 2 << 20
    assert load._split(3, 4) == [1, 1, 1, 0]


def _serve(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.close()


def test_responses_on_one_connection_are_read_whole_and_in_turn() -> None:
    ours, theirs = socket.socketpair()
    big = b"x" * 200_000
    wire = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(big)).encode() + b"\r\n\r\n" + big
        + b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{"bytes": 7}'
    )  # fmt: skip
    threading.Thread(target=_serve, args=(theirs, wire)).start()
    response = load.Response(ours)
    assert response.read()[1] == 3
    assert response.body == b"ok\n"
    assert response.read()[1] == len(big)
    assert response.read()[1] == 12
    assert response.body == b'{"bytes": 7}'
    ours.close()


def test_a_response_cut_short_is_an_error_not_a_smaller_figure() -> None:
    ours, theirs = socket.socketpair()
    threading.Thread(
        target=_serve, args=(theirs, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nabc")
    ).start()
    with pytest.raises(OSError, match="closed after"):
        load.Response(ours).read()
    ours.close()


def _results(**runs: list[dict[str, object]]) -> dict[str, object]:
    return {"runs": runs, "hold": {}, "dns": {}}


def test_the_suite_flags_what_moved_less_than_asked() -> None:
    good = {"bytes": 10, "asked": 10}
    short = {"bytes": 9, "asked": 10}
    assert suite.checks(_results(bulk_down_1={"direct": [good]})) == []
    assert suite.checks(_results(bulk_down_1={"direct": [good, short]})) == [
        "bulk_down_1 direct: 9 of 10"
    ]


def test_failed_new_connections_count_as_accounted_for() -> None:
    churn = {"connections": 18, "failed": 2, "asked": 20}
    lost = {"connections": 18, "failed": 0, "asked": 20}
    assert suite.checks(_results(churn={"kubectl_websocket": [churn]})) == []
    assert suite.checks(_results(churn={"kubectl_websocket": [lost]})) != []
