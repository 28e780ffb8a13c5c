"""The fix engine through the mount: check (fixes/), fix (tasks/), progress,
events, stop and resume, kill -9 and crashes at every durable step."""

import concurrent.futures
import errno
import json
import os
import random
import subprocess
import time

import pytest
import xattr
from conftest import (
    MiB,
    Mount,
    active_tasks,
    assert_consistent,
    check_through_the_mount,
    crash_then_remount,
    errno_of,
    kill_at_a_random_moment,
    sh,
    status,
    wait_for,
)

pytestmark = pytest.mark.mount

GiB = 1 << 30
TASK_TIMEOUT_S = 120


def stored_task(mount: Mount, task_id: str) -> dict:
    return json.loads((mount.data / "default/tasks" / f"{task_id}.json").read_text())


def make_gold(repo, size: str = "1G", data_mib: int = 512, layered: bool = False) -> None:
    """snapshots/gold: `size` bytes, the first `data_mib` MiB random; `layered`:
    in a qcow2 layer over an empty snapshot `base` (copies of gold then read
    through the storage daemon: slower, long enough to watch, stop or kill)."""
    sh(f"truncate -s {size} {repo}/disks/g")
    if layered:
        sh(f"ln {repo}/disks/g {repo}/snapshots/base")
    sh(f"dd if=/dev/urandom of={repo}/disks/g bs=1M count={data_mib} conv=notrunc status=none")
    sh(f"printf tail | dd of={repo}/disks/g bs=1 seek=$(( $(stat -c %s {repo}/disks/g) - 4 )) "
       "conv=notrunc status=none")  # fmt: skip
    sh(f"ln {repo}/disks/g {repo}/snapshots/gold")


def overlay_under_performance(repo, autofix: bool = True) -> None:
    """disks/vm2 over snapshots/gold in a repository whose strategy is performance:
    degraded, and optimized at once unless autofix is off."""
    sh(f"setfattr -n user.repofs.strategy -v performance {repo}")
    if not autofix:
        sh(f"setfattr -n user.repofs.autofix -v false {repo}")
    sh(f"ln {repo}/snapshots/gold {repo}/disks/vm2")


def wait_optimized(repo, image_id: str) -> None:
    """Waits on the events file, no polling. It is opened before the status is
    read, so a change between the two cannot be missed."""
    with open(repo / "events", "rb", buffering=0) as events:
        deadline = time.monotonic() + TASK_TIMEOUT_S
        state = status(repo, image_id)["state"]
        while state != "optimized":
            assert time.monotonic() < deadline, f"{image_id} is still {state}"
            for line in events.read(65536).splitlines():
                event = json.loads(line) if line.strip() else {}
                if event.get("id") == image_id and "state" in event:
                    state = event["state"]
    wait_for(lambda: not active_tasks(repo), 30, "the task to end")


def test_waiting_with_timeout_and_grep_as_the_docs_say(repo, mount):
    make_gold(repo, "64M", 16)
    overlay_under_performance(repo, autofix=False)
    waiter = subprocess.Popen(
        ["timeout", "60", "grep", "-m1", '"id":"vm2".*"state":"optimized"', repo / "events"],
        stdout=subprocess.PIPE,
    )
    try:
        time.sleep(0.5)  # grep has the file open
        sh(f"mv {repo}/fixes/optimize-vm2 {repo}/tasks/")
        assert waiter.wait(70) == 0
    finally:
        waiter.kill()
        waiter.wait(10)
    assert status(repo, "vm2")["state"] == "optimized"


def assert_standalone_copy_of_gold(repo, image_id: str) -> None:
    s = status(repo, image_id)
    assert s["state"] == "optimized" and s["base"] is None
    assert len(s["chain"]) == 1 and s["chain"][0].endswith(".raw")
    sh(f"cmp {repo}/disks/{image_id} {repo}/snapshots/gold")
    assert "vm2" not in status(repo, "gold")["dependents"]


