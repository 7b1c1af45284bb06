"""The bed's changes to the host network, each with its removal.

Boundary rules (why nothing leaves the machine and laptops reach only the API):
- the service, pod and laptop ranges are routed to NODE_BRIDGE, an empty bridge,
  so a packet no kube-proxy rule rewrites dies here instead of taking eth0;
- mangle FORWARD drops anything forwarded from the pod bridge or a laptop to eth0;
- raw PREROUTING admits from a laptop veth only the API server port and the bed
  resolver on NODE_IP; everything else, including a route a laptop adds itself
  towards pods or ClusterIPs, is dropped before conntrack and kube-proxy's DNAT.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from . import config, procs
from .procs import run

SYSCTLS_TOUCHED = (
    # set by the bed
    "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    # set by kubelet and kube-proxy on start
    "kernel.panic",
    "kernel.panic_on_oops",
    "vm.overcommit_memory",
    "net.ipv4.conf.all.route_localnet",
)
SYSCTL_BACKUP = (
    config.CACHE_DIR / "host-sysctls.json"
)  # kept in the cache: it must outlive STATE_DIR
CHAIN_PREFIXES = ("KTBED-", "KUBE-", "CNI-")
EGRESS_CHAIN = "KTBED-EGRESS"
UPLINK = "eth0"


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def save_sysctls() -> None:
    """Record the host's values once, before the first change of a bed run."""
    if SYSCTL_BACKUP.exists():
        return
    values = {}
    for name in SYSCTLS_TOUCHED:
        path = _sysctl_path(name)
        if path.exists():
            values[name] = path.read_text().strip()
    SYSCTL_BACKUP.parent.mkdir(parents=True, exist_ok=True)
    SYSCTL_BACKUP.write_text(json.dumps(values, indent=1))


def restore_sysctls() -> None:
    if not SYSCTL_BACKUP.exists():
        return
    for name, value in json.loads(SYSCTL_BACKUP.read_text()).items():
        with contextlib.suppress(OSError):
            _sysctl_path(name).write_text(value + "\n")
    SYSCTL_BACKUP.unlink()


def set_sysctl(name: str, value: str) -> None:
    _sysctl_path(name).write_text(value + "\n")


def link_exists(name: str, netns: str | None = None) -> bool:
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    return run([*prefix, "link", "show", name], check=False).returncode == 0


def _ipt(table: str, *args: str, v6: bool = False) -> None:
    run(["ip6tables" if v6 else "iptables", "-w", "-t", table, *args])


def _ensure_chain(table: str, chain: str, v6: bool = False) -> None:
    tool = "ip6tables" if v6 else "iptables"
    if run([tool, "-w", "-t", table, "-nL", chain], check=False).returncode != 0:
        _ipt(table, "-N", chain, v6=v6)
    else:
        _ipt(table, "-F", chain, v6=v6)


def _ensure_jump(table: str, parent: str, rule: list[str], v6: bool = False) -> None:
    tool = "ip6tables" if v6 else "iptables"
    if run([tool, "-w", "-t", table, "-C", parent, *rule], check=False).returncode != 0:
        _ipt(table, "-I", parent, "1", *rule, v6=v6)


