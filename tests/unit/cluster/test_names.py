import random
import re

import pytest

from ktpy.cluster import names
from ktpy.params import is_dns1123_label

LONG = "a-very-long-service-name-that-goes-on-and-on-and-on-for-ever-x"  # 62 chars


def rng(seed: int = 1) -> random.Random:
    return random.Random(seed)


def test_connect_shadow_name_pattern() -> None:
    name = names.connect_shadow_name(rng())
    assert re.fullmatch(r"kt-connect-shadow-[a-z]{5}", name)


def test_random_source_is_injected_and_repeatable() -> None:
    assert names.connect_shadow_name(rng(7)) == names.connect_shadow_name(rng(7))
    assert names.connect_shadow_name(rng(7)) != names.connect_shadow_name(rng(8))


def test_default_random_source_varies() -> None:
    assert len({names.connect_shadow_name() for _ in range(20)}) > 1


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: names.exchange_shadow_name("nginx", rng()), r"nginx-kt-exchange-[a-z]{5}"),
        (lambda: names.router_name("nginx"), r"nginx-kt-router"),
        (lambda: names.stuntman_name("nginx"), r"nginx-kt-stuntman"),
        (lambda: names.mesh_name("nginx", "abcde"), r"nginx-kt-mesh-abcde"),
        (lambda: names.preview_pod_name("web", rng()), r"web-kt-[a-z]{5}"),
    ],
)
def test_kt_connect_patterns_for_short_names(make: object, pattern: str) -> None:
    assert callable(make)
    assert re.fullmatch(pattern, make())


@pytest.mark.parametrize(
    "make",
    [
        lambda base: names.exchange_shadow_name(base, rng()),
        names.router_name,
        names.stuntman_name,
        lambda base: names.mesh_name(base, "v" * 20),
        lambda base: names.preview_pod_name(base, rng()),
    ],
)
@pytest.mark.parametrize("base", [LONG, LONG[:40], "x" * 63, "my.deployment.v2", "Upper_Case"])
def test_every_name_is_a_valid_label_and_keeps_its_suffix(make: object, base: str) -> None:
    assert callable(make)
    name = make(base)
    assert is_dns1123_label(name), name
    assert len(name) <= 63
    assert re.search(r"-kt-(exchange-[a-z]{5}|router|stuntman|mesh-v{20}|[a-z]{5})$", name)


def test_truncation_is_deterministic_and_keeps_distinct_bases_apart() -> None:
    assert names.router_name(LONG) == names.router_name(LONG)
    other = LONG[:-1] + "y"
    assert names.router_name(LONG) != names.router_name(other)
    assert names.router_name(LONG).startswith(LONG[:30])


def test_names_that_fit_are_not_altered() -> None:
    base = "s" * (63 - len("-kt-stuntman"))
    assert names.stuntman_name(base) == base + "-kt-stuntman"
    assert names.stuntman_name(base + "s") != base + "s-kt-stuntman"
    assert len(names.stuntman_name(base + "s")) <= 63


def test_service_names_stay_dns1035() -> None:
    for service in (LONG, "a" + "1" * 62):
        assert names.is_dns1035_label(names.stuntman_name(service))
        assert names.is_dns1035_label(names.mesh_name(service, "blue"))


def test_base_without_any_valid_character_still_gives_a_valid_name() -> None:
    name = names.router_name("_" * 70)
    assert is_dns1123_label(name)
    assert names.is_dns1035_label(name)


def test_mesh_version_must_be_a_label() -> None:
    with pytest.raises(ValueError, match="not a valid label"):
        names.mesh_name("nginx", "Blue")


def test_suffix_too_long_is_refused() -> None:
    with pytest.raises(ValueError, match="no room"):
        names.fit("svc", "-" + "x" * 60)


def test_session_id_is_eight_lowercase_alnum_starting_with_a_letter() -> None:
    ids = {names.new_session_id(rng(seed)) for seed in range(50)}
    assert len(ids) == 50
    for session_id in ids:
        assert re.fullmatch(r"[a-z][a-z0-9]{7}", session_id)


@pytest.mark.parametrize(
    ("name", "ok"),
    [("web", True), ("web-2", True), ("2web", False), ("Web", False), ("w" * 64, False)],
)
def test_preview_service_name_must_be_a_service_name(name: str, ok: bool) -> None:
    if ok:
        assert names.check_preview_service_name(name) == name
    else:
        with pytest.raises(ValueError, match="cannot name a Service"):
            names.check_preview_service_name(name)


def test_forward_shadow_name_pattern() -> None:
    assert re.fullmatch(r"kt-forward-shadow-[a-z]{5}", names.forward_shadow_name(rng()))
