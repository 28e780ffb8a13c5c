"""copyImage across repositories: snapshot copies (`ln r1/snapshots/S
r2/snapshots/S`), backups (`ln r1/disks/D r2/snapshots/B`), clones (`ln r1/disks/D
r2/disks/D2`), disks on another repository's snapshot (`ln r1/snapshots/S
r2/disks/V`) and `mv` across repositories."""

import errno
import json
import os

import pytest
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


def make_snapshot(repo, size: str, data_mib: int, layered: bool = False) -> None:
    """snapshots/gold: `size` bytes of which `data_mib` MiB random at 64 MiB;
    `layered`: in a qcow2 layer over an empty snapshot `base` (a copy of gold then
    reads through the storage daemon: slower, long enough to stop or kill)."""
    sh(f"truncate -s {size} {repo}/disks/g")
    if layered:
        sh(f"ln {repo}/disks/g {repo}/snapshots/base")
    sh(f"dd if=/dev/urandom of={repo}/disks/g bs=1M seek=64 count={data_mib} "
       "conv=notrunc status=none")  # fmt: skip
    sh(f"ln {repo}/disks/g {repo}/snapshots/gold")


def copy_of_gold(m: Mount, size: str, data_mib: int, progress: int | None = None):
    """r2, and gold (`size`, `data_mib` MiB of data) of `default` copied into it;
    with `progress`, gold is layered and this returns once the copy passed that
    percent."""
    r1, r2 = m.default, m.path / "r2"
    sh(f"mkdir {r2}")
    make_snapshot(r1, size, data_mib, layered=progress is not None)
    sh(f"ln {r1}/snapshots/gold {r2}/snapshots/gold")
    if progress is not None:
        task = r2 / "tasks/mend-gold"
        wait_for(lambda: json.loads(task.read_text())["percent_complete"] >= progress, 60, "it")
    return r1, r2


def du_kib(path) -> int:
    return int(sh(f"du -sk {path}").stdout.split()[0])


def wait_copied(repo, image_id: str) -> None:
    wait_for(lambda: status(repo, image_id)["state"] == "optimized", 120, f"{image_id} copied")
    wait_for(lambda: not active_tasks(repo), 30, "the copy task to end")


def test_a_copy_is_broken_until_its_data_is_in_and_moves_only_data(mount):
    r1, r2 = mount.default, mount.path / "r2"
    sh(f"mkdir {r2}")
    sh(f"setfattr -n user.repofs.autofix -v false {r2}")
    make_snapshot(r1, "1G", 16)
    before = du_kib(mount.data / "r2")
    sh(f"ln {r1}/snapshots/gold {r2}/snapshots/gold")
    s = status(r2, "gold")
    assert (s["state"], s["last_error"], s["kind"]) == ("broken", "copy not finished", "snapshot")
    assert errno_of(open, r2 / "snapshots/gold", "rb") == errno.EAGAIN
    assert os.listdir(r2 / "fixes") == ["mend-gold"]
    assert json.loads((r2 / "fixes/mend-gold").read_text())["description"].startswith("copy")
    sh(f"mv {r2}/fixes/mend-gold {r2}/tasks/")
    wait_copied(r2, "gold")
    sh(f"cmp {r1}/snapshots/gold {r2}/snapshots/gold")
    assert du_kib(mount.data / "r2") - before < 24 * 1024  # 16 MiB of data, not 1 GiB
    assert os.listdir(r2 / "fixes") == []


def test_with_autofix_the_copy_runs_at_once_and_a_disk_can_build_on_it(mount):
    r1, r2 = copy_of_gold(mount, "128M", 32)
    wait_copied(r2, "gold")
    sh(f"ln {r2}/snapshots/gold {r2}/disks/vm1")
    sh(f"cmp {r1}/snapshots/gold {r2}/disks/vm1")


def test_refusals(mount):
    r1, r2 = mount.default, mount.path / "r2"
    sh(f"mkdir {r2}")
    make_snapshot(r1, "8M", 1)
    assert errno_of(os.link, r1 / "snapshots/gold", r2 / "snapshots/other") == errno.EINVAL
    assert errno_of(os.link, r1 / "disks/g", r1 / "disks/g2") == errno.EINVAL
    sh(f"ln {r1}/snapshots/gold {r2}/snapshots/gold")
    assert errno_of(os.link, r1 / "snapshots/gold", r2 / "snapshots/gold") == errno.EEXIST
    assert errno_of(os.link, r1 / "disks/g", r2 / "disks/gold") == errno.EEXIST
    assert errno_of(os.link, r1 / "snapshots/gold", r2 / "disks/gold") == errno.EEXIST
    assert os.listdir(r1 / "snapshots") == ["gold"]  # a refused clone took no snapshot
    wait_copied(r2, "gold")


