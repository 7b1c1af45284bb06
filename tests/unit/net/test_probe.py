"""The measuring core shared by doctor and the benchmarks, with a scripted clock."""

from __future__ import annotations

import itertools

import pytest

from ktpy.net import probe


def ticking(step: float) -> probe.Clock:
    counter = itertools.count()
    return lambda: next(counter) * step


def test_round_trips_time_each_call_after_the_warmup() -> None:
    calls = []
    # Each timed call spans one tick of 2 ms between its start and end reading.
    result = probe.round_trips(lambda: calls.append(1), 5, warmup=3, clock=ticking(0.002))
    assert len(calls) == 8
    assert result == probe.RoundTrips(5, pytest.approx(2.0), pytest.approx(2.0))


def test_summary_is_median_and_99th_percentile() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert probe.summarize(samples) == probe.RoundTrips(100, 50.5, 99.0)
    assert probe.summarize([7.0]) == probe.RoundTrips(1, 7.0, 7.0)
    with pytest.raises(ValueError, match="no samples"):
        probe.summarize([])


def test_drain_reads_to_the_end_and_times_from_the_callers_start() -> None:
    chunks = iter([b"x" * 1000, b"y" * 500, b""])
    result = probe.drain(lambda size: next(chunks), started=1.0, clock=lambda: 1.5)
    assert result == probe.Throughput(1500, 0.5)
    assert result.mbit_s == pytest.approx(1500 * 8 / 0.5 / 1e6)
    assert result.as_dict()["gbit_s"] == pytest.approx(result.gbit_s)


def test_a_zero_length_interval_has_no_throughput() -> None:
    assert probe.Throughput(10, 0.0).gbit_s == 0.0


def test_own_share_is_the_median_of_paired_differences() -> None:
    # beneath takes 10 ms, once 13 ms; the clock is read before, between and after.
    readings = iter(
        t / 1000 for pair in range(4) for t in (pair * 100, pair * 100 + 10, pair * 100 + 23)
    )
    calls: list[str] = []
    whole, own = probe.own_share(
        lambda: calls.append("once"), lambda: calls.append("beneath"), 4,
        clock=lambda: next(readings),
    )  # fmt: skip
    assert calls == ["beneath", "once"] * 4
    assert whole.p50_ms == pytest.approx(13.0)
    assert own.p50_ms == pytest.approx(3.0)