def test_performance_overlay_is_optimized_at_once_with_events_in_order(repo, mount):
    make_gold(repo, "2G", 1536, layered=True)  # seconds of copy: progress events
    events = subprocess.Popen(["cat", str(repo / "events")], stdout=subprocess.PIPE)
    try:
        overlay_under_performance(repo)
        wait_optimized(repo, "vm2")
    finally:
        events.kill()
        out = events.communicate(timeout=10)[0]
    assert_standalone_copy_of_gold(repo, "vm2")
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    vm2 = [e for e in lines if e.get("id") == "vm2"]
    assert vm2[0]["event"] == "created" and vm2[0]["state"] == "degraded"
    assert vm2[-1]["state"] == "optimized"
    percents = [e["percent_complete"] for e in vm2 if e["stage"] == "1/4"]
    assert percents == sorted(percents) and len(percents) >= 3
    assert {e["task"] for e in vm2[1:-1]} == {"optimize-vm2"}


def test_autofix_off_offers_the_fix_and_moving_it_runs_it(repo, mount):
    make_gold(repo, "64M", 16)
    overlay_under_performance(repo, autofix=False)
    assert status(repo, "vm2")["state"] == "degraded"
    assert os.listdir(repo / "tasks") == []
    assert os.listdir(repo / "fixes") == ["optimize-vm2"]
    fix = json.loads((repo / "fixes/optimize-vm2").read_text())
    assert (fix["kind"], fix["image"]) == ("optimize", "vm2")
    assert fix["bytes_estimate"] >= 16 * MiB and "vm2" in fix["description"]
    sh(f"mv {repo}/fixes/optimize-vm2 {repo}/tasks/")
    wait_optimized(repo, "vm2")
    assert_standalone_copy_of_gold(repo, "vm2")
    assert os.listdir(repo / "tasks") == []


def storage_state(mount: Mount) -> str:
    """Every file of the repository with its size and mtime (heartbeats aside)."""
    return sh(f"cd {mount.data}/default && find . -path ./hosts -prune -o "
              "-printf '%p %s %T@\\n' | sort").stdout  # fmt: skip


def test_listing_fixes_changes_nothing(repo, mount):
    make_gold(repo, "64M", 4)
    sh(f"rm {repo}/disks/g")
    before = storage_state(mount)
    for _ in range(3):
        assert sorted(os.listdir(repo / "fixes")) == ["clean-g"]
        assert json.loads((repo / "fixes/clean-g").read_text())["kind"] == "clean"
    assert storage_state(mount) == before


def test_clean_frees_the_space_of_removed_images(repo, mount):
    sh(f"truncate -s 256M {repo}/disks/vm1")
    sh(f"dd if=/dev/urandom of={repo}/disks/vm1 bs=1M count=64 conv=notrunc status=none")
    sh(f"rm {repo}/disks/vm1")
    du = int(sh(f"du -sk {mount.data}").stdout.split()[0])
    fix = json.loads((repo / "fixes/clean-vm1").read_text())
    assert fix["bytes_estimate"] >= 64 * MiB
    sh(f"mv {repo}/fixes/clean-vm1 {repo}/tasks/")
    wait_for(lambda: not os.listdir(repo / "trash") and not active_tasks(repo), 60, "the clean")
    assert du - int(sh(f"du -sk {mount.data}").stdout.split()[0]) >= 64 * 1024
    assert os.listdir(repo / "fixes") == [] and os.listdir(mount.data / "default/volumes") == []


