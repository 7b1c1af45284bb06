"""ktbed: drive the ktpy test bed.

python -m tests.e2e.testbed up [--shadow-archive FILE]
python -m tests.e2e.testbed down | status | env
python -m tests.e2e.testbed laptop [-n N] -- CMD ...
python -m tests.e2e.testbed restart apiserver|kubelet|kube-proxy|coredns
python -m tests.e2e.testbed stop|start apiserver|kubelet|kube-proxy
python -m tests.e2e.testbed demo [--laptop N]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from pathlib import Path

from . import bed, config, demo, hostnet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ktbed", description="the ktpy test bed: a real single-node Kubernetes"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="bring the bed up (idempotent; clears what a killed run left)")
    p_up.add_argument(
        "--shadow-archive", type=Path, help="an OCI archive of the ktpy shadow image to import"
    )
    sub.add_parser("down", help="stop everything and leave nothing behind but the build cache")
    sub.add_parser("status", help="health of each component (exit 1 if any is down)")
    sub.add_parser("env", help="print the shell exports for kubectl and the admin kubeconfig")
    p_lap = sub.add_parser("laptop", help="run a command in laptop namespace N")
    p_lap.add_argument("-n", type=int, default=1, help="laptop number (default 1)")
    p_lap.add_argument(
        "--resolver",
        choices=hostnet.RESOLVER_FLAVOURS,
        default="plain",
        help="resolver flavour when the laptop is made: plain resolv.conf or systemd-resolved",
    )
    p_lap.add_argument("cmd", nargs=argparse.REMAINDER)
    p_demo = sub.add_parser(
        "demo", help="deploy nginx in namespace demo-time and walk ktpy's story from a laptop"
    )
    p_demo.add_argument(
        "--laptop",
        type=int,
        default=int(os.environ.get("KTBED_LAPTOP", demo.DEFAULT_LAPTOP)),
        help=f"laptop number  (default: $KTBED_LAPTOP, else {demo.DEFAULT_LAPTOP})",
    )
    p_restart = sub.add_parser("restart", help="restart one component (fault tests)")
    p_restart.add_argument("component", choices=sorted(bed.RESTARTABLE))
    for verb in ("stop", "start"):
        p_verb = sub.add_parser(verb, help=f"{verb} one component (fault tests; see restart)")
        p_verb.add_argument("component", choices=sorted(bed.RESTARTABLE))
    args = parser.parse_args(argv)
    if args.command in ("up", "down", "restart", "stop", "start"):
        # Test runs side by side may all ask for the bed at once: one at a time.
        config.CACHE_DIR.mkdir(parents=True, exist_ok=True)
        lock = (config.CACHE_DIR / "bed.lock").open("w")
        fcntl.flock(lock, fcntl.LOCK_EX)

    if args.command == "up":
        bed.up(args.shadow_archive)
    elif args.command == "down":
        bed.down()
    elif args.command == "status":
        return bed.status()
    elif args.command == "env":
        print(bed.export_line())
    elif args.command == "laptop":
        bed.require_root()
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("laptop needs a command after --")
        name = hostnet.create_laptop(args.n, args.resolver)
        env = {**os.environ, "PATH": f"{config.BIN_DIR}:{os.environ.get('PATH', '')}"}
        env.setdefault("KUBECONFIG", str(config.KUBECONFIG_DIR / "admin.yaml"))
        argv = [*hostnet.laptop_command(name), *cmd]
        os.execvpe(argv[0], argv, env)  # noqa: S606 - argv, no shell
    elif args.command == "restart":
        bed.restart(args.component)
    elif args.command == "stop":
        bed.stop(args.component)
    elif args.command == "start":
        bed.start(args.component)
    elif args.command == "demo":
        bed.require_root()
        if not bed.is_up():
            parser.error("the bed is not up: run 'python -m tests.e2e.testbed up' first")
        return demo.main(args.laptop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
