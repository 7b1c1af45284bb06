import base64
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from ktpy.cluster import labels, manifests
from ktpy.cluster.labels import PidStart, Role
from ktpy.cluster.manifests import (
    ServicePortSpec,
    SessionMeta,
    ShadowPodOptions,
    ShadowPort,
    ShadowSecretOptions,
)
from tests.unit.cluster.pss import restricted_violations

NOW = datetime(2026, 11, 27, 9, 0, 0, tzinfo=UTC)
SESSION = SessionMeta(
    session_id="ab12cd34",
    role=Role.EXCHANGE,
    owner="alice@laptop",
    heartbeat=NOW,
    pid_start=PidStart(77, 9001, "b00t-1d"),
    target="service/nginx",
)


def pod_options(**overrides: Any) -> ShadowPodOptions:
    values: dict[str, Any] = {
        "name": "nginx-kt-exchange-abcde",
        "namespace": "dev",
        "image": "ghcr.io/ktpy/shadow:0.1.0",
        "session": SESSION,
        "secret_name": "nginx-kt-exchange-abcde",
    }
    values.update(overrides)
    return ShadowPodOptions(**values)


def as_data(body: Any) -> dict[str, Any]:
    """Bodies must be plain JSON data: what is sent is what was built."""
    result: dict[str, Any] = json.loads(json.dumps(body))
    assert result == body
    return result


