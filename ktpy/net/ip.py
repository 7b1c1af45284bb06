"""IPv4, TCP and ICMP headers: parse, build, checksums. Pure functions.

Only IPv4 is carried: the stack ignores IPv6 packets (the cluster ranges it
routes are IPv4). Fragments are dropped: the kernel sets DF on TCP and the TUN
link's MTU is ours to choose, so a fragment means something is off.

Checksums use the identity that the 16-bit one's complement sum of a byte
string is its big-endian integer value modulo 0xFFFF (2**16 is 1 modulo
0xFFFF): int.from_bytes does the per-byte work in C, about 1 ns a byte, which
is the floor for pure Python (summing array items is five times slower).
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20

IPV4_HEADER = 20
TCP_HEADER = 20
DEFAULT_TTL = 64
_DONT_FRAGMENT = 0x4000
_MORE_FRAGMENTS = 0x2000
_OFFSET_MASK = 0x1FFF

OPT_END = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8

ICMP_UNREACHABLE = 3
ICMP_NET_UNREACHABLE = 0
ICMP_HOST_UNREACHABLE = 1

_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_ICMP = struct.Struct("!BBHI")
_HEADERS = struct.Struct("!BBHHHBBH4s4sHHIIBBHHH")  # IPv4 without options, then TCP
_CHUNK = 16384  # even: each chunk starts on a 16-bit word


class PacketError(ValueError):
    """A packet that cannot be parsed or fails its checksum."""


class Ipv4Packet(NamedTuple):
    src: bytes  # 4 bytes, network order
    dst: bytes
    proto: int
    ttl: int
    ident: int
    header: bytes  # the IP header as received (options included)
    payload: bytes  # everything after the header, up to the total length


class TcpOptions(NamedTuple):
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    sack: tuple[tuple[int, int], ...] = ()
    timestamp: tuple[int, int] | None = None


NO_OPTIONS = TcpOptions()


class TcpSegment(NamedTuple):
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int  # as on the wire, not scaled
    options: TcpOptions
    payload: bytes

    def flag_names(self) -> str:
        return flag_names(self.flags)


def flag_names(flags: int) -> str:
    """Flags as letters in tcpdump's order and spelling: S F R P . U"""
    names = [
        letter
        for bit, letter in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (URG, "U"))
        if flags & bit
    ]
    if flags & ACK:
        names.append(".")
    return "".join(names)


def ones_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The 16-bit one's complement sum of data (padded to even length) plus
    start, as any integer congruent to it modulo 0xFFFF."""
    n = len(data)
    if n <= _CHUNK:
        value = int.from_bytes(data, "little")
    else:
        view = memoryview(data)
        value = 0
        for i in range(0, n, _CHUNK):
            value += int.from_bytes(view[i : i + _CHUNK], "little")
        # 2**(16k) is 1 modulo 0xFFFF: folding halves together keeps the
        # final modulo on a small int (a long division is several times slower).
        bits = value.bit_length()
        while bits > 128:
            half = (bits // 2 + 15) & ~15
            value = (value >> half) + (value & ((1 << half) - 1))
            bits = value.bit_length()
    # Read little-endian (faster in CPython), the sum is byte-swapped, and a
    # swap is a multiplication by 256 modulo 0xFFFF. An odd trailing byte lands
    # where zero padding would put it.
    return (value % 0xFFFF) * 256 + start


def finish_checksum(total: int) -> int:
    """The checksum field for a one's complement sum from ones_sum."""
    return (0xFFFF - total % 0xFFFF) % 0xFFFF


def checksum(data: bytes | bytearray | memoryview) -> int:
    return finish_checksum(ones_sum(data))


def _pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    s = int.from_bytes(src, "big")
    d = int.from_bytes(dst, "big")
    return (s >> 16) + (s & 0xFFFF) + (d >> 16) + (d & 0xFFFF) + proto + length


def ip_str(address: bytes) -> str:
    return socket.inet_ntoa(address)