def test_stop_leaves_it_broken_and_rm_then_removes_the_half_copy(mount):
    r1, r2 = copy_of_gold(mount, "2G", 1536, progress=10)
    os.unlink(r2 / "tasks/mend-gold")
    s = status(r2, "gold")
    assert (s["state"], s["last_error"]) == ("broken", "stopped by the user")
    assert os.listdir(r2 / "fixes") == ["mend-gold"]  # still a copy to finish
    sh(f"rm {r2}/snapshots/gold")
    assert sorted(os.listdir(r2 / "fixes")) == ["clean-gold", "clean-volumes"]
    sh(f"mv {r2}/fixes/clean-gold {r2}/tasks/")
    wait_for(lambda: not active_tasks(r2) and not os.listdir(r2 / "fixes"), 60, "the clean")
    assert os.listdir(mount.data / "r2/volumes") == []


def test_kill_9_during_a_copy_resumes_and_ends_identical(tmp_path):
    m = Mount(tmp_path)
    try:
        m.start()
        r1, r2 = copy_of_gold(m, "1G", 960, progress=0)
        kill_at_a_random_moment(m, r2 / "tasks/mend-gold")
        m.start()
        wait_copied(r2, "gold")
        m.expect_log(r"mend-gold resumes its copy into \S+ at [1-9]")  # not from 0
        sh(f"cmp {r1}/snapshots/gold {r2}/snapshots/gold")
        m.expected_fixes.add("clean-volumes")  # temp files a kill may leave
        check_through_the_mount(m)
    finally:
        m.stop()
    assert_consistent(tmp_path / "data/r2", garbage_expected=True)


def new_generation(r1, name: str, seek_mib: int) -> int:
    """Changes disk g (8 MiB of new data at `seek_mib`, zeros over 1 MiB of old
    data) and snapshots it as `name`; returns the bytes changed."""
    sh(f"dd if=/dev/urandom of={r1}/disks/g bs=1M seek={seek_mib} count=8 conv=notrunc "
       "status=none")  # fmt: skip
    sh(f"dd if=/dev/zero of={r1}/disks/g bs=1M seek={64 + seek_mib % 100} count=1 "
       "conv=notrunc status=none")  # fmt: skip
    sh(f"ln {r1}/disks/g {r1}/snapshots/{name}")
    return 9 * MiB


def test_three_generations_each_copy_only_what_changed(mount):
    r1, r2 = copy_of_gold(mount, "1G", 128)
    wait_copied(r2, "gold")
    previous = "gold"
    for name, seek_mib in (("gold-2", 512), ("gold-3", 700)):
        changed = new_generation(r1, name, seek_mib)
        before = du_kib(mount.data / "r2")
        sh(f"ln {r1}/snapshots/{name} {r2}/snapshots/{name}")
        wait_copied(r2, name)
        grown = (du_kib(mount.data / "r2") - before) * 1024
        assert grown < 2 * changed, f"{name}: {grown} bytes written for {changed} changed"
        copy = status(r2, name)
        assert copy["base"] == previous and copy["chain"][1:] == status(r2, previous)["chain"]
        previous = name
    for name in ("gold", "gold-2", "gold-3"):
        sh(f"cmp {r1}/snapshots/{name} {r2}/snapshots/{name}")


