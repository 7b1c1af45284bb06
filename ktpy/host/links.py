"""ktpy's TUN device: made, addressed and brought up through the journal.

The device is not persistent: it lives as long as ktpy's file descriptor, so a
kill -9 takes it away with its address, its routes and its systemd-resolved
settings. The journal still records it first (undo: delete it), for the
in-process teardown and for a device that somehow outlived its process.

Its name carries the session id (``ktpy-ab12cd34``), so an undo of a dead
session can never delete the device of a live one.

Its address is a /32 from 169.254.0.0/24, the first /24 of IPv4 link-local
space. Link-local because the TUN device is a link between the kernel and
ktpy and its address means nothing anywhere else, so it can never collide with a
cluster range, a VPN or a LAN the laptop reaches; and this /24 because RFC 3927
reserves it from link-local autoconfiguration, so no zeroconf peer or interface
picks it by itself. The shared-address space 100.64.0.0/10 was not chosen:
Tailscale and carrier-grade NAT use it, and so do some clusters' pod ranges;
nor 198.18.0.0/15, which proxies such as Clash use for their fake IPs. A /32
adds no subnet route. The first address of the block that no interface has is
taken.
"""

from __future__ import annotations

import errno
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytun

from ktpy.config import TUN_MTU
from ktpy.errors import KtpyError, NeedsRoot, NoTunDevice
from ktpy.host.journal import Change, Journal
from ktpy.host.runner import Runner, check, run
from ktpy.host.undo import LinkDelete
from ktpy.params import IPAddress

TUN_ADDRESS_BLOCK = ipaddress.IPv4Network("169.254.0.0/24")
IFNAMSIZ = 15  # longest interface name Linux takes


def tun_name(session: str) -> str:
    return f"ktpy-{session}"[:IFNAMSIZ]


def addresses_in_use(runner: Runner = run) -> set[IPAddress]:
    """Every address on any interface of this network namespace."""
    done = check(runner(["ip", "-j", "addr", "show"]), "read the host's addresses")
    items: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return {
        ipaddress.ip_address(info["local"])
        for item in items
        for info in item.get("addr_info", [])
        if "local" in info
    }


def pick_tun_address(
    in_use: Iterable[IPAddress],
) -> ipaddress.IPv4Address:
    taken = set(in_use)
    for address in TUN_ADDRESS_BLOCK.hosts():
        if address not in taken:
            return address
    raise KtpyError(f"every address of {TUN_ADDRESS_BLOCK} is in use on this machine")


@dataclass
class TunDevice:
    """An open TUN device: read and write whole IP packets on ``fileno()``."""

    name: str
    address: ipaddress.IPv4Address
    mtu: int
    _device: Any  # pytun.TunTapDevice, untyped

    def fileno(self) -> int:
        fd: int = self._device.fileno()
        return fd

    def close(self) -> None:
        """Close the descriptor; the kernel then removes the device and its routes."""
        self._device.close()


IFF_VNET_HDR = 0x4000  # linux/if_tun.h; python-pytun does not name it


def open_tun(
    journal: Journal,
    *,
    name: str,
    address: ipaddress.IPv4Address,
    mtu: int = TUN_MTU,
    runner: Runner = run,
    offload: bool = False,
) -> TunDevice:
    """Make the TUN device ``name`` with ``address``/32 and ``mtu``, up. With
    ``offload`` each packet carries a virtio-net header (IFF_VNET_HDR), which lets
    the reader ask for TSO and checksum offloads (ktpy.net.tun_tcp does).

    The MTU, address and up state belong to the device and go with it, so the one
    journal entry (delete the device) undoes them all."""
    if runner(["ip", "link", "show", "dev", name]).ok:
        raise KtpyError(
            f"a network device named {name} already exists",
            hint="Another ktpy session may be using it; see 'ktpy status'.",
        )
    journal.record(Change(f"TUN device {name}", LinkDelete(name)))
    try:
        flags = pytun.IFF_TUN | pytun.IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
        device = pytun.TunTapDevice(name=name, flags=flags)
    except pytun.Error as exc:
        code = exc.args[0] if exc.args else None
        if code in (errno.EPERM, errno.EACCES):
            raise NeedsRoot(f"cannot make the TUN device {name}: permission denied") from exc
        if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            raise NoTunDevice(f"cannot make the TUN device {name}: no /dev/net/tun") from exc
        raise KtpyError(f"cannot make the TUN device {name}: {exc}") from exc
    tun = TunDevice(name, address, mtu, device)
    try:
        check(runner(["ip", "link", "set", "dev", name, "mtu", str(mtu)]), f"set the MTU of {name}")
        check(
            runner(["ip", "addr", "add", f"{address}/32", "dev", name]),
            f"give {name} the address {address}",
        )
        check(runner(["ip", "link", "set", "dev", name, "up"]), f"bring {name} up")
    except BaseException:
        tun.close()
        raise
    return tun
