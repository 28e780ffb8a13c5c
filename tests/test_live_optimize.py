"""Issue 20: an optimize finishes while its disk is open and written. A flatten
has the storage daemon copy the disk's top into the raw target and keep it in
sync (blockdev-mirror, or an active block-commit once the target is the top's
backing), then switches the disk to the target in a pause of its requests; a
localize rebases the top in such a pause. Stop and kill -9 at any moment lose
no acknowledged write of the guest."""

import contextlib
import errno
import json
import mmap
import os
import random
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    MiB,
    Mount,
    active_tasks,
    checked,
    crash_then_remount,
    errno_of,
    sh,
    status,
    wait_for,
    write_at,
)
from test_live_merge import SIZE, Guest, write_while

pytestmark = pytest.mark.mount

TASK_TIMEOUT_S = 120
BLOCK = 64 * 1024


def long_chain(repo, size: int, base_mib: int, top_mib: int = 0) -> None:
    """vm1 (`size` bytes) over s2 over s1, longer than max_chain 2, so degraded
    with optimize-vm1 offered: `base_mib` MiB of s1's layer written, a MiB of s2's,
    and `top_mib` MiB of vm1's own top from 64 MiB on."""
    sh(f"setfattr -n user.repofs.max_chain -v 2 {repo}")
    sh(f"truncate -s {size} {repo}/disks/vm1")
    sh(f"head -c {base_mib * MiB} /dev/urandom | dd of={repo}/disks/vm1 bs=4M "
       "conv=notrunc status=none")  # fmt: skip
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    write_at(repo / "disks/vm1", 8 * MiB, os.urandom(MiB))
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s2")
    if top_mib:
        sh(f"head -c {top_mib * MiB} /dev/urandom | dd of={repo}/disks/vm1 bs=4M seek=16 "
           "conv=notrunc status=none")  # fmt: skip
    assert status(repo, "vm1")["state"] == "degraded"
    assert os.listdir(repo / "fixes") == ["optimize-vm1"]


def assert_flat(repo) -> None:
    s = status(repo, "vm1")
    assert s["state"] == "optimized" and s["base"] is None, s
    assert len(s["chain"]) == 1 and s["chain"][0].endswith(".raw"), s


@contextlib.contextmanager
def reading(path):
    """Another opener reads the disk all along the block (no read may fail while
    a pause switches its volumes: one that waited at the pause once went to the
    volumes closed in it)."""
    done, failures = threading.Event(), []

    def read_all_along() -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)  # past the page cache, as QEMU's
        buffer = mmap.mmap(-1, BLOCK)
        try:
            while not done.is_set():
                try:
                    os.preadv(fd, [buffer], random.randrange(0, 64 * MiB, BLOCK))
                except OSError as exc:
                    failures.append(exc)
        finally:
            os.close(fd)

    reader = threading.Thread(target=read_all_along, daemon=True)
    reader.start()
    try:
        yield
    finally:
        done.set()
        reader.join(30)
    assert not failures, failures


def test_a_written_disk_is_flattened_live_and_served_in_place_after(repo, mount):
    long_chain(repo, 64 * MiB, 48, top_mib=8)
    s1 = (repo / "snapshots/s1").read_bytes()
    expected = bytearray((repo / "disks/vm1").read_bytes())
    with open(repo / "disks/vm1", "r+b", buffering=0) as disk, reading(repo / "disks/vm1"):
        sh(f"mv {repo}/fixes/optimize-vm1 {repo}/tasks/")
        write_while(disk, expected, (repo / "tasks/optimize-vm1").exists)
        assert_flat(repo)  # while it is still open
        write_while(disk, expected, lambda: False)  # into the raw volume, in place
        disk.seek(0)
        assert disk.read() == expected
    assert (repo / "disks/vm1").read_bytes() == expected
    assert (repo / "snapshots/s1").read_bytes() == s1
    assert "optimize: flattening vm1 live" in mount.log_text()
    assert os.listdir(repo / "fixes") == []