def setup() -> None:
    save_sysctls()
    set_sysctl("net.ipv4.ip_forward", "1")
    if not link_exists(config.NODE_BRIDGE):
        run(["ip", "link", "add", config.NODE_BRIDGE, "type", "bridge"])
    run(["ip", "link", "set", config.NODE_BRIDGE, "up"])
    run(["ip", "addr", "replace", f"{config.NODE_IP}/32", "dev", config.NODE_BRIDGE])
    for cidr in (config.SERVICE_CIDR, config.CLUSTER_CIDR, str(config.LAPTOP_NET)):
        run(["ip", "route", "replace", cidr, "dev", config.NODE_BRIDGE])

    _ensure_chain("mangle", EGRESS_CHAIN)
    for source in (config.POD_BRIDGE, config.LAPTOP_VETH_PREFIX + "+", config.NODE_BRIDGE):
        _ipt("mangle", "-A", EGRESS_CHAIN, "-i", source, "-o", UPLINK, "-j", "DROP")
    _ensure_jump("mangle", "FORWARD", ["-j", EGRESS_CHAIN])

    chain = config.IPTABLES_CHAIN
    _ensure_chain("raw", chain)
    for proto, port in (("tcp", config.API_PORT), ("udp", 53), ("tcp", 53)):
        _ipt(
            "raw",
            "-A",
            chain,
            "-d",
            config.NODE_IP,
            "-p",
            proto,
            "--dport",
            str(port),
            "-j",
            "ACCEPT",
        )
    _ipt("raw", "-A", chain, "-j", "DROP")
    _ensure_jump("raw", "PREROUTING", ["-i", config.LAPTOP_VETH_PREFIX + "+", "-j", chain])
    _ensure_chain("raw", chain, v6=True)
    _ipt("raw", "-A", chain, "-j", "DROP", v6=True)
    _ensure_jump("raw", "PREROUTING", ["-i", config.LAPTOP_VETH_PREFIX + "+", "-j", chain], v6=True)


MOUNT_NS_DIR = config.RUN_DIR / "laptops"
KTPY_STATE = Path("/var/lib/ktpy")  # a mount point only: each laptop mounts its own
RESOLVER_FLAVOURS = ("plain", "resolved")
RESOLVED_CONF = """[Resolve]
DNS={dns}
LLMNR=no
MulticastDNS=no
DNSSEC=no
DNSStubListener=yes
"""
STUB_RESOLV_CONF = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"


LAPTOP_EXEC = Path(__file__).with_name("laptop_exec.py")


def mount_ns_file(name: str) -> Path:
    return MOUNT_NS_DIR / f"{name}.mnt"


def pid_ns_file(name: str) -> Path:
    return MOUNT_NS_DIR / f"{name}.pid"


def uts_ns_file(name: str) -> Path:
    return MOUNT_NS_DIR / f"{name}.uts"


def _is_bound(path: Path) -> bool:
    """Whether a namespace is bind-mounted on path (cheaper than asking `mountpoint`)."""
    try:
        return path.stat().st_dev != path.parent.stat().st_dev
    except OSError:
        return False


def laptop_command(name: str) -> list[str]:
    """The argv prefix that runs a command inside laptop `name`, a machine of its own:
    its network namespace, its mount namespace (its /etc/resolv.conf, its /sys, its
    /run for resolved, its /proc), its PID namespace and its UTS namespace (hostname
    `name`). The runner (laptop_exec.py) forwards signals to the command, and a kill
    -9 of the runner kills the command. A laptop made before laptops had PID and UTS
    namespaces (a bed that was up across the change) is entered without them."""
    spaces = ["--net", f"/run/netns/{name}", "--mount", str(mount_ns_file(name))]
    if _is_bound(pid_ns_file(name)):
        spaces += ["--pid", str(pid_ns_file(name)), "--uts", str(uts_ns_file(name))]
    return [sys.executable, "-I", "-S", str(LAPTOP_EXEC), *spaces, "--"]


class LaptopProcess(subprocess.Popen[str]):
    """A command run in a laptop through its runner (testbed/laptop_exec.py), which
    stays outside the laptop's PID namespace as the command's parent. Signals go to
    the command itself, by its host pid (the runner's child): a SIGKILL kills the
    command, which its runner then reaps and mirrors, as a shell would on a laptop."""

    def command_pid(self, timeout: float = 5.0) -> int:
        """The host pid of the command (the runner's pid if it exec'd it directly)."""
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            try:
                runner = (Path("/proc") / str(self.pid) / "cmdline").read_bytes()
                if LAPTOP_EXEC.name.encode() not in runner:
                    return self.pid  # no PID namespace to enter: the runner became the command
                task = Path("/proc") / str(self.pid) / "task" / str(self.pid)
                children = (task / "children").read_text().split()
            except OSError:
                break
            if children:
                return int(children[0])
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)  # between the runner's start and its fork
        return self.pid

    def namespace_pid(self) -> int:
        """The command's pid as the laptop sees it (the last of its NSpid numbers)."""
        status = (Path("/proc") / str(self.command_pid()) / "status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("NSpid:"))
        return int(line.split()[-1])

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.command_pid(), sig)