def test_a_copy_builds_on_an_ancestor_in_a_participating_repository(mount):
    r1, r2, r3 = mount.default, mount.path / "r2", mount.path / "r3"
    sh(f"mkdir {r2} {r3}")
    make_snapshot(r1, "512M", 64)
    sh(f"ln {r1}/snapshots/gold {r3}/snapshots/gold")
    wait_copied(r3, "gold")
    changed = new_generation(r1, "gold-2", 300)
    sh(f"setfattr -n user.repofs.participating -v r3 {r2}")
    before = du_kib(mount.data / "r2")
    sh(f"ln {r1}/snapshots/gold-2 {r2}/snapshots/gold-2")  # the source is r1, not r3
    wait_for(lambda: status(r2, "gold-2")["state"] == "degraded", 60, "gold-2 copied")
    assert (du_kib(mount.data / "r2") - before) * 1024 < 2 * changed
    copy = status(r2, "gold-2")
    assert copy["base"] == "gold" and copy["chain"][1:] == status(r3, "gold")["chain"]
    sh(f"cmp {r1}/snapshots/gold-2 {r2}/snapshots/gold-2")
    assert errno_of(os.rmdir, r3) == errno.EBUSY
    wait_for(lambda: os.listdir(r2 / "fixes") == ["optimize-gold-2"], 10, "the localize offered")
    sh(f"mv {r2}/fixes/optimize-gold-2 {r2}/tasks/")
    wait_copied(r2, "gold-2")
    assert status(r2, "gold")["state"] == "optimized"
    sh(f"rmdir {r3}")
    sh(f"cmp {r1}/snapshots/gold-2 {r2}/snapshots/gold-2")
    sh(f"cmp {r1}/snapshots/gold {r2}/snapshots/gold")
    mount.expect_log("cannot disconnect r3: r2/gold-2")


def test_backups_of_a_disk_are_point_in_time_and_incremental(mount):
    r1, r2 = mount.default, mount.path / "r2"
    sh(f"mkdir {r2}")
    sh(f"truncate -s 1G {r1}/disks/vm1")
    sh(f"dd if=/dev/urandom of={r1}/disks/vm1 bs=1M count=128 conv=notrunc status=none")
    expected = (r1 / "disks/vm1").read_bytes()[: 130 * MiB]
    sh(f"ln {r1}/disks/vm1 {r2}/snapshots/monday")
    sh(f"printf after | dd of={r1}/disks/vm1 conv=notrunc status=none")  # after the ln
    wait_copied(r2, "monday")
    assert (r2 / "snapshots/monday").read_bytes()[: 130 * MiB] == expected
    assert status(r1, "monday")["kind"] == "snapshot"  # kept in r1 for the next one
    sh(f"dd if=/dev/urandom of={r1}/disks/vm1 bs=1M seek=600 count=4 conv=notrunc status=none")
    before = du_kib(mount.data / "r2")
    sh(f"ln {r1}/disks/vm1 {r2}/snapshots/tuesday")
    wait_copied(r2, "tuesday")
    sh(f"cmp {r1}/snapshots/tuesday {r2}/snapshots/tuesday")
    assert status(r2, "tuesday")["base"] == "monday"
    assert du_kib(mount.data / "r2") - before < 8 * 1024  # 4 MiB and a sector changed


def test_hints_and_participating_choose_where_a_copy_comes_from(mount):
    r1, r2, r3 = mount.default, mount.path / "r2", mount.path / "r3"
    sh(f"mkdir {r2} {r3}")
    sh(f"setfattr -n user.repofs.autofix -v false {r3}")
    make_snapshot(r1, "64M", 4)
    sh(f"ln {r1}/snapshots/gold {r3}/snapshots/gold")
    sh(f"setfattr -n user.repofs.image_hints -v gold=r2 {r3}")  # r2 lacks it
    sh(f"mv {r3}/fixes/mend-gold {r3}/tasks/")
    task = r3 / "tasks/mend-gold"
    wait_for(lambda: json.loads(task.read_text())["state"] == "failed", 30, "the copy to fail")
    assert "no usable snapshot gold in r2 (user.repofs.image_hints)" in task.read_text()
    os.unlink(task)
    sh(f"setfattr -x user.repofs.image_hints {r3}")
    sh(f"setfattr -n user.repofs.participating -v default {r3}")
    sh(f"mv {r3}/fixes/mend-gold {r3}/tasks/")
    wait_copied(r3, "gold")
    sh(f"cmp {r1}/snapshots/gold {r3}/snapshots/gold")
    mount.expect_log("task=mend-gold repo=r3 .*state=failed")


def test_crash_after_the_data_is_in_but_before_the_record_says_so(tmp_path):
    m = Mount(tmp_path, env={"REPOFS_CRASH_AT": "mend:finish"})
    try:
        m.start()
        r1, r2 = copy_of_gold(m, "64M", 8)
        crash_then_remount(m)
        wait_copied(r2, "gold")  # the mend, resumed, ends it
        sh(f"cmp {r1}/snapshots/gold {r2}/snapshots/gold")
        m.expected_fixes.add("clean-volumes")
        check_through_the_mount(m)
    finally:
        m.stop()
    assert_consistent(tmp_path / "data/r2", garbage_expected=True)


