"""`ktpy env` end to end (issue 20): the environment and files a container gets,
computed through the API, compared with what the running container really has."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import CLIENT_IMAGE, Bed, Laptop, local_server, run_ktpy

# What the API cannot show: the image's ENV and what the runtime adds.
NOT_VISIBLE = {"PATH", "HOSTNAME", "HOME"}

WORKLOAD = """
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config}
data: {greeting: hello, level: debug}
---
apiVersion: v1
kind: Secret
metadata: {name: app-secret}
stringData: {token: s3cr3t, password: hunter2, 1st: relaxed-name}
---
apiVersion: v1
kind: Service
metadata: {name: web-db}
spec:
  ports: [{name: pg, port: 5432}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: envy}
spec:
  replicas: 1
  selector: {matchLabels: {app: envy}}
  template:
    metadata: {labels: {app: envy, tier: back}}
    spec:
      containers:
      - name: main
        image: %(image)s
        imagePullPolicy: Never
        resources:
          requests: {cpu: 250m, memory: 32Mi}
          limits: {cpu: "1", memory: 64Mi}
        envFrom:
        - prefix: CFG_
          configMapRef: {name: app-config}
        - secretRef: {name: app-secret}
        env:
        - {name: LITERAL, value: plain}
        - {name: REF, value: "$(LITERAL)-and-$(CFG_greeting)"}
        - {name: ESCAPED, value: "$$(LITERAL)"}
        - {name: UNKNOWN, value: "$(NOPE)"}
        - {name: DB, value: "$(WEB_DB_SERVICE_HOST):$(WEB_DB_SERVICE_PORT)"}
        - name: FROM_CM
          valueFrom: {configMapKeyRef: {name: app-config, key: greeting}}
        - name: FROM_SECRET
          valueFrom: {secretKeyRef: {name: app-secret, key: token}}
        - name: MISSING_OPTIONAL
          valueFrom: {configMapKeyRef: {name: app-config, key: nope, optional: true}}
        - name: MY_NS
          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
        - name: MY_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        - name: MY_TIER
          valueFrom: {fieldRef: {fieldPath: "metadata.labels['tier']"}}
        - name: MEM_MB
          valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}
        - name: CPU_MILLI
          valueFrom: {resourceFieldRef: {resource: requests.cpu, divisor: 1m}}
        volumeMounts:
        - {name: config, mountPath: /etc/config}
        - {name: secret, mountPath: /etc/secret}
        - {name: both, mountPath: /etc/both}
        securityContext:
          runAsNonRoot: true
          allowPrivilegeEscalation: false
          capabilities: {drop: [ALL]}
          seccompProfile: {type: RuntimeDefault}
      volumes:
      - {name: config, configMap: {name: app-config, items: [{key: greeting, path: hi.txt}]}}
      - {name: secret, secret: {secretName: app-secret}}
      - name: both
        projected:
          sources:
          - configMap: {name: app-config, items: [{key: level, path: conf/level}]}
          - secret: {name: app-secret, items: [{key: token, path: token}]}
          - downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}