def test_clean_waits_for_what_builds_on_a_snapshot(repo, mount):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    sh(f"rm {repo}/disks/vm1")
    sh(f"rm {repo}/snapshots/s1")  # nothing live builds on it now
    assert os.listdir(repo / "fixes") == ["clean-vm1"]  # the trashed vm1 still does
    sh(f"mv {repo}/fixes/clean-vm1 {repo}/tasks/")
    wait_for(lambda: os.listdir(repo / "fixes") == ["clean-s1"], 60, "clean-s1 to be offered")
    sh(f"mv {repo}/fixes/clean-s1 {repo}/tasks/")
    wait_for(lambda: not os.listdir(repo / "trash"), 60, "the trash to empty")
    wait_for(lambda: not os.listdir(mount.data / "default/volumes"), 30, "the volumes to go")


def optimize_under_way(repo, percent: int):
    """disks/vm2 made from a 2 GiB gold under strategy performance, so optimized at
    once; returns its task file and its view once the optimize's copy passed
    `percent` (a copy from the page cache can take a second: act at once)."""
    make_gold(repo, "2G", 1024, layered=True)
    overlay_under_performance(repo)
    task = repo / "tasks/optimize-vm2"

    def copying() -> dict | None:
        view = json.loads(task.read_text())
        return view if view["stage"] == "1/4" and view["percent_complete"] >= percent else None

    return task, wait_for(copying, 60, "progress", interval=0.01)


def test_stop_then_queue_again_resumes(repo, mount):
    task, view = optimize_under_way(repo, 20)
    os.unlink(task)
    assert view["host"] == "test-host" and view["step"] == "copy"
    assert view["bytes_total"] >= 512 * MiB and view["rate"] > 0 and view["started"]
    stopped = stored_task(mount, "optimize-vm2")
    assert stopped["state"] == "stopped" and stopped["checkpoint"]["copied"] > 0
    s = status(repo, "vm2")
    assert (s["state"], s["last_error"]) == ("degraded", "stopped by the user")
    assert os.listdir(repo / "tasks") == [] and os.listdir(repo / "fixes") == ["optimize-vm2"]
    sh(f"mv {repo}/fixes/optimize-vm2 {repo}/tasks/")
    first = wait_for(lambda: _progress(repo), 30, "progress after the resume")
    assert first >= stopped["percent_complete"] - 1  # resumed, not restarted
    wait_optimized(repo, "vm2")
    assert_standalone_copy_of_gold(repo, "vm2")


def _progress(repo) -> int | None:
    try:
        view = json.loads((repo / "tasks/optimize-vm2").read_text())
    except FileNotFoundError:
        return 100
    return view["percent_complete"] if view["state"] == "running" and view["stage"] else None


def test_kill_9_at_a_random_moment_of_an_optimize_resumes(tmp_path, disk):
    """On a disk that writes 100 MB/s, so the copy of gold's 1 GiB takes about
    10 s (from the page cache it may end within a second, before the first
    progress report)."""
    m = Mount(tmp_path)
    m.data = disk.path / "data"
    repo = m.default
    try:
        m.start()
        make_gold(repo, "2G", 1024, layered=True)
        sh("sync")
        with disk.throttled(100 * MiB):
            overlay_under_performance(repo)
            persisted = kill_at_a_random_moment(m, repo / "tasks/optimize-vm2")
        m.start()
        first = wait_for(lambda: _progress(repo), 30, "progress after the remount")
        assert first >= persisted["percent_complete"]
        optimize_ends_well(m)
    finally:
        m.stop()
    assert_consistent(m.data / "default", garbage_expected=True)


def optimize_ends_well(m: Mount) -> None:
    """After a crash and a remount: vm2 ends optimized, a copy of gold, and the
    check finds only vm2's old overlay (and temp files) to clean."""
    wait_optimized(m.default, "vm2")
    assert_standalone_copy_of_gold(m.default, "vm2")
    m.expected_fixes.add("clean-volumes")
    check_through_the_mount(m)


@pytest.mark.parametrize("step", ["rebase", "record", "commit", "done", "unlink"])
def test_crash_at_each_durable_step_of_optimize(tmp_path, step):
    m = Mount(tmp_path, env={"REPOFS_CRASH_AT": f"optimize:{step}"})
    repo = m.default
    try:
        m.start()
        make_gold(repo, "64M", 16)
        overlay_under_performance(repo)
        crash_then_remount(m)
        optimize_ends_well(m)
    finally:
        m.stop()
    assert_consistent(tmp_path / "data/default", garbage_expected=True)