def test_a_clone_is_usable_at_once_point_in_time_and_ends_independent(mount):
    r2, r3 = mount.path / "r2", mount.path / "r3"
    sh(f"mkdir {r2} {r3}")
    sh(f"truncate -s 256M {r3}/disks/vm1")
    sh(f"dd if=/dev/urandom of={r3}/disks/vm1 bs=1M count=96 conv=notrunc status=none")
    expected = (r3 / "disks/vm1").read_bytes()
    sh(f"ln {r3}/disks/vm1 {r2}/disks/vm1")
    sh(f"printf after | dd of={r3}/disks/vm1 conv=notrunc status=none")  # after the ln
    assert (r2 / "disks/vm1").read_bytes() == expected  # usable at once
    assert os.listdir(r3 / "snapshots") == ["vm1.to-r2.vm1"]  # the moment of the clone
    wait_for(lambda: status(r2, "vm1")["state"] == "optimized", 60, "the clone to be flattened")
    wait_for(lambda: not active_tasks(r2), 30, "the flatten task to end")
    clone = status(r2, "vm1")
    assert clone["base"] is None and clone["chain"][0].startswith(str(mount.data / "r2"))
    assert len(clone["chain"]) == 1 and clone["chain"][0].endswith(".raw")
    assert (r2 / "disks/vm1").read_bytes() == expected
    sh(f"printf clone | dd of={r2}/disks/vm1 conv=notrunc status=none")
    assert (r3 / "disks/vm1").read_bytes()[:5] == b"after"
    sh(f"rmdir {r3}")  # nothing in r2 needs it any more


def test_a_disk_on_another_repositorys_snapshot_is_degraded_until_its_base_is_copied(mount):
    r2, r3 = mount.path / "r2", mount.path / "r3"
    sh(f"mkdir {r2} {r3}")
    make_snapshot(r3, "256M", 32)
    sh(f"ln {r3}/snapshots/gold {r2}/disks/vm")
    s = status(r2, "vm")
    assert (s["state"], s["base"]) == ("degraded", "gold")
    assert s["chain"][1].startswith(str(mount.data / "r3"))
    sh(f"cmp {r3}/snapshots/gold {r2}/disks/vm")
    sh(f"printf mine | dd of={r2}/disks/vm conv=notrunc status=none")
    assert errno_of(os.rmdir, r3) == errno.EBUSY
    mount.expect_log("cannot disconnect r3: r2/vm read through its snapshots")
    assert errno_of(os.unlink, r3 / "snapshots/gold") == errno.EBUSY
    assert sh(f"getfattr --only-values -n user.repofs.dependents {r3}/snapshots/gold").stdout == (
        "g,r2/vm"
    )
    # Strategy space: the copy of gold into r2 is offered, not queued.
    assert sorted(os.listdir(r2 / "fixes")) == ["optimize-vm"]
    assert "as snapshot gold" in (r2 / "fixes/optimize-vm").read_text()
    sh(f"mv {r2}/fixes/optimize-vm {r2}/tasks/")
    wait_for(lambda: status(r2, "vm")["state"] == "optimized", 60, "vm to be optimized")
    wait_for(lambda: not active_tasks(r2), 30, "the optimize task to end")
    assert status(r2, "gold")["state"] == "optimized"
    assert all(c.startswith(str(mount.data / "r2")) for c in status(r2, "vm")["chain"])
    assert (r2 / "disks/vm").read_bytes()[:4] == b"mine"
    sh(f"cmp -i 4 {r3}/snapshots/gold {r2}/disks/vm")
    # Now that r2 holds gold, a disk on r3's gold builds on r2's: optimized at
    # once, and r3 can go.
    sh(f"ln {r3}/snapshots/gold {r2}/disks/vm2")
    s = status(r2, "vm2")
    assert (s["state"], s["base"]) == ("optimized", "gold")
    assert all(c.startswith(str(mount.data / "r2")) for c in s["chain"])
    sh(f"rmdir {r3}")
    sh(f"cmp {r2}/snapshots/gold {r2}/disks/vm2")


