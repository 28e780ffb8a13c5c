"""Which hosts are alive, judged the way DESIGN.md's leases say: each host writes
a heartbeat counter into every connected repository every HEARTBEAT_S; another
host takes it for dead once the counter has not moved for LEASE_S on *its own*
monotonic clock (no clock is shared between hosts). One HostWatch per process,
fed by the fix daemon's reads of the heartbeats and asked by whatever must know
whether another host still holds something (a task, a write open)."""

import time

from repofs.model import HostBeat

HEARTBEAT_S = 2.0
LEASE_S = 10.0


class HostWatch:
    def __init__(self):
        # (repository, host) -> (counter, when this process first saw it)
        self._seen: dict[tuple[str, str], tuple[int, float]] = {}

    def observe(self, repo: str, beats: dict[str, HostBeat]) -> None:
        now = time.monotonic()
        for host, beat in beats.items():
            seen = self._seen.get((repo, host))
            if seen is None or seen[0] != beat.heartbeat:
                self._seen[(repo, host)] = (beat.heartbeat, now)

    def still_for(self, repo: str, host: str) -> float:
        """Seconds this process has seen the host's counter stand still (0 for a
        host it has not seen: watching starts now)."""
        seen = self._seen.get((repo, host))
        if seen is None:
            self._seen[(repo, host)] = (-1, time.monotonic())
            return 0.0
        return time.monotonic() - seen[1]

    def dead(self, repo: str, host: str) -> bool:
        return self.still_for(repo, host) >= LEASE_S
