import struct

import pytest

from ktpy.net.socks5 import (
    AddressType,
    Close,
    FlowOpened,
    FlowOpenFailed,
    OpenFlow,
    ReplyCode,
    Send,
    Socks5Handshake,
    StartRelay,
    State,
    reply,
)
from tests.unit.playbook import Playbook

GREETING = b"\x05\x01\x00"
CHOSEN = Send(b"\x05\x00")
OK = Send(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")


def failure(code: ReplyCode) -> Send:
    return Send(bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]))


def connect_domain(name: bytes, port: int, command: int = 1) -> bytes:
    return bytes([5, command, 0, 3, len(name)]) + name + struct.pack("!H", port)


def connect_ipv4(address: bytes, port: int) -> bytes:
    return b"\x05\x01\x00\x01" + address + struct.pack("!H", port)


def test_connect_by_domain_name_is_resolved_on_the_far_side() -> None:
    machine = Socks5Handshake()
    target = OpenFlow("echo.ktbed.svc.cluster.local", 80, AddressType.DOMAIN)
    assert (
        Playbook(machine)
        >> GREETING
        << CHOSEN
        >> connect_domain(b"echo.ktbed.svc.cluster.local", 80)
        << target
        >> FlowOpened()
        << OK
        << StartRelay(b"")
    )
    assert machine.state is State.RELAYING
    assert machine.target == target


def test_connect_by_ipv4() -> None:
    assert (
        Playbook(Socks5Handshake())
        >> GREETING
        << CHOSEN
        >> connect_ipv4(b"\x0a\x60\x00\x0a", 8080)
        << OpenFlow("10.96.0.10", 8080, AddressType.IPV4)
        >> FlowOpened("10.244.0.7", 41000)
        << Send(b"\x05\x00\x00\x01\x0a\xf4\x00\x07" + struct.pack("!H", 41000))
        << StartRelay(b"")
    )


def test_connect_by_ipv6() -> None:
    address = bytes.fromhex("fd000000000000000000000000000001")
    assert (
        Playbook(Socks5Handshake())
        >> GREETING
        << CHOSEN
        >> b"\x05\x01\x00\x04" + address + b"\x01\xbb"
        << OpenFlow("fd00::1", 443, AddressType.IPV6)
        >> FlowOpened("fd00::2", 1)
        << Send(
            b"\x05\x00\x00\x04" + bytes.fromhex("fd000000000000000000000000000002") + b"\x00\x01"
        )
        << StartRelay(b"")
    )


def test_every_message_split_byte_by_byte() -> None:
    machine = Socks5Handshake()
    book = Playbook(machine)
    for byte in GREETING[:-1]:
        book = book >> bytes([byte])
    book = book >> GREETING[-1:] << CHOSEN
    request = connect_domain(b"web", 443)
    for byte in request[:-1]:
        book = book >> bytes([byte])
    assert book >> request[-1:] << OpenFlow("web", 443, AddressType.DOMAIN)


def test_greeting_and_request_in_one_read() -> None:
    assert (
        Playbook(Socks5Handshake())
        >> GREETING + connect_domain(b"web", 80)
        << CHOSEN
        << OpenFlow("web", 80, AddressType.DOMAIN)
    )