def _ensure_private_dir(path: Path) -> None:
    # A mount namespace can only be pinned by a bind mount on a private mount.
    path.mkdir(parents=True, exist_ok=True)
    if run(["mountpoint", "-q", str(path)], check=False).returncode != 0:
        run(["mount", "--bind", str(path), str(path)])
        run(["mount", "--make-private", str(path)])


def _settle_ipv6(name: str, timeout: float = 10.0) -> None:
    """Wait until eth0's IPv6 link-local address is there and not "tentative" (its
    local route appears only then, so a snapshot of the laptop taken before differs
    from a later one with nothing having changed it). create_laptop turns duplicate
    address detection off, so this is at once unless that failed."""
    disabled = run(
        ["ip", "netns", "exec", name, "cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6"],
        check=False,
    )
    if disabled.returncode != 0 or disabled.stdout.strip() == "1":
        return  # no IPv6 in this laptop: nothing to settle

    def settled() -> bool:
        shown = run(["ip", "-n", name, "-6", "addr", "show", "dev", "eth0", "scope", "link"])
        return "inet6" in shown.stdout and "tentative" not in shown.stdout

    procs.wait_for(f"{name}'s IPv6 link-local address to settle", settled, timeout, 0.1)


def create_laptop(n: int, resolver: str = "plain") -> str:
    """Make (or repair) laptop n: a network namespace behind a veth pair with a
    mount namespace of its own, whose resolver is a plain resolv.conf or a
    systemd-resolved (with its own D-Bus system bus) using the bed resolver."""
    if resolver not in RESOLVER_FLAVOURS:
        raise ValueError(f"resolver flavour must be one of {RESOLVER_FLAVOURS}")
    name = config.laptop_name(n)
    host_end, laptop_end = config.laptop_addresses(n)
    veth = f"{config.LAPTOP_VETH_PREFIX}{n}"
    if not Path(f"/run/netns/{name}").exists():
        run(["ip", "netns", "add", name])
    if not link_exists(veth):
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name])
    run(["ip", "addr", "replace", f"{host_end}/24", "dev", veth])
    run(["ip", "link", "set", veth, "up"])
    run(["ip", "-n", name, "link", "set", "lo", "up"])
    run(["ip", "-n", name, "addr", "replace", f"{laptop_end}/24", "dev", "eth0"])
    # The veth's far end is the only other host on this link: duplicate address
    # detection has nothing to find, and its 1-2 s of "tentative" link-local
    # address would only delay every new laptop (no IPv6 here: no such key).
    run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"],
        check=False)  # fmt: skip
    run(["ip", "-n", name, "link", "set", "eth0", "up"])
    run(["ip", "-n", name, "route", "replace", "default", "via", host_end])
    _settle_ipv6(name)
    etc = Path("/etc/netns") / name
    etc.mkdir(parents=True, exist_ok=True)
    mnt = mount_ns_file(name)
    if _mount_ns_alive(mnt):
        return name
    resolv = etc / "resolv.conf"
    resolv.write_text(
        STUB_RESOLV_CONF if resolver == "resolved" else f"nameserver {config.RESOLVER_IP}\n"
    )
    _ensure_private_dir(MOUNT_NS_DIR)
    mnt.touch()
    # Each laptop is its own machine: its own /var/lib/ktpy (ktpy's journal of host
    # changes), or one laptop's live connect would block every other's.
    state = MOUNT_NS_DIR / f"{name}-state"
    state.mkdir(parents=True, exist_ok=True)
    KTPY_STATE.mkdir(parents=True, exist_ok=True)
    script = [
        "set -e",
        # sysfs shows the devices of the network namespace that mounts it
        "umount -l /sys",
        "mount -t sysfs sysfs /sys",
        f"mount --bind {state} {KTPY_STATE}",
    ]
    if resolver == "resolved":
        conf = etc / "resolved.conf"
        conf.write_text(RESOLVED_CONF.format(dns=config.RESOLVER_IP))
        # As on a systemd laptop, /etc/resolv.conf is a link to resolved's stub file,
        # which resolved keeps current (search domains included): an overlay on the
        # laptop's /etc holds that link without touching the host's /etc.
        layers = MOUNT_NS_DIR / f"{name}-etc"
        for part in ("upper", "work"):
            (layers / part).mkdir(parents=True, exist_ok=True)
        link = layers / "upper" / "resolv.conf"
        if not link.is_symlink():
            link.symlink_to("../run/systemd/resolve/stub-resolv.conf")
        script += [
            "mount -t tmpfs -o mode=0755 laptop-run /run/dbus",
            "mount -t tmpfs -o mode=0755 laptop-run /run/systemd",
            f"mount -t overlay laptop-etc -o lowerdir=/etc,upperdir={layers}/upper,"
            f"workdir={layers}/work /etc",
            f"mount --bind {conf} /etc/systemd/resolved.conf",
        ]
    else:
        script.append(f"mount --bind {resolv} /etc/resolv.conf")
    run(
        [
            "unshare",
            f"--mount={mnt}",
            "--propagation",
            "private",
            "--",
            "nsenter",
            f"--net=/run/netns/{name}",
            "--",
            "sh",
            "-c",
            "; ".join(script),
        ]
    )
    _start_init(name)
    if resolver == "resolved":
        _start_resolved(name)
    return name