def ip_bytes(address: str) -> bytes:
    return socket.inet_aton(address)


def parse_ipv4(packet: bytes) -> Ipv4Packet:
    """The IPv4 header and payload; PacketError if malformed, a fragment, or
    the header checksum is wrong."""
    if len(packet) < IPV4_HEADER:
        raise PacketError(f"{len(packet)} bytes: shorter than an IPv4 header")
    vihl, _tos, total, ident, frag, ttl, proto, _csum, src, dst = _IP.unpack_from(packet)
    if vihl >> 4 != 4:
        raise PacketError(f"IP version {vihl >> 4}")
    ihl = (vihl & 0x0F) * 4
    if ihl < IPV4_HEADER:
        raise PacketError(f"IP header length {ihl}")
    if total < ihl or total > len(packet):
        raise PacketError(f"IP total length {total} for a {len(packet)}-byte packet")
    header = packet[:ihl]
    if ones_sum(header) % 0xFFFF != 0:
        raise PacketError("IP header checksum")
    if frag & (_MORE_FRAGMENTS | _OFFSET_MASK):
        raise PacketError("IP fragment")
    return Ipv4Packet(src, dst, proto, ttl, ident, header, packet[ihl:total])


def _parse_options(raw: bytes) -> TcpOptions:
    # Like Linux: a malformed option ends parsing, the segment is still used.
    mss = wscale = timestamp = None
    sack_permitted = False
    sack: list[tuple[int, int]] = []
    i, n = 0, len(raw)
    while i < n:
        kind = raw[i]
        if kind == OPT_END:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            break
        length = raw[i + 1]
        if length < 2 or i + length > n:
            break
        body = raw[i + 2 : i + length]
        if kind == OPT_MSS and length == 4:
            mss = int.from_bytes(body, "big")
        elif kind == OPT_WSCALE and length == 3:
            wscale = min(body[0], 14)  # RFC 7323: larger values are treated as 14
        elif kind == OPT_SACK_PERMITTED and length == 2:
            sack_permitted = True
        elif kind == OPT_SACK and (length - 2) % 8 == 0:
            sack = [
                (int.from_bytes(body[j : j + 4], "big"), int.from_bytes(body[j + 4 : j + 8], "big"))
                for j in range(0, length - 2, 8)
            ]
        elif kind == OPT_TIMESTAMP and length == 10:
            timestamp = (int.from_bytes(body[:4], "big"), int.from_bytes(body[4:], "big"))
        i += length
    return TcpOptions(mss, wscale, sack_permitted, tuple(sack), timestamp)


def parse_tcp(ip: Ipv4Packet, verify: bool = True) -> TcpSegment:
    """The TCP segment in an IPv4 packet; PacketError if malformed or (with
    verify) its checksum is wrong."""
    if ip.proto != PROTO_TCP:
        raise PacketError(f"IP protocol {ip.proto}, not TCP")
    data = ip.payload
    if len(data) < TCP_HEADER:
        raise PacketError(f"{len(data)} bytes: shorter than a TCP header")
    sport, dport, seq, ack, offset, flags, window, _csum, _urg = _TCP.unpack_from(data)
    hlen = (offset >> 4) * 4
    if hlen < TCP_HEADER or hlen > len(data):
        raise PacketError(f"TCP data offset {hlen} in a {len(data)}-byte segment")
    if verify and ones_sum(data, _pseudo_sum(ip.src, ip.dst, PROTO_TCP, len(data))) % 0xFFFF:
        raise PacketError("TCP checksum")
    options = _parse_options(data[TCP_HEADER:hlen]) if hlen > TCP_HEADER else NO_OPTIONS
    return TcpSegment(
        ip.src, ip.dst, sport, dport, seq, ack, flags & 0x3F, window, options, data[hlen:]
    )