def test_a_flatten_past_its_rebase_ends_live_by_an_active_commit(tmp_path):
    """A flatten whose commit failed after the record named the target under the
    disk's top, queued again while the disk is open and written."""
    with checked(Mount(tmp_path, module="injected_commit_failure")) as m:
        repo = m.default
        long_chain(repo, 64 * MiB, 16, top_mib=8)
        sh(f"mv {repo}/fixes/optimize-vm1 {repo}/tasks/")
        failed = wait_for(lambda: _failed(repo / "tasks/optimize-vm1"), 30, "the failure")
        assert "injected failure" in failed["last_error"]
        chain = status(repo, "vm1")["chain"]
        assert len(chain) == 2 and chain[1].endswith(".raw"), chain
        expected = bytearray((repo / "disks/vm1").read_bytes())
        with open(repo / "disks/vm1", "r+b", buffering=0) as disk:
            sh(f"rm {repo}/tasks/optimize-vm1")
            sh(f"mv {repo}/fixes/optimize-vm1 {repo}/tasks/")
            write_while(disk, expected, (repo / "tasks/optimize-vm1").exists)
            assert_flat(repo)
            assert status(repo, "vm1")["chain"] == [chain[1]]
            disk.seek(0)
            assert disk.read() == expected
        assert (repo / "disks/vm1").read_bytes() == expected
        top, target = (Path(v).name for v in chain)
        assert f"block-commit from the top {top} into {target}" in m.log_text()
        m.expect_log("injected failure")


def _failed(task) -> dict | None:
    view = json.loads(task.read_text())
    return view if view["state"] == "failed" else None


def mirroring(m: Mount) -> bool:
    """The flatten's job is under way: the storage daemon mirrors vm1's top."""
    return "blockdev-mirror from the top" in m.log_text()


def test_kill_9_in_a_live_flatten_loses_no_acknowledged_write(tmp_path, disk):
    """512 MiB in vm1's own top, which the daemon mirrors at 100 MB/s; the kill
    comes at a random moment of that."""
    m = Mount(tmp_path)
    m.data = disk.path / "data"
    repo = m.default
    with checked(m):
        long_chain(repo, SIZE, 16, top_mib=512)
        sh("sync")
        before = (repo / "disks/vm1").read_bytes()
        guest = Guest(repo / "disks/vm1")
        guest.start()
        with disk.throttled(100 * MiB, reads=True):
            sh(f"mv {repo}/fixes/optimize-vm1 {repo}/tasks/")
            wait_for(lambda: mirroring(m), 60, "the mirror under way")
            time.sleep(random.uniform(0, 0.3 * 512 / 100))  # of its 5 s or more
            m.kill()
        stored = json.loads((m.data / "default/tasks/optimize-vm1.json").read_text())
        assert stored["state"] == "running" and stored["step"] == "commit", stored
        m.start()
        ends_flat_with_what_the_guest_wrote(m, guest, before)


def ends_flat_with_what_the_guest_wrote(m: Mount, guest: Guest, before: bytes) -> None:
    """After a crash under the guest and a remount: the flatten ends, every
    acknowledged write of the guest is there, and only the old top is left
    for a clean."""
    guest.join(30)
    assert guest.error is not None  # the mount died under it
    wait_for(lambda: not active_tasks(m.default), TASK_TIMEOUT_S, "the flatten after the remount")
    guest.assert_landed((m.default / "disks/vm1").read_bytes(), before)
    assert_flat(m.default)
    m.expected_fixes.add("clean-volumes")


def test_a_stopped_live_flatten_leaves_the_bytes_and_runs_again(mount_on_disk, disk):
    m = mount_on_disk
    repo = m.default
    task = repo / "tasks/optimize-vm1"
    long_chain(repo, SIZE, 16, top_mib=256)
    before = (repo / "disks/vm1").read_bytes()
    with Guest(repo / "disks/vm1").writing() as guest:
        with disk.throttled(100 * MiB, reads=True):
            sh(f"mv {repo}/fixes/optimize-vm1 {repo}/tasks/")
            wait_for(lambda: mirroring(m), 60, "the mirror under way")
            # QEMU holds the size of the nodes a job copies: growth waits for the job.
            assert errno_of(write_at, repo / "disks/vm1", SIZE, b"past the end") == errno.EBUSY
            sh(f"rm {task}")
        wait_for(lambda: "optimize-vm1" in os.listdir(repo / "fixes"), 30, "offered again")
        assert status(repo, "vm1")["state"] == "degraded"
        sh(f"mv {repo}/fixes/optimize-vm1 {repo}/tasks/")
        wait_for(lambda: not active_tasks(repo), TASK_TIMEOUT_S, "the flatten")
    guest.assert_landed((repo / "disks/vm1").read_bytes(), before)
    assert_flat(repo)