def _start_init(name: str) -> None:
    """The laptop's PID namespace (with its own /proc) and UTS namespace (hostname
    `name`), held by its pid 1: a dev container, a WSL distribution or a CI job on
    the same kernel has pids of its own, and so does each laptop."""
    for ns_file in (pid_ns_file(name), uts_ns_file(name)):
        ns_file.touch()
    python = f"{shlex.quote(sys.executable)} -I -S {shlex.quote(str(LAPTOP_EXEC))}"
    procs.start(
        f"{name}-init",
        [
            "nsenter",
            f"--net=/run/netns/{name}",
            "--",
            "unshare",
            f"--pid={pid_ns_file(name)}",
            f"--uts={uts_ns_file(name)}",
            "--fork",
            "--kill-child",
            "--",
            "nsenter",
            f"--mount={mount_ns_file(name)}",
            "--",
            "sh",
            "-c",
            f"mount -t proc proc /proc && hostname {name} && exec {python} -- init",
        ],
    )
    procs.wait_for(
        f"{name} init",
        lambda: run([*laptop_command(name), "hostname"], check=False).stdout.strip() == name,
        10,
        0.1,
    )


def _mount_ns_alive(mnt: Path) -> bool:
    return mnt.exists() and run(["mountpoint", "-q", str(mnt)], check=False).returncode == 0


def _start_resolved(name: str) -> None:
    prefix = laptop_command(name)
    procs.start(f"{name}-dbus", [*prefix, "dbus-daemon", "--system", "--nofork", "--nopidfile"])
    procs.wait_for(
        f"{name} D-Bus",
        lambda: (
            run([*prefix, "test", "-S", "/run/dbus/system_bus_socket"], check=False).returncode == 0
        ),
        10,
        0.1,
    )
    procs.start(
        f"{name}-resolved",
        [*prefix, "/lib/systemd/systemd-resolved"],
        env={"SYSTEMD_LOG_TARGET": "console", "SYSTEMD_LOG_LEVEL": "notice"},
    )
    procs.wait_for(
        f"{name} systemd-resolved",
        lambda: run([*prefix, "resolvectl", "status"], check=False).returncode == 0,
        15,
        0.2,
    )


