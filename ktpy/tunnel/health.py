"""Whether a tunnel's path still carries packets, judged from when bytes last came
from the API server (pure: the clock is passed in, as heartbeat expiry's is).

A path that silently drops packets (a laptop waking from sleep, a Wi-Fi change)
shows nothing to the kernel for minutes: TCP retransmits until it gives up. So
the tunnel asks instead: after PROBE_AFTER seconds without a byte from the
server, a WebSocket ping (the API server answers it; data answers it too, as
any byte counts); after DEAD_AFTER seconds of silence the path is taken for
dead and the tunnel reconnects. Probes go out at most every PROBE_AFTER
seconds, so a silent path gets two or three before it is given up.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

PROBE_AFTER = 3.0
DEAD_AFTER = 10.0


class Verdict(enum.Enum):
    ALIVE = "alive"
    PROBE = "probe"  # silent for a while: send a ping
    DEAD = "dead"  # silent for too long: reconnect


@dataclass
class PathHealth:
    probe_after: float = PROBE_AFTER
    dead_after: float = DEAD_AFTER
    last_probe: float | None = None

    def judge(self, now: float, last_received: float) -> Verdict:
        silent = now - last_received
        if silent >= self.dead_after:
            return Verdict.DEAD
        if silent < self.probe_after:
            return Verdict.ALIVE
        if self.last_probe is not None and now - self.last_probe < self.probe_after:
            return Verdict.ALIVE  # a probe is on its way
        self.last_probe = now
        return Verdict.PROBE