@pytest.mark.parametrize("step", ["done", "unlink"])
def test_crash_at_each_live_step_of_a_flatten(tmp_path, step):
    """`done`: in the pause, the target in sync, before the record names it;
    `unlink`: the record written, the old top not yet unlinked."""
    m = Mount(tmp_path, env={"REPOFS_CRASH_AT": f"optimize:{step}"})
    repo = m.default
    with checked(m):
        long_chain(repo, SIZE, 16, top_mib=16)
        before = (repo / "disks/vm1").read_bytes()
        guest = Guest(repo / "disks/vm1")
        guest.start()
        wait_for(lambda: guest.acked, 10, "the guest writing")
        sh(f"mv {repo}/fixes/optimize-vm1 {repo}/tasks/")
        crash_then_remount(m)
        ends_flat_with_what_the_guest_wrote(m, guest, before)


def gold_in_r1_under_vm_in_r2(mount):
    """vm in r2 over r1's gold (strategy space): degraded, its localize offered."""
    r1, r2 = mount.default, mount.path / "r2"
    sh(f"mkdir {r2}")
    sh(f"setfattr -n user.repofs.autofix -v false {r2}")
    sh(f"truncate -s 64M {r1}/disks/g")
    sh(f"head -c {48 * MiB} /dev/urandom | dd of={r1}/disks/g conv=notrunc status=none")
    sh(f"ln {r1}/disks/g {r1}/snapshots/gold")
    sh(f"ln {r1}/snapshots/gold {r2}/disks/vm")
    assert os.listdir(r2 / "fixes") == ["optimize-vm"]
    return r1, r2


def assert_localized(r2) -> None:
    s = status(r2, "vm")
    assert (s["state"], s["base"]) == ("optimized", "gold"), s
    assert s["chain"][1:] == status(r2, "gold")["chain"]


def test_a_written_disk_is_localized_live(mount):
    """The localize copies gold into r2, then rebases vm's top onto that copy in
    a pause of its requests."""
    r1, r2 = gold_in_r1_under_vm_in_r2(mount)
    expected = bytearray((r2 / "disks/vm").read_bytes())
    with open(r2 / "disks/vm", "r+b", buffering=0) as disk:
        sh(f"mv {r2}/fixes/optimize-vm {r2}/tasks/")
        write_while(disk, expected, (r2 / "tasks/optimize-vm").exists)
        assert_localized(r2)
        write_while(disk, expected, lambda: False)
        disk.seek(0)
        assert disk.read() == expected
    assert (r2 / "disks/vm").read_bytes() == expected
    assert "optimize: rebased vm onto gold here, live" in mount.log_text()
    sh(f"rm {r1}/snapshots/gold")  # nothing reads through r1's any more
    sh(f"cmp {r1}/disks/g {r2}/snapshots/gold")


def test_a_crash_in_a_live_localize_between_header_and_record(tmp_path):
    """Killed in the pause with vm's top already rebased onto r2's gold and its
    record still naming r1's: after the remount the task writes the record, and
    every acknowledged write of the guest is there."""
    m = Mount(tmp_path, env={"REPOFS_CRASH_AT": "optimize:record"})
    with checked(m):
        r1, r2 = gold_in_r1_under_vm_in_r2(m)
        before = (r2 / "disks/vm").read_bytes()
        guest = Guest(r2 / "disks/vm", size=64 * MiB)
        guest.start()
        wait_for(lambda: guest.acked, 10, "the guest writing")
        sh(f"mv {r2}/fixes/optimize-vm {r2}/tasks/")
        crash_then_remount(m)
        guest.join(30)
        assert guest.error is not None
        wait_for(lambda: not active_tasks(r2), TASK_TIMEOUT_S, "the localize after the remount")
        assert_localized(r2)
        guest.assert_landed((r2 / "disks/vm").read_bytes(), before)
