"""Errors, full repositories, crashes and persistence."""

import errno
import json
import os
import subprocess
import time

import pytest
from conftest import (
    MiB,
    Mount,
    assert_consistent,
    errno_of,
    pattern,
    run_every_fix,
    sh,
    status,
    wait_for,
)

from repofs.fix_daemon import NO_SPACE

pytestmark = pytest.mark.mount


def test_an_unexpected_exception_is_eio_and_the_mount_stays_up(tmp_path):
    m = Mount(tmp_path, module="injected_bug")
    try:
        m.start()
        result = sh(f"truncate -s 1M {m.default}/disks/bug", check=False)
        assert result.returncode != 0 and "Input/output error" in result.stderr
        assert errno_of((m.default / "status/bug").read_text) == errno.EIO
        sh(f"truncate -s 1M {m.default}/disks/fine")
        assert os.stat(m.default / "disks/fine").st_size == MiB
        m.expect_log("RuntimeError: injected bug")
        assert "Traceback" in m.log_text()
    finally:
        m.stop()


def test_full_repository_is_enospc_and_leaves_nothing_half_made(mount, tmpfs):
    sh(f"echo 'small localfs-1.0 path={tmpfs}' > {mount.path}/connect")
    small = mount.path / "small"
    sh(f"setfattr -n user.repofs.strategy -v performance {small}")
    result = sh(f"truncate -s 64M {small}/disks/big", check=False)
    assert result.returncode != 0 and "No space left on device" in result.stderr
    # The disk exists as the empty disk open(O_CREAT) made; its volume did not grow.
    assert os.stat(small / "disks/big").st_size == 0
    assert sum(p.stat().st_blocks for p in (tmpfs / "volumes").iterdir()) == 0
    sh(f"setfattr -x user.repofs.strategy {small}")
    sh(f"truncate -s 64M {small}/disks/thin")
    result = sh(f"dd if=/dev/urandom of={small}/disks/thin bs=1M count=48 conv=notrunc",
                check=False)  # fmt: skip
    assert result.returncode != 0 and "No space left on device" in result.stderr
    mount.expect_log("No space left on device")
    sh(f"rm {small}/disks/big")
    assert sorted(os.listdir(small / "trash")) == ["big"]
    assert_consistent(tmpfs)
    os.rmdir(small)  # before the tmpfs goes away


def test_corrupt_record_is_eio_and_the_others_still_work(repo, mount):
    sh(f"truncate -s 1M {repo}/disks/ok")
    sh(f"truncate -s 1M {repo}/disks/bad")
    record = mount.data / "default/images/bad.json"
    original = record.read_text()
    record.write_text("{not json")
    assert errno_of((repo / "status/bad").read_text) == errno.EIO
    # Listings reuse the records read within the last second (docs/behaviour.md).
    wait_for(lambda: os.listdir(repo / "disks") == ["ok"], 5, "the listing without bad")
    mount.expect_log("record .*bad.json is unreadable")
    # The check asks a person; nothing is freed meanwhile (what bad names is
    # unknown), not even by the clean of another image.
    volume = json.loads(original)["chain"][0]
    sh(f"truncate -s 1M {repo}/disks/gone")
    sh(f"rm {repo}/disks/gone")
    assert sorted(os.listdir(repo / "fixes")) == ["clean-gone", "mend-bad"]
    fix = json.loads((repo / "fixes/mend-bad").read_text())
    assert "needs a decision" in fix["description"] and "unreadable" in fix["description"]
    sh(f"mv {repo}/fixes/clean-gone {repo}/tasks/")
    wait_for(lambda: not os.listdir(repo / "trash"), 30, "the clean of gone")
    assert (mount.data / "default/volumes" / volume).exists()
    mount.expect_log("skipping bad: record .* is unreadable")
    record.write_text(original)  # behind repofs's back: seen within a second
    wait_for(lambda: os.listdir(repo / "disks") == ["bad", "ok"], 5, "the record back")
    assert os.listdir(repo / "fixes") == ["clean-volumes"]  # gone's volume, kept meanwhile
    sh(f"mv {repo}/fixes/clean-volumes {repo}/tasks/")


def test_everything_persists_across_remount(repo, mount):
    sh(f"truncate -s 4M {repo}/disks/vm1")
    with open(repo / "disks/vm1", "r+b") as f:
        f.write(pattern(b"base", MiB))
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    with open(repo / "disks/vm1", "r+b") as f:
        f.seek(2 * MiB)
        f.write(pattern(b"top", MiB))
    sh(f"ln {repo}/snapshots/s1 {repo}/disks/vm2")
    sh(f"truncate -s 1M {repo}/disks/gone")
    sh(f"rm {repo}/disks/gone")
    sh(f"setfattr -n user.owner -v alice {repo}/disks/vm2")
    before = {
        name: (repo / name).read_bytes() for name in ("disks/vm1", "disks/vm2", "snapshots/s1")
    }
    statuses = {i: json.loads((repo / "status" / i).read_text()) for i in ("vm1", "vm2", "s1")}
    mount.remount()
    for name, data in before.items():
        assert (repo / name).read_bytes() == data
    for image_id, seen in statuses.items():
        assert json.loads((repo / "status" / image_id).read_text()) == seen
    assert os.listdir(repo / "trash") == ["gone"]
    assert os.getxattr(repo / "disks/vm2", "user.owner") == b"alice"


