"""The TUN stack's TCP state machine, driven by scripted packets (see test_tcp_playbook)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ktpy.net import ip
from ktpy.net.ip import ACK, FIN, PSH, SYN
from ktpy.net.tcp import (
    CloseFlow,
    Deliver,
    Delivered,
    DeliverEnd,
    FlowData,
    FlowEnd,
    FlowFailed,
    FlowOpened,
    FlowOpenFailed,
    OpenFailure,
    ResumeReading,
    State,
    TcpConfig,
    TcpStack,
    seq_le,
    seq_lt,
)
from tests.unit.net.test_tcp_playbook import (
    SERVER_ISN,
    AbortAll,
    Batch,
    Client,
    Icmp,
    Seg,
    TcpPlaybook,
    Tick,
    handshake,
)

MSS = 1460


def book(**config: object) -> TcpPlaybook:
    settings: dict[str, object] = {"mtu": 1500, **config}
    return TcpPlaybook(TcpStack(TcpConfig(**settings), isn=lambda: SERVER_ISN))  # type: ignore[arg-type]


def established(**config: object) -> tuple[TcpPlaybook, Client]:
    pb = book(**config)
    c = pb.client()
    handshake(pb, c, 1)
    assert pb.stack.state(1) is State.ESTABLISHED
    return pb, c


# -- sequence arithmetic ------------------------------------------------------------------


def test_sequence_comparisons_wrap_around() -> None:
    assert seq_lt(0xFFFFFFF0, 5)
    assert not seq_lt(5, 0xFFFFFFF0)
    assert seq_le(7, 7)
    assert not seq_lt(7, 7)


# -- handshake ---------------------------------------------------------------------------


def test_handshake_answers_only_once_the_app_flow_is_open() -> None:
    pb = book()
    c = pb.client()
    pb >> c.syn() << c.connect(1)
    pb >> c.syn()  # the kernel retransmits its SYN: no second open, no answer yet
    assert pb.stack.state(1) is State.CONNECTING
    (
        pb
        >> FlowOpened(1)
        # The window: TcpConfig.initial_window, below the 64 KiB a SYN-ACK could say.
        << Seg("S.", seq=0, ack=1, window=16384, mss=MSS, wscale=5, sack_permitted=True)
    )
    assert pb.stack.state(1) is State.SYN_RECEIVED
    assert pb >> c.ack()
    assert pb.stack.state(1) is State.ESTABLISHED


def test_syn_ack_offers_no_scaling_or_sack_when_the_client_did_not() -> None:
    pb = book(initial_window=1 << 20)
    c = pb.client(wscale=None, sack=False)
    pb >> c.syn() << c.connect(1)
    pb >> FlowOpened(1) << Seg("S.", mss=MSS, wscale=None, sack_permitted=False, window=65535)
    pb >> c.ack() >> c.send(b"x" * 100) << Deliver(1, b"x" * 100)
    # Unscaled, the window field cannot say more than 64 KiB.
    assert pb << Seg(".", ack=101, window=65535)


def test_segments_are_no_larger_than_the_clients_mss() -> None:
    pb = book()
    c = pb.client(mss=536)
    handshake(pb, c, 1)
    pb >> FlowData(1, b"a" * 1000)
    assert pb << Seg(".", seq=1, payload=b"a" * 536) << Seg("P.", seq=537, payload=b"a" * 464)


def test_a_syn_without_mss_gets_the_rfc_default() -> None:
    pb = book()
    c = pb.client(mss=None)
    handshake(pb, c, 1)
    assert pb >> FlowData(1, b"a" * 600) << Seg(".", payload=b"a" * 536) << Seg("P.", seq=537)


def test_the_mtu_sets_our_mss() -> None:
    pb = book(mtu=9000)
    c = pb.client(mss=65495)
    pb >> c.syn() << c.connect(1)
    pb >> FlowOpened(1) << Seg("S.", mss=8960) >> c.ack()
    assert pb >> FlowData(1, b"b" * 9000) << Seg(".", payload=b"b" * 8960) << Seg("P.", seq=8961)


def test_a_lost_syn_ack_is_sent_again() -> None:
    pb = book()
    c = pb.client()
    pb >> c.syn() << c.connect(1) >> FlowOpened(1) << Seg("S.", seq=0, lost=True)
    pb >> Tick(0.49)
    pb >> Tick(0.02) << Seg("S.", seq=0, ack=1)
    pb >> c.syn() << Seg("S.", seq=0, ack=1)  # the client's own retransmission
    assert pb >> c.ack()
    assert pb.stack.state(1) is State.ESTABLISHED


def test_app_data_before_the_handshake_completes_waits_for_it() -> None:
    pb = book()
    c = pb.client()
    pb >> c.syn() << c.connect(1) >> FlowOpened(1) << Seg("S.")
    pb >> FlowData(1, b"220 banner\r\n")
    assert pb >> c.ack() << Seg("P.", seq=1, payload=b"220 banner\r\n")


def test_an_ack_that_does_not_ack_our_syn_is_reset() -> None:
    pb = book()
    c = pb.client()
    pb >> c.syn() << c.connect(1) >> FlowOpened(1) << Seg("S.")
    assert pb >> c.ack(ack=77) << Seg("R", seq=77)
    assert pb.stack.state(1) is State.SYN_RECEIVED


# -- data both ways ----------------------------------------------------------------------


def test_client_data_is_delivered_and_acked() -> None:
    pb, c = established()
    pb >> c.send(b"GET / HTTP/1.1\r\n\r\n") << Deliver(1, b"GET / HTTP/1.1\r\n\r\n")
    assert pb << Seg(".", seq=1, ack=19)


def test_a_batch_of_segments_is_acked_once() -> None:
    pb, c = established()
    pb >> Batch(c.send(b"a" * 100), c.send(b"b" * 100), c.send(b"c" * 100))
    pb << Deliver(1, b"a" * 100) << Deliver(1, b"b" * 100) << Deliver(1, b"c" * 100)
    assert pb << Seg(".", ack=301)


def test_app_data_is_cut_into_segments_and_freed_when_acked() -> None:
    pb, c = established()
    pb >> FlowData(1, bytes(range(256)) * 12)  # 3072 bytes
    pb << Seg(".", seq=1, payload=(bytes(range(256)) * 12)[:MSS])
    pb << Seg(".", seq=1 + MSS)
    pb << Seg("P.", seq=1 + 2 * MSS, payload=(bytes(range(256)) * 12)[2 * MSS :])
    assert pb.stack.buffered_bytes() == 3072
    assert pb >> c.ack()
    assert c.received == bytes(range(256)) * 12
    assert pb.stack.buffered_bytes() == 0


def test_the_clients_scaled_window_limits_what_is_sent() -> None:
    pb, c = established()
    pb >> c.ack(window=2)  # 2 << 7 = 256 bytes
    pb >> FlowData(1, b"z" * 1000) << Seg(".", seq=1, payload=b"z" * 256)
    pb >> c.ack(window=4) << Seg(".", seq=257, payload=b"z" * 512)
    assert pb >> c.ack(window=100) << Seg("P.", seq=769, payload=b"z" * 232)


def test_duplicate_data_is_acked_but_not_delivered_twice() -> None:
    pb, c = established()
    pb >> c.send(b"hello") << Deliver(1, b"hello") << Seg(".", ack=6)
    assert pb >> c.send(b"hello", seq=1) << Seg(".", ack=6)


def test_a_retransmission_overlapping_new_data_delivers_only_the_new_bytes() -> None:
    pb, c = established()
    pb >> c.send(b"hello") << Deliver(1, b"hello") << Seg(".", ack=6)
    c.seq += 6
    assert pb >> c.send(b"hello world!", seq=1) << Deliver(1, b" world!") << Seg(".", ack=13)


def test_an_ack_for_unsent_data_is_answered_and_ignored() -> None:
    pb, c = established()
    pb >> FlowData(1, b"abc") << Seg("P.", seq=1, lost=True)
    assert pb >> c.ack(ack=500) << Seg(".", seq=4, ack=1)
    assert pb.stack.buffered_bytes() == 3


def test_sequence_numbers_wrap_during_a_transfer() -> None:
    pb = TcpPlaybook(TcpStack(TcpConfig(mtu=1500), isn=lambda: 0xFFFFFF00))
    c = pb.client(isn=0xFFFFFFF0)
    handshake(pb, c, 1)
    data = bytes(range(256)) * 4
    pb >> c.send(data) << Deliver(1, data) << Seg(".", ack=1025)
    pb >> FlowData(1, data) << Seg("P.", seq=1, payload=data)
    assert pb >> c.ack() >> Delivered(1, len(data))
    assert pb.stack.buffered_bytes() == 0
    assert c.received == data


# -- loss and reordering from the client ---------------------------------------------------


def test_out_of_order_segments_wait_for_the_missing_one() -> None:
    pb, c = established()
    first, second, third = c.send(b"1" * 100), c.send(b"2" * 100), c.send(b"3" * 100)
    pb >> second << Seg(".", ack=1, sack=((101, 201),))
    pb >> third << Seg(".", ack=1, sack=((101, 301),))
    assert pb.stack.buffered_bytes() == 200
    pb >> first << Deliver(1, b"1" * 100) << Deliver(1, b"2" * 100 + b"3" * 100)
    assert pb << Seg(".", ack=301, sack=())


def test_sack_lists_the_newest_block_first() -> None:
    pb, c = established()
    segments = [c.send(bytes([i]) * 100) for i in range(5)]
    pb >> segments[1] << Seg(".", ack=1, sack=((101, 201),))
    assert pb >> segments[3] << Seg(".", ack=1, sack=((301, 401), (101, 201)))


def test_out_of_order_data_is_bounded() -> None:
    pb, c = established(max_out_of_order=2)
    segments = [c.send(bytes([i]) * 10) for i in range(6)]
    pb >> segments[1] << Seg(".", sack=((11, 21),))
    pb >> segments[3] << Seg(".", sack=((31, 41), (11, 21)))
    pb >> segments[5] << Seg(".", sack=((31, 41), (11, 21)))  # a third block is not kept
    assert pb.stack.stats.out_of_order_dropped == 1
    pb >> segments[0] << Deliver(1, bytes([0]) * 10) << Deliver(1, bytes([1]) * 10)
    assert pb << Seg(".", ack=21)


def test_a_fin_ahead_of_missing_data_waits_for_it() -> None:
    pb, c = established()
    first = c.send(b"a" * 10)
    pb >> c.fin(b"b" * 10) << Seg(".", ack=1)
    pb >> first << Deliver(1, b"a" * 10) << Deliver(1, b"b" * 10) << DeliverEnd(1)
    assert pb << Seg(".", ack=22)
    assert pb.stack.state(1) is State.CLOSE_WAIT


# -- loss of our segments -------------------------------------------------------------


def test_a_lost_segment_is_retransmitted_after_the_rto() -> None:
    pb, c = established()
    pb >> FlowData(1, b"lost") << Seg("P.", seq=1, payload=b"lost", lost=True)
    pb >> Tick(0.19)  # the handshake measured a tiny RTT: RTO is the 0.2 s minimum
    pb >> Tick(0.02) << Seg(".", seq=1, payload=b"lost")
    pb >> c.ack()
    assert c.received == b"lost"
    assert pb >> Tick(30)  # everything acked: no timer left
    assert pb.stack.stats.retransmits == 1


def test_retransmissions_back_off_then_give_up_with_a_reset() -> None:
    pb, _ = established(max_retransmits=3)
    pb >> FlowData(1, b"x") << Seg("P.", seq=1, lost=True)
    pb >> Tick(0.2) << Seg(".", seq=1, payload=b"x", lost=True)
    pb >> Tick(0.39)
    pb >> Tick(0.01) << Seg(".", seq=1, lost=True)
    pb >> Tick(0.8) << Seg(".", seq=1, lost=True)
    pb >> Tick(1.6) << Seg("R.", seq=2)
    assert pb << CloseFlow(1, True, "retransmissions unanswered")
    assert pb.stack.state(1) is State.CLOSED


def test_three_duplicate_acks_retransmit_at_once() -> None:
    pb, c = established()
    pb >> FlowData(1, b"d" * (5 * MSS))
    pb << Seg(".", seq=1)
    pb << Seg(".", seq=1 + MSS, lost=True)
    pb << Seg(".", seq=1 + 2 * MSS) << Seg(".", seq=1 + 3 * MSS) << Seg("P.", seq=1 + 4 * MSS)
    dupack = c.ack(ack=1 + MSS)
    pb >> dupack >> dupack >> dupack
    pb >> dupack << Seg(".", seq=1 + MSS, payload=b"d" * MSS)  # the third duplicate
    pb >> c.ack(ack=1 + 5 * MSS)
    assert pb >> dupack  # an old ACK now: nothing to do
    assert pb.stack.buffered_bytes() == 0


def test_a_partial_ack_retransmits_the_next_hole() -> None:
    pb, c = established()
    pb >> FlowData(1, b"d" * (5 * MSS))
    pb << Seg(".", seq=1) << Seg(".", seq=1 + MSS, lost=True) << Seg(".", seq=1 + 2 * MSS)
    pb << Seg(".", seq=1 + 3 * MSS, lost=True) << Seg("P.", seq=1 + 4 * MSS)
    dupack = c.ack(ack=1 + MSS)
    pb >> dupack >> dupack >> dupack >> dupack << Seg(".", seq=1 + MSS)
    pb >> c.ack(ack=1 + 3 * MSS) << Seg(".", seq=1 + 3 * MSS)
    assert pb >> c.ack(ack=1 + 5 * MSS)
    assert pb.stack.stats.retransmits == 2


# -- zero window and backpressure ---------------------------------------------------------


def test_a_zero_window_stops_sending_and_is_probed_until_it_reopens() -> None:
    pb, c = established()
    pb >> c.ack(window=0)
    pb >> FlowData(1, b"w" * 1000)  # nothing may be sent
    pb >> Tick(0.2) << Seg(".", seq=0, payload=b"")  # probe: an old seq makes the client answer
    pb >> c.ack(window=0)
    pb >> Tick(0.4) << Seg(".", seq=0)  # backed off
    pb >> Tick(1.0) << Seg(".", seq=0)  # capped at persist_max
    pb >> c.ack(window=2) << Seg(".", seq=1, payload=b"w" * 256)
    pb >> c.ack(window=100) << Seg("P.", seq=257, payload=b"w" * 744)
    assert pb >> c.ack() >> Tick(5)  # all acked: neither probes nor retransmissions
    assert c.received == b"w" * 1000


def test_the_fin_goes_out_even_into_a_zero_window() -> None:
    pb, c = established()
    pb >> c.ack(window=0)
    assert pb >> FlowEnd(1) << Seg("F.", seq=1)


def test_a_slow_app_closes_our_window_and_its_progress_reopens_it() -> None:
    pb, c = established(receive_buffer=4 * MSS)
    chunk = b"u" * MSS
    pb >> c.send(chunk) << Deliver(1, chunk) << Seg(".", ack=MSS + 1, window=3 * MSS)
    pb >> c.send(chunk) << Deliver(1, chunk) << Seg(".", window=2 * MSS)
    pb >> c.send(chunk) << Deliver(1, chunk) << Seg(".", window=MSS)
    pb >> c.send(chunk) << Deliver(1, chunk) << Seg(".", ack=4 * MSS + 1, window=0)
    assert pb.stack.buffered_bytes() == 4 * MSS
    # Beyond the closed window: not taken, just acked.
    pb >> c.send(chunk) << Seg(".", ack=4 * MSS + 1, window=0)
    c.seq -= MSS
    pb >> Delivered(1, 100)  # too little to announce (silly window avoidance)
    pb >> Delivered(1, MSS - 100) << Seg(".", ack=4 * MSS + 1, window=MSS)
    pb >> Delivered(1, MSS) << Seg(".", window=2 * MSS)
    pb >> Delivered(1, MSS)  # the window would not double: not worth a packet
    pb >> Delivered(1, MSS) << Seg(".", window=4 * MSS)
    assert pb >> c.send(chunk) << Deliver(1, chunk) << Seg(".", ack=5 * MSS + 1)


def test_a_zero_window_probe_from_the_client_gets_our_window() -> None:
    pb, c = established(receive_buffer=2 * MSS)
    pb >> c.send(b"p" * MSS) << Deliver(1, b"p" * MSS) << Seg(".", window=MSS)
    pb >> c.send(b"p" * MSS) << Deliver(1, b"p" * MSS) << Seg(".", window=0)
    probe = c.packet(ACK, seq=2 * MSS)  # Linux probes with the last byte it sent
    pb >> probe << Seg(".", ack=2 * MSS + 1, window=0)
    pb >> Delivered(1, 2 * MSS) << Seg(".", window=2 * MSS)
    assert pb >> probe << Seg(".", window=2 * MSS)


def test_a_window_update_is_heard_while_our_own_window_is_closed() -> None:
    pb, c = established(receive_buffer=2 * MSS)
    pb >> c.send(b"a" * MSS) << Deliver(1, b"a" * MSS) << Seg(".", window=MSS)
    pb >> c.send(b"b" * MSS) << Deliver(1, b"b" * MSS) << Seg(".", window=0)
    pb >> c.send(b"c" * MSS) << Seg(".", ack=2 * MSS + 1, window=0)  # not taken
    pb >> c.ack(window=0) << Seg(".", window=0)  # the client's window closes too
    pb >> FlowData(1, b"x" * 100)
    # Its update carries a seq beyond what we took: the ACK field still counts.
    assert pb >> c.ack(window=100) << Seg("P.", seq=1, payload=b"x" * 100)


def test_send_space_tells_the_app_side_to_wait_for_writable() -> None:
    pb, c = established(send_buffer=16384)
    assert pb.stack.send_space(1) == 16384
    pb >> c.ack(window=0)
    pb >> FlowData(1, b"s" * 14000)
    assert pb.stack.send_space(1) == 0  # below a quarter free: wait
    pb >> c.ack(window=1000)
    for _ in range(9):
        pb << Seg(".")
    pb << Seg("P.")
    pb >> c.ack() << ResumeReading(1)
    assert pb.stack.send_space(1) == 16384


# -- closing -----------------------------------------------------------------------


def test_the_client_closes_first_and_the_app_keeps_sending() -> None:
    pb, c = established()
    pb >> c.fin() << DeliverEnd(1) << Seg(".", ack=2)
    assert pb.stack.state(1) is State.CLOSE_WAIT
    pb >> FlowData(1, b"still here") << Seg("P.", seq=1, payload=b"still here")
    pb >> c.ack()
    pb >> FlowEnd(1) << Seg("F.", seq=11, ack=2)
    assert pb.stack.state(1) is State.LAST_ACK
    pb >> c.ack() << CloseFlow(1, False, "closed")
    assert pb.stack.state(1) is State.CLOSED
    assert len(pb.stack) == 0


def test_a_fin_can_carry_data() -> None:
    pb, c = established()
    assert pb >> c.fin(b"bye") << Deliver(1, b"bye") << DeliverEnd(1) << Seg(".", ack=5)


def test_the_app_closes_first_and_the_client_keeps_sending() -> None:
    pb, c = established()
    pb >> FlowData(1, b"response") << Seg("P.", seq=1)
    pb >> FlowEnd(1) << Seg("F.", seq=9)
    assert pb.stack.state(1) is State.FIN_WAIT_1
    pb >> c.ack()
    assert pb.stack.state(1) is State.FIN_WAIT_2
    pb >> c.send(b"more") << Deliver(1, b"more") << Seg(".", seq=10, ack=5)
    pb >> c.fin() << DeliverEnd(1) << CloseFlow(1, False, "closed") << Seg(".", ack=6)
    assert pb.stack.state(1) is State.TIME_WAIT
    assert pb >> FlowData(1, b"too late")  # the app side is released: ignored
    c.seq -= 1
    pb >> c.fin() << Seg(".", ack=6)  # its FIN again: our ACK was lost
    pb >> Tick(1.0)
    assert len(pb.stack) == 0


def test_simultaneous_close() -> None:
    pb, c = established()
    pb >> FlowEnd(1) << Seg("F.", seq=1)
    pb >> c.fin(ack=1) << DeliverEnd(1) << Seg(".", seq=2, ack=2)  # crossed: ours not acked yet
    assert pb.stack.buffered_bytes() == 0
    pb >> c.ack(ack=2) << CloseFlow(1, False, "closed")
    assert len(pb.stack) == 1
    assert pb >> Tick(1.0)
    assert len(pb.stack) == 0


def test_a_lost_fin_is_retransmitted() -> None:
    pb, c = established()
    pb >> FlowEnd(1) << Seg("F.", seq=1, lost=True)
    assert pb >> Tick(0.2) << Seg("F.", seq=1)
    assert pb >> c.ack() >> c.fin() << DeliverEnd(1) << CloseFlow(1, False, "closed") << Seg(".")


def test_a_new_syn_on_a_port_in_time_wait_starts_a_new_flow() -> None:
    pb, c = established()
    pb >> FlowEnd(1) << Seg("F.") >> c.ack()
    pb >> c.fin() << DeliverEnd(1) << CloseFlow(1, False, "closed") << Seg(".")
    again = Client(isn=90_000)
    assert pb >> again.syn() << again.connect(2)


# -- resets received, in every state -------------------------------------------------------


def _to_syn_received(pb: TcpPlaybook, c: Client) -> None:
    pb >> c.syn() << c.connect(1) >> FlowOpened(1) << Seg("S.")


def _to_close_wait(pb: TcpPlaybook, c: Client) -> None:
    handshake(pb, c, 1)
    pb >> c.fin() << DeliverEnd(1) << Seg(".")


def _to_last_ack(pb: TcpPlaybook, c: Client) -> None:
    _to_close_wait(pb, c)
    pb >> FlowEnd(1) << Seg("F.")


def _to_fin_wait_1(pb: TcpPlaybook, c: Client) -> None:
    handshake(pb, c, 1)
    pb >> FlowEnd(1) << Seg("F.", lost=True)


def _to_fin_wait_2(pb: TcpPlaybook, c: Client) -> None:
    handshake(pb, c, 1)
    pb >> FlowEnd(1) << Seg("F.") >> c.ack()


def _to_closing(pb: TcpPlaybook, c: Client) -> None:
    _to_fin_wait_1(pb, c)
    pb >> c.fin() << DeliverEnd(1) << Seg(".")


STATES: dict[State, Callable[[TcpPlaybook, Client], object]] = {
    State.SYN_RECEIVED: _to_syn_received,
    State.ESTABLISHED: lambda pb, c: handshake(pb, c, 1),
    State.CLOSE_WAIT: _to_close_wait,
    State.LAST_ACK: _to_last_ack,
    State.FIN_WAIT_1: _to_fin_wait_1,
    State.FIN_WAIT_2: _to_fin_wait_2,
    State.CLOSING: _to_closing,
}


@pytest.mark.parametrize("state", list(STATES), ids=lambda s: s.value)
def test_a_reset_from_the_client_aborts_the_app_flow(state: State) -> None:
    pb = book()
    c = pb.client()
    STATES[state](pb, c)
    assert pb.stack.state(1) is state
    pb >> c.rst() << CloseFlow(1, True, "reset by the client")
    assert pb.stack.state(1) is State.CLOSED
    assert len(pb.stack) == 0
    assert pb.stack.stats.resets_received == 1
    assert pb.stack.stats.resets_sent == 0


def test_a_reset_while_connecting_releases_the_flow_once_it_opens() -> None:
    pb = book()
    c = pb.client()
    pb >> c.syn() << c.connect(1) >> c.rst(ack=False)
    assert len(pb.stack) == 0
    assert (
        pb >> FlowOpened(1) << CloseFlow(1, True, "the client went away while the flow was opened")
    )


def test_a_reset_in_time_wait_drops_the_flow() -> None:
    pb = book()
    c = pb.client()
    _to_fin_wait_2(pb, c)
    pb >> c.fin() << DeliverEnd(1) << CloseFlow(1, False, "closed") << Seg(".")
    assert len(pb.stack) == 1
    assert pb >> c.rst()  # nothing more to release
    assert len(pb.stack) == 0


@pytest.mark.parametrize("offset", [-1, 70_000, 1 << 31], ids=["before", "beyond", "far"])
def test_a_reset_outside_the_window_is_ignored(offset: int) -> None:
    pb, c = established()
    assert pb >> c.rst(seq=1 + offset)
    assert pb.stack.state(1) is State.ESTABLISHED


def test_a_syn_inside_an_established_flow_gets_a_challenge_ack() -> None:
    pb, c = established()
    assert pb >> c.packet(SYN, seq=1, ack=0) << Seg(".", seq=1, ack=1)
    assert pb.stack.state(1) is State.ESTABLISHED


# -- resets sent, in every state ----------------------------------------------------------


@pytest.mark.parametrize("state", list(STATES), ids=lambda s: s.value)
def test_a_broken_app_flow_resets_the_client(state: State) -> None:
    pb = book()
    c = pb.client()
    STATES[state](pb, c)
    seq = {State.LAST_ACK: 2, State.FIN_WAIT_1: 2, State.FIN_WAIT_2: 2, State.CLOSING: 2}
    pb >> FlowFailed(1, "channel closed") << Seg("R.", seq=seq.get(state, 1))
    assert pb << CloseFlow(1, True, "app flow failed: channel closed")
    assert len(pb.stack) == 0
    assert pb >> FlowData(1, b"late")  # events for a released flow are ignored


@pytest.mark.parametrize("state", [State.CONNECTING, *STATES], ids=lambda s: s.value)
def test_stopping_resets_every_flow(state: State) -> None:
    pb = book()
    c = pb.client()
    if state is State.CONNECTING:
        pb >> c.syn() << c.connect(1)
        pb >> AbortAll() << Seg("R.", ack=1)
    else:
        STATES[state](pb, c)
        pb >> AbortAll() << Seg("R.") << CloseFlow(1, True, "stopping")
    assert len(pb.stack) == 0
    assert pb.stack.next_deadline() is None


def test_a_segment_for_no_flow_is_reset() -> None:
    pb = book()
    c = pb.client()
    pb >> c.ack(ack=1234) << Seg("R", seq=1234)
    pb >> c.packet(PSH, seq=10, payload=b"abc") << Seg("R.", abs_seq=0, ack=13)
    assert pb >> c.rst()  # never a reset for a reset


# -- refused and unreachable targets ----------------------------------------------------


def test_a_refused_target_resets_the_client_at_once() -> None:
    pb = book()
    c = pb.client()
    pb >> c.syn() << c.connect(1)
    pb >> FlowOpenFailed(1, OpenFailure.REFUSED) << Seg("R.", abs_seq=0, ack=1)
    pb >> c.syn() << Seg("R.", ack=1)  # a retransmitted SYN: same answer, no new open
    pb >> Tick(1.0)
    assert pb >> c.syn() << c.connect(2)  # later, a fresh attempt


@pytest.mark.parametrize(
    ("failure", "code"),
    [(OpenFailure.HOST_UNREACHABLE, 1), (OpenFailure.NET_UNREACHABLE, 0)],
)
def test_an_unreachable_target_gets_an_icmp_error(failure: OpenFailure, code: int) -> None:
    pb = book()
    c = pb.client()
    pb >> c.syn() << c.connect(1)
    pb >> FlowOpenFailed(1, failure) << Icmp(code, quotes_port=40000)
    assert pb >> c.syn() << Icmp(code, quotes_port=40000)


def test_other_open_failures_reset() -> None:
    pb = book()
    c = pb.client()
    pb >> c.syn() << c.connect(1)
    assert pb >> FlowOpenFailed(1, OpenFailure.FAILED) << Seg("R.", ack=1)


def test_a_connect_that_never_finishes_times_out_as_unreachable() -> None:
    pb = book(connect_timeout=5.0)
    c = pb.client()
    pb >> c.syn() << c.connect(1)
    pb >> Tick(4.9)
    pb >> Tick(0.1) << Icmp(1)
    assert (
        pb >> FlowOpened(1) << CloseFlow(1, True, "the client went away while the flow was opened")
    )


def test_the_icmp_error_quotes_the_syn() -> None:
    pb = book()
    c = pb.client()
    syn = c.syn()
    pb >> syn << c.connect(1)
    (action,) = pb.stack.handle(FlowOpenFailed(1, OpenFailure.HOST_UNREACHABLE), pb.now)
    packet = ip.parse_ipv4(action.wire)  # type: ignore[union-attr]
    assert packet.src == ip.ip_bytes(c.dst)
    assert packet.dst == ip.ip_bytes(c.src)
    _, _, quoted = ip.parse_icmp(packet)
    assert quoted == syn[:28]  # the IP header and the first 8 bytes of TCP


# -- many flows --------------------------------------------------------------------


def test_flows_are_kept_apart_by_their_four_tuple() -> None:
    pb = book()
    a = pb.client(sport=40001)
    b = pb.client(sport=40002)
    handshake(pb, a, 1)
    handshake(pb, b, 2)
    pb >> b.send(b"to two") << Deliver(2, b"to two") << Seg(".", to=b, ack=7)
    pb >> a.send(b"to one") << Deliver(1, b"to one") << Seg(".", to=a, ack=7)
    pb >> FlowData(2, b"from two") << Seg("P.", to=b, payload=b"from two")
    pb >> b.rst() << CloseFlow(2, True, "reset by the client")
    assert pb.stack.state(1) is State.ESTABLISHED
    assert pb >> FlowData(1, b"from one") << Seg("P.", to=a, payload=b"from one")


def test_the_flow_table_is_bounded() -> None:
    pb = book(max_flows=2)
    clients = [pb.client(sport=50000 + i) for i in range(3)]
    pb >> clients[0].syn() << clients[0].connect(1)
    pb >> clients[1].syn() << clients[1].connect(2)
    assert pb >> clients[2].syn() << Seg("R.", to=clients[2], ack=1)


# -- malformed and foreign packets ------------------------------------------------------------


def _corrupt_ip_checksum(p: bytes) -> bytes:
    return p[:10] + bytes([p[10] ^ 0xFF]) + p[11:]


def _fix_ip_checksum(p: bytearray) -> bytes:
    p[10:12] = b"\0\0"
    p[10:12] = ip.checksum(bytes(p[:20])).to_bytes(2, "big")
    return bytes(p)


def _with(p: bytes, index: int, value: int) -> bytes:
    b = bytearray(p)
    b[index] = value
    return _fix_ip_checksum(b)


MALFORMED: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda p: b"",
    "truncated IP header": lambda p: p[:12],
    "IP version 5": lambda p: _with(p, 0, 0x55),
    "IP header length 16": lambda p: _with(p, 0, 0x44),
    "total length beyond the packet": lambda p: p[:-10],
    "bad IP checksum": _corrupt_ip_checksum,
    "bad TCP checksum": lambda p: p[:-1] + bytes([p[-1] ^ 1]),
    "TCP data offset 16": lambda p: _with(p, 32, 0x40),
    "TCP data offset beyond the segment": lambda p: _with(p, 32, 0xF0),
    "truncated TCP header": lambda p: _fix_ip_checksum(
        bytearray(p[:2] + (30).to_bytes(2, "big") + p[4:30])
    ),
    "fragment": lambda p: _with(p, 6, 0x20),
}


@pytest.mark.parametrize("mangle", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_packets_are_dropped(mangle: Callable[[bytes], bytes]) -> None:
    pb, c = established()
    good = c.send(b"payload")
    c.seq -= 7
    pb >> mangle(good)
    assert pb.stack.stats.malformed == 1
    assert pb.stack.buffered_bytes() == 0
    assert pb >> good << Deliver(1, b"payload") << Seg(".", ack=8)


def test_checksum_verification_can_be_left_to_the_kernel() -> None:
    pb, c = established(verify_checksums=False)
    good = c.send(b"payload")
    bad_tcp_checksum = good[:36] + bytes([good[36] ^ 1]) + good[37:]
    assert pb >> bad_tcp_checksum << Deliver(1, b"payload") << Seg(".")


def test_packets_other_than_ipv4_tcp_are_ignored() -> None:
    pb = book()
    c = pb.client()
    udp = ip.ipv4_header(ip.ip_bytes(c.src), ip.ip_bytes(c.dst), ip.PROTO_UDP, 8) + bytes(8)
    ipv6 = bytes([0x60]) + bytes(39)
    pb >> udp >> ipv6
    assert pb.stack.stats.ignored == 2
    assert len(pb.stack) == 0


def test_a_bogus_syn_fin_is_reset() -> None:
    pb = book()
    c = pb.client()
    assert pb >> c.packet(SYN | FIN, seq=0, ack=0) << Seg("R.", ack=2)
    assert len(pb.stack) == 0


# -- bookkeeping ----------------------------------------------------------------------------


def test_buffered_bytes_counts_every_kind_of_held_data() -> None:
    pb, c = established()
    pb >> c.ack(window=0) >> FlowData(1, b"u" * 300)  # unsent
    pb >> c.send(b"d" * 200, window=0) << Deliver(1, b"d" * 200) << Seg(".")  # not consumed
    pb >> c.send(b"o" * 50, seq=500, window=0) << Seg(".")  # out of order
    assert pb.stack.buffered_bytes() == 300 + 200 + 50
    pb >> Delivered(1, 200)
    assert pb.stack.buffered_bytes() == 350


# -- the pool shared by all flows ---------------------------------------------------------


def test_all_flows_together_commit_no_more_than_the_pool() -> None:
    """Windows come out of one pool: a flow it cannot serve gets a zero window,
    nothing is dropped, and a window update once the pool has room, oldest first."""
    pb = book(receive_buffer=4 * MSS, send_buffer=8192, initial_window=4096, max_buffered=16384)
    one, two, three = (pb.client(sport=40000 + n, wscale=None) for n in range(3))
    for conn, c, window in ((1, one, 4096), (2, two, 4096), (3, three, 0)):
        pb >> c.syn() << c.connect(conn)
        pb >> FlowOpened(conn) << Seg("S.", window=window, to=c)
        pb >> c.ack()
    assert pb.stack.committed_bytes() == 8192
    assert pb.stack.send_space(1) == 8192  # the other half is untouched
    pb >> one.send(b"1" * 4096) << Deliver(1, b"1" * 4096) << Seg(".", ack=4097, window=0)
    pb >> three.send(b"3") << Seg(".", ack=1, window=0, to=three)  # no window: not taken
    assert pb.stack.committed_bytes() == 8192
    # Flow 1's app consumes: the pool's room goes to flow 3 first, which waited first.
    pb >> Delivered(1, 4096) << Seg(".", ack=1, window=4096, to=three)
    three.seq = three.isn + 1
    pb >> three.send(b"3" * 100) << Deliver(3, b"3" * 100) << Seg(".", ack=101, window=3996)
    assert pb.stack.committed_bytes() == 8192
    assert pb.stack.stats.committed_peak == 8192
    # Flow 2 ends: flow 1 gets its window back.
    pb >> two.rst() << CloseFlow(2, True, "reset by the client")
    assert pb << Seg(".", ack=4097, window=4096, to=one)
    assert pb.stack.stats.pool_waits == 2


def test_a_flow_still_in_its_handshake_keeps_its_place_for_the_pool() -> None:
    pb = book(receive_buffer=4 * MSS, initial_window=4096, max_buffered=16384)
    one, two, three = (pb.client(sport=40000 + n, wscale=None) for n in range(3))
    handshake(pb, one, 1)
    handshake(pb, two, 2)
    pb >> three.syn() << three.connect(3)
    pb >> FlowOpened(3) << Seg("S.", window=0, to=three)  # the pool is taken
    # Room comes while flow 3 waits for the client's ACK: nothing to update yet...
    pb >> two.rst() << CloseFlow(2, True, "reset by the client")
    # ... and its window opens as soon as it is established.
    assert pb >> three.ack() << Seg(".", ack=1, window=4096, to=three)


def test_a_read_waits_for_the_pool_and_resumes_when_it_frees() -> None:
    pb, c = established(send_buffer=32768, max_buffered=16384, initial_window=4096)
    pb >> c.ack(window=0)
    assert pb.stack.reserve_send(1, 1 << 20) == 8192  # the pool's half toward the client
    assert pb.stack.committed_bytes() == 4096 + 8192  # and the window
    assert pb.stack.send_space(1) == 0  # reserved: nothing more until the read is in
    pb >> FlowData(1, b"r" * 8192)
    assert pb.stack.send_space(1) == 0  # that half is full: wait
    pb >> c.ack(window=100)
    for _ in range(5):
        pb << Seg(".")
    pb << Seg("P.")
    assert pb >> c.ack() << ResumeReading(1)
    assert pb.stack.send_space(1) == 8192
    assert pb.stack.committed_bytes() == 4096


def test_a_reserved_read_that_took_nothing_is_given_back() -> None:
    pb, _ = established(max_buffered=1 << 20)
    taken = pb.stack.reserve_send(1, 8192)
    assert taken == 8192
    assert pb.stack.release_send(1) == []
    assert pb.stack.committed_bytes() == 16384  # the SYN-ACK's window alone


def test_the_window_grows_when_the_client_fills_it() -> None:
    pb, c = established(initial_window=4096)  # scaled by 2**5 (receive_buffer 1 MiB)
    pb >> c.send(b"g" * 1024) << Deliver(1, b"g" * 1024) << Seg(".", ack=1025, window=3072 >> 5)
    pb >> c.send(b"g" * 3072) << Deliver(1, b"g" * 3072) << Seg(".", ack=4097, window=8192 >> 5)


def test_timers_are_reported_and_cleared() -> None:
    pb, c = established()
    assert pb.stack.next_deadline() is None
    pb >> FlowData(1, b"t") << Seg("P.", lost=True)
    assert pb.stack.next_deadline() == pytest.approx(pb.now + 0.2)
    pb >> c.ack(ack=1)  # acks nothing new
    pb >> c.ack(ack=2)
    assert pb.stack.next_deadline() is None


def test_an_ack_pushes_the_retransmission_timer_back() -> None:
    pb, c = established()
    pb >> FlowData(1, b"a" * 100) << Seg("P.", seq=1)
    pb >> FlowData(1, b"b" * 100) << Seg("P.", seq=101, lost=True)
    pb >> Tick(0.1) >> c.ack(ack=101)  # progress: the RTO restarts from here
    pb >> Tick(0.15)  # the first deadline has passed: nothing yet
    pb >> Tick(0.05) << Seg(".", seq=101, payload=b"b" * 100)
    assert pb.stack.stats.retransmits == 1


def test_the_window_scale_covers_the_receive_buffer() -> None:
    assert TcpConfig(mtu=1500, receive_buffer=65535).window_scale == 0
    assert TcpConfig(receive_buffer=1 << 20).window_scale == 5
    assert TcpConfig(receive_buffer=1 << 30).window_scale == 14


@pytest.mark.parametrize("mtu", [575, 65536])
def test_the_mtu_is_checked(mtu: int) -> None:
    with pytest.raises(ValueError, match="MTU"):
        TcpConfig(mtu=mtu)


def test_flags_are_shown_like_tcpdump() -> None:
    assert ip.flag_names(SYN | ACK) == "S."
    assert ip.flag_names(FIN | PSH | ACK) == "FP."


# -- offloads (a TUN device with a virtio-net header) ------------------------------------


def test_with_offloads_segments_are_as_large_as_a_packet_allows() -> None:
    pb, _ = established(offload=True)
    big = MSS * (65495 // MSS)  # whole segments that fit one IPv4 packet
    pb >> FlowData(1, b"g" * 100_000)
    pb << Seg(".", seq=1, payload=b"g" * big, gso=MSS)
    pb << Seg("P.", seq=1 + big, payload=b"g" * (100_000 - big), gso=MSS)
    pb >> FlowData(1, b"small")
    assert pb << Seg("P.", payload=b"small", gso=0)  # fits one MSS: no GSO


def test_with_offloads_the_checksum_is_left_for_the_kernel() -> None:
    pb, _ = established(offload=True)
    (action,) = pb.stack.handle(FlowData(1, b"x" * 1000), pb.now)
    packet = action.wire  # type: ignore[union-attr]
    # Only the pseudo-header sum is there (CHECKSUM_PARTIAL): the kernel adds the rest.
    pseudo = ip.ones_sum(packet[12:20]) + ip.PROTO_TCP + len(packet) - 20
    assert int.from_bytes(packet[36:38], "big") == pseudo % 0xFFFF
    assert ip.checksum(packet[:20]) == 0  # the IP header is ours to finish
    with pytest.raises(ip.PacketError, match="TCP checksum"):
        ip.parse_tcp_packet(packet)


def test_a_packet_the_kernel_vouches_for_is_not_checked() -> None:
    pb, c = established()
    good = c.send(b"abc")
    unfinished = good[:36] + b"\x12\x34" + good[38:]  # as the kernel hands it with NEEDS_CSUM
    assert pb.stack.receive(unfinished, pb.now) == []
    assert pb.stack.stats.malformed == 1
    (deliver,) = pb.stack.receive(unfinished, pb.now, trusted=True)
    assert deliver == Deliver(1, b"abc")


def test_packets_after_a_virtio_header_are_read_in_place() -> None:
    pb = book()
    c = pb.client()
    header = bytes(10)
    syn = c.syn()
    (connect,) = pb.stack.receive(header + syn, pb.now, offset=10)
    assert connect == c.connect(1)
    (icmp,) = pb.stack.handle(FlowOpenFailed(1, OpenFailure.HOST_UNREACHABLE), pb.now)
    _, _, quoted = ip.parse_icmp(ip.parse_ipv4(icmp.wire))  # type: ignore[union-attr]
    assert quoted == syn[:28]  # the SYN, not the virtio header