def test_data_sent_before_the_reply_is_relayed_first() -> None:
    assert (
        Playbook(Socks5Handshake())
        >> GREETING + connect_domain(b"web", 80) + b"GET / HTTP/1.1\r\n"
        << CHOSEN
        << OpenFlow("web", 80, AddressType.DOMAIN)
        >> b"Host: web\r\n\r\n"
        >> FlowOpened()
        << OK
        << StartRelay(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    )


def test_no_acceptable_method() -> None:
    machine = Socks5Handshake()
    assert (
        Playbook(machine)
        >> b"\x05\x01\x02"  # username/password only
        << Send(b"\x05\xff")
        << Close("client offers no method without authentication")
    )
    assert machine.state is State.CLOSED


def test_no_authentication_among_several_methods_is_chosen() -> None:
    assert Playbook(Socks5Handshake()) >> b"\x05\x03\x02\x01\x00" << CHOSEN


@pytest.mark.parametrize(
    ("first", "reason"),
    [(b"\x04\x01\x00\x50", "SOCKS4"), (b"GET / HTTP/1.1\r\n", "version 71")],
)
def test_bad_version_is_closed_without_a_reply(first: bytes, reason: str) -> None:
    assert Playbook(Socks5Handshake()) >> first << Close(f"not a SOCKS5 client ({reason})")


def test_bad_request_version() -> None:
    assert (
        Playbook(Socks5Handshake())
        >> GREETING
        << CHOSEN
        >> b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50"
        << failure(ReplyCode.GENERAL_FAILURE)
        << Close("request version 4")
    )


@pytest.mark.parametrize("command", [2, 3], ids=["BIND", "UDP ASSOCIATE"])
def test_unsupported_commands(command: int) -> None:
    assert (
        Playbook(Socks5Handshake())
        >> GREETING
        << CHOSEN
        >> connect_domain(b"web", 80, command=command)
        << failure(ReplyCode.COMMAND_NOT_SUPPORTED)
        << Close(f"command {command}")
    )


def test_unknown_address_type() -> None:
    assert (
        Playbook(Socks5Handshake())
        >> GREETING
        << CHOSEN
        >> b"\x05\x01\x00\x07"
        << failure(ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED)
        << Close("address type 7")
    )


@pytest.mark.parametrize("name", [b"", b"bad name", b"\xc3\xa9t\xc3\xa9", b"nul\x00"])
def test_bad_domain_names(name: bytes) -> None:
    assert (
        Playbook(Socks5Handshake())
        >> GREETING
        << CHOSEN
        >> connect_domain(name, 80)
        << failure(ReplyCode.HOST_UNREACHABLE)
        << Close("bad domain name")
    )


def test_port_zero() -> None:
    assert (
        Playbook(Socks5Handshake())
        >> GREETING
        << CHOSEN
        >> connect_ipv4(b"\x7f\x00\x00\x01", 0)
        << failure(ReplyCode.GENERAL_FAILURE)
        << Close("port 0")
    )


@pytest.mark.parametrize(
    "code",
    [ReplyCode.CONNECTION_REFUSED, ReplyCode.HOST_UNREACHABLE, ReplyCode.NETWORK_UNREACHABLE],
)
def test_failed_connection_replies_with_its_code(code: ReplyCode) -> None:
    machine = Socks5Handshake()
    assert (
        Playbook(machine)
        >> GREETING
        << CHOSEN
        >> connect_domain(b"web", 81)
        << OpenFlow("web", 81, AddressType.DOMAIN)
        >> FlowOpenFailed(code)
        << failure(code)
        << Close(f"connect to target failed: {code.name.lower()}")
    )
    assert machine.state is State.CLOSED


def test_misuse_is_an_error_not_a_silent_state_change() -> None:
    machine = Socks5Handshake()
    with pytest.raises(RuntimeError, match="expected state connecting"):
        machine.handle(FlowOpened())
    machine.receive(GREETING + connect_domain(b"web", 80))
    with pytest.raises(ValueError, match="failure code"):
        machine.handle(FlowOpenFailed(ReplyCode.SUCCEEDED))
    machine.handle(FlowOpened())
    with pytest.raises(RuntimeError, match="relaying"):
        machine.receive(b"more")


def test_the_playbook_itself_catches_a_wrong_script() -> None:
    with pytest.raises(AssertionError, match="emitted instead"):
        assert Playbook(Socks5Handshake()) >> GREETING << Send(b"\x05\xff")
    with pytest.raises(AssertionError, match="left over"):
        assert Playbook(Socks5Handshake()) >> GREETING
    with pytest.raises(AssertionError, match="nothing was emitted"):
        assert Playbook(Socks5Handshake()) >> b"\x05" << CHOSEN


def test_reply_encoding() -> None:
    assert (
        reply(ReplyCode.SUCCEEDED, "127.0.0.1", 1080) == b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38"
    )