"""


def deploy(bed: Bed, ns: str) -> None:
    bed.apply(WORKLOAD % {"image": CLIENT_IMAGE}, ns)
    bed.kubectl("-n", ns, "rollout", "status", "deployment/envy", "--timeout=90s", timeout=100)


def real_env(bed: Bed, ns: str) -> dict[str, str]:
    out = bed.kubectl("-n", ns, "exec", "deploy/envy", "--", "env", "-0").stdout
    pairs = (item.partition("=") for item in out.split("\0") if item)
    return {k: v for k, _, v in pairs if k not in NOT_VISIBLE}


def ktpy(
    laptop: Laptop, ns: str, *args: str, user: str = "admin"
) -> subprocess.CompletedProcess[str]:
    return laptop.run(
        sys.executable, "-m", "ktpy", "-n", ns, *args, check=False, timeout=60, user=user
    )


def test_env_is_exactly_what_the_container_has_and_so_are_its_files(
    bed: Bed, namespace: str, laptop: Laptop, tmp_path: Path
) -> None:
    ns = namespace
    deploy(bed, ns)
    printed = ktpy(laptop, ns, "env", "deploy/envy", "-o", "json")
    assert printed.returncode == 0, printed.stderr
    computed = json.loads(printed.stdout)
    assert computed == real_env(bed, ns)
    assert computed["REF"] == "plain-and-hello"
    assert computed["ESCAPED"] == "$(LITERAL)"
    assert "MISSING_OPTIONAL" not in computed
    assert "MISSING_OPTIONAL: optional key 'nope'" in printed.stderr  # one line says why
    assert computed["1st"] == "relaxed-name"  # a valid name since Kubernetes 1.34
    # Without -o nothing secret reaches the terminal.
    quiet = ktpy(laptop, ns, "env", "deploy/envy")
    assert quiet.returncode == 0, quiet.stderr
    assert "s3cr3t" not in quiet.stdout + quiet.stderr

    # The files, at their mount paths, private.
    mounts = tmp_path / "mounts"
    written = ktpy(laptop, ns, "env", "deploy/envy", "--mount-dir", str(mounts))
    assert written.returncode == 0, written.stderr
    for path in ("/etc/config/hi.txt", "/etc/secret/token", "/etc/secret/password",
                 "/etc/both/conf/level", "/etc/both/token", "/etc/both/labels"):  # fmt: skip
        local = mounts / path.lstrip("/")
        real = bed.kubectl("-n", ns, "exec", "deploy/envy", "--", "cat", path).stdout
        assert local.read_text() == real, path
        assert stat.S_IMODE(local.stat().st_mode) == 0o600
        assert stat.S_IMODE(local.parent.stat().st_mode) == 0o700

    # A local command runs with that environment.
    ran = ktpy(laptop, ns, "env", "deploy/envy", "--", "sh", "-c", "echo $FROM_CM/$MY_NS")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().splitlines()[-1] == f"hello/{ns}"


def test_env_without_exec_rights_and_without_secret_reads(
    bed: Bed, namespace: str, laptop: Laptop
) -> None:
    ns = namespace
    deploy(bed, ns)
    admin = json.loads(ktpy(laptop, ns, "env", "deploy/envy", "-o", "json").stdout)
    bed.grant(ns, "dev-noexec")
    noexec = ktpy(laptop, ns, "env", "deploy/envy", "-o", "json", user="dev-noexec")
    assert noexec.returncode == 0, noexec.stderr
    # It may not read service/kubernetes in default: those variables are left out, said once.
    assert "KUBERNETES_SERVICE_HOST" in noexec.stderr or "kubernetes" in noexec.stderr
    expected = {k: v for k, v in admin.items() if not k.startswith("KUBERNETES_")}
    assert json.loads(noexec.stdout) == expected
    bed.grant(ns, "dev-nosecrets")
    refused = ktpy(laptop, ns, "env", "deploy/envy", "-o", "json", user="dev-nosecrets")
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
    assert refused.returncode == 11, refused.stderr
    assert len(errors) == 1
    assert "secrets" in errors[0]


def test_exchange_writes_the_env_file_and_removes_it_on_exit(
    bed: Bed, namespace: str, laptop: Laptop, tmp_path: Path
) -> None:
    ns = namespace
    deploy(bed, ns)
    bed.kubectl("-n", ns, "expose", "deployment", "envy", "--port", "80", "--target-port", "8080")
    env_file = tmp_path / "envy.env"
    server = local_server(laptop, 3001)
    session = run_ktpy(
        laptop, "-n", ns, "exchange", "envy", "--expose", "3001:80", "--env-file", str(env_file)
    )
    try:
        session.wait_ready(timeout=120)
        text = env_file.read_text()
        assert 'FROM_SECRET="s3cr3t"' in text
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    finally:
        assert session.stop(signal.SIGINT, timeout=120) == 130
        server.kill()
    assert not env_file.exists()
    deadline = time.monotonic() + 5
    while bed.ktpy_objects(ns) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert bed.ktpy_objects(ns) == []
