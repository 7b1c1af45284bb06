"""IPv4/TCP/ICMP headers and checksums (ktpy.net.ip), checked against a plain
word-by-word reference and published examples."""

from __future__ import annotations

import random
import struct

import pytest

from ktpy.net import ip
from ktpy.net.ip import ACK, FIN, PSH, SYN, PacketError

SRC = ip.ip_bytes("198.18.0.1")
DST = ip.ip_bytes("10.96.0.10")


def reference_checksum(data: bytes) -> int:
    """RFC 1071, the slow obvious way."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def same_checksum(a: int, b: int) -> bool:
    # 0x0000 and 0xFFFF are the two one's complement zeros.
    return a == b or {a, b} == {0, 0xFFFF}


def test_rfc_1071_example() -> None:
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ip.checksum(data) == 0x220D == reference_checksum(data)


def test_a_published_ipv4_header_checksum() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert ip.checksum(header) == 0xB861


@pytest.mark.parametrize(
    "length",
    [0, 1, 2, 3, 19, 20, 1459, 1460, 16383, 16384, 16385, 32769, 64959, 64960, 65515],
)
def test_checksum_matches_the_reference(length: int) -> None:
    rng = random.Random(length)
    data = rng.randbytes(length)
    assert same_checksum(ip.checksum(data), reference_checksum(data))


@pytest.mark.parametrize("fill", [0x00, 0xFF])
def test_checksum_of_uniform_data(fill: int) -> None:
    data = bytes([fill]) * 40000
    assert same_checksum(ip.checksum(data), reference_checksum(data))


def test_sums_of_parts_add_up() -> None:
    rng = random.Random(7)
    a, b = rng.randbytes(1000), rng.randbytes(777)
    total = ip.ones_sum(a) + ip.ones_sum(b)
    assert ip.finish_checksum(total) == ip.checksum(a + b)


def _reference_tcp_checksum(packet: bytes) -> int:
    ihl = (packet[0] & 0x0F) * 4
    segment = bytearray(packet[ihl:])
    segment[16:18] = b"\0\0"
    pseudo = packet[12:20] + bytes([0, ip.PROTO_TCP]) + len(segment).to_bytes(2, "big")
    return reference_checksum(pseudo + bytes(segment))


@pytest.mark.parametrize("size", [0, 1, 100, 1460, 9000, 64960])
def test_built_packets_carry_correct_checksums(size: int) -> None:
    payload = random.Random(size).randbytes(size)
    packet = ip.build_tcp(SRC, DST, 80, 40000, 123, 456, ACK | PSH, 1000, payload)
    assert reference_checksum(packet[:20]) == 0
    wire = int.from_bytes(packet[36:38], "big")
    assert same_checksum(wire, _reference_tcp_checksum(packet))


def test_a_flows_header_builder_makes_the_same_packet() -> None:
    payload = b"retransmitted" * 100
    fresh = ip.build_tcp(SRC, DST, 1, 2, 3, 4, ACK, 5, payload)
    again = ip.TcpHeaders(SRC, DST, 1, 2).packet(3, 4, ACK, 5, payload)
    assert fresh == again


def test_build_and_parse_round_trip() -> None:
    options = ip.encode_options(mss=1460, wscale=7, sack_permitted=True)
    packet = ip.build_tcp(SRC, DST, 40000, 80, 0xFFFFFFFF, 1, SYN, 29200, b"", options, ident=9)
    pkt = ip.parse_ipv4(packet)
    assert (pkt.src, pkt.dst, pkt.proto, pkt.ttl, pkt.ident) == (SRC, DST, 6, 64, 9)
    seg = ip.parse_tcp(pkt)
    assert (seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.window) == (
        40000,
        80,
        0xFFFFFFFF,
        1,
        SYN,
        29200,
    )
    assert seg.options == ip.TcpOptions(mss=1460, wscale=7, sack_permitted=True)
    assert seg.payload == b""


def test_sack_blocks_round_trip() -> None:
    blocks = ((1, 2), (0xFFFFFFF0, 5))
    options = ip.encode_options(sack=blocks)
    assert len(options) % 4 == 0
    packet = ip.build_tcp(SRC, DST, 1, 2, 3, 4, ACK, 5, b"", options)
    assert ip.parse_tcp_packet(packet).options.sack == blocks


def test_unpadded_options_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of four"):
        ip.build_tcp(SRC, DST, 1, 2, 3, 4, ACK, 5, b"", b"\x01")


def _with_raw_options(raw: bytes) -> ip.TcpSegment:
    return ip.parse_tcp_packet(ip.build_tcp(SRC, DST, 1, 2, 3, 4, SYN, 5, b"", raw))


def test_timestamps_are_parsed() -> None:
    raw = bytes([1, 1, 8, 10]) + struct.pack("!II", 7, 9)
    assert _with_raw_options(raw).options.timestamp == (7, 9)


@pytest.mark.parametrize(
    "raw",
    [
        bytes([2, 4, 5, 0xB4, 3, 0, 0, 0]),  # option length 0
        bytes([2, 4, 5, 0xB4, 3, 9, 7, 1]),  # runs past the header
        bytes([2, 4, 5, 0xB4, 1, 1, 1, 3]),  # no room for the length byte
        bytes([2, 4, 5, 0xB4, 0, 3, 3, 7]),  # end of options: the rest is padding
    ],
    ids=["zero length", "overrun", "truncated", "end"],
)
def test_a_malformed_option_ends_parsing_like_linux(raw: bytes) -> None:
    options = _with_raw_options(raw).options
    assert options.mss == 1460
    assert options.wscale is None


def test_an_oversized_window_scale_is_treated_as_14() -> None:
    raw = bytes([1, 3, 3, 20])
    assert _with_raw_options(raw).options.wscale == 14


def test_ip_options_are_skipped() -> None:
    packet = ip.build_tcp(SRC, DST, 1, 2, 3, 4, ACK, 5, b"data")
    header = bytearray(packet[:20]) + bytes([1, 1, 1, 0])  # NOPs and an end of options
    header[0] = 0x46
    header[2:4] = (len(packet) + 4).to_bytes(2, "big")
    header[10:12] = b"\0\0"
    header[10:12] = ip.checksum(bytes(header)).to_bytes(2, "big")
    seg = ip.parse_tcp_packet(bytes(header) + packet[20:])
    assert seg.payload == b"data"


def test_padding_after_the_total_length_is_ignored() -> None:
    packet = ip.build_tcp(SRC, DST, 1, 2, 3, 4, ACK | FIN, 5, b"end")
    assert ip.parse_tcp_packet(packet + b"\0" * 6).payload == b"end"


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (b"\x45" * 10, "shorter than an IPv4 header"),
        (b"\x65" + bytes(39), "IP version 6"),
    ],
)
def test_parse_errors_say_what_is_wrong(packet: bytes, message: str) -> None:
    with pytest.raises(PacketError, match=message):
        ip.parse_ipv4(packet)


def test_a_corrupted_payload_fails_the_tcp_checksum() -> None:
    packet = bytearray(ip.build_tcp(SRC, DST, 1, 2, 3, 4, ACK, 5, b"payload"))
    packet[-3] ^= 0x10
    with pytest.raises(PacketError, match="TCP checksum"):
        ip.parse_tcp_packet(bytes(packet))
    assert ip.parse_tcp_packet(bytes(packet), verify=False).payload != b"payload"


def test_a_udp_packet_is_not_tcp() -> None:
    packet = ip.ipv4_header(SRC, DST, ip.PROTO_UDP, 8) + bytes(8)
    with pytest.raises(PacketError, match="not TCP"):
        ip.parse_tcp(ip.parse_ipv4(packet))


def test_packets_over_64_kib_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="IPv4 packet of"):
        ip.ipv4_header(SRC, DST, ip.PROTO_TCP, 65535)


def test_icmp_unreachable_quotes_the_original_header_and_ports() -> None:
    syn = ip.build_tcp(SRC, DST, 40000, 80, 777, 0, SYN, 5, b"", ip.encode_options(mss=1460))
    icmp = ip.build_icmp_unreachable(syn, ip.ICMP_HOST_UNREACHABLE)
    pkt = ip.parse_ipv4(icmp)
    assert (pkt.src, pkt.dst, pkt.proto) == (DST, SRC, ip.PROTO_ICMP)
    kind, code, quoted = ip.parse_icmp(pkt)
    assert (kind, code) == (3, 1)
    assert quoted == syn[:28]
    assert struct.unpack("!HHI", quoted[20:28]) == (40000, 80, 777)
    assert reference_checksum(pkt.payload) == 0


def test_a_corrupted_icmp_message_is_refused() -> None:
    syn = ip.build_tcp(SRC, DST, 40000, 80, 777, 0, SYN, 5)
    icmp = bytearray(ip.build_icmp_unreachable(syn, ip.ICMP_NET_UNREACHABLE))
    icmp[-1] ^= 1
    with pytest.raises(PacketError, match="ICMP checksum"):
        ip.parse_icmp(ip.parse_ipv4(bytes(icmp)))


def test_addresses_convert_both_ways() -> None:
    assert ip.ip_str(ip.ip_bytes("198.18.0.255")) == "198.18.0.255"
