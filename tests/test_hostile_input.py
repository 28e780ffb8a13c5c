"""Hostile input: every bad request gets its errno and a log line that names
the reason, and leaves nothing behind (docs/behaviour.md, "Bad input")."""

import errno
import json
import os
import subprocess

import pytest
from conftest import errno_of, pattern, sh, status, wait_for

pytestmark = pytest.mark.mount

BAD_NAMES = {
    ".hidden": "not starting with '.'",
    "x" * 129: "1-128 characters",
    "caf\u00e9": "characters of A-Z",
    "tab\there": "characters of A-Z",
    "new\nline": "characters of A-Z",
    "with space": "characters of A-Z",
    "semi;colon": "characters of A-Z",
}


@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_a_bad_name_is_einval_with_its_reason_and_nothing_is_made(repo, mount, name):
    assert errno_of(os.open, repo / "disks" / name, os.O_CREAT | os.O_WRONLY) == errno.EINVAL
    sh(f"truncate -s 1M {repo}/disks/vm1")
    assert errno_of(os.link, repo / "disks/vm1", repo / "snapshots" / name) == errno.EINVAL
    assert errno_of(os.rename, repo / "disks/vm1", repo / "disks" / name) == errno.EINVAL
    assert errno_of(os.mkdir, mount.path / name) == errno.EINVAL
    assert sorted(os.listdir(repo / "disks")) == ["vm1"]
    assert os.listdir(repo / "snapshots") == []
    mount.expect_log(BAD_NAMES[name])


@pytest.mark.parametrize(
    "kind, make",
    [
        ("fifo", lambda p: os.mkfifo(p)),
        ("device node", lambda p: os.mknod(p, 0o600 | 0o020000, os.makedev(1, 3))),
        ("symlink", lambda p: os.symlink("/etc/shadow", p)),
        ("directory", lambda p: os.mkdir(p)),
    ],
)
def test_only_images_live_in_a_repository(repo, mount, kind, make):
    for folder in ("disks", "snapshots", "status", "trash", "fixes", "tasks"):
        assert errno_of(make, repo / folder / "x") == errno.EPERM, folder
        assert not os.path.lexists(repo / folder / "x")
    assert errno_of(make, repo / "x") == errno.EPERM
    if kind != "directory":  # mkdir at the root makes a repository
        assert errno_of(make, mount.path / "x") == errno.EPERM
    mount.expect_log("only images live in repofs|directories are made only at the mount root")


@pytest.mark.parametrize("path", ["README", "default/repository", "default/events"])
def test_read_only_files_refuse_writes(mount, path):
    assert errno_of(os.open, mount.path / path, os.O_WRONLY) == errno.EACCES


def test_status_fixes_and_tasks_entries_refuse_writes(repo, mount):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"rm {repo}/disks/vm1")  # offers fixes/clean-vm1
    for entry in (repo / "status/vm1", repo / "fixes/clean-vm1", repo / "trash/vm1"):
        if entry.exists():
            assert errno_of(os.open, entry, os.O_WRONLY) == errno.EACCES, entry


@pytest.mark.parametrize(
    "attribute, value, expected, reason",
    [
        ("user.repofs.strategy", b"fastest", errno.EINVAL, "strategy"),
        ("user.repofs.max_chain", b"-3", errno.EINVAL, "max_chain"),
        ("user.repofs.max_chain", b"many", errno.EINVAL, "max_chain"),
        ("user.repofs.no_such_option", b"1", errno.ENOTSUP, "no_such_option"),
    ],
)
def test_bad_options_are_refused_with_their_reason(repo, mount, attribute, value, expected,
                                                   reason):  # fmt: skip
    assert errno_of(os.setxattr, repo, attribute, value) == expected
    mount.expect_log(reason)


def test_a_huge_attribute_value_is_refused_and_the_mount_stays_up(repo, mount):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    assert errno_of(os.setxattr, repo / "disks/vm1", "user.note", b"x" * (64 << 10)) in (
        errno.E2BIG, errno.ERANGE, errno.ENOSPC,
    )  # fmt: skip
    os.setxattr(repo / "disks/vm1", "user.note", b"fine")
    assert os.getxattr(repo / "disks/vm1", "user.note") == b"fine"


