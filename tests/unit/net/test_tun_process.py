"""How a SOCKS5 refusal becomes the error the TUN stack answers the kernel client with."""

from __future__ import annotations

import errno

import pytest
import socks

from ktpy.net.socks5 import AddressType, OpenFlow, ReplyCode, Send, Socks5Handshake
from ktpy.net.tcp import OpenFailure
from ktpy.net.tun_process import _reply_code, error_for_reply, socks_connect_request
from ktpy.net.tun_tcp import open_failure_for


@pytest.mark.parametrize(
    ("code", "failure"),
    [
        (ReplyCode.CONNECTION_REFUSED, OpenFailure.REFUSED),
        (ReplyCode.NETWORK_UNREACHABLE, OpenFailure.NET_UNREACHABLE),
        (ReplyCode.HOST_UNREACHABLE, OpenFailure.HOST_UNREACHABLE),
        (ReplyCode.TTL_EXPIRED, OpenFailure.HOST_UNREACHABLE),
        (ReplyCode.GENERAL_FAILURE, OpenFailure.FAILED),
        (ReplyCode.NOT_ALLOWED, OpenFailure.FAILED),
    ],
)
def test_each_reply_reaches_the_client_as_the_matching_failure(
    code: ReplyCode, failure: OpenFailure
) -> None:
    error = error_for_reply(code, "10.96.0.1:80")
    assert open_failure_for(error) is failure
    assert "10.96.0.1:80" in str(error)


def test_the_reply_code_is_read_from_pysocks_wording() -> None:
    # pysocks raises SOCKS5Error("0x05: Connection refused"), as its source words it.
    assert _reply_code(socks.SOCKS5Error("0x05: Connection refused")) == 5
    assert _reply_code(socks.SOCKS5Error("0x04: Host unreachable")) == 4
    assert _reply_code(socks.SOCKS5Error("something else")) == ReplyCode.GENERAL_FAILURE


def test_an_unknown_reply_is_a_general_failure() -> None:
    assert error_for_reply(0x42, "x:1").errno == errno.ECONNABORTED


def test_the_childs_request_is_greeting_and_connect_in_one_piece() -> None:
    handshake = Socks5Handshake()
    actions = handshake.receive(socks_connect_request("10.96.0.10", 53))
    assert actions == [Send(b"\x05\x00"), OpenFlow("10.96.0.10", 53, AddressType.IPV4)]