class TestShadowPod:
    def test_identity(self) -> None:
        pod = as_data(manifests.shadow_pod(pod_options()))
        assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
        assert pod["metadata"]["name"] == "nginx-kt-exchange-abcde"
        assert pod["metadata"]["namespace"] == "dev"
        assert pod["metadata"]["labels"] == {
            "app.kubernetes.io/managed-by": "ktpy",
            "ktpy.dev/role": "exchange",
            "ktpy.dev/session": "ab12cd34",
        }
        annotations = pod["metadata"]["annotations"]
        assert annotations["ktpy.dev/owner"] == "alice@laptop"
        assert annotations["ktpy.dev/heartbeat"] == "2026-11-27T09:00:00Z"
        assert annotations["ktpy.dev/pid-start"] == "77:9001@b00t-1d"
        assert annotations["ktpy.dev/target"] == "service/nginx"

    def test_passes_the_restricted_pod_security_standard(self) -> None:
        pod = as_data(manifests.shadow_pod(pod_options(ports=(ShadowPort(80, "http"),))))
        assert restricted_violations(pod) == []

    def test_security_context_field_by_field(self) -> None:
        pod = manifests.shadow_pod(pod_options())
        spec = pod["spec"]
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True
        assert (pod_sc["runAsUser"], pod_sc["runAsGroup"], pod_sc["fsGroup"]) == (10001,) * 3
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod_sc["sysctls"] == [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
        (container,) = spec["containers"]
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True
        assert (sc["runAsUser"], sc["runAsGroup"]) == (10001, 10001)
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert spec["terminationGracePeriodSeconds"] <= 5
        assert "hostNetwork" not in spec

    def test_image_ports_env_and_probe_follow_the_image_contract(self) -> None:
        (container,) = manifests.shadow_pod(pod_options())["spec"]["containers"]
        assert container["image"] == "ghcr.io/ktpy/shadow:0.1.0"
        assert container["imagePullPolicy"] == "IfNotPresent"
        assert container["ports"] == [
            {"name": "kt-ssh", "containerPort": 2222, "protocol": "TCP"},
            {"name": "kt-dns", "containerPort": 5353, "protocol": "UDP"},
            {"name": "kt-dns-tcp", "containerPort": 5353, "protocol": "TCP"},
        ]
        assert {e["name"]: e["value"] for e in container["env"]} == {
            "KTPY_SSH_PORT": "2222",
            "KTPY_DNS_PORT": "5353",
            "KTPY_ROLE": "exchange",
        }
        probe = container["readinessProbe"]
        assert probe["tcpSocket"] == {"port": "kt-ssh"}
        assert probe["periodSeconds"] == 1
        assert probe.get("initialDelaySeconds", 0) == 0

    def test_secret_is_mounted_read_only_where_the_image_reads_it(self) -> None:
        pod = manifests.shadow_pod(pod_options(secret_name="the-secret"))
        (container,) = pod["spec"]["containers"]
        (mount,) = container["volumeMounts"]
        assert mount["mountPath"] == "/etc/ktpy/secret"
        assert mount["readOnly"] is True
        (volume,) = pod["spec"]["volumes"]
        assert volume["name"] == mount["name"]
        assert volume["secret"]["secretName"] == "the-secret"
        mode = volume["secret"]["defaultMode"]
        assert mode & 0o040, "the pod's fsGroup must be able to read the keys"
        assert not mode & 0o007, "nobody else may"

    def test_extra_ports_mirror_named_target_ports(self) -> None:
        pod = manifests.shadow_pod(pod_options(ports=(ShadowPort(80, "http"), ShadowPort(9090))))
        ports = pod["spec"]["containers"][0]["ports"][3:]
        assert ports == [
            {"name": "http", "containerPort": 80, "protocol": "TCP"},
            {"name": "p9090", "containerPort": 9090, "protocol": "TCP"},
        ]

    @pytest.mark.parametrize(
        ("ports", "message"),
        [
            ((ShadowPort(2222),), "taken by the shadow"),
            ((ShadowPort(5353),), "taken by the shadow"),
            ((ShadowPort(80), ShadowPort(80)), "listed twice"),
            ((ShadowPort(80, "kt-ssh"),), "reserved"),
            ((ShadowPort(80, "web"), ShadowPort(81, "web")), "reserved or listed twice"),
            ((ShadowPort(0),), "out of range"),
        ],
    )
    def test_bad_extra_ports(self, ports: tuple[ShadowPort, ...], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            manifests.shadow_pod(pod_options(ports=ports))

    def test_ssh_port_can_move_out_of_the_way(self) -> None:
        pod = manifests.shadow_pod(pod_options(ssh_port=2022, ports=(ShadowPort(2222),)))
        container = pod["spec"]["containers"][0]
        assert container["ports"][0]["containerPort"] == 2022
        assert {"name": "KTPY_SSH_PORT", "value": "2022"} in container["env"]

    def test_extra_labels_are_kept_but_ktpys_own_win(self) -> None:
        extra = {
            "app": "nginx",
            "pod-template-hash": "6d4cf56db6",
            "app.kubernetes.io/managed-by": "Helm",
            "ktpy.dev/session": "spoofed",
        }
        pod = manifests.shadow_pod(pod_options(extra_labels=extra))
        pod_labels = pod["metadata"]["labels"]
        assert pod_labels["app"] == "nginx"
        assert "pod-template-hash" not in pod_labels
        assert pod_labels["app.kubernetes.io/managed-by"] == "ktpy"
        assert pod_labels["ktpy.dev/session"] == "ab12cd34"

    def test_optional_fields(self) -> None:
        plain = manifests.shadow_pod(pod_options())
        assert "imagePullSecrets" not in plain["spec"]
        assert "resources" not in plain["spec"]["containers"][0]
        rich = manifests.shadow_pod(
            pod_options(
                image_pull_secrets=("regcred",),
                resources={"requests": {"cpu": "10m"}},
                image_pull_policy="Always",
            )
        )
        assert rich["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
        assert rich["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "10m"}}
        assert rich["spec"]["containers"][0]["imagePullPolicy"] == "Always"

    def test_bad_name_is_refused(self) -> None:
        with pytest.raises(ValueError, match="DNS-1123"):
            manifests.shadow_pod(pod_options(name="Bad_Name"))

    def test_building_twice_gives_equal_independent_bodies(self) -> None:
        options = pod_options(extra_labels={"app": "x"})
        first = manifests.shadow_pod(options)
        second = manifests.shadow_pod(options)
        assert first == second
        first["metadata"]["labels"]["app"] = "changed"
        assert second["metadata"]["labels"]["app"] == "x"
        assert options.extra_labels["app"] == "x"


class TestPssChecker:
    """The checker the pod is held to must itself catch each violation."""

    @pytest.mark.parametrize(
        ("path", "value", "expected"),
        [
            (
                ("spec", "containers", 0, "securityContext", "allowPrivilegeEscalation"),
                True,
                "allowPrivilegeEscalation",
            ),
            (
                ("spec", "containers", 0, "securityContext", "capabilities"),
                {"drop": []},
                "drop ALL",
            ),
            (
                ("spec", "containers", 0, "securityContext", "capabilities"),
                {"drop": ["ALL"], "add": ["NET_ADMIN"]},
                "NET_ADMIN",
            ),
            (("spec", "containers", 0, "securityContext", "runAsNonRoot"), False, "runAsNonRoot"),
            (
                ("spec", "containers", 0, "securityContext", "seccompProfile"),
                {"type": "Unconfined"},
                "seccomp",
            ),
            (
                ("spec", "securityContext", "sysctls"),
                [{"name": "net.core.somaxconn", "value": "1"}],
                "unsafe sysctl",
            ),
            (("spec", "hostNetwork"), True, "hostNetwork"),
            (("spec", "volumes"), [{"name": "h", "hostPath": {"path": "/"}}], "hostPath"),
        ],
    )
    def test_violation_is_reported(self, path: tuple[Any, ...], value: Any, expected: str) -> None:
        pod: Any = copy.deepcopy(manifests.shadow_pod(pod_options()))
        target = pod
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        problems = restricted_violations(pod)
        assert any(expected in problem for problem in problems), problems


class TestSecret:
    def options(self, **overrides: Any) -> ShadowSecretOptions:
        values: dict[str, Any] = {
            "name": "kt-connect-shadow-abcde",
            "namespace": "dev",
            "session": SESSION,
            "authorized_keys": "ssh-ed25519 AAAAclient ktpy\n",
            "host_private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nxyz\n"
            "-----END OPENSSH PRIVATE KEY-----\n",
            "host_public_key": "ssh-ed25519 AAAAhost ktpy\n",
        }
        values.update(overrides)
        return ShadowSecretOptions(**values)

    def test_keys_and_contents(self) -> None:
        secret = as_data(manifests.shadow_secret(self.options()))
        assert (secret["kind"], secret["type"]) == ("Secret", "Opaque")
        decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert decoded == {
            "authorized_keys": "ssh-ed25519 AAAAclient ktpy\n",
            "ssh_host_ed25519_key": self.options().host_private_key,
            "ssh_host_ed25519_key.pub": "ssh-ed25519 AAAAhost ktpy\n",
        }
        assert secret["metadata"]["labels"][labels.SESSION] == "ab12cd34"
        assert secret["immutable"] is True

    def test_a_private_key_in_place_of_a_public_one_is_refused(self) -> None:
        private = self.options().host_private_key
        with pytest.raises(ValueError, match="private key"):
            manifests.shadow_secret(self.options(authorized_keys=private))

    def test_owner_patch_points_at_the_pod(self) -> None:
        patch = as_data(manifests.secret_owner_patch("kt-connect-shadow-abcde", "uid-1"))
        assert patch == {
            "metadata": {
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": "kt-connect-shadow-abcde",
                        "uid": "uid-1",
                    }
                ]
            }
        }

    def test_owner_patch_needs_a_uid(self) -> None:
        with pytest.raises(ValueError, match="uid"):
            manifests.secret_owner_patch("p", "")


PREVIEW_SESSION = SessionMeta("pr3v13w0", Role.PREVIEW, "bob@lap", NOW)
MESH_SESSION = SessionMeta("m3sh0001", Role.MESH, "bob@lap", NOW)
ORIGINAL_PORTS = (
    ServicePortSpec(port=80, target_port="http", name="http", app_protocol="http"),
    ServicePortSpec(port=9090, target_port=9091, name="metrics"),
)


class TestServices:
    def test_preview_service_is_cluster_ip_by_default(self) -> None:
        service = as_data(
            manifests.preview_service("web", "dev", PREVIEW_SESSION, (ShadowPort(8080),))
        )
        assert service["metadata"]["name"] == "web"
        assert service["spec"]["type"] == "ClusterIP"
        assert service["spec"]["ports"] == [
            {"name": "p8080", "port": 8080, "targetPort": 8080, "protocol": "TCP"}
        ]
        assert service["spec"]["selector"] == {
            "ktpy.dev/role": "preview",
            "ktpy.dev/session": "pr3v13w0",
        }
        assert service["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "ktpy"

    def test_preview_selects_its_own_shadow(self) -> None:
        service = manifests.preview_service("web", "dev", PREVIEW_SESSION, (ShadowPort(80),))
        pod = manifests.shadow_pod(
            pod_options(session=PREVIEW_SESSION, name="web-kt-abcde", ports=(ShadowPort(80),))
        )
        assert labels.selector_matches(service["spec"]["selector"], pod["metadata"]["labels"])
        other = manifests.shadow_pod(pod_options(name="web-kt-zzzzz"))
        assert not labels.selector_matches(service["spec"]["selector"], other["metadata"]["labels"])

    def test_preview_external_is_a_load_balancer(self) -> None:
        service = manifests.preview_service(
            "web", "dev", PREVIEW_SESSION, (ShadowPort(80, "http"),), external=True
        )
        assert service["spec"]["type"] == "LoadBalancer"
        assert service["spec"]["ports"][0]["name"] == "http"

    def test_preview_name_must_be_a_service_name(self) -> None:
        with pytest.raises(ValueError, match="cannot name a Service"):
            manifests.preview_service("9web", "dev", PREVIEW_SESSION, (ShadowPort(80),))

    def test_mesh_service_selects_the_mesh_shadow(self) -> None:
        service = manifests.mesh_service("nginx", "blue", "dev", MESH_SESSION, ORIGINAL_PORTS)
        assert service["metadata"]["name"] == "nginx-kt-mesh-blue"
        assert service["spec"]["selector"] == labels.shadow_selector("m3sh0001", Role.MESH)
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http", 9091]

    @pytest.mark.parametrize(
        ("selector", "ports", "message"),
        [
            ({}, ORIGINAL_PORTS, "needs a selector"),
            ({"app": "x"}, (), "at least one port"),
            ({"app": "x"}, (ServicePortSpec(1, 1), ServicePortSpec(2, 2)), "each needs a name"),
        ],
    )
    def test_bad_services(
        self, selector: dict[str, str], ports: tuple[ServicePortSpec, ...], message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            manifests.service_body("nginx-kt-stuntman", "dev", MESH_SESSION, selector, ports)


def test_the_shadow_moves_its_own_ports_out_of_a_services_way() -> None:
    assert manifests.own_ports_avoiding([80]) == (2222, 5353)
    assert manifests.own_ports_avoiding([2222, 2223, 5353]) == (2224, 5354)
    # A Service on port 22 named "ssh" gets it: the shadow's own names are prefixed.
    pod = manifests.shadow_pod(pod_options(ports=(ShadowPort(2222, "ssh"),), ssh_port=2223))
    (container,) = pod["spec"]["containers"]
    assert {"name": "ssh", "containerPort": 2222, "protocol": "TCP"} in container["ports"]
    assert {"name": "kt-ssh", "containerPort": 2223, "protocol": "TCP"} in container["ports"]
