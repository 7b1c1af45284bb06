"""Fixtures of the cluster unit tests."""

from __future__ import annotations

import pytest

from ktpy.cluster.api import Kind
from tests.unit.cluster.objects import user_service
from tests.unit.cluster.redirects import NS
from tests.unit.fakes import FakeCluster


@pytest.fixture
def cluster() -> FakeCluster:
    """A cluster with the user's Service nginx in namespace dev."""
    made = FakeCluster()
    made.create(Kind.SERVICE, NS, user_service())
    return made