def parse_tcp_packet(packet: bytes, verify: bool = True, offset: int = 0) -> TcpSegment:
    """The TCP segment in an IPv4 packet starting at packet[offset:] (after a
    TUN virtio header, say); PacketError if it is malformed, not TCP, or (with
    verify) a checksum is wrong. The per-packet path of the stack: one unpack
    for both headers when the IP header has no options."""
    end = len(packet)
    if end - offset < _HEADERS.size:
        return parse_tcp(parse_ipv4(packet[offset:]), verify)
    (vihl, _tos, total, _ident, frag, _ttl, proto, _c, src, dst, sport, dport, seq, ack,
     off, flags, window, _csum, _urg) = _HEADERS.unpack_from(packet, offset)  # fmt: skip
    if vihl != 0x45 or proto != PROTO_TCP or total > end - offset or total < _HEADERS.size:
        return parse_tcp(parse_ipv4(packet[offset:]), verify)  # the slow path says why
    if ones_sum(packet[offset : offset + IPV4_HEADER]) % 0xFFFF:
        raise PacketError("IP header checksum")
    if frag & (_MORE_FRAGMENTS | _OFFSET_MASK):
        raise PacketError("IP fragment")
    hlen = (off >> 4) * 4
    tcp_len = total - IPV4_HEADER
    if hlen < TCP_HEADER or hlen > tcp_len:
        raise PacketError(f"TCP data offset {hlen} in a {tcp_len}-byte segment")
    start = offset + IPV4_HEADER
    if (
        verify
        and ones_sum(packet[start : offset + total], _pseudo_sum(src, dst, PROTO_TCP, tcp_len))
        % 0xFFFF
    ):
        raise PacketError("TCP checksum")
    options = (
        _parse_options(packet[start + TCP_HEADER : start + hlen])
        if hlen > TCP_HEADER
        else NO_OPTIONS
    )
    return TcpSegment(
        src, dst, sport, dport, seq, ack, flags & 0x3F, window, options,
        packet[start + hlen : offset + total],
    )  # fmt: skip


def ipv4_header(src: bytes, dst: bytes, proto: int, payload_length: int, ident: int = 0) -> bytes:
    total = IPV4_HEADER + payload_length
    if total > 0xFFFF:
        raise ValueError(f"IPv4 packet of {total} bytes")
    header = _IP.pack(0x45, 0, total, ident, _DONT_FRAGMENT, DEFAULT_TTL, proto, 0, src, dst)
    csum = checksum(header)
    return header[:10] + csum.to_bytes(2, "big") + header[12:]


def encode_options(
    mss: int | None = None,
    wscale: int | None = None,
    sack_permitted: bool = False,
    sack: tuple[tuple[int, int], ...] = (),
) -> bytes:
    """TCP options padded to a multiple of four bytes with NOPs."""
    out = bytearray()
    if mss is not None:
        out += struct.pack("!BBH", OPT_MSS, 4, mss)
    if sack_permitted:
        out += bytes([OPT_NOP, OPT_NOP, OPT_SACK_PERMITTED, 2])
    if wscale is not None:
        out += bytes([OPT_NOP, OPT_WSCALE, 3, wscale])
    if sack:
        out += bytes([OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(sack)])
        for left, right in sack:
            out += struct.pack("!II", left, right)
    while len(out) % 4:
        out.append(OPT_NOP)
    return bytes(out)


