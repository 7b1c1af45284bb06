"""The paths the suite measures side by side, each a way from the same laptop (or
the node) to the same echo pod: ktpy connect's TUN and SOCKS modes, and the
baselines it is held against.

- direct: from the node (this machine) to the pod's address: the machine's limit.
- kubectl port-forward, WebSocket and SPDY; ktpy's own port-forward client
  without SSH (benchmarks/raw_forward.py).
- ssh_d: OpenSSH `ssh -D` over a kubectl port-forward (WebSocket) to connect's
  own shadow pod (a key of the suite's added to its authorized_keys): what the
  SOCKS mode replaces.
- redsocks: kt-connect's design from native parts: that `ssh -D` plus redsocks
  (a C transparent TCP-to-SOCKS5 redirector, Debian's package) with an iptables
  REDIRECT of the cluster's ranges in the laptop's network namespace, in place of
  kt-connect's Go tun2socks. kt-connect itself cannot be built here: the Go module
  proxy refuses its module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import host_stats
from tests.e2e.testbed import config, hostnet

ROOT = Path(__file__).resolve().parents[1]
KUBECONFIG = str(config.KUBECONFIG_DIR / "admin.yaml")
KUBECTL = [str(config.BIN_DIR / "kubectl"), f"--kubeconfig={KUBECONFIG}"]
REDSOCKS_CHAIN = "KTPY-BENCH-REDSOCKS"
# Where the shadow's entrypoint keeps its copies of the Secret (shadow-image/entrypoint.sh).
SHADOW_RUN_DIR = "/tmp/ktpy"  # noqa: S108 - a path inside the pod


def kubectl(*args: str, stdin: str | None = None, timeout: float = 120) -> str:
    return subprocess.run(
        [*KUBECTL, *args],
        check=True,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
    ).stdout


class Laptop:
    """A laptop of the bed (its network, mount and PID namespaces) running the suite's
    processes; `number` is the bed's laptop number."""

    def __init__(self, number: int, make: bool) -> None:
        self.number = number
        self.made = make
        if make:
            hostnet.delete_laptop(config.laptop_name(number))
            hostnet.create_laptop(number)
        self.name = config.laptop_name(number)
        self.env = {
            **os.environ,
            "KUBECONFIG": KUBECONFIG,
            "PYTHONPATH": str(ROOT),
            "PATH": f"{config.BIN_DIR}:{os.environ['PATH']}",
        }
        self.workdir = Path(tempfile.mkdtemp(prefix="ktpy-suite-"))

    def popen(
        self,
        *cmd: str,
        stdin: int | None = subprocess.DEVNULL,
        log: str | None = None,
        **extra: str,
    ) -> hostnet.LaptopProcess:
        """cmd in the laptop; stdout piped, stderr to workdir/log (or piped)."""
        err: Any = subprocess.PIPE
        if log is not None:
            err = (self.workdir / log).open("w")
        return hostnet.LaptopProcess(
            [*hostnet.laptop_command(self.name), *cmd],
            cwd=ROOT,
            text=True,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=err,
            env={**self.env, **extra},
        )

    def run(self, *cmd: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [*hostnet.laptop_command(self.name), *cmd],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{cmd} in {self.name} failed: {done.stderr.strip()[-800:]}")
        return done.stdout

    def load(self, *args: str, timeout: float = 300) -> dict[str, Any]:
        out = self.run(sys.executable, "-m", "benchmarks.load", *args, timeout=timeout)
        result: dict[str, Any] = json.loads(out.splitlines()[-1])
        return result

    def wait_port(self, port: int, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
        code = (
            "import socket,sys,time\n"
            f"end=time.monotonic()+{timeout}\n"
            "while time.monotonic()<end:\n"
            "    try: socket.create_connection(('127.0.0.1',%d),timeout=1).close(); sys.exit(0)\n"
            "    except OSError: time.sleep(0.05)\n"
            "sys.exit(1)\n"
        ) % port
        if (
            subprocess.run(
                [*hostnet.laptop_command(self.name), sys.executable, "-c", code],
                env=self.env,
                timeout=timeout + 10,
                check=False,
            ).returncode
            != 0
            or proc.poll() is not None
        ):
            raise RuntimeError(f"nothing listens on {port} in {self.name}: {describe(proc)}")

    def close(self, *, keep_logs: bool = False) -> None:
        if self.made:
            hostnet.delete_laptop(self.name)
        if keep_logs:
            print(f"the suite's logs are in {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def node_load(*args: str, timeout: float = 300, netns_of: int | None = None) -> dict[str, Any]:
    """The load tool on the node, or in the network namespace of host pid netns_of (a pod's)."""
    prefix = ["nsenter", f"--net=/proc/{netns_of}/ns/net"] if netns_of else []
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "benchmarks.load", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if done.returncode != 0:
        raise RuntimeError(f"load {args} on the node failed: {done.stderr.strip()[-800:]}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def describe(proc: subprocess.Popen[Any]) -> str:
    if proc.poll() is None:
        return "still running"
    err = proc.stderr.read() if proc.stderr else ""
    return f"exited {proc.returncode}: {str(err)[-600:]}"


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGINT, timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Route:
    """One way to the echo pod: where the load tool runs and what it connects to."""

    name: str
    host: str
    port: int
    socks: int | None = None
    on_node: bool = False
    # The baseline's helper processes, each riding on the one before (Helpers.revive).
    helpers: tuple[str, ...] = ()
    # The host pids whose trees do this path's work on the laptop (CPU, memory).
    roots: Callable[[], list[int]] = field(default=list)
    # Around each use (redsocks' iptables rule).
    use: Callable[[], contextlib.AbstractContextManager[None]] = field(
        default=lambda: contextlib.nullcontext()
    )

    def target(self) -> list[str]:
        return [self.host, str(self.port), *(["--socks", str(self.socks)] if self.socks else [])]


class Helpers:
    """The baselines' long-lived processes in the laptop, started once, stopped at the end."""

    def __init__(self, laptop: Laptop, namespace: str) -> None:
        self.laptop = laptop
        self.namespace = namespace
        self.procs: dict[str, hostnet.LaptopProcess] = {}
        self.specs: dict[str, tuple[int, tuple[str, ...], dict[str, str]]] = {}
        # Helpers that died under load and were started again (kubectl port-forward
        # ends with "lost connection to pod"), with the last line each said.
        self.deaths: dict[str, list[str]] = {}
        self.redsocks_ranges: tuple[str, ...] = ()

    def start(self, name: str, port: int, *cmd: str, **env: str) -> hostnet.LaptopProcess:
        self.specs[name] = (port, cmd, env)
        proc = self.laptop.popen(*cmd, log=f"{name}.log", **env)
        self.procs[name] = proc
        self.laptop.wait_port(port, proc)
        return proc

    def revive(self, *names: str) -> list[str]:
        """Start again, in order, those of names that died (and every later one, which
        rides on it: ssh -D on its port-forward); the names started again."""
        again: list[str] = []
        for name in names:
            if again or self.procs[name].poll() is not None:
                log = self.laptop.workdir / f"{name}.log"
                last = (log.read_text().strip().splitlines() or [""])[-1]
                self.deaths.setdefault(name, []).append(last)
                stop(self.procs[name], signal.SIGTERM, timeout=10)
                port, cmd, env = self.specs[name]
                self.start(name, port, *cmd, **env)
                again.append(name)
        return again

    def pid(self, name: str) -> int:
        return self.procs[name].command_pid()

    def port_forward(self, name: str, pod: str, local: int, remote: int, websockets: bool) -> None:
        self.start(
            name,
            local,
            "kubectl",
            "-n",
            self.namespace,
            "port-forward",
            f"pod/{pod}",
            f"{local}:{remote}",
            PORT_FORWARD_WEBSOCKETS="true" if websockets else "false",
        )

    def authorize(self, shadow_pod: str) -> tuple[Path, str]:
        """A key of the suite's own, added to the shadow pod's authorized_keys (its sshd
        reads the file at each login); the key's path and the pod's host key."""
        key = self.laptop.workdir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        exec_ = ["-n", self.namespace, "exec", "-i", shadow_pod, "--"]
        kubectl(*exec_, "sh", "-c", f"cat >> {SHADOW_RUN_DIR}/authorized_keys",
                stdin=key.with_suffix(".pub").read_text())  # fmt: skip
        host_key = kubectl(*exec_, "cat", f"{SHADOW_RUN_DIR}/ssh_host_ed25519_key.pub").split()
        return key, f"{host_key[0]} {host_key[1]}"

    def ssh_socks(self, name: str, key: Path, host_key: str, forward_port: int, socks: int) -> None:
        """`ssh -D` to the shadow's sshd through the port-forward on forward_port."""
        known = self.laptop.workdir / f"known_hosts-{name}"
        known.write_text(f"[127.0.0.1]:{forward_port} {host_key}\n")
        options = ["-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                   "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes"]  # fmt: skip
        # -c: the cipher ktpy's SSH client picks first, so both carry the same crypto
        self.start(name, socks, "ssh", "-N", "-D", f"127.0.0.1:{socks}", "-p",
                   str(forward_port), "-i", str(key), *options, "-c", "aes128-gcm@openssh.com",
                   "kt@127.0.0.1")  # fmt: skip

    def redsocks(self, socks: int, listen: int, ranges: tuple[str, ...]) -> None:
        conf = self.laptop.workdir / "redsocks.conf"
        conf.write_text(
            "base { log_debug = off; log_info = off; log = stderr; daemon = off;"
            " redirector = iptables; }\n"
            f"redsocks {{ local_ip = 127.0.0.1; local_port = {listen}; ip = 127.0.0.1;"
            f" port = {socks}; type = socks5; }}\n"
        )
        self.start("redsocks", listen, "redsocks", "-c", str(conf))
        self.redsocks_ranges = ranges
        self.laptop.run("iptables", "-w", "-t", "nat", "-N", REDSOCKS_CHAIN)
        for cidr in ranges:
            self.laptop.run(
                "iptables",
                "-w",
                "-t",
                "nat",
                "-A",
                REDSOCKS_CHAIN,
                "-d",
                cidr,
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                str(listen),
            )

    @contextlib.contextmanager
    def redirected(self) -> Iterator[None]:
        """The cluster ranges redirected to redsocks while the block runs (connect's
        TUN routes carry them otherwise)."""
        rule = ["-p", "tcp", "-j", REDSOCKS_CHAIN]
        self.laptop.run("iptables", "-w", "-t", "nat", "-I", "OUTPUT", "1", *rule)
        try:
            yield
        finally:
            self.laptop.run("iptables", "-w", "-t", "nat", "-D", "OUTPUT", *rule)

    def tree(self, *names: str) -> list[int]:
        return [self.pid(n) for n in names if n in self.procs]

    def stop_all(self) -> None:
        for proc in reversed(self.procs.values()):
            stop(proc, signal.SIGTERM, timeout=10)
        if self.redsocks_ranges:
            with contextlib.suppress(RuntimeError):
                self.laptop.run("iptables", "-w", "-t", "nat", "-F", REDSOCKS_CHAIN)
                self.laptop.run("iptables", "-w", "-t", "nat", "-X", REDSOCKS_CHAIN)


def pod_netns_pid(pod_uid: str) -> int:
    """A host pid in the pod's network namespace (one of its processes)."""
    procs = next(Path("/sys/fs/cgroup/pids/kubepods").glob(f"**/pod{pod_uid}"), None)
    if procs is None:
        procs = next(Path("/sys/fs/cgroup").glob(f"**/pod{pod_uid}"))
    for path in procs.glob("**/cgroup.procs"):
        for line in path.read_text().split():
            return int(line)
    raise RuntimeError(f"no process in pod {pod_uid}")


def free_tree_stats(roots: list[int]) -> host_stats.TreeStats:
    return host_stats.tree_stats(*roots) if roots else host_stats.TreeStats(0, 0.0, 0, 0)