def test_absurd_sizes(repo, mount):
    sh(f"truncate -s 0 {repo}/disks/empty")
    assert os.stat(repo / "disks/empty").st_size == 0
    sh(f"truncate -s 1000 {repo}/disks/odd")  # any byte count (docs/behaviour.md)
    assert os.stat(repo / "disks/odd").st_size == 1000
    result = sh(f"truncate -s 1E {repo}/disks/huge", check=False)
    assert result.returncode != 0
    assert os.stat(repo / "disks/huge").st_size == 0  # the create stands, the grow does not
    mount.expect_log("huge")
    fd = os.open(repo / "disks/odd", os.O_WRONLY)
    try:
        assert errno_of(os.ftruncate, fd, -1) == errno.EINVAL  # refused by the kernel
    finally:
        os.close(fd)


def test_damaged_volumes_are_eio_and_reported_and_the_rest_works(repo, mount, tmp_path):
    """Volume files damaged behind repofs's back: a qcow2 layer cut short, a
    volume gone. Opening either is EIO naming it, its status says broken and
    why, the check asks a person, and the other images work."""
    sh(f"truncate -s 4M {repo}/disks/cut {repo}/disks/lost {repo}/disks/fine")
    for name in ("cut", "lost"):
        sh(f"ln {repo}/disks/{name} {repo}/snapshots/{name}-base")
        sh(f"dd if=/dev/urandom of={repo}/disks/{name} bs=1M count=2 conv=notrunc status=none")
    cut, lost = (json.loads((repo / "status" / n).read_text())["chain"][0] for n in ("cut", "lost"))
    os.truncate(cut, 4096)  # the qcow2 top: its header only
    os.rename(lost, tmp_path / "lost.qcow2")
    for name, volume in (("cut", cut), ("lost", lost)):
        assert errno_of((repo / "disks" / name).read_bytes) == errno.EIO
        said = status(repo, name)
        assert said["state"] == "broken", said
        assert os.path.basename(volume) in said["last_error"], said
    mount.expect_log(f"{os.path.basename(cut)}")
    mount.expect_log(f"{os.path.basename(lost)}")
    assert "missing" in json.loads((repo / "fixes/mend-lost").read_text())["description"]
    asked = json.loads((repo / "fixes/mend-cut").read_text())["description"]
    assert "its last open on host test-host failed" in asked and os.path.basename(cut) in asked
    sh(f"dd if=/dev/urandom of={repo}/disks/fine bs=1M count=1 conv=notrunc status=none")
    sh(f"cmp -n 1M {repo}/disks/fine {repo}/disks/fine")
    # What a person decides: `lost` comes back; `cut` is given up.
    os.rename(tmp_path / "lost.qcow2", lost)
    sh(f"dd if={repo}/disks/lost of=/dev/null bs=1M status=none")
    assert status(repo, "lost")["state"] == "optimized"
    sh(f"rm {repo}/disks/cut")
    sh(f"mv {repo}/fixes/clean-cut {repo}/tasks/")
    wait_for(lambda: not os.listdir(repo / "trash"), 30, "the clean of cut")


@pytest.mark.parametrize("top", ["raw", "qcow2"])
def test_two_writers_of_one_disk_both_land(repo, mount, tmp_path, top):
    """Two processes writing one disk at once (docs/behaviour.md: like two
    writers of a file; QEMU's own image locks keep two VMs apart)."""
    sh(f"truncate -s 8M {repo}/disks/vm1")
    if top == "qcow2":
        sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    halves = [pattern(f"writer {i} ".encode(), 4 << 20) for i in (0, 1)]
    for i, half in enumerate(halves):
        (tmp_path / f"half{i}").write_bytes(half)
    writers = [
        subprocess.Popen(
            [
                "dd",
                f"if={tmp_path}/half{i}",
                f"of={repo}/disks/vm1",
                "bs=4k",
                f"seek={1024 * i}",
                "conv=notrunc",
                "status=none",
            ]
        )  # fmt: skip
        for i in (0, 1)
    ]
    for writer in writers:
        assert writer.wait(60) == 0
    assert (repo / "disks/vm1").read_bytes() == halves[0] + halves[1]
