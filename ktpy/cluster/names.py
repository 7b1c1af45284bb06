"""Names of the objects ktpy creates, following kt-connect's patterns.

=====================  ==================================
object                 name
=====================  ==================================
connect shadow pod     ``kt-connect-shadow-<5 lowercase>``
forward shadow pod     ``kt-forward-shadow-<5 lowercase>``
exchange shadow pod    ``<svc>-kt-exchange-<5 lowercase>``
mesh router pod        ``<svc>-kt-router``
stuntman Service       ``<svc>-kt-stuntman``
mesh shadow + Service  ``<svc>-kt-mesh-<version>``
preview pod            ``<name>-kt-<5 lowercase>`` (its Service is ``<name>``)
=====================  ==================================

Every name is a valid DNS-1123 label of at most 63 characters, and a valid
DNS-1035 label (Service names) whenever the base name is one. When the base
is too long or not a valid label, it is cut and given a short hash of the
whole base, so the result is deterministic (the router of one Service always
has the same name) and two long bases that share a prefix still differ. The
fixed suffix is always kept whole: it is what people and ``clean`` look for.

Randomness is injected (anything with ``choice``), so tests are repeatable.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from collections.abc import Sequence
from typing import Protocol

from ktpy.params import is_dns1123_label

MAX_NAME = 63
RANDOM_SUFFIX_LENGTH = 5
SESSION_ID_LENGTH = 8
_HASH_LENGTH = 5
_INVALID_CHARS = re.compile(r"[^a-z0-9-]+")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class RandomSource(Protocol):
    """What ktpy needs from a random generator (``random.Random`` and ``SystemRandom`` fit)."""

    def choice(self, seq: Sequence[str], /) -> str: ...


SYSTEM_RANDOM: RandomSource = secrets.SystemRandom()


def is_dns1035_label(text: str) -> bool:
    """A Service name: like a DNS-1123 label, but starting with a letter."""
    return len(text) <= MAX_NAME and bool(_DNS1035_LABEL.match(text))


def random_suffix(rng: RandomSource = SYSTEM_RANDOM, length: int = RANDOM_SUFFIX_LENGTH) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(length))


def new_session_id(rng: RandomSource = SYSTEM_RANDOM) -> str:
    """Eight lowercase letters and digits, starting with a letter (a valid label value)."""
    alphabet = string.ascii_lowercase + string.digits
    return rng.choice(string.ascii_lowercase) + "".join(
        rng.choice(alphabet) for _ in range(SESSION_ID_LENGTH - 1)
    )


def fit(base: str, suffix: str) -> str:
    """``base + suffix`` as a valid label of at most 63 characters, keeping ``suffix`` whole.

    ``suffix`` starts with ``-`` and is itself valid label text.
    """
    if len(suffix) > MAX_NAME - 1 - _HASH_LENGTH - 1:
        raise ValueError(f"suffix {suffix!r} leaves no room for a name")
    candidate = base + suffix
    if is_dns1123_label(candidate):
        return candidate
    room = MAX_NAME - len(suffix) - _HASH_LENGTH - 1
    digest = hashlib.sha256(base.encode()).hexdigest()[:_HASH_LENGTH]
    cleaned = _INVALID_CHARS.sub("-", base.lower()).strip("-")
    # Keep the first character a letter when the base had one, so Service names stay DNS-1035.
    head = cleaned[:room].rstrip("-")
    if not head:
        return f"{digest}{suffix}" if digest[0].isalpha() else f"x{digest}{suffix}"
    return f"{head}-{digest}{suffix}"


def connect_shadow_name(rng: RandomSource = SYSTEM_RANDOM) -> str:
    return f"kt-connect-shadow-{random_suffix(rng)}"


def forward_shadow_name(rng: RandomSource = SYSTEM_RANDOM) -> str:
    return f"kt-forward-shadow-{random_suffix(rng)}"


def doctor_shadow_name(rng: RandomSource = SYSTEM_RANDOM) -> str:
    return f"kt-doctor-shadow-{random_suffix(rng)}"


def exchange_shadow_name(target: str, rng: RandomSource = SYSTEM_RANDOM) -> str:
    """``target`` is a Service name (selector mode) or a Deployment name (scale mode)."""
    return fit(target, f"-kt-exchange-{random_suffix(rng)}")


def router_name(service: str) -> str:
    return fit(service, "-kt-router")


def stuntman_name(service: str) -> str:
    return fit(service, "-kt-stuntman")


def mesh_name(service: str, version: str) -> str:
    """The mesh shadow pod and its Service share this name."""
    if not is_dns1123_label(version):
        raise ValueError(f"version {version!r} is not a valid label")
    return fit(service, f"-kt-mesh-{version}")


def preview_pod_name(name: str, rng: RandomSource = SYSTEM_RANDOM) -> str:
    return fit(name, f"-kt-{random_suffix(rng)}")


def check_preview_service_name(name: str) -> str:
    """The preview Service is called exactly ``name``, so it must already be a Service name."""
    if not is_dns1035_label(name):
        raise ValueError(
            f"{name!r} cannot name a Service: use lowercase letters, digits and '-', "
            "start with a letter, at most 63 characters"
        )
    return name
