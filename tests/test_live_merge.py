"""Issue 20: a removed snapshot's layer is merged while the disk that reads
through it is open and written (the storage daemon's block-stream), stopped
and killed midway; no acknowledged write of the guest is lost."""

import contextlib
import json
import os
import threading
from pathlib import Path

import pytest
from conftest import (
    MiB,
    Mount,
    active_tasks,
    assert_consistent,
    check_through_the_mount,
    checked,
    crash_then_remount,
    kill_at_a_random_moment,
    pattern,
    sh,
    status,
    wait_for,
    write_at,
)

pytestmark = pytest.mark.mount

SIZE = 1024 * MiB
DATA = 512 * MiB  # in the snapshot's layer: the stream copies it at 100 MB/s
BLOCK = 64 * 1024
TASK_TIMEOUT_S = 120


class Guest(threading.Thread):
    """Writes distinct blocks at spread offsets of an open disk, each followed
    by an fsync; a block counts once its fsync returned. Ends when told, or at
    the first error (the mount died): that block may have landed or not.
    `size`: of the disk, which it writes all over."""

    def __init__(self, path, size: int = SIZE):
        super().__init__(daemon=True)
        self.fd = os.open(path, os.O_RDWR)
        self.size = size
        self.acked: dict[int, bytes] = {}
        self.in_flight: int | None = None
        self.error: OSError | None = None
        self.done = threading.Event()

    def run(self) -> None:
        n = 0
        try:
            while not self.done.is_set():
                offset = (n * 7919 * BLOCK) % self.size
                data = (b"guest write %d " % n).ljust(BLOCK, b".")
                self.in_flight = offset
                os.pwrite(self.fd, data, offset)
                os.fsync(self.fd)
                self.acked[offset] = data
                self.in_flight = None
                n += 1
        except OSError as exc:
            self.error = exc
        finally:
            try:
                os.close(self.fd)
            except OSError:
                pass

    def stop(self) -> None:
        self.done.set()
        self.join(30)
        assert not self.is_alive()

    @contextlib.contextmanager
    def writing(self):
        """Writes all along the block; then stopped, having seen no error."""
        self.start()
        try:
            yield self
        finally:
            self.stop()
        assert self.error is None, self.error

    def assert_landed(self, disk: bytes, before: bytes) -> None:
        """`disk` is `before` with every acknowledged block; the one in flight
        at a crash reads as either."""
        assert self.acked, "the guest wrote nothing"
        expected = bytearray(before)
        for offset, data in self.acked.items():
            expected[offset : offset + BLOCK] = data
        if self.in_flight is not None:
            start, end = self.in_flight, self.in_flight + BLOCK
            disk = disk[:start] + bytes(expected[start:end]) + disk[end:]
        assert disk == expected


def write_while(disk, expected: bytearray, busy) -> None:
    """A guest writing distinct 256 KiB blocks into the open `disk` (and into
    `expected`, its bytes) while `busy()`, at least once."""
    written = 0
    while busy() or not written:
        offset = (written * 7 * MiB) % (60 * MiB)
        data = pattern(b"during %d " % written, 256 * 1024)
        disk.seek(offset)
        disk.write(data)
        expected[offset : offset + len(data)] = data
        written += 1
        assert written < 10_000, "the merge did not end"


def disk_with_a_snapshot(repo) -> bytes:
    """vm1: SIZE bytes, DATA of them written, then snapshot s1 (vm1 becomes a
    qcow2 layer over s1's volume); returns vm1's bytes."""
    sh(f"truncate -s {SIZE} {repo}/disks/vm1")
    sh(f"head -c {DATA} /dev/urandom | dd of={repo}/disks/vm1 bs=4M conv=notrunc status=none")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    sh("sync")
    return (repo / "disks/vm1").read_bytes()


