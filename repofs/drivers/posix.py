"""posix-1.0: the localfs layout in a directory that several hosts share (NFSv4,
CephFS, a GlusterFS mount: any POSIX file system with working fcntl locks).

What differs from localfs-1.0 (docs/multi-host.md):
- no connection lock: every host connects it;
- a volume that no record names is garbage only once it is SETTLE_S old,
  since another host may be between making a volume and writing the record
  that names it (what this host's process is making, it knows); so is a
  temp file, which another host's atomic write under way shows;
- heartbeats are replaced by rename, not written in place: other hosts read them.
Every metadata change already happens under the repository's fcntl lock with a
generation compare-and-swap, and record caches are bounded by file identity
and age (drivers/localfs.py, registry.py), so no host shows another's stale
state for long.
"""

import os
from pathlib import Path

from repofs.drivers.atomic import open_or_create, replace_json
from repofs.drivers.localfs import LocalRepository
from repofs.model import HostBeat

FORMAT = "posix-1.0"
# Longer than any create takes between its volume and its record (a qemu-img
# create, or a preallocation), on the volume's own clock (the file's mtime, set
# by the storage's clock, which all hosts see alike).
SETTLE_S = 600


class SharedRepository(LocalRepository):
    format = FORMAT
    shared = True

    def _take_connection_lock(self) -> None:
        pass  # every host connects it

    def write_heartbeat(self, beat: HostBeat) -> None:
        """As LocalRepository's, but by rename (drivers/atomic.py, replace_json):
        the write must prove to this host that it reaches the storage now, or its
        stall goes unnoticed while other hosts take its tasks. Creating and
        renaming a file are answered by the server on every shared file system;
        a write in place may be absorbed by a cache on this host (Gluster's
        write-behind, a CephFS client's buffered writes) while the storage does
        not answer. Still no fsync: other hosts need the counter to move, not to
        survive a crash."""
        self._write_bookkeeping(self._host_path(beat.host), beat.to_json(), replace_json)

    def unsettled_volumes(self, names: list[str]) -> set[str]:
        """This process's, and those changed in the last SETTLE_S, by the
        storage's clock (which all hosts see alike, unlike their own)."""
        now = self._storage_now()
        recent = {name for name in names if self._changed_since(self._volumes / name, now)}
        return super().unsettled_volumes(names) | recent

    def temp_files(self) -> list[Path]:
        """Another host's atomic write under way shows a temp file too (the check
        lists them without the repository lock): only those SETTLE_S old are
        leftovers."""
        now = self._storage_now()
        return [path for path in super().temp_files() if not self._changed_since(path, now)]

    def _storage_now(self) -> float:
        probe = self._locks / "clock"
        os.close(open_or_create(probe))
        os.utime(probe)
        return os.stat(probe).st_mtime

    @staticmethod
    def _changed_since(path: Path, now: float) -> bool:
        """Whether `path` changed in the SETTLE_S before `now` (False once gone)."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        return now - max(st.st_mtime, st.st_ctime) < SETTLE_S