@pytest.mark.parametrize("step", ["switch", "finish"])
def test_mend_finishes_a_snapshot_a_crash_interrupted(tmp_path, step):
    m = Mount(tmp_path, env={"REPOFS_CRASH_AT": f"snapshot:{step}"})
    repo = m.default
    try:
        m.start()
        sh(f"truncate -s 4M {repo}/disks/vm1")
        sh(f"printf before | dd of={repo}/disks/vm1 conv=notrunc status=none")
        assert sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1", check=False).returncode != 0
        crash_then_remount(m)
        s1 = status(repo, "s1")
        assert s1["state"] == "broken" and "not finished" in s1["last_error"]
        # A crash before the switch also leaves the disk's new top unnamed.
        garbage = ["clean-volumes"] if step == "switch" else []
        assert sorted(os.listdir(repo / "fixes")) == [*garbage, "mend-s1"]
        m.expected_fixes.update(garbage)
        sh(f"mv {repo}/fixes/mend-s1 {repo}/tasks/")
        wait_for(lambda: status(repo, "s1")["state"] == "optimized", 60, "s1 mended")
        wait_for(lambda: not active_tasks(repo), 30, "the task to end")
        vm1 = status(repo, "vm1")
        assert vm1["base"] == "s1" and vm1["chain"][1:] == status(repo, "s1")["chain"]
        sh(f"printf after | dd of={repo}/disks/vm1 conv=notrunc status=none")
        assert (repo / "snapshots/s1").read_bytes()[:6] == b"before"
        assert (repo / "disks/vm1").read_bytes()[:6] == b"aftere"
        check_through_the_mount(m)
    finally:
        m.stop()
    assert_consistent(tmp_path / "data/default", garbage_expected=step == "switch")


def test_chains_longer_than_max_chain_are_flattened(repo, mount):
    sh(f"setfattr -n user.repofs.max_chain -v 3 {repo}")
    sh(f"truncate -s 8M {repo}/disks/vm1")
    for i in range(3):
        sh(f"printf layer{i} | dd of={repo}/disks/vm1 bs=1M seek={i} conv=notrunc status=none")
        sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s{i}")
    assert status(repo, "vm1")["state"] == "degraded"
    expected = (repo / "disks/vm1").read_bytes()
    assert os.listdir(repo / "fixes") == ["optimize-vm1"]
    sh(f"mv {repo}/fixes/optimize-vm1 {repo}/tasks/")
    wait_optimized(repo, "vm1")
    assert (repo / "disks/vm1").read_bytes() == expected
    assert len(status(repo, "vm1")["chain"]) == 1
    assert (repo / "snapshots/s1").read_bytes()[MiB : MiB + 6] == b"layer1"


def test_a_new_max_chain_restates_the_disks_it_concerns(repo, mount):
    sh(f"truncate -s 8M {repo}/disks/vm1")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s0")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")  # vm1: a chain of 3
    assert status(repo, "vm1")["state"] == "optimized"
    sh(f"setfattr -n user.repofs.max_chain -v 2 {repo}")
    assert status(repo, "vm1")["state"] == "degraded"
    assert os.listdir(repo / "fixes") == ["optimize-vm1"]
    with open(repo / "disks/vm1", "r+b") as disk:  # and while it is open
        sh(f"setfattr -n user.repofs.max_chain -v 8 {repo}")
        assert status(repo, "vm1")["state"] == "optimized"
        assert os.listdir(repo / "fixes") == []
        disk.write(b"open")
        disk.flush()
        sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s2")  # the open disk's record is current
    assert (repo / "snapshots/s2").read_bytes()[:4] == b"open"
    assert status(repo, "vm1")["state"] == "optimized"


