"""docs/rbac/: one Role per command (exchange per mode, connect's optional ClusterRole),
well formed, referenced by the docs; the refusal line names the verb and resource."""

from __future__ import annotations

from ktpy.cluster.api.client import _websocket_resource, rbac_resource
from ktpy.cluster.api.errors import error_from_status
from ktpy.cluster.api.kinds import Kind
from ktpy.commands import COMMANDS
from ktpy.errors import Forbidden
from tests.rbac import RBAC_DIR, load_role

DESIGN = RBAC_DIR.parents[0] / "design.md"


def test_every_command_has_its_role_and_the_docs_name_each_file() -> None:
    files = {p.stem for p in RBAC_DIR.glob("*.yaml")}
    expected = {c.name for c in COMMANDS} | {"exchange-scale", "connect-ranges"}
    assert files == expected
    design = DESIGN.read_text()
    for name in files:
        role = load_role(name)
        assert role.kind == ("ClusterRole" if name == "connect-ranges" else "Role")
        assert role.name == f"ktpy-{name}"
        assert role.sometimes_used <= role.rules, name
        assert f"docs/rbac/{name}.yaml" in design, name


def test_rbac_names_resources_with_their_group_and_subresource() -> None:
    assert rbac_resource(Kind.SERVICE) == "services"
    assert rbac_resource(Kind.DEPLOYMENT) == "apps/deployments"
    assert rbac_resource(Kind.POD, "portforward") == "pods/portforward"
    path = "/api/v1/namespaces/dev/pods/p-1/portforward?ports=2222"
    assert _websocket_resource(path) == ("dev", "pods/portforward")


def test_a_refusal_names_the_verb_and_resource_the_server_refused() -> None:
    message = (
        'endpointslices.discovery.k8s.io is forbidden: User "dev" cannot watch resource '
        '"endpointslices" in API group "discovery.k8s.io" in the namespace "dev"'
    )
    error = error_from_status(
        403, {"message": message}, verb="list", kind=Kind.ENDPOINT_SLICE, namespace="dev"
    )
    assert isinstance(error, Forbidden)
    assert error.format_message() == (
        "not allowed to watch discovery.k8s.io/endpointslices in namespace 'dev'"
    )
    assert error.exit_code == 11
    assert "docs/rbac/" in error.hint