class TcpHeaders:
    """Builds one flow's packets. The sums of the fields that never change
    (addresses, ports, TTL...) are added up once; each packet is then a single
    struct pack plus its payload.

    With partial=True the TCP checksum is left for the kernel to finish, as
    a NIC would (CHECKSUM_PARTIAL through a TUN virtio header): the field holds
    the pseudo-header sum and the payload is never summed in Python."""

    __slots__ = ("_ip_sum", "_ports_sum", "_pseudo_sum", "dport", "dst", "partial", "sport", "src")

    def __init__(self, src: bytes, dst: bytes, sport: int, dport: int, partial: bool = False):
        self.src, self.dst, self.sport, self.dport = src, dst, sport, dport
        self.partial = partial
        s, d = int.from_bytes(src, "big"), int.from_bytes(dst, "big")
        addresses = (s >> 16) + (s & 0xFFFF) + (d >> 16) + (d & 0xFFFF)
        self._ip_sum = 0x4500 + _DONT_FRAGMENT + (DEFAULT_TTL << 8 | PROTO_TCP) + addresses
        self._pseudo_sum = addresses + PROTO_TCP
        self._ports_sum = sport + dport

    def packet(
        self,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        payload: bytes = b"",
        options: bytes = b"",
        ident: int = 0,
    ) -> bytes:
        header = self.header(seq, ack, flags, window, payload, options, ident)
        return header + payload if payload else header

    def header(
        self,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        payload: bytes = b"",
        options: bytes = b"",
        ident: int = 0,
    ) -> bytes:
        """The IP and TCP headers (options included) for a packet carrying payload."""
        if len(options) % 4:
            raise ValueError("TCP options must be padded to a multiple of four bytes")
        hlen = TCP_HEADER + len(options)
        tcp_len = hlen + len(payload)
        total = IPV4_HEADER + tcp_len
        if total > 0xFFFF:
            raise ValueError(f"IPv4 packet of {total} bytes")
        seq &= 0xFFFFFFFF
        ack &= 0xFFFFFFFF
        ip_csum = finish_checksum(self._ip_sum + total + ident)
        if self.partial:
            csum = (self._pseudo_sum + tcp_len) % 0xFFFF
        else:
            word = hlen << 10 | flags  # data offset in 32-bit words, then the flags
            fields = (
                self._pseudo_sum + tcp_len + self._ports_sum + (seq >> 16) + (seq & 0xFFFF)
                + (ack >> 16) + (ack & 0xFFFF) + word + window
            )  # fmt: skip
            if options:
                fields += ones_sum(options)
            if payload:
                fields += ones_sum(payload)
            csum = finish_checksum(fields)
        header = _HEADERS.pack(
            0x45, 0, total, ident, _DONT_FRAGMENT, DEFAULT_TTL, PROTO_TCP, ip_csum,
            self.src, self.dst, self.sport, self.dport, seq, ack, hlen << 2, flags, window,
            csum, 0,
        )  # fmt: skip
        return header + options if options else header


def build_tcp(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    payload: bytes = b"",
    options: bytes = b"",
    ident: int = 0,
    partial: bool = False,
) -> bytes:
    """A whole IPv4 packet carrying one TCP segment, checksums filled in
    (or, with partial, left for the kernel: see TcpHeaders)."""
    return TcpHeaders(src, dst, sport, dport, partial).packet(
        seq, ack, flags, window, payload, options, ident
    )


def build_icmp_unreachable(original: bytes, code: int, src: bytes | None = None) -> bytes:
    """ICMP destination unreachable about an IPv4 packet we were sent.

    Quotes the original IP header and the first 8 bytes of its payload (the
    TCP ports and sequence number), which is what the kernel matches to the
    socket. Sent from the original destination unless src is given."""
    ip = parse_ipv4(original)
    quoted = ip.header + ip.payload[:8]
    body = _ICMP.pack(ICMP_UNREACHABLE, code, 0, 0) + quoted
    csum = checksum(body)
    body = body[:2] + csum.to_bytes(2, "big") + body[4:]
    return ipv4_header(src or ip.dst, ip.src, PROTO_ICMP, len(body)) + body


def parse_icmp(ip: Ipv4Packet) -> tuple[int, int, bytes]:
    """(type, code, rest) of an ICMP message; PacketError on a bad checksum."""
    if ip.proto != PROTO_ICMP or len(ip.payload) < 8:
        raise PacketError("not an ICMP message")
    if ones_sum(ip.payload) % 0xFFFF:
        raise PacketError("ICMP checksum")
    return ip.payload[0], ip.payload[1], ip.payload[8:]