def test_mend_says_what_a_person_must_decide(repo, mount, tmp_path):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    top = status(repo, "s1")["chain"][0]
    os.rename(top, tmp_path / "lost")  # a volume lost from storage
    fix = json.loads((repo / "fixes/mend-s1").read_text())
    assert "needs a decision" in fix["description"] and "missing" in fix["description"]
    assert "mend-vm1" in os.listdir(repo / "fixes")
    sh(f"mv {repo}/fixes/mend-s1 {repo}/tasks/")
    task = repo / "tasks/mend-s1"
    wait_for(lambda: json.loads(task.read_text())["state"] == "failed", 30, "the task to fail")
    assert "needs a decision" in json.loads(task.read_text())["last_error"]
    assert "needs a decision" in status(repo, "s1")["last_error"]
    os.unlink(task)
    mount.expect_log("task=mend-s1 repo=default .*state=failed")
    os.rename(tmp_path / "lost", top)  # what the person decided: bring it back
    assert os.listdir(repo / "fixes") == []


def test_a_stopped_task_of_a_removed_image_is_cleaned(repo, mount):
    os.unlink(optimize_under_way(repo, 10)[0])
    sh(f"rm {repo}/disks/vm2")
    assert sorted(os.listdir(repo / "fixes")) == ["clean-vm2", "clean-volumes"]
    assert "1 tasks of removed images" in (repo / "fixes/clean-volumes").read_text()
    # (fixes/ hides the fixes of queued and running tasks: wait for the task.)
    sh(f"mv {repo}/fixes/clean-volumes {repo}/tasks/")
    wait_for(lambda: not active_tasks(repo), 60, "clean-volumes")
    assert os.listdir(repo / "fixes") == ["clean-vm2"]
    sh(f"mv {repo}/fixes/clean-vm2 {repo}/tasks/")
    wait_for(lambda: not active_tasks(repo), 60, "clean-vm2")
    assert os.listdir(repo / "fixes") == []
    assert not (mount.data / "default/tasks/optimize-vm2.json").exists()
    chains = {v for name in ("g", "gold") for v in status(repo, name)["chain"]}
    assert {str(p) for p in (mount.data / "default/volumes").iterdir()} == chains


def build_layers(repo, data_mib: int = 4) -> bytes:
    """s0 <- s1 <- vm1, every layer with its own pattern at its own offset, and one
    offset that every layer overwrites; returns vm1's bytes."""
    sh(f"truncate -s 64M {repo}/disks/vm1")
    for i in range(3):
        sh(f"dd if=/dev/urandom of={repo}/disks/vm1 bs=1M seek={8 * i} count={data_mib} "
           "conv=notrunc status=none")  # fmt: skip
        sh(f"printf layer{i} | dd of={repo}/disks/vm1 bs=1M seek=60 conv=notrunc status=none")
        if i < 2:
            sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s{i}")
    return (repo / "disks/vm1").read_bytes()


def remove_middle_snapshot(repo) -> None:
    """Trash vm1 and s1, then bring vm1 back: s1's layer is a removed middle layer."""
    sh(f"rm {repo}/disks/vm1")
    sh(f"rm {repo}/snapshots/s1")
    sh(f"mv {repo}/trash/vm1 {repo}/disks/")
    assert os.listdir(repo / "fixes") == ["merge-s1"]


