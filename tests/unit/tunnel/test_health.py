"""The tunnel's path health: probes after a short silence, dead after a long one."""

from __future__ import annotations

from ktpy.tunnel.health import DEAD_AFTER, PROBE_AFTER, PathHealth, Verdict


def test_a_talking_path_is_alive_and_never_probed() -> None:
    health = PathHealth()
    assert [health.judge(t, t - 0.5) for t in range(100)] == [Verdict.ALIVE] * 100


def test_a_silent_path_is_probed_every_few_seconds_then_given_up() -> None:
    health = PathHealth()
    last = 1000.0
    verdicts = {t / 2: health.judge(last + t / 2, last) for t in range(2 * 12)}
    probes = [t for t, v in verdicts.items() if v is Verdict.PROBE]
    assert probes == [PROBE_AFTER, 2 * PROBE_AFTER, 3 * PROBE_AFTER]
    assert verdicts[DEAD_AFTER] is Verdict.DEAD
    assert all(v is not Verdict.DEAD for t, v in verdicts.items() if t < DEAD_AFTER)


def test_an_answer_makes_the_path_alive_again() -> None:
    health = PathHealth()
    assert health.judge(PROBE_AFTER, 0.0) is Verdict.PROBE
    assert health.judge(PROBE_AFTER + 0.5, PROBE_AFTER + 0.2) is Verdict.ALIVE  # the pong
    assert health.judge(2 * PROBE_AFTER + 0.2, PROBE_AFTER + 0.2) is Verdict.PROBE


def test_a_dead_path_is_found_within_fifteen_seconds_of_its_last_byte() -> None:
    # the supervisor judges every 0.5 s: the bound holds with room to spare
    assert DEAD_AFTER + 0.5 < 15
