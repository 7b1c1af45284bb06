"""Typed shapes of the Kubernetes bodies ktpy builds (a subset of the API's fields).

Field names are the API's own (camelCase), so a body is sent as it is.
Bodies read back from the API server are plain ``JsonObject`` dicts: they
hold far more than these shapes, and ktpy reads them defensively.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

JsonObject = dict[str, Any]
# The field manager ktpy's writes carry (``metadata.managedFields``), so others see who
# changed their object, and ktpy tells its own writes from theirs.
FIELD_MANAGER = "ktpy"
Protocol = Literal["TCP", "UDP", "SCTP"]


class OwnerReference(TypedDict):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: NotRequired[bool]
    blockOwnerDeletion: NotRequired[bool]


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[OwnerReference]
    resourceVersion: str
    uid: str


class ContainerPort(TypedDict):
    name: str
    containerPort: int
    protocol: Protocol


class EnvVar(TypedDict):
    name: str
    value: str


class VolumeMount(TypedDict):
    name: str
    mountPath: str
    readOnly: bool


class Capabilities(TypedDict, total=False):
    add: list[str]
    drop: list[str]


class SeccompProfile(TypedDict):
    type: Literal["RuntimeDefault", "Localhost", "Unconfined"]


class SecurityContext(TypedDict, total=False):
    allowPrivilegeEscalation: bool
    capabilities: Capabilities
    privileged: bool
    readOnlyRootFilesystem: bool
    runAsNonRoot: bool
    runAsUser: int
    runAsGroup: int
    seccompProfile: SeccompProfile


class Sysctl(TypedDict):
    name: str
    value: str


class PodSecurityContext(TypedDict, total=False):
    runAsNonRoot: bool
    runAsUser: int
    runAsGroup: int
    fsGroup: int
    seccompProfile: SeccompProfile
    sysctls: list[Sysctl]


class TCPSocketAction(TypedDict):
    port: int | str


class Probe(TypedDict, total=False):
    tcpSocket: TCPSocketAction
    initialDelaySeconds: int
    periodSeconds: int
    timeoutSeconds: int
    successThreshold: int
    failureThreshold: int


class ResourceRequirements(TypedDict, total=False):
    requests: dict[str, str]
    limits: dict[str, str]


class Container(TypedDict, total=False):
    name: str
    image: str
    imagePullPolicy: Literal["Always", "IfNotPresent", "Never"]
    ports: list[ContainerPort]
    env: list[EnvVar]
    volumeMounts: list[VolumeMount]
    securityContext: SecurityContext
    readinessProbe: Probe
    resources: ResourceRequirements


class SecretVolumeSource(TypedDict, total=False):
    secretName: str
    defaultMode: int


class Volume(TypedDict, total=False):
    name: str
    secret: SecretVolumeSource


class LocalObjectReference(TypedDict):
    name: str


class PodSpec(TypedDict, total=False):
    containers: list[Container]
    volumes: list[Volume]
    securityContext: PodSecurityContext
    automountServiceAccountToken: bool
    enableServiceLinks: bool
    terminationGracePeriodSeconds: int
    restartPolicy: Literal["Always", "OnFailure", "Never"]
    imagePullSecrets: list[LocalObjectReference]
    nodeSelector: dict[str, str]


class Pod(TypedDict):
    apiVersion: Literal["v1"]
    kind: Literal["Pod"]
    metadata: ObjectMeta
    spec: PodSpec


class Secret(TypedDict):
    apiVersion: Literal["v1"]
    kind: Literal["Secret"]
    metadata: ObjectMeta
    type: str
    data: dict[str, str]
    immutable: NotRequired[bool]


class ServicePort(TypedDict, total=False):
    name: str
    port: int
    targetPort: int | str
    protocol: Protocol
    appProtocol: str


class ServiceSpec(TypedDict, total=False):
    type: Literal["ClusterIP", "LoadBalancer", "NodePort"]
    selector: dict[str, str]
    ports: list[ServicePort]


class Service(TypedDict):
    apiVersion: Literal["v1"]
    kind: Literal["Service"]
    metadata: ObjectMeta
    spec: ServiceSpec


class MetadataPatch(TypedDict):
    metadata: ObjectMeta


class LabelSelector(TypedDict):
    matchLabels: dict[str, str]


class PodTemplateSpec(TypedDict):
    metadata: ObjectMeta
    spec: PodSpec


class RollingUpdate(TypedDict, total=False):
    maxUnavailable: int | str
    maxSurge: int | str


class DeploymentStrategy(TypedDict, total=False):
    type: Literal["RollingUpdate", "Recreate"]
    rollingUpdate: RollingUpdate


class DeploymentSpec(TypedDict, total=False):
    replicas: int
    selector: LabelSelector
    strategy: DeploymentStrategy
    revisionHistoryLimit: int
    template: PodTemplateSpec


class Deployment(TypedDict):
    apiVersion: Literal["apps/v1"]
    kind: Literal["Deployment"]
    metadata: ObjectMeta
    spec: DeploymentSpec