def test_kill_9_in_a_live_merge_loses_no_acknowledged_write(tmp_path, disk):
    m = Mount(tmp_path)
    m.data = disk.path / "data"
    repo = m.default
    try:
        m.start()
        before = disk_with_a_snapshot(repo)
        guest = Guest(repo / "disks/vm1")
        guest.start()
        with disk.throttled(100 * MiB, reads=True):
            sh(f"rm {repo}/snapshots/s1")  # one disk reads through it: merged at once
            wait_for(lambda: "live, in the open chain of vm1" in m.log_text(), 30, "live")
            kill_at_a_random_moment(m, repo / "tasks/merge-s1")
        guest.join(30)
        assert guest.error is not None  # the mount died under it
        m.start()
        wait_for(lambda: not active_tasks(repo), TASK_TIMEOUT_S, "the merge after the remount")
        guest.assert_landed((repo / "disks/vm1").read_bytes(), before)
        s = status(repo, "vm1")
        assert (len(s["chain"]), s["base"]) == (1, None), s
        m.expected_fixes.update({"clean-s1", "clean-volumes"})
        check_through_the_mount(m)
    finally:
        m.stop()
    assert_consistent(m.data / "default", garbage_expected=True)


def test_a_stopped_live_merge_leaves_the_bytes_and_runs_again(mount_on_disk, disk):
    m = mount_on_disk
    repo = m.default
    sh(f"setfattr -n user.repofs.autofix -v false {repo}")
    before = disk_with_a_snapshot(repo)
    with Guest(repo / "disks/vm1").writing() as guest:
        sh(f"rm {repo}/snapshots/s1")
        with disk.throttled(100 * MiB, reads=True):
            sh(f"mv {repo}/fixes/merge-s1 {repo}/tasks/")
            wait_for(lambda: _streaming(repo), 30, "the stream under way")
            sh(f"rm {repo}/tasks/merge-s1")
        wait_for(lambda: "merge-s1" in os.listdir(repo / "fixes"), 30, "the merge offered again")
        assert len(status(repo, "vm1")["chain"]) == 2  # still reading through s1's layer
        sh(f"mv {repo}/fixes/merge-s1 {repo}/tasks/")
        wait_for(lambda: not active_tasks(repo), TASK_TIMEOUT_S, "the merge")
    guest.assert_landed((repo / "disks/vm1").read_bytes(), before)
    assert len(status(repo, "vm1")["chain"]) == 1
    assert os.listdir(repo / "fixes") == ["clean-s1"]


def test_rm_snapshot_under_a_written_disk_merges_it_live(repo, mount):
    """Autofix merges a removed layer that exactly one image reads through, while
    that image is open and written: the storage daemon streams the layer into
    the disk's top; every write of the guest lands; the chain ends one layer deep."""
    sh(f"truncate -s 64M {repo}/disks/vm1")
    sh(f"head -c {48 * MiB} /dev/urandom | dd of={repo}/disks/vm1 conv=notrunc status=none")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    expected = bytearray((repo / "disks/vm1").read_bytes())
    with open(repo / "disks/vm1", "r+b", buffering=0) as disk:
        sh(f"rm {repo}/snapshots/s1")
        task = repo / "tasks/merge-s1"
        write_while(disk, expected, task.exists)
        disk.seek(0)
        assert disk.read() == expected
    assert (repo / "disks/vm1").read_bytes() == expected
    s = status(repo, "vm1")
    assert (len(s["chain"]), s["base"]) == (1, None), s
    assert os.listdir(repo / "fixes") == ["clean-s1"]
    assert "live, in the open chain of vm1" in mount.log_text()


def _streaming(repo) -> bool:
    try:
        task = json.loads((repo / "tasks/merge-s1").read_text())
    except FileNotFoundError:
        return False
    return task["step"] == "commit" and task["percent_complete"] > 0


def two_snapshots(repo) -> None:
    """vm1 (64 MiB): 48 MiB in s1's layer, 1 MiB more in s2's, then its own top."""
    sh(f"truncate -s 64M {repo}/disks/vm1")
    sh(f"head -c {48 * MiB} /dev/urandom | dd of={repo}/disks/vm1 conv=notrunc status=none")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    write_at(repo / "disks/vm1", 8 * MiB, pattern(b"s2 ", MiB))
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s2")
    write_at(repo / "disks/vm1", 16 * MiB, pattern(b"vm1 ", MiB))


