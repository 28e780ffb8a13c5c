"""removeImage, the trash, restore and rename, through the mount."""

import errno
import json
import os

import pytest
from conftest import MiB, active_tasks, errno_of, pattern, sh, status, wait_for, write_at

pytestmark = pytest.mark.mount


def listing(path) -> list[str]:
    return sorted(os.listdir(path))


def test_rm_moves_to_trash_and_mv_restores(repo, mount):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"printf keep | dd of={repo}/disks/vm1 conv=notrunc status=none")
    volume = json.loads((repo / "status/vm1").read_text())["chain"][0]
    sh(f"rm {repo}/disks/vm1")
    assert listing(repo / "disks") == [] and listing(repo / "trash") == ["vm1"]
    assert listing(repo / "status") == []
    assert os.path.exists(volume)  # logical removal: space comes back with a clean
    assert os.getxattr(repo / "trash/vm1", "user.repofs.kind") == b"virtual-disk"
    assert oct(os.stat(repo / "trash/vm1").st_mode & 0o777) == "0o444"
    mount.remount()
    assert listing(repo / "trash") == ["vm1"]
    sh(f"mv {repo}/trash/vm1 {repo}/disks/")
    assert listing(repo / "disks") == ["vm1"] and listing(repo / "trash") == []
    assert (repo / "disks/vm1").read_bytes()[:4] == b"keep"


def test_rm_snapshot_and_restore_to_its_own_kind_only(repo, mount):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    sh(f"rm {repo}/disks/vm1")
    sh(f"rm {repo}/snapshots/s1")  # what built on it is in the trash
    assert listing(repo / "trash") == ["s1", "vm1"]
    assert errno_of(os.rename, repo / "trash/s1", repo / "disks/s1") == errno.EINVAL
    # vm1 comes back although its base is still in the trash: it reads through
    # s1's layer, and a merge is offered so that s1 can be cleaned some day.
    sh(f"mv {repo}/trash/vm1 {repo}/disks/")
    assert "merge-s1" in os.listdir(repo / "fixes")
    assert "clean-s1" not in os.listdir(repo / "fixes")
    sh(f"mv {repo}/trash/s1 {repo}/snapshots/")
    assert listing(repo / "snapshots") == ["s1"] and listing(repo / "disks") == ["vm1"]
    assert os.listdir(repo / "fixes") == []


def test_trash_is_read_only(repo):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"rm {repo}/disks/vm1")
    for flags in (os.O_RDONLY, os.O_WRONLY):
        assert errno_of(os.open, repo / "trash/vm1", flags) == errno.EACCES
    assert errno_of(os.unlink, repo / "trash/vm1") == errno.EROFS


def test_rm_open_image_is_ebusy(repo, mount):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    with open(repo / "disks/vm1", "rb"):
        assert errno_of(os.unlink, repo / "disks/vm1") == errno.EBUSY
    mount.expect_log("cannot remove vm1 in default: it is open")
    assert listing(repo / "disks") == ["vm1"]


def test_rm_snapshot_that_images_read_through_is_logical(repo, mount):
    """Issue 20: the snapshot goes to the trash, its ID stays taken, its readers
    keep their bytes through its layer; restore works while the layer exists; the
    merge (two readers: offered, not run by itself) folds it in, then the clean
    frees it, and the readers still read the same."""
    sh(f"truncate -s 4M {repo}/disks/vm1")
    write_at(repo / "disks/vm1", 0, pattern(b"s1 data ", 2 * MiB))
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    sh(f"ln {repo}/snapshots/s1 {repo}/disks/vm2")
    write_at(repo / "disks/vm1", MiB, pattern(b"vm1 since s1 ", MiB))
    write_at(repo / "disks/vm2", 3 * MiB, pattern(b"vm2 since s1 ", MiB))
    expected = {d: (repo / "disks" / d).read_bytes() for d in ("vm1", "vm2")}
    layer = status(repo, "s1")["chain"][0]
    sh(f"rm {repo}/snapshots/s1")
    assert listing(repo / "snapshots") == [] and listing(repo / "trash") == ["s1"]
    assert os.getxattr(repo / "trash/s1", "user.repofs.dependents") == b"vm1,vm2"
    assert errno_of(os.open, repo / "disks/s1", os.O_CREAT | os.O_WRONLY) == errno.EEXIST
    mount.expect_log("s1 is in the trash: restore or clean it first")
    for disk, data in expected.items():
        assert (repo / "disks" / disk).read_bytes() == data
    fix = json.loads((repo / "fixes/merge-s1").read_text())
    assert fix["data"]["images"] == ["vm1", "vm2"], fix
    assert "into 2 layers above it" in fix["description"], fix
    assert fix["bytes_estimate"] >= 4 * MiB, fix  # 2 MiB of s1's data, into 2 layers
    assert not active_tasks(repo)  # two readers: a person decides
    sh(f"mv {repo}/trash/s1 {repo}/snapshots/")
    assert (repo / "snapshots/s1").read_bytes()[: 2 * MiB] == pattern(b"s1 data ", 2 * MiB)
    sh(f"rm {repo}/snapshots/s1")
    sh(f"mv {repo}/fixes/merge-s1 {repo}/tasks/")
    wait_for(lambda: not active_tasks(repo), 60, "the merge")
    assert listing(repo / "fixes") == ["clean-s1"]
    sh(f"mv {repo}/fixes/clean-s1 {repo}/tasks/")
    wait_for(lambda: not active_tasks(repo), 60, "the clean")
    assert listing(repo / "trash") == [] and not os.path.exists(layer)
    for disk, data in expected.items():
        assert (repo / "disks" / disk).read_bytes() == data
        assert status(repo, disk)["base"] is None


