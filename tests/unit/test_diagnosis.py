"""doctor's judgement: which hop is the problem, and the change since the last run."""

from __future__ import annotations

from ktpy import diagnosis
from ktpy.diagnosis import Check, Report, Status
from ktpy.net.probe import RoundTrips, Throughput
from ktpy.session.hops import Hop, Measured


def measured(hop: Hop, rtt: float = 1.0, mbit: float | None = None, **kw: object) -> Measured:
    bulk = Throughput(int(mbit * 1e6 / 8), 1.0) if mbit is not None else None
    return Measured(hop, "path", rtt=RoundTrips(7, rtt, rtt * 2), throughput=bulk, **kw)  # type: ignore[arg-type]


def test_healthy_hops_name_no_problem() -> None:
    report = Report(
        [Check("API server", Status.OK, "answers")],
        [diagnosis.judge_hop(measured(Hop.PORT_FORWARD, 2.0, 800.0), None)],
    )
    assert report.problem is None
    assert diagnosis.render(report)[-1] == "Verdict: every hop is healthy."
    assert diagnosis.to_json(report)["problem"] is None


def test_throughput_halved_since_the_last_run_is_a_problem_with_the_change() -> None:
    verdict = diagnosis.judge_hop(
        measured(Hop.PORT_FORWARD, 2.0, 30.0), {"rtt_ms": 2.0, "mbit_s": 400.0}
    )
    assert verdict.status is Status.WARN
    assert "throughput 30.0 Mbit/s, down from 400 Mbit/s at the previous run (-92%)" in (
        verdict.problem
    )
    assert "throughput was 400 Mbit/s (-92%)" in verdict.change


def test_a_small_wobble_is_no_problem() -> None:
    verdict = diagnosis.judge_hop(
        measured(Hop.PORT_FORWARD, 3.0, 300.0), {"rtt_ms": 2.0, "mbit_s": 400.0}
    )
    assert verdict.status is Status.OK
    assert verdict.change


def test_fixed_limits_apply_without_a_previous_run() -> None:
    slow = diagnosis.judge_hop(measured(Hop.PORT_FORWARD, 2.0, 5.0), None)
    assert slow.status is Status.WARN
    assert "slow below" in slow.problem
    far = diagnosis.judge_hop(measured(Hop.DNS, 450.0), None)
    assert far.status is Status.WARN


def test_the_first_problem_along_the_path_is_named() -> None:
    report = Report(
        [],
        [
            diagnosis.judge_hop(measured(Hop.PORT_FORWARD, 2.0, 800.0), None),
            diagnosis.judge_hop(
                Measured(Hop.TARGET, "p", error="refused", figures={"ready_endpoints": 0}), None
            ),
            diagnosis.judge_hop(Measured(Hop.DNS, "p", error="dnsmasq: no answer"), None),
        ],
    )
    assert report.problem is not None
    text, hint = report.problem
    assert "(target): the Service has no ready endpoints (the pod's connect: refused)" in text
    assert "endpointslices" in hint
    assert diagnosis.to_json(report)["problem"]["hop"] == "target"


def test_dns_says_dnsmasq_fails_when_the_cluster_dns_answers() -> None:
    verdict = diagnosis.judge_hop(
        Measured(
            Hop.DNS, "p", error="dnsmasq: no answer in time",
            figures={"cluster_dns": "10.96.0.10 answers"},
        ),
        None,
    )  # fmt: skip
    assert verdict.status is Status.FAIL
    assert "so dnsmasq is the one failing" in verdict.problem


def test_a_failed_check_comes_before_any_hop() -> None:
    report = Report(
        [Check("shadow image", Status.FAIL, "cannot pull x", "build it")],
        [diagnosis.judge_hop(Measured(Hop.DNS, "p", error="x"), None)],
    )
    assert report.problem == ("shadow image: cannot pull x", "build it")
    assert diagnosis.to_json(report)["problem"]["check"] == "shadow image"
    assert diagnosis.to_json(report)["problem"]["hop"] is None


def test_a_share_across_a_long_path_needs_more_than_its_noise_to_be_worse() -> None:
    def target(own: float, whole: float) -> Measured:
        return Measured(
            Hop.TARGET, "p", rtt=RoundTrips(7, own, own), figures={"whole_path_ms": whole}
        )

    # 11 ms own share over a 60 ms path, 0.05 ms before: within a fifth of the path.
    assert diagnosis.judge_hop(target(11.0, 60.0), {"rtt_ms": 0.05}).status is Status.OK
    assert diagnosis.judge_hop(target(30.0, 60.0), {"rtt_ms": 0.05}).status is Status.WARN
    # Over a short path the fixed margin decides.
    assert diagnosis.judge_hop(target(11.0, 2.0), {"rtt_ms": 0.05}).status is Status.WARN


def test_a_failing_hop_is_named_before_a_slow_one_beneath_it() -> None:
    report = Report(
        [],
        [
            diagnosis.judge_hop(measured(Hop.PORT_FORWARD, 2.0, 5.0), None),
            diagnosis.judge_hop(Measured(Hop.DNS, "p", error="dnsmasq: no answer"), None),
        ],
    )
    assert report.hops[0].status is Status.WARN
    assert diagnosis.to_json(report)["problem"]["hop"] == "dns"


def test_a_near_total_drop_is_not_rounded_to_all_of_it() -> None:
    verdict = diagnosis.judge_hop(measured(Hop.PORT_FORWARD, 1.0, 3.8), {"mbit_s": 800.0})
    assert "(-99.5%)" in verdict.problem
