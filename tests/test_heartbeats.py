"""Heartbeats of local repositories on a disk of their own (an ext4 file system on
a loop device): a disk busy writing back a copy's data is not a stalled host, and
a local repository, whose tasks no other host can take, never stops them when
its heartbeat is late; nor do heartbeats wait for worker threads that other work
holds (docs/multi-host.md, "Hosts and leases")."""

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import trio
from conftest import MiB, Mount, sh, status, wait_for
from test_copy_image import make_snapshot, wait_copied

from repofs.drivers.localfs import LocalRepository
from repofs.fix_daemon import FixDaemon
from repofs.leases import HEARTBEAT_S, LEASE_S
from repofs.registry import Registry
from repofs.repository import Repository


class CounterWatch:
    """Reads this host's heartbeat counter in repositories on storage every 0.1 s
    (a thread) and keeps how often it moved and the longest time it stood still."""

    def __init__(self, repos: list[Path]):
        self.files = [repo / "hosts/test-host.json" for repo in repos]
        self.moves = {path.parent.parent.name: 0 for path in self.files}
        self.longest_still = {path.parent.parent.name: 0.0 for path in self.files}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch)

    def __enter__(self) -> "CounterWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(10)

    def _watch(self) -> None:
        seen = {path: (None, time.monotonic()) for path in self.files}
        while not self._done.wait(0.1):
            now = time.monotonic()
            for path in self.files:
                try:
                    counter = json.loads(path.read_text())["heartbeat"]
                except (OSError, ValueError):
                    continue  # a write under way: look again
                name = path.parent.parent.name
                if counter != seen[path][0]:
                    seen[path] = (counter, now)
                    self.moves[name] += 1
                self.longest_still[name] = max(self.longest_still[name], now - seen[path][1])


@pytest.mark.mount
def test_heartbeats_keep_time_while_the_disk_writes_back_a_copy(mount_on_disk, disk):
    """A copy between two local repositories (fsynced about once a second) and
    another program's buffered writes of 512 MiB, on a disk that writes 30 MB/s:
    the heartbeats in both repositories keep moving every HEARTBEAT_S, none is
    reported late, and the copy ends with the right bytes."""
    m = mount_on_disk
    r1, r2 = m.default, m.path / "r2"
    sh(f"mkdir {r2}")
    make_snapshot(r1, "1G", 256)
    sh("sync")
    with disk.throttled(30 * MiB), CounterWatch([m.data / "default", m.data / "r2"]) as watch:
        writer = subprocess.Popen(
            ["dd", "if=/dev/zero", f"of={disk.path}/other-program", "bs=1M", "count=512",
             "status=none"],
        )  # fmt: skip
        try:
            sh(f"ln {r1}/snapshots/gold {r2}/snapshots/gold")
            wait_for(lambda: late(m) or status(r2, "gold")["state"] == "optimized", 120, "the copy")
        finally:
            writer.wait(120)
    print(f"moves: {watch.moves}, longest still: {watch.longest_still}")
    assert not late(m)
    assert min(watch.moves.values()) >= 3, watch.moves  # it was read all along
    assert all(still < LEASE_S / 2 for still in watch.longest_still.values()), watch.longest_still
    wait_copied(r2, "gold")
    sh(f"cmp {r1}/snapshots/gold {r2}/snapshots/gold")


@pytest.mark.mount
def test_a_local_repository_s_tasks_go_on_while_its_heartbeat_is_late(mount_on_disk, disk):
    """The disk of two local repositories takes no writes (fsfreeze) for longer
    than LEASE_S / 2 while a copy between them runs: their heartbeats are late,
    which the log says once for each (a warning), but the copy is not stopped:
    it goes on when the disk does, in the same run, and ends with the right bytes."""
    m = mount_on_disk
    r1, r2 = m.default, m.path / "r2"
    sh(f"mkdir {r2}")
    make_snapshot(r1, "1G", 512)
    sh("sync")
    stored = m.data / "r2/tasks/mend-gold.json"
    with disk.throttled(30 * MiB):  # a copy of about 17 s, to freeze the disk under
        sh(f"ln {r1}/snapshots/gold {r2}/snapshots/gold")
        wait_for(lambda: task_state(stored) == "running", 10, "the copy to run")
        # Read on storage, not through the mount, until the disk takes writes
        # again: a write that blocks the mount's loop would block the test too.
        with disk.frozen():
            assert task_state(stored) == "running"  # and it cannot end meanwhile
            wait_for(lambda: late(m, "r2"), LEASE_S, "the heartbeat in r2 to be late")
    wait_copied(r2, "gold")
    log = m.log_text()
    print("\n".join(line for line in log.splitlines() if "heartbeat of" in line))
    assert "stopping this host's tasks" not in log
    assert len(re.findall("heartbeat of test-host in r2 not renewed", log)) == 1
    assert len(re.findall("task=mend-gold .*state=running", log)) == 1
    sh(f"cmp {r1}/snapshots/gold {r2}/snapshots/gold")


def task_state(task: Path) -> str | None:
    """A task's state as stored (None once it is done)."""
    try:
        return json.loads(task.read_text())["state"]
    except FileNotFoundError:
        return None


def late(m: Mount, repo: str = "") -> bool:
    """Whether the mount logged a heartbeat of its host as late (in `repo`)."""
    return f"heartbeat of test-host in {repo}" in m.log_text()


@pytest.mark.unit
def test_heartbeats_do_not_wait_for_the_worker_threads_others_hold(tmp_path):
    """Every thread of trio's default pool is held by other work (as by calls
    stuck on a stalled storage): the heartbeat is written on time all the same."""
    driver = LocalRepository.open(tmp_path)
    release = threading.Event()

    async def main() -> None:
        registry = Registry(tmp_path, "a", daemon=None)
        registry.repositories["r"] = Repository(
            "r", driver, "localfs-1.0", {}, False, "a", registry.host_watch
        )
        async with trio.open_nursery() as nursery:
            for _ in range(int(trio.to_thread.current_default_thread_limiter().total_tokens)):
                nursery.start_soon(lambda: trio.to_thread.run_sync(release.wait, 30))
            await trio.sleep(0.1)  # they hold every thread
            await nursery.start(FixDaemon(registry).run)
            await trio.sleep(HEARTBEAT_S + 0.5)
            nursery.cancel_scope.cancel()
            release.set()

    try:
        trio.run(main)
        assert driver.read_heartbeats()["a"].heartbeat >= 2
    finally:
        release.set()
        driver.close()
