"""The TCP core under seeded random traffic: reordered, duplicated, overlapping
and out-of-window segments from the client, random ACKs and windows, app data,
app progress and passing time. Whatever happens, the app gets the client's
bytes in order and exactly once, the client gets the app's bytes at the right
sequence numbers, every packet is valid, and the buffers stay bounded."""

from __future__ import annotations

import random

import pytest

from ktpy.net import ip
from ktpy.net.ip import ACK, PSH
from ktpy.net.tcp import (
    MASK,
    CloseFlow,
    Deliver,
    Delivered,
    DeliverEnd,
    FlowData,
    FlowOpened,
    ResumeReading,
    Send,
    TcpAction,
    TcpConfig,
    TcpStack,
)
from tests.unit.net.test_tcp_playbook import SERVER_ISN, Client

MSS = 1460
CLIENT_STREAM = random.Random(1).randbytes(4 << 20)
APP_STREAM = random.Random(2).randbytes(4 << 20)


class Episode:
    def __init__(self, seed: int, offload: bool) -> None:
        self.rng = random.Random(seed)
        self.config = TcpConfig(
            mtu=1500,
            receive_buffer=8 * MSS,
            send_buffer=16 * 1024,
            max_out_of_order=6,
            offload=offload,
        )
        self.stack = TcpStack(self.config, isn=lambda: SERVER_ISN)
        self.client = Client()
        self.now = 100.0
        self.delivered = 0  # bytes of CLIENT_STREAM the app got
        self.app_sent = 0  # bytes of APP_STREAM handed to the stack
        self.unconsumed = 0
        self.sent_packets: list[bytes] = []
        self.released = False
        self.window = 65535

    def run(self, actions: list[TcpAction]) -> None:
        for action in actions:
            if isinstance(action, Deliver):
                assert action.conn == 1
                expected = CLIENT_STREAM[self.delivered : self.delivered + len(action.data)]
                assert action.data == expected, f"delivered out of order at {self.delivered}"
                self.delivered += len(action.data)
                self.unconsumed += len(action.data)
            elif isinstance(action, Send):
                self.check_packet(action)
            elif isinstance(action, CloseFlow):
                self.released = True
            else:
                assert isinstance(action, ResumeReading | DeliverEnd), action
        limit = self.config.receive_buffer + self.config.send_buffer + (1 << 5)
        assert self.stack.buffered_bytes() <= limit

    def check_packet(self, action: Send) -> None:
        wire = action.wire
        segment = ip.parse_tcp_packet(wire, verify=not self.config.offload)
        if action.gso:
            assert self.config.offload
            assert len(segment.payload) > action.gso
        elif segment.payload:
            assert len(segment.payload) <= MSS
        if segment.payload:
            offset = ((segment.seq - SERVER_ISN) & MASK) - 1
            assert segment.payload == APP_STREAM[offset : offset + len(segment.payload)]
        self.client.sees(segment)

    def client_segment(self) -> bytes:
        c, rng = self.client, self.rng
        next_rel = (c.seq - c.isn) & MASK
        # Around what the stack has taken: in order, duplicate, ahead, beyond its window.
        start = max(1, self.delivered + 1 + rng.randint(-3000, 12000))
        length = rng.choice([0, 1, rng.randint(1, MSS), MSS])
        payload = CLIENT_STREAM[start - 1 : start - 1 + length]
        ack = (c.rcv_nxt - SERVER_ISN) & MASK
        if rng.random() < 0.2:
            ack = max(ack - rng.randint(0, 3000), 1)
        flags = ACK | (PSH if rng.random() < 0.5 else 0)
        packet = c.packet(flags, seq=start, ack=ack, payload=payload, window=self.window)
        # The client's next sequence number: its ACKs carry it, as the kernel's do.
        c.seq = (c.isn + max(next_rel, start + length)) & MASK
        return packet

    def step(self) -> None:
        rng, s = self.rng, self.stack
        choice = rng.random()
        if choice < 0.35:
            packet = self.client_segment()
            self.sent_packets.append(packet)
            self.run(s.receive(packet, self.now) + s.flush(self.now))
        elif choice < 0.45 and self.sent_packets:
            replay = rng.choice(self.sent_packets)
            self.run(s.receive(replay, self.now) + s.flush(self.now))
        elif choice < 0.6:
            self.window = rng.choice([0, 1, 10, 100, 65535])
            ack = (self.client.rcv_nxt - SERVER_ISN) & MASK
            self.run(s.receive(self.client.ack(ack=ack, window=self.window), self.now))
        elif choice < 0.72:
            space = s.send_space(1)
            if space:
                n = rng.randint(1, min(space, 6000))
                data = APP_STREAM[self.app_sent : self.app_sent + n]
                self.app_sent += n
                self.run(s.handle(FlowData(1, data), self.now))
        elif choice < 0.85 and self.unconsumed:
            n = rng.randint(1, self.unconsumed)
            self.unconsumed -= n
            self.run(s.handle(Delivered(1, n), self.now))
        else:
            self.now += rng.choice([0.01, 0.1, 0.3, 1.0])
            self.run(s.expire(self.now))

    def start(self) -> None:
        s, c = self.stack, self.client
        assert len(s.receive(c.syn(), self.now)) == 1
        self.run(s.handle(FlowOpened(1), self.now))
        self.run(s.receive(c.ack(), self.now))


@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
@pytest.mark.parametrize("seed", range(25))
def test_random_traffic_keeps_both_streams_exact(seed: int, offload: bool) -> None:
    episode = Episode(seed, offload)
    episode.start()
    for _ in range(600):
        episode.step()
        if episode.released:
            break
    # Let the client catch up: everything the app sent arrives, in order.
    for _ in range(200):
        if episode.released or episode.client.rcv_nxt == (SERVER_ISN + 1 + episode.app_sent) & MASK:
            break
        episode.window = 65535
        episode.now += 1.0
        ack = (episode.client.rcv_nxt - SERVER_ISN) & MASK
        episode.run(episode.stack.receive(episode.client.ack(ack=ack), episode.now))
        episode.run(episode.stack.expire(episode.now))
    if not episode.released:
        assert bytes(episode.client.received) == APP_STREAM[: episode.app_sent]
    assert episode.delivered > 0 or episode.released