@pytest.mark.parametrize("open_", [False, True], ids=["closed", "open"])
def test_an_old_snapshot_merges_down_the_newer_layer(repo, mount, open_):
    """s1 holds the disk as it was (48 MiB), s2 only what changed since (1 MiB):
    the merge moves s2's layer down into s1's, s2 takes s1's volume, s1 and s2's
    old layer go; nothing else to clean. Live when the disk is open and written."""
    two_snapshots(repo)
    s2, vm1 = (repo / "snapshots/s2").read_bytes(), bytearray((repo / "disks/vm1").read_bytes())
    s1_volume = status(repo, "s1")["chain"][0]
    s2_layer = status(repo, "s2")["chain"][0]
    sh(f"rm {repo}/snapshots/s1")  # two images read through it: offered, not run
    fix = json.loads((repo / "fixes/merge-s1").read_text())
    assert "MiB of s2 down into it" in fix["description"], fix
    assert fix["bytes_estimate"] < 4 * MiB, fix  # not s1's 48 MiB
    opened = open(repo / "disks/vm1", "r+b", buffering=0) if open_ else None
    with opened or contextlib.nullcontext() as disk:
        sh(f"mv {repo}/fixes/merge-s1 {repo}/tasks/")
        if disk is not None:
            write_while(disk, vm1, lambda: bool(active_tasks(repo)))
        wait_for(lambda: not active_tasks(repo), 60, "the merge")
    assert os.listdir(repo / "tasks") == [], os.listdir(repo / "tasks")
    assert (repo / "snapshots/s2").read_bytes() == s2
    assert (repo / "disks/vm1").read_bytes() == vm1
    assert status(repo, "s2")["chain"] == [s1_volume]
    assert len(status(repo, "vm1")["chain"]) == 2
    assert status(repo, "s2")["base"] is None and status(repo, "vm1")["base"] == "s2"
    assert os.listdir(repo / "trash") == [] and os.listdir(repo / "fixes") == []
    assert not os.path.exists(s2_layer)
    how = "live, in the open chain of vm1" if open_ else "offline"
    assert f"down into {Path(s1_volume).name} {how}" in mount.log_text()


@pytest.mark.parametrize("step", ["commit", "record", "unlink"])
def test_a_merge_down_crashed_at_each_step_ends_the_same(tmp_path, step):
    m = Mount(tmp_path, env={"REPOFS_CRASH_AT": f"merge:{step}"})
    repo = m.default
    try:
        m.start()
        two_snapshots(repo)
        s2, vm1 = (repo / "snapshots/s2").read_bytes(), (repo / "disks/vm1").read_bytes()
        s1_volume = status(repo, "s1")["chain"][0]
        sh(f"rm {repo}/snapshots/s1")
        sh(f"mv {repo}/fixes/merge-s1 {repo}/tasks/")
        crash_then_remount(m)
        wait_for(lambda: not active_tasks(repo), TASK_TIMEOUT_S, "the merge after the remount")
        assert (repo / "snapshots/s2").read_bytes() == s2
        assert (repo / "disks/vm1").read_bytes() == vm1
        assert status(repo, "s2")["chain"] == [s1_volume]
        assert os.listdir(repo / "trash") == []
        m.expected_fixes.add("clean-volumes")  # s2's old layer, if the crash came first
        check_through_the_mount(m)
    finally:
        m.stop()
    assert_consistent(m.data / "default", garbage_expected=True)


def test_a_disk_opened_right_after_a_crash_between_its_header_and_record(tmp_path):
    """Killed after the stream rewrote vm1's top to skip s1's layer, before the
    record drops it: an open of vm1 right after the remount waits for the
    resumed merge to set the record right, instead of failing (EIO: the header
    disagrees with the record)."""
    m = Mount(tmp_path, env={"REPOFS_CRASH_AT": "merge:record"})
    with checked(m):
        repo = m.default
        sh(f"truncate -s 64M {repo}/disks/vm1")
        sh(f"head -c {48 * MiB} /dev/urandom | dd of={repo}/disks/vm1 conv=notrunc status=none")
        sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
        before = (repo / "disks/vm1").read_bytes()
        guest = Guest(repo / "disks/vm1", size=64 * MiB)
        guest.start()
        wait_for(lambda: guest.acked, 10, "the guest writing")
        sh(f"rm {repo}/snapshots/s1")  # one disk reads through it: merged at once, live
        crash_then_remount(m)
        guest.join(30)
        assert guest.error is not None
        fd = os.open(repo / "disks/vm1", os.O_RDWR)  # at once, as a VM started again would
        try:
            wait_for(lambda: not active_tasks(repo), TASK_TIMEOUT_S, "the merge")
        finally:
            os.close(fd)
        guest.assert_landed((repo / "disks/vm1").read_bytes(), before)
        assert len(status(repo, "vm1")["chain"]) == 1
        m.expected_fixes.add("clean-s1")