def test_merge_folds_a_removed_middle_layer_then_clean_frees_it(repo, mount):
    expected = build_layers(repo)
    s0 = (repo / "snapshots/s0").read_bytes()
    remove_middle_snapshot(repo)
    layer = json.loads((mount.data / "default/trash/s1.json").read_text())["chain"][0]
    fix = json.loads((repo / "fixes/merge-s1").read_text())
    assert fix["data"]["images"] == ["vm1"] and fix["bytes_estimate"] >= 4 * MiB
    sh(f"mv {repo}/fixes/merge-s1 {repo}/tasks/")
    wait_for(lambda: not active_tasks(repo), 60, "the merge")
    assert layer not in " ".join(status(repo, "vm1")["chain"])
    assert status(repo, "vm1")["base"] == "s0"
    assert (repo / "disks/vm1").read_bytes() == expected
    assert os.listdir(repo / "fixes") == ["clean-s1"]
    sh(f"mv {repo}/fixes/clean-s1 {repo}/tasks/")
    wait_for(lambda: not active_tasks(repo), 60, "the clean")
    assert not (mount.data / "default/volumes" / layer).exists()
    assert (repo / "disks/vm1").read_bytes() == expected
    assert (repo / "snapshots/s0").read_bytes() == s0
    assert os.listdir(repo / "fixes") == []


@pytest.mark.parametrize("moment", ["record", "random"])
def test_a_merge_killed_resumes_after_remount(tmp_path, moment):
    env = {"REPOFS_CRASH_AT": "merge:record"} if moment == "record" else {}
    m = Mount(tmp_path, env=env)
    repo = m.default
    try:
        m.start()
        expected = build_layers(repo, data_mib=128 if moment == "random" else 4)
        remove_middle_snapshot(repo)
        sh(f"mv {repo}/fixes/merge-s1 {repo}/tasks/")
        if moment == "record":
            crash_then_remount(m)
        else:
            time.sleep(random.uniform(0.05, 0.6))
            m.kill()
            m.start()
        wait_for(lambda: not active_tasks(repo), 60, "the merge")
        assert (repo / "disks/vm1").read_bytes() == expected
        assert status(repo, "vm1")["base"] == "s0"
        assert os.listdir(repo / "fixes") in (["clean-s1"], ["clean-s1", "clean-volumes"])
        m.expected_fixes.update({"clean-s1", "clean-volumes"})
        check_through_the_mount(m)
    finally:
        m.stop()
    assert_consistent(tmp_path / "data/default", garbage_expected=True)


def test_check_reports_what_a_person_must_decide(repo, mount):
    """Records edited behind repofs's back (or by a bug): the check says what is
    wrong, and changes nothing."""
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"truncate -s 1M {repo}/disks/vm2")
    images = mount.data / "default/images"
    originals = {p: p.read_text() for p in images.iterdir()}
    vm1 = json.loads(originals[images / "vm1.json"])
    (images / "vm3.json").write_text(json.dumps(vm1))  # claims vm1's volume
    vm2 = json.loads(originals[images / "vm2.json"])
    looped = {**vm2, "chain": vm2["chain"] * 2, "base": "ghost"}
    (images / "vm2.json").write_text(json.dumps(looped))
    descriptions = {
        name: json.loads((repo / "fixes" / name).read_text())["description"]
        for name in os.listdir(repo / "fixes")
    }
    assert sorted(descriptions) == ["mend-vm1", "mend-vm2", "mend-vm3"]
    assert "its top volume is also claimed by vm3" in descriptions["mend-vm1"]
    assert "its volume chain loops" in descriptions["mend-vm2"]
    assert "its base ghost is unknown" in descriptions["mend-vm2"]
    (images / "vm3.json").unlink()
    for path, text in originals.items():
        path.write_text(text)
    assert os.listdir(repo / "fixes") == []


def test_optimize_of_an_open_disk_holds_its_chain_and_ends_while_open(repo, mount):
    task, _ = optimize_under_way(repo, 5)
    with open(repo / "disks/vm2", "r+b") as disk:
        assert xattr.getxattr(str(repo / "disks/vm2"), "user.repofs.tasks") == b"optimize-vm2"
        # The task relies on vm2's chain: snapshots and removal wait for it.
        assert errno_of(os.link, repo / "disks/vm2", repo / "snapshots/x") == errno.EBUSY
        assert errno_of(os.unlink, repo / "disks/vm2") == errno.EBUSY
        mount.expect_log("cannot snapshot vm2: task optimize-vm2 works on it")
        disk.write(b"written while the base was copied")
        disk.flush()
        wait_optimized(repo, "vm2")  # live: the disk stays open
        disk.seek(0)
        assert disk.read(33) == b"written while the base was copied"
    data = (repo / "disks/vm2").read_bytes()
    assert data[:33] == b"written while the base was copied"
    assert data[33:] == (repo / "snapshots/gold").read_bytes()[33:]