def resolver_flavour(name: str) -> str:
    return "resolved" if (Path("/etc/netns") / name / "resolved.conf").exists() else "plain"


def laptops() -> list[str]:
    netns = Path("/run/netns")
    if not netns.exists():
        return []
    return sorted(p.name for p in netns.iterdir() if p.name.startswith(config.LAPTOP_PREFIX))


def delete_laptop(name: str) -> None:
    for daemon in (f"{name}-resolved", f"{name}-dbus"):
        procs.stop(daemon)
    # Its pid 1 last: with it goes every process still running in the laptop. The
    # unshare that holds it ignores SIGTERM (it waits for its child), and --kill-child
    # turns its death into a SIGKILL of pid 1.
    procs.stop(f"{name}-init", timeout=0)
    for ns_file in (mount_ns_file(name), pid_ns_file(name), uts_ns_file(name)):
        if ns_file.exists():
            run(["umount", str(ns_file)], check=False)
            ns_file.unlink(missing_ok=True)
    for leftover in (f"{name}-etc", f"{name}-state"):
        run(["rm", "-rf", str(MOUNT_NS_DIR / leftover)], check=False)
    run(["ip", "netns", "delete", name], check=False)
    n = name.removeprefix(config.LAPTOP_PREFIX)
    run(["ip", "link", "delete", f"{config.LAPTOP_VETH_PREFIX}{n}"], check=False)
    etc = Path("/etc/netns") / name
    for f in etc.glob("*") if etc.exists() else ():
        f.unlink()
    if etc.exists():
        etc.rmdir()


def remove_chains() -> None:
    """Delete every KTBED-/KUBE-/CNI- chain and each rule that jumps to one, in all tables,
    v4 and v6 (kube-proxy --cleanup misses some after a kill -9)."""
    for tool in ("iptables", "ip6tables"):
        for table in ("raw", "mangle", "nat", "filter"):
            listing = run([tool, "-w", "-t", table, "-S"], check=False).stdout.splitlines()
            ours = {
                line.split()[1]
                for line in listing
                if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES)
            }
            for line in listing:
                words = shlex.split(line)  # comments are quoted and hold spaces
                if words[:1] != ["-A"] or words[1] in ours:
                    continue
                if "-j" in words and words[words.index("-j") + 1] in ours:
                    run([tool, "-w", "-t", table, "-D", *words[1:]], check=False)
            for chain in ours:
                run([tool, "-w", "-t", table, "-F", chain], check=False)
            for chain in ours:
                run([tool, "-w", "-t", table, "-X", chain], check=False)


def leftover_chains() -> list[str]:
    return [
        f"{tool}/{table}/{line.split()[1]}"
        for tool in ("iptables", "ip6tables")
        for table in ("raw", "mangle", "nat", "filter")
        for line in run([tool, "-w", "-t", table, "-S"], check=False).stdout.splitlines()
        if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES)
    ]


def teardown() -> None:
    for name in laptops():
        delete_laptop(name)
    with contextlib.suppress(OSError):
        KTPY_STATE.rmdir()  # only if empty: a real ktpy on this host may use it
    netns = Path("/run/netns")
    for ns in netns.glob("cni-*") if netns.exists() else ():
        run(["ip", "netns", "delete", ns.name], check=False)
    for link in (config.POD_BRIDGE, config.NODE_BRIDGE):
        if link_exists(link):
            run(["ip", "link", "delete", link], check=False)
    for line in run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(config.LAPTOP_VETH_PREFIX):
            run(["ip", "link", "delete", name], check=False)
    remove_chains()
    restore_sysctls()
