"""ktpy reads kubeconfigs as kubectl does: exec credential plugins and proxy-url,
for the API calls and for the port-forward that carries the tunnel."""

from __future__ import annotations

import base64
import json
import pwd
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import yaml

from tests.e2e.conftest import Bed, Laptop, run_ktpy
from tests.e2e.testbed import config

PROXY = r"""
import socket, sys, threading
count = 0
lock = threading.Lock()
def pipe(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        try: b.shutdown(socket.SHUT_WR)
        except OSError: pass
def serve(client):
    global count
    head = b""
    while b"\r\n\r\n" not in head:
        head += client.recv(4096)
    target = head.split()[1].decode()
    host, port = target.rsplit(":", 1)
    host = sys.argv[3] if host == "kubernetes" else host  # only the proxy knows this name
    upstream = socket.create_connection((host, int(port)))
    with lock:
        count += 1
        open(sys.argv[2], "w").write(str(count))
    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
    pipe(client, upstream)
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def _dev_kubeconfig(bed: Bed) -> dict[str, object]:
    body: dict[str, object] = yaml.safe_load(bed.kubeconfig("dev").read_text())
    return body


def _plugin_kubeconfig(bed: Bed, where: Path) -> tuple[dict[str, object], Path]:
    """The dev user's kubeconfig with its certificate handed out by an exec plugin
    that appends "<uid> <HOME>" to the returned file at each call."""
    kubeconfig = _dev_kubeconfig(bed)
    user = kubeconfig["users"][0]["user"]  # type: ignore[index]
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {
            "clientCertificateData": base64.b64decode(user["client-certificate-data"]).decode(),
            "clientKeyData": base64.b64decode(user["client-key-data"]).decode(),
        },
    }
    plugin = where / "credential-plugin"
    calls = where / "plugin-calls"
    plugin.write_text(
        f'#!/bin/sh\necho "$(id -u) $HOME" >> {calls}\n'
        f"cat <<'EOF'\n{json.dumps(credential)}\nEOF\n"
    )
    plugin.chmod(0o755)
    kubeconfig["users"][0]["user"] = {  # type: ignore[index]
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": str(plugin),
            "interactiveMode": "Never",
        }
    }
    return kubeconfig, calls


def test_exec_credential_plugin_and_proxy_url(
    bed: Bed, echo: str, laptop: Laptop, tmp_path: Path
) -> None:
    ns = echo
    bed.grant(ns, "dev")
    kubeconfig, calls = _plugin_kubeconfig(bed, tmp_path)
    cluster = kubeconfig["clusters"][0]["cluster"]  # type: ignore[index]
    cluster["proxy-url"] = "http://127.0.0.1:3128"
    # A name the laptop cannot resolve (only the proxy can), in the server certificate:
    # a request that bypassed the proxy would fail.
    cluster["server"] = f"https://kubernetes:{config.API_PORT}"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))

    proxied = tmp_path / "proxied"
    proxy = laptop.popen(sys.executable, "-c", PROXY, "3128", str(proxied), config.NODE_IP)
    try:
        assert proxy.stdout is not None
        assert proxy.stdout.readline().strip() == "ready"
        env = {"KUBECONFIG": str(path)}
        session = run_ktpy(laptop, "-n", ns, "connect", "--mode", "socks", "--socks-port", "2320",
                           env=env)  # fmt: skip
        try:
            session.wait_ready()
            answer = laptop.run(
                "curl", "-sf", "--max-time", "10", "--socks5-hostname", "127.0.0.1:2320",
                f"http://echo.{ns}/", env=env,
            )  # fmt: skip
            assert json.loads(answer.stdout)["namespace"] == ns
        finally:
            assert session.stop(signal.SIGINT) == 130
        assert len(calls.read_text().splitlines()) >= 1  # the plugin gave the credentials
        # API calls and the tunnel's port-forward both went through the proxy: the
        # laptop cannot resolve "kubernetes" itself.
        assert laptop.run("getent", "hosts", "kubernetes", check=False).returncode == 2
        assert int(proxied.read_text()) >= 2
    finally:
        proxy.terminate()
        proxy.wait(10)


def test_under_sudo_the_plugin_runs_as_the_invoking_user(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    # As `sudo ktpy` would run: root, with SUDO_USER naming the person (here nobody,
    # uid 65534, home /nonexistent). Their plugin must not run as root.
    ns = echo
    bed.grant(ns, "dev")
    # Outside pytest's 0700 temporary tree: nobody must reach the plugin.
    shared = Path(tempfile.mkdtemp(prefix="ktpy-sudo-plugin-"))
    try:
        shared.chmod(0o755)
        kubeconfig, calls = _plugin_kubeconfig(bed, shared)
        calls.touch(mode=0o666)
        calls.chmod(0o666)  # the plugin, as nobody, records its calls here
        path = shared / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        nobody = pwd.getpwnam("nobody")
        laptop.run(
            sys.executable,
            "-m",
            "ktpy",
            "-n",
            ns,
            "status",
            env={"KUBECONFIG": str(path), "SUDO_USER": "nobody"},
        )  # fmt: skip (exit 0: the API answered with the plugin's credentials)
        recorded = {tuple(line.split(" ", 1)) for line in calls.read_text().splitlines()}
        assert recorded == {(str(nobody.pw_uid), nobody.pw_dir)}
    finally:
        shutil.rmtree(shared)