def test_rename_within_a_repository(repo, mount):
    sh(f"truncate -s 1M {repo}/disks/a")
    sh(f"printf data | dd of={repo}/disks/a conv=notrunc status=none")
    sh(f"setfattr -n user.owner -v alice {repo}/disks/a")
    sh(f"mv {repo}/disks/a {repo}/disks/b")
    assert listing(repo / "disks") == ["b"]
    assert (repo / "disks/b").read_bytes()[:4] == b"data"
    mount.remount()
    assert os.getxattr(repo / "disks/b", "user.owner") == b"alice"
    assert json.loads((repo / "status/b").read_text())["id"] == "b"


def test_rename_refusals(repo, mount):
    sh(f"truncate -s 1M {repo}/disks/a")
    sh(f"truncate -s 1M {repo}/disks/b")
    sh(f"ln {repo}/disks/a {repo}/snapshots/s1")
    cases = [
        ("disks/a", "disks/b", errno.EEXIST),
        ("disks/a", "disks/.bad", errno.EINVAL),
        ("disks/a", "snapshots/a2", errno.EINVAL),
        ("snapshots/s1", "snapshots/s2", errno.EBUSY),  # a is based on s1
    ]
    for source, target, expected in cases:
        assert errno_of(os.rename, repo / source, repo / target) == expected, (source, target)
    with open(repo / "disks/b", "rb"):
        assert errno_of(os.rename, repo / "disks/b", repo / "disks/c") == errno.EBUSY
    mount.expect_log("cannot rename s1: a depend on it")


def test_mv_across_repositories_is_exdev_and_falls_back(repo, mount):
    sh(f"mkdir {mount.path}/r2")
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"printf moved | dd of={repo}/disks/vm1 conv=notrunc status=none")
    assert errno_of(os.rename, repo / "disks/vm1", mount.path / "r2/disks/vm1") == errno.EXDEV
    sh(f"mv {repo}/disks/vm1 {mount.path}/r2/disks/")
    assert (mount.path / "r2/disks/vm1").read_bytes()[:5] == b"moved"
    assert os.stat(mount.path / "r2/disks/vm1").st_size == MiB
    assert listing(repo / "disks") == [] and listing(repo / "trash") == ["vm1"]


def test_an_id_in_the_trash_is_not_taken_again(repo, mount):
    """Found by the model test: a new image under a trashed image's ID made the
    trashed one's dependents ambiguous (and its restore impossible)."""
    sh(f"truncate -s 1M {repo}/disks/vm1 {repo}/disks/vm2")
    sh(f"rm {repo}/disks/vm1")
    assert errno_of(os.truncate, repo / "disks/vm1", 0) == errno.ENOENT  # no open: no create
    for make in (
        lambda: open(repo / "disks/vm1", "wb").close(),
        lambda: os.link(repo / "disks/vm2", repo / "snapshots/vm1"),
        lambda: os.rename(repo / "disks/vm2", repo / "disks/vm1"),
    ):
        assert errno_of(make) == errno.EEXIST
    mount.expect_log("vm1 is in the trash")
    sh(f"mv {repo}/trash/vm1 {repo}/disks/")
    assert listing(repo / "disks") == ["vm1", "vm2"]


def test_a_snapshot_that_trashed_images_build_on_keeps_its_name(repo, mount):
    """They name their base by ID: a rename would leave them nothing to restore onto."""
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    sh(f"rm {repo}/disks/vm1")
    assert errno_of(os.rename, repo / "snapshots/s1", repo / "snapshots/s2") == errno.EBUSY
    mount.expect_log("cannot rename s1: vm1 depend on it")
    sh(f"mv {repo}/trash/vm1 {repo}/disks/")


def test_a_merge_that_puts_the_base_in_another_repository_degrades_the_image(mount):
    """Found by the model test: s2, a snapshot of r2's disk vm over s1 (itself a
    snapshot of vm, so s2's base is here: optimized), keeps its state when the
    merge of removed s1 makes its base default's gold: degraded, as any image
    whose base is in another repository."""
    r1, r2 = mount.default, mount.path / "r2"
    sh(f"mkdir {r2} && truncate -s 1M {r1}/disks/g && ln {r1}/disks/g {r1}/snapshots/gold")
    sh(f"ln {r1}/snapshots/gold {r2}/disks/vm")
    sh(f"ln {r2}/disks/vm {r2}/snapshots/s1 && ln {r2}/disks/vm {r2}/snapshots/s2")
    assert status(r2, "s2")["state"] == "optimized"
    sh(f"rm {r2}/snapshots/s2 {r2}/snapshots/s1")  # vm reads through both: merged
    wait_for(lambda: not active_tasks(r2), 30, "the merges")
    sh(f"mv {r2}/trash/s2 {r2}/snapshots/")
    assert (status(r2, "s2")["state"], status(r2, "s2")["base"]) == ("degraded", "gold")
    mount.expected_fixes.update({"optimize-s2", "optimize-vm", "clean-s1"})