def test_under_performance_a_disk_on_another_repositorys_snapshot_is_flattened(mount):
    r2, r3 = mount.path / "r2", mount.path / "r3"
    sh(f"mkdir {r2} {r3}")
    sh(f"setfattr -n user.repofs.strategy -v performance {r2}")
    make_snapshot(r3, "128M", 16)
    sh(f"ln {r3}/snapshots/gold {r2}/disks/vm")
    wait_for(lambda: status(r2, "vm")["state"] == "optimized", 60, "vm to be flattened")
    wait_for(lambda: not active_tasks(r2), 30, "the optimize task to end")
    assert len(status(r2, "vm")["chain"]) == 1 and not (r2 / "snapshots/gold").exists()
    sh(f"cmp {r3}/snapshots/gold {r2}/disks/vm")
    sh(f"rmdir {r3}")


def test_mv_across_repositories_falls_back_to_copy_and_remove(mount):
    r1, r2 = mount.default, mount.path / "r2"
    sh(f"mkdir {r2}")
    sh(f"truncate -s 64M {r1}/disks/vm1")
    sh(f"dd if=/dev/urandom of={r1}/disks/vm1 bs=1M seek=8 count=8 conv=notrunc status=none")
    sh(f"setfattr -n user.owner -v alice {r1}/disks/vm1")
    expected = (r1 / "disks/vm1").read_bytes()
    assert errno_of(os.rename, r1 / "disks/vm1", r2 / "disks/vm1") == errno.EXDEV
    result = sh(f"mv {r1}/disks/vm1 {r2}/disks/")
    assert result.stderr == ""  # read-only user.repofs.* are skipped silently
    assert (r2 / "disks/vm1").read_bytes() == expected
    assert sh(f"getfattr --only-values -n user.owner {r2}/disks/vm1").stdout == "alice"
    assert os.listdir(r1 / "disks") == [] and os.listdir(r1 / "trash") == ["vm1"]


def test_a_base_in_another_repository_is_not_this_repositorys_image_of_that_id(mount):
    """r2/vm builds on r1's gold; r2's own copy of gold is another image (found
    by the model test: it could not be removed, nor cleaned once removed)."""
    r1, r2 = mount.default, mount.path / "r2"
    sh(f"mkdir {r2}")
    make_snapshot(r1, "64M", 1)
    sh(f"ln {r1}/snapshots/gold {r2}/disks/vm")  # before r2 holds a copy of gold
    sh(f"ln {r1}/snapshots/gold {r2}/snapshots/gold")
    wait_copied(r2, "gold")
    assert status(r2, "vm")["chain"][1].startswith(str(mount.data / "default"))
    assert sh(f"getfattr --only-values -n user.repofs.dependents {r1}/snapshots/gold").stdout == (
        "g,r2/vm"
    )
    sh(f"rm {r2}/snapshots/gold")
    assert "clean-gold" in os.listdir(r2 / "fixes")
    sh(f"mv {r2}/fixes/clean-gold {r2}/tasks/")
    wait_for(lambda: not os.listdir(r2 / "trash"), 30, "the clean")
    sh(f"rm {r2}/disks/vm")
    sh(f"mv {r2}/trash/vm {r2}/disks/")  # its base is r1's gold, which is there
    sh(f"cmp {r1}/snapshots/gold {r2}/disks/vm")
    sh(f"rm {r2}/disks/vm")  # so that r1 can be disconnected


def test_the_source_of_an_unfinished_copy_cannot_be_removed(mount):
    """Found by the soak: removing the source while its copy was queued left the
    copy broken for good (and the clean then freed the only data)."""
    r1, r2 = mount.default, mount.path / "r2"
    sh(f"mkdir {r2}")
    sh(f"setfattr -n user.repofs.autofix -v false {r2}")  # the copy waits in fixes/
    make_snapshot(r1, "128M", 8)
    sh(f"ln {r1}/snapshots/gold {r2}/snapshots/gold")
    sh(f"rm {r1}/disks/g")  # nothing else keeps gold
    assert errno_of(os.unlink, r1 / "snapshots/gold") == errno.EBUSY
    mount.expect_log("cannot remove gold: its copy into r2 is not finished")
    sh(f"mv {r2}/fixes/mend-gold {r2}/tasks/")
    wait_copied(r2, "gold")
    sh(f"cmp {r1}/snapshots/gold {r2}/snapshots/gold")
    sh(f"rm {r1}/snapshots/gold")