def test_disconnecting_stops_tasks_and_connecting_again_resumes_them(repo, mount):
    task, _ = optimize_under_way(repo, 10)
    os.rmdir(repo)
    persisted = stored_task(mount, "optimize-vm2")
    assert persisted["state"] == "running" and persisted["lease"]["host"] == "test-host"
    time.sleep(1)
    assert stored_task(mount, "optimize-vm2")["bytes_done"] == persisted["bytes_done"]
    os.mkdir(repo)
    first = wait_for(lambda: _progress(repo), 30, "progress after reconnecting")
    assert first >= persisted["percent_complete"]
    assert task.exists() or status(repo, "vm2")["state"] == "optimized"
    wait_optimized(repo, "vm2")
    assert_standalone_copy_of_gold(repo, "vm2")
    mount.expected_fixes.add("clean-volumes")


def test_crash_between_the_steps_of_a_clean(tmp_path):
    m = Mount(tmp_path, env={"REPOFS_CRASH_AT": "clean:free"})
    repo = m.default
    try:
        m.start()
        sh(f"truncate -s 64M {repo}/disks/vm1")
        sh(f"dd if=/dev/urandom of={repo}/disks/vm1 bs=1M count=8 conv=notrunc status=none")
        sh(f"rm {repo}/disks/vm1")
        sh(f"mv {repo}/fixes/clean-vm1 {repo}/tasks/")
        crash_then_remount(m)  # the record was purged, its volume not yet freed
        wait_for(lambda: not active_tasks(repo), 60, "the clean, resumed")
        assert os.listdir(repo / "trash") == [] and os.listdir(repo / "fixes") == []
        assert os.listdir(m.data / "default/volumes") == []
        check_through_the_mount(m)
    finally:
        m.stop()
    assert_consistent(tmp_path / "data/default")


def test_cleans_free_no_volume_of_a_disk_being_created(repo, mount):
    """No lock holds creates back from a clean: a volume made for a record not yet
    written is left alone (drivers/localfs.py unsettled_volumes), while garbage
    is freed. Creates and cleans run together for a while; every disk made keeps
    its volume."""
    volumes = mount.data / "default/volumes"
    stop = time.monotonic() + 8
    made = []

    def create_disks() -> None:
        while time.monotonic() < stop:
            path = repo / f"disks/d{len(made)}"
            with open(path, "xb") as disk:
                disk.truncate(MiB)
            made.append(path)

    creator = concurrent.futures.ThreadPoolExecutor(1).submit(create_disks)
    cleans = 0
    while not creator.done():
        (volumes / f"{os.urandom(16).hex()}.raw").write_bytes(b"garbage")
        wait_for(lambda: "clean-volumes" in os.listdir(repo / "fixes"), 30, "clean-volumes")
        os.rename(repo / "fixes/clean-volumes", repo / "tasks/clean-volumes")
        wait_for(lambda: not active_tasks(repo), TASK_TIMEOUT_S, "the clean")
        cleans += 1
    creator.result()
    assert cleans >= 3 and len(made) >= 50, (cleans, len(made))
    for path in made:
        [volume] = status(repo, path.name)["chain"]
        assert os.path.exists(volume), f"the clean freed {path.name}'s volume {volume}"
        with open(path, "rb") as disk:
            assert disk.read(4096) == bytes(4096)
    wait_for(lambda: not os.listdir(repo / "tasks"), 30, "the tasks to be forgotten")
