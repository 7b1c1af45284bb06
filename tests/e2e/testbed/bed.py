"""Bringing the whole bed up and down, and asking how it is."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from . import config, hostnet, kubebuild, node, pki, procs
from .procs import run

READY_MARKER = config.STATE_DIR / "ready"
RESOLVER = "resolver"


def log(message: str) -> None:
    print(f"[ktbed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit(
            "ktbed: the test bed changes the host's network and runs a kubelet: run it as root"
        )


# --- up ---------------------------------------------------------------------------


def is_up() -> bool:
    return (
        READY_MARKER.exists()
        and all(node.healthy(c) for c in config.COMPONENTS)
        and procs.alive(RESOLVER)
    )


def up(shadow_archive: Path | None = None) -> None:
    require_root()
    started = time.monotonic()
    if is_up():
        log("bed already up; checking addons and laptops")
        _ensure_images(shadow_archive)
        _ensure_laptops()
        _wait_workloads()
        log(f"up (reused) in {time.monotonic() - started:.1f}s")
        return
    if _anything_left():
        log("clearing what an earlier run left")
        down()
    if not kubebuild.binary_path().exists():
        # Measured on 2 vCPU (docs/testing.md): 9 min 39 s (2026-12-07) to 13 min cold.
        log("first start: building Kubernetes and the images takes 10-13 min on 2 cores")
    binary = kubebuild.build()
    kubebuild.link_components(binary)
    archives = _all_archives(shadow_archive)
    log(f"binaries and images ready after {time.monotonic() - started:.1f}s")

    for d in (config.STATE_DIR, config.RUN_DIR, config.LOG_DIR):
        d.mkdir(parents=True, exist_ok=True)
    hostnet.setup()
    pki.create_all()
    _start_resolver()
    node.prepare_etcd()
    for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        node.start(component)
        log(f"{component} healthy")
    node.write_containerd_config()
    node.write_cni_config()
    node.start("containerd")
    _import(archives)
    for component in ("kubelet", "kube-proxy"):
        node.start(component)
        log(f"{component} healthy")
    node.wait_node_ready()
    log("node Ready")
    _apply_addons(archives)
    _ensure_laptops()
    _wait_workloads()
    READY_MARKER.write_text(f"{kubebuild.binary_path().name}\n")
    log(f"up in {time.monotonic() - started:.1f}s; {export_line()}")


IMPORTED = config.STATE_DIR / "imported.json"


def _import(archives: dict[str, Path]) -> None:
    """Import each archive not imported yet into the bed's containerd. Keyed by
    archive path (which carries its content hash), so a rebuilt image replaces
    the old one under the same name."""
    done = set(json.loads(IMPORTED.read_text())) if IMPORTED.exists() else set()
    present = node.image_refs()
    for ref, path in archives.items():
        if str(path) in done and ref in present:
            continue
        run(node.ctr("images", "import", str(path)))
        done.add(str(path))
    IMPORTED.write_text(json.dumps(sorted(done)))


def _ensure_images(shadow_archive: Path | None) -> None:
    _import(_all_archives(shadow_archive))


def _all_archives(shadow_archive: Path | None) -> dict[str, Path]:
    from . import images  # the image pipeline is needed by `up` only

    archives = images.build_all(config.CACHE_DIR / "images")
    if shadow_archive is None:
        shadow_archive = build_shadow_image()
    archives[shadow_ref()] = shadow_archive
    return archives


def shadow_ref() -> str:
    """The default image ktpy of this checkout asks for: tagged with its version."""
    init = (config.REPO_ROOT / "ktpy" / "__init__.py").read_text()
    version = re.search(r'__version__ = "([^"]+)"', init)
    assert version, "ktpy/__init__.py has no __version__"
    return f"ghcr.io/ktpy/shadow:{version.group(1)}"


def build_shadow_image() -> Path:
    """The shadow image from shadow-image/, as users build it, cached by content."""
    from . import images

    context = config.REPO_ROOT / "shadow-image"
    digest = hashlib.sha256()
    for path in sorted(context.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(context).as_posix().encode())
            digest.update(path.read_bytes())
    ref = shadow_ref()
    tag = ref.rsplit(":", 1)[1]
    out = config.CACHE_DIR / "images" / f"shadow_{tag}-{digest.hexdigest()[:16]}.tar"
    if not out.exists():
        log(f"building the shadow image {ref}")
        images.build_dockerfile_image(context, ref, out)
    return out


def _start_resolver() -> None:
    procs.start(
        RESOLVER,
        [sys.executable, "-m", "tests.e2e.testbed.resolver"],
        env={"PYTHONPATH": str(config.REPO_ROOT)},
    )
    procs.wait_for("bed resolver", lambda: procs.alive(RESOLVER) and _resolver_answers(), 15)


def _resolver_answers() -> bool:
    from dnslib import DNSRecord

    reply = DNSRecord.question(f"www.{config.TEST_DOMAIN}").send(config.RESOLVER_IP, 53, timeout=1)
    return bool(DNSRecord.parse(reply).rr)


def _apply_addons(archives: dict[str, Path]) -> None:
    coredns_image = next(ref for ref in archives if "/coredns:" in ref)
    substitutions = {
        "${CLUSTER_DOMAIN}": config.CLUSTER_DOMAIN,
        "${CLUSTER_DNS_IP}": config.CLUSTER_DNS_IP,
        "${COREDNS_IMAGE}": coredns_image,
    }
    for name in ("policies.yaml", "coredns.yaml"):
        text = (config.HERE / "manifests" / name).read_text()
        for key, value in substitutions.items():
            text = text.replace(key, value)
        node.kubectl("apply", "-f", "-", input=text)


def _wait_workloads() -> None:
    node.kubectl(
        "-n",
        "kube-system",
        "rollout",
        "status",
        "deployment/coredns",
        "--timeout=120s",
        timeout=130,
    )


def _ensure_laptops() -> None:
    for n in config.BED_LAPTOPS:
        hostnet.create_laptop(n)


def export_line() -> str:
    return f"export KUBECONFIG={config.KUBECONFIG_DIR / 'admin.yaml'} PATH={config.BIN_DIR}:$PATH"


# --- down -------------------------------------------------------------------------


def _anything_left() -> bool:
    return bool(leftovers())


def leftovers() -> list[str]:
    """What of the bed exists on this host right now (empty after a clean `down`)."""
    found = [
        f"dir {d}" for d in (config.STATE_DIR, config.RUN_DIR, Path("/var/lib/cni")) if d.exists()
    ]
    found += [f"mount {m}" for m in _our_mounts()]
    found += [f"process {pid} {name}" for pid, name in _our_processes()]
    for link in (config.NODE_BRIDGE, config.POD_BRIDGE):
        if hostnet.link_exists(link):
            found.append(f"link {link}")
    for line in run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(config.LAPTOP_VETH_PREFIX):
            found.append(f"link {name}")
    netns = Path("/run/netns")
    if netns.exists():
        found += [
            f"netns {p.name}"
            for p in netns.iterdir()
            if p.name.startswith((config.LAPTOP_PREFIX, "cni-"))
        ]
    found += [f"chain {c}" for c in hostnet.leftover_chains()]
    found += [f"cgroup {c}" for c in _our_cgroups()]
    if Path("/etc/netns").exists():
        found += [f"file {p}" for p in Path("/etc/netns").glob(config.LAPTOP_PREFIX + "*")]
    return found


def _our_mounts() -> list[str]:
    prefixes = (
        str(config.STATE_DIR),
        str(config.RUN_DIR),
        "/run/netns/cni-",
        "/run/netns/" + config.LAPTOP_PREFIX,
        "/var/lib/cni",
    )
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4].replace("\\040", " ")
        if target.startswith(prefixes):
            mounts.append(target)
    return mounts


def _our_processes() -> list[tuple[int, str]]:
    """Bed daemons, found by what they run rather than by pid files (a killed `up` leaves none)."""
    kube_binaries = (
        {str(p) for p in kubebuild.BIN_CACHE.glob("kube-*")}
        if kubebuild.BIN_CACHE.exists()
        else set()
    )
    laptop_nets = {p.stat().st_ino for p in Path("/run/netns").glob(config.LAPTOP_PREFIX + "*")}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = str((entry / "exe").readlink()).removesuffix(" (deleted)")
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in cmdline if a]
        text = " ".join(args)
        ours = (
            _net_inode(entry) in laptop_nets  # anything still running in a laptop
            or exe in kube_binaries
            or (exe == "/usr/bin/containerd" and str(node.CONTAINERD_CONFIG) in text)
            or ("containerd-shim" in exe and config.CONTAINERD_ADDRESS in text)
            or "tests.e2e.testbed.resolver" in text
        )
        if ours:
            found.append((int(entry.name), Path(args[0]).name if args else exe))
    pids = {pid for pid, _ in found}
    for cg in _our_cgroups():
        procs_file = Path(cg) / "cgroup.procs"
        for pid_text in procs_file.read_text().split() if procs_file.exists() else ():
            if int(pid_text) not in pids:
                found.append((int(pid_text), "pod process"))
                pids.add(int(pid_text))
    return found


def _net_inode(proc_entry: Path) -> int | None:
    try:
        return (proc_entry / "ns" / "net").stat().st_ino
    except OSError:
        return None


def _our_cgroups() -> list[str]:
    found = []
    root = Path("/sys/fs/cgroup")
    for hierarchy in root.iterdir() if root.exists() else ():
        top = hierarchy / "kubepods"
        if top.is_dir():
            found += sorted((str(p) for p in top.rglob("*") if p.is_dir()), key=len, reverse=True)
            found.append(str(top))
    return found


def down() -> None:
    require_root()
    started = time.monotonic()
    procs.stop("kube-proxy")
    procs.stop("kubelet")
    if kubebuild.BIN_CACHE.exists() and (config.BIN_DIR / "kube-proxy").exists():
        run([str(config.BIN_DIR / "kube-proxy"), "--cleanup"], check=False, timeout=60)
    if procs.alive("containerd"):
        _remove_containers()
    for component in (
        "containerd",
        "kube-scheduler",
        "kube-controller-manager",
        "kube-apiserver",
        "etcd",
        RESOLVER,
    ):
        procs.stop(component)
    for pid, _ in _our_processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    for mount in sorted(_our_mounts(), key=len, reverse=True):
        if run(["umount", mount], check=False).returncode != 0:
            run(["umount", "-l", mount], check=False)
    hostnet.teardown()
    for cg in _our_cgroups():
        with contextlib.suppress(OSError):
            Path(cg).rmdir()
    for d in (config.STATE_DIR, config.RUN_DIR, Path("/var/lib/cni")):
        if d.exists():
            run(["rm", "-rf", "--one-file-system", str(d)], check=False)
    left = leftovers()
    if left:
        raise SystemExit("ktbed: down left behind:\n  " + "\n  ".join(left))
    log(f"down in {time.monotonic() - started:.1f}s, nothing left")


def _remove_containers() -> None:
    for task in run(node.ctr("tasks", "ls", "-q"), check=False).stdout.split():
        run(node.ctr("tasks", "kill", "-s", "SIGKILL", task), check=False)
        run(node.ctr("tasks", "delete", "-f", task), check=False)
    for container in run(node.ctr("containers", "ls", "-q"), check=False).stdout.split():
        run(node.ctr("containers", "delete", container), check=False)


# --- status and restart -------------------------------------------------------------


def status() -> int:
    healthy = True
    for component in (*config.COMPONENTS, RESOLVER):
        ok = procs.alive(RESOLVER) if component == RESOLVER else node.healthy(component)
        healthy &= ok
        print(f"{component:26} {'healthy' if ok else 'DOWN'}")
    if healthy:
        print(f"{'node ' + config.NODE_NAME:26} {'Ready' if node.node_ready() else 'NOT READY'}")
        dns = node.kubectl(
            "-n",
            "kube-system",
            "get",
            "deploy",
            "coredns",
            "-o",
            "jsonpath={.status.readyReplicas}",
            check=False,
        ).stdout
        print(f"{'coredns':26} {dns or 0} ready")
    print(f"{'laptops':26} {' '.join(hostnet.laptops()) or '-'}")
    print(export_line())
    return 0 if healthy else 1


RESTARTABLE = {
    "apiserver": "kube-apiserver",
    "kubelet": "kubelet",
    "kube-proxy": "kube-proxy",
    "coredns": "coredns",
}


def stop(which: str) -> None:
    """Stop one component and leave it stopped (fault tests; ``start`` brings it back).
    Every session on the bed feels it: run it under the exclusive bed lock."""
    require_root()
    component = RESTARTABLE[which]
    if component == "coredns":
        raise SystemExit("ktbed: coredns is a Deployment; restart it instead")
    node.stop(component)
    log(f"{which} stopped")


def start(which: str) -> None:
    """Start a component ``stop`` stopped and wait for a Ready node."""
    require_root()
    node.start(RESTARTABLE[which])
    node.wait_node_ready()
    log(f"{which} started; node Ready")


@contextlib.contextmanager
def stopped(which: str) -> Iterator[None]:
    """One component stopped for the block (the API server gone mid-command), then
    started again, the node Ready, whatever the block raised."""
    stop(which)
    try:
        yield
    finally:
        start(which)


def restart(which: str) -> None:
    require_root()
    component = RESTARTABLE[which]
    if component == "coredns":
        node.kubectl("-n", "kube-system", "rollout", "restart", "deployment/coredns")
        _wait_workloads()
    else:
        node.restart(component)
    node.wait_node_ready()
    log(f"{which} restarted; node Ready")