def test_kill_9_while_writing_a_qcow2_disk_then_remount(tmp_path):
    m = Mount(tmp_path)
    try:
        m.start()
        sh(f"truncate -s 1G {m.default}/disks/vm1")
        sh(f"ln {m.default}/disks/vm1 {m.default}/snapshots/s1")
        writer = subprocess.Popen(
            ["dd", "if=/dev/urandom", f"of={m.default}/disks/vm1", "bs=64k", "count=16384",
             "conv=notrunc", "status=none"],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(1)
            assert writer.poll() is None, "the writer finished before the crash"
            m.kill()
            writer.wait(20)  # its writes fail once the mount is dead
        finally:
            writer.kill()
            writer.wait(20)
        m.start()
        assert os.stat(m.default / "disks/vm1").st_size == 1 << 30
        sh(f"dd if={m.default}/disks/vm1 of=/dev/null bs=1M status=none")
        sh(f"printf after | dd of={m.default}/disks/vm1 conv=notrunc status=none")
        assert (m.default / "disks/vm1").read_bytes()[:5] == b"after"
    finally:
        m.stop()
    assert_consistent(m.data / "default")


def test_a_copy_that_runs_out_of_space_waits_and_goes_on_when_space_is_freed(mount, tmpfs):
    sh(f"echo 'small localfs-1.0 path={tmpfs}' > {mount.path}/connect")
    small, r1 = mount.path / "small", mount.default
    sh(f"truncate -s 16M {small}/disks/filler")
    sh(f"dd if=/dev/urandom of={small}/disks/filler bs=1M count=16 conv=notrunc status=none")
    sh(f"truncate -s 24M {r1}/disks/src")
    sh(f"dd if=/dev/urandom of={r1}/disks/src bs=1M count=24 conv=notrunc status=none")
    sh(f"ln {r1}/disks/src {r1}/snapshots/gold")
    sh(f"ln {r1}/snapshots/gold {small}/snapshots/gold")  # 24 MiB into the 16 left
    wait_for(lambda: status(small, "gold")["last_error"] == NO_SPACE, 30, "the wait for space")
    task = json.loads((small / "tasks/mend-gold").read_text())
    assert (task["state"], task["last_error"]) == ("running", NO_SPACE)
    assert status(small, "gold")["state"] == "broken"  # not usable yet, nothing lost
    sh(f"rm {small}/disks/filler")
    sh(f"mv {small}/fixes/clean-filler {small}/tasks/")
    wait_for(lambda: status(small, "gold")["state"] == "optimized", 60, "the copy to go on")
    sh(f"cmp {r1}/snapshots/gold {small}/snapshots/gold")
    assert status(small, "gold")["last_error"] is None
    mount.expect_log("No space left on device; trying again every")
    os.rmdir(small)  # before the tmpfs goes away


def fill(disk) -> None:
    """Writes random data into `disk` until its repository's storage is full."""
    result = sh(f"dd if=/dev/urandom of={disk} bs=1M conv=notrunc status=none", check=False)
    assert "No space left on device" in result.stderr, result.stderr


def test_on_a_full_repository_every_operation_is_enospc_and_makes_nothing(mount, tmpfs, tmp_path):
    sh(f"echo 'small localfs-1.0 path={tmpfs}' > {mount.path}/connect")
    small = mount.path / "small"
    sh(f"truncate -s 64M {small}/disks/filler")
    sh(f"ln {small}/disks/filler {small}/snapshots/before")
    fill(small / "disks/filler")
    (tmp_path / "source").write_bytes(pattern(b"import", MiB))
    refused = {
        "create": f"truncate -s 1M {small}/disks/thin",
        "import": f"cp {tmp_path}/source {small}/disks/imported",
        "snapshot": f"ln {small}/disks/filler {small}/snapshots/after",
        "disk on a snapshot": f"ln {small}/snapshots/before {small}/disks/child",
        "option": f"setfattr -n user.repofs.strategy -v performance {small}",
    }
    for what, command in refused.items():
        result = sh(command, check=False)
        assert "No space left on device" in result.stderr, f"{what}: {result.stderr}"
    mount.expect_log("No space left on device")
    # Nothing half-made is visible, nothing is left on storage to clean, and the
    # images that were there still read.
    assert os.listdir(small / "disks") == ["filler"]
    assert os.listdir(small / "snapshots") == ["before"]
    assert os.listdir(small / "fixes") == []
    assert_consistent(tmpfs)
    sh(f"cmp -n {MiB} {small}/snapshots/before /dev/zero")
    sh(f"dd if={small}/disks/filler of=/dev/null bs=1M status=none")
    # Space freed: the same operations work.
    sh(f"rm {small}/disks/filler {small}/snapshots/before")
    run_every_fix([small])  # the clean of filler, then of before, which it built on
    assert not os.listdir(small / "trash")
    # Queueing the first clean took the repository's reserve; the clean put it back.
    assert (tmpfs / "reserve").stat().st_blocks * 512 >= MiB
    for what in ("create", "import", "option"):
        sh(refused[what])
    sh(f"ln {small}/disks/thin {small}/snapshots/after")
    sh(f"cmp {tmp_path}/source {small}/disks/imported")
    os.rmdir(small)  # before the tmpfs goes away


def queue(repo, fix: str) -> None:
    sh(f"mv {repo}/fixes/{fix} {repo}/tasks/")


def test_an_optimize_that_runs_out_of_space_waits_and_goes_on_when_space_is_freed(mount, tmpfs):
    sh(f"echo 'small localfs-1.0 path={tmpfs}' > {mount.path}/connect")
    small = mount.path / "small"
    sh(f"setfattr -n user.repofs.autofix -v false {small}")
    sh(f"setfattr -n user.repofs.strategy -v performance {small}")
    sh(f"truncate -s 8M {small}/disks/src")
    sh(f"dd if=/dev/urandom of={small}/disks/src bs=1M count=8 conv=notrunc status=none")
    sh(f"ln {small}/disks/src {small}/snapshots/gold")
    sh(f"ln {small}/snapshots/gold {small}/disks/vm")  # degraded: an overlay
    sh(f"truncate -s 3M {small}/disks/room")  # preallocated: what will be left
    sh(f"truncate -s 0 {small}/disks/filler")
    fill(small / "disks/filler")
    sh(f"rm {small}/disks/room")
    queue(small, "clean-room")
    wait_for(lambda: not os.listdir(small / "trash"), 30, "the clean of room")
    queue(small, "optimize-vm")  # 8 MiB to copy into the 2 left
    wait_for(lambda: status(small, "vm")["last_error"] == NO_SPACE, 30, "the wait for space")
    task = json.loads((small / "tasks/optimize-vm").read_text())
    assert (task["state"], task["last_error"]) == ("running", NO_SPACE)
    sh(f"cmp {small}/snapshots/gold {small}/disks/vm")  # still usable meanwhile
    sh(f"rm {small}/disks/filler")
    queue(small, "clean-filler")
    wait_for(lambda: status(small, "vm")["state"] == "optimized", 60, "the optimize to go on")
    assert len(status(small, "vm")["chain"]) == 1 and status(small, "vm")["last_error"] is None
    sh(f"cmp {small}/snapshots/gold {small}/disks/vm")
    mount.expect_log('task=optimize-vm .*state=waiting reason="no space for .*; trying again every')
    os.rmdir(small)  # before the tmpfs goes away


def test_a_merge_that_runs_out_of_space_waits_and_goes_on_when_space_is_freed(mount, tmpfs):
    sh(f"echo 'small localfs-1.0 path={tmpfs}' > {mount.path}/connect")
    small = mount.path / "small"
    sh(f"truncate -s 8M {small}/disks/vm")
    sh(f"dd if=/dev/urandom of={small}/disks/vm bs=1M count=8 conv=notrunc status=none")
    before = (small / "disks/vm").read_bytes()
    sh(f"ln {small}/disks/vm {small}/snapshots/s")
    sh(f"rm {small}/disks/vm {small}/snapshots/s")
    sh(f"mv {small}/trash/vm {small}/disks/")  # reads through the trashed s: a merge
    sh(f"setfattr -n user.repofs.strategy -v performance {small}")
    sh(f"truncate -s 3M {small}/disks/room")  # preallocated: what will be left
    sh(f"setfattr -x user.repofs.strategy {small}")
    sh(f"truncate -s 0 {small}/disks/filler")
    fill(small / "disks/filler")
    sh(f"rm {small}/disks/room")
    queue(small, "clean-room")
    wait_for(lambda: "room" not in os.listdir(small / "trash"), 30, "the clean of room")
    queue(small, "merge-s")  # 8 MiB of s into vm's layer, 2 MiB left
    task = small / "tasks/merge-s"
    wait_for(lambda: json.loads(task.read_text())["last_error"] == NO_SPACE, 30, "the wait")
    assert json.loads(task.read_text())["state"] == "running"
    assert (small / "disks/vm").read_bytes() == before  # usable meanwhile
    sh(f"rm {small}/disks/filler")
    queue(small, "clean-filler")
    wait_for(lambda: "clean-s" in os.listdir(small / "fixes"), 60, "the merge to go on")
    assert (small / "disks/vm").read_bytes() == before
    assert status(small, "vm")["last_error"] is None and len(status(small, "vm")["chain"]) == 1
    mount.expect_log("task=merge-s .*state=waiting .*; trying again every")
    os.rmdir(small)  # before the tmpfs goes away