def test_a_trashed_image_elsewhere_keeps_its_base_from_being_cleaned(mount):
    """Found by the model test: r2's trashed disk on r1's snapshot did not keep
    r1's clean from freeing the snapshot's volume (the restore would break)."""
    r1, r2 = mount.default, mount.path / "r2"
    sh(f"mkdir {r2}")
    make_snapshot(r1, "64M", 1)
    sh(f"rm {r1}/disks/g")
    sh(f"ln {r1}/snapshots/gold {r2}/disks/vm")
    digest = sh(f"sha1sum < {r2}/disks/vm").stdout
    sh(f"rm {r2}/disks/vm")
    sh(f"rm {r1}/snapshots/gold")  # nothing live builds on it
    assert "clean-gold" not in os.listdir(r1 / "fixes")
    sh(f"mv {r2}/trash/vm {r2}/disks/")
    assert sh(f"sha1sum < {r2}/disks/vm").stdout == digest
    sh(f"rm {r2}/disks/vm")


def test_a_copy_back_into_the_repository_of_its_base_is_whole(mount):
    """Found by the model test: a snapshot of r2's disk on r1's gold, copied
    into r1, failed ("gold is no longer under snap"); it is now a whole copy."""
    r1, r2 = mount.default, mount.path / "r2"
    sh(f"mkdir {r2}")
    make_snapshot(r1, "64M", 1)
    sh(f"ln {r1}/snapshots/gold {r2}/disks/vm")
    sh(f"printf mine | dd of={r2}/disks/vm conv=notrunc status=none")
    sh(f"ln {r2}/disks/vm {r2}/snapshots/snap")
    sh(f"ln {r2}/snapshots/snap {r1}/snapshots/snap")
    wait_copied(r1, "snap")
    sh(f"cmp {r2}/snapshots/snap {r1}/snapshots/snap")
    assert len(status(r1, "snap")["chain"]) == 1
    mount.expected_fixes |= {"optimize-snap", "optimize-vm"}  # r2's, on r1's gold


def test_a_copy_over_a_smaller_ancestor_has_the_snapshots_size(mount):
    """Found by the model test: the overlay took its ancestor's size, and
    writing the grown part failed (EINVAL)."""
    r1, r2 = mount.default, mount.path / "r2"
    sh(f"mkdir {r2}")
    sh(f"truncate -s 1M {r1}/disks/vm")
    sh(f"ln {r1}/disks/vm {r1}/snapshots/small")
    sh(f"ln {r1}/snapshots/small {r2}/snapshots/small")
    wait_copied(r2, "small")
    sh(f"truncate -s 3M {r1}/disks/vm")
    sh(f"printf grown | dd of={r1}/disks/vm bs=1 seek=2M conv=notrunc status=none")
    sh(f"ln {r1}/disks/vm {r1}/snapshots/big")
    sh(f"ln {r1}/snapshots/big {r2}/snapshots/big")  # over small, which r2 holds
    wait_copied(r2, "big")
    assert status(r2, "big")["base"] == "small"
    sh(f"cmp {r1}/snapshots/big {r2}/snapshots/big")


def test_a_backup_of_a_grown_disk_moves_only_what_changed(mount):
    """The range a disk grew by since the ancestor the target holds reads as
    zeros in the target's overlay already: it is not copied, nor allocated."""
    r1, r2 = mount.default, mount.path / "r2"
    sh(f"mkdir {r2}")
    sh(f"truncate -s 1G {r1}/disks/vm1")
    sh(f"dd if=/dev/urandom of={r1}/disks/vm1 bs=1M count=4 conv=notrunc status=none")
    sh(f"ln {r1}/disks/vm1 {r1}/snapshots/s1")
    sh(f"ln {r1}/snapshots/s1 {r2}/snapshots/s1")
    wait_copied(r2, "s1")
    sh(f"truncate -s 2G {r1}/disks/vm1")
    sh(f"dd if=/dev/urandom of={r1}/disks/vm1 bs=1M seek=1200 count=1 conv=notrunc status=none")
    before = du_kib(mount.data / "r2")
    sh(f"ln {r1}/disks/vm1 {r2}/snapshots/monday")
    wait_copied(r2, "monday")
    assert status(r2, "monday")["base"] == "s1"
    assert status(r2, "monday")["size"] == 2 << 30
    sh(f"cmp {r1}/snapshots/monday {r2}/snapshots/monday")
    assert du_kib(mount.data / "r2") - before < 4 * 1024  # 1 MiB written
