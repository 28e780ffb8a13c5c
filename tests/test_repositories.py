"""The mount root: README, connect, mkdir/rmdir of repositories, repository facts."""

import errno
import json
import os
import subprocess
import sys

import pytest
from conftest import Mount, errno_of, sh

pytestmark = pytest.mark.mount


def test_root_and_repository_layout(mount):
    assert sorted(os.listdir(mount.path)) == ["README", "connect", "default"]
    assert sorted(os.listdir(mount.default)) == [
        "disks", "events", "fixes", "repository", "snapshots", "status", "tasks", "trash",
    ]  # fmt: skip
    readme = (mount.path / "README").read_text()
    assert "truncate -s 20G default/disks/vm1" in readme
    assert "repofs status ." in readme and "repofs wait " in readme
    assert errno_of(os.open, mount.path / "README", os.O_WRONLY) == errno.EACCES


def test_repository_file(mount):
    facts = json.loads((mount.default / "repository").read_text())
    assert facts["name"] == "default" and facts["format"] == "localfs-1.0"
    assert facts["connection"] == {"path": str(mount.data / "default")}
    assert facts["capacity"] >= facts["free"] > 0
    [host] = facts["hosts"]
    assert host["host"] == "test-host" and host["this_host"] and host["alive"]
    assert host["heartbeat"] >= 1 and host["tasks"] == []
    assert facts["transient"] is False


def test_mkdir_creates_and_rmdir_disconnects(mount):
    sh(f"mkdir {mount.path}/r1")
    assert (mount.data / "r1/repofs.json").exists()
    sh(f"truncate -s 1M {mount.path}/r1/disks/vm1")
    sh(f"rmdir {mount.path}/r1")
    assert "r1" not in os.listdir(mount.path)
    assert (mount.data / "r1/images/vm1.json").exists()  # disconnect keeps the data
    sh(f"mkdir {mount.path}/r1")  # reopens
    assert os.listdir(mount.path / "r1/disks") == ["vm1"]
    sh(f"rmdir {mount.path}/r1")
    mount.remount()  # repositories of the data dir come back at every mount
    assert os.listdir(mount.path / "r1/disks") == ["vm1"]


def test_mkdir_refusals(mount):
    assert errno_of(os.mkdir, mount.path / "connect") == errno.EEXIST
    assert errno_of(os.mkdir, mount.path / ".hidden") == errno.EINVAL
    assert errno_of(os.mkdir, mount.default / "disks/sub") == errno.EPERM
    assert errno_of(os.rmdir, mount.default / "disks") == errno.EPERM
    assert sorted(os.listdir(mount.path)) == ["README", "connect", "default"]


def test_temp_files_and_bad_names_are_not_images(repo, mount):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    (mount.data / "default/images/.tmp-x-vm1.json").write_text("{}")
    assert errno_of(os.stat, repo / "disks/.tmp-x-vm1") == errno.ENOENT
    assert os.listdir(repo / "disks") == ["vm1"]
    (mount.data / "default/images/.tmp-x-vm1.json").unlink()


def test_rmdir_of_a_repository_with_an_open_image_is_ebusy(mount):
    sh(f"truncate -s 1M {mount.default}/disks/vm1")
    with open(mount.default / "disks/vm1", "rb"):
        assert errno_of(os.rmdir, mount.default) == errno.EBUSY
    mount.expect_log("cannot disconnect default: open images \\['vm1'\\]")
    os.rmdir(mount.default)


def test_connect_formats_an_empty_directory_and_is_transient(mount, tmp_path):
    place = tmp_path / "images"
    place.mkdir()
    sh(f"echo 'r2 localfs-1.0 path={place}' > {mount.path}/connect")
    assert (place / "repofs.json").exists()
    sh(f"truncate -s 1M {mount.path}/r2/disks/vm1")
    assert f"r2 localfs-1.0 path={place}" in (mount.path / "connect").read_text()
    facts = json.loads((mount.path / "r2/repository").read_text())
    assert facts["transient"] is True
    mount.remount()
    assert "r2" not in os.listdir(mount.path)
    sh(f"echo 'again localfs-1.0 path={place}' > {mount.path}/connect")
    assert os.listdir(mount.path / "again/disks") == ["vm1"]


def test_connect_at_mount_time(tmp_path):
    place = tmp_path / "elsewhere"
    place.mkdir()
    m = Mount(tmp_path, ("--connect", f"r9 localfs-1.0 path={place}"))
    try:
        m.start()
        assert sorted(os.listdir(m.path)) == ["README", "connect", "default", "r9"]
        sh(f"truncate -s 1M {m.path}/r9/disks/vm1")
        assert (place / "images/vm1.json").exists()
    finally:
        m.stop()


@pytest.mark.parametrize(
    "line, expected",
    [
        ("r2 localfs-1.0 path={nonempty}", errno.EINVAL),  # not empty, not a repository
        ("r2 zfs-9 path={empty}", errno.EINVAL),  # unknown format
        ("r2 clvm-1.2 vg=v", errno.EOPNOTSUPP),  # planned format
        ("r2 glusterfs-1.0 server=-oops volume=v", errno.EINVAL),  # no option injection
        ("r2 glusterfs-1.0 server=127.0.0.1 volume=../v", errno.EINVAL),
        ("r2 glusterfs-1.0 server=127.0.0.1", errno.EINVAL),  # missing volume
        ("r2 glusterfs-1.0 server=127.0.0.1 volume=v path=/x", errno.EINVAL),
        ("r2 glusterfs-1.0 server=127.0.0.9 volume=nosuch", errno.EHOSTUNREACH),
        ("r2 posix-1.0 path=relative/dir", errno.EINVAL),  # paths are absolute
        ("r2 localfs-1.0", errno.EINVAL),  # missing path
        ("default localfs-1.0 path={empty}", errno.EEXIST),  # name taken
        ("README localfs-1.0 path={empty}", errno.EEXIST),  # the root's own file
        ("r2 localfs-1.0 path={default}", errno.EBUSY),  # connected already
        (".bad localfs-1.0 path={empty}", errno.EINVAL),
        ("r2 localfs-1.0 path={missing}", errno.ENOENT),
    ],
)
def test_connect_refusals(mount, tmp_path, line, expected):
    places = {name: tmp_path / name for name in ("nonempty", "empty", "missing")}
    places["nonempty"].mkdir()
    (places["nonempty"] / "something").write_text("x")
    places["empty"].mkdir()
    places["default"] = mount.data / "default"
    fd = os.open(mount.path / "connect", os.O_WRONLY)
    try:
        assert errno_of(os.write, fd, line.format(**places).encode() + b"\n") == expected
    finally:
        os.close(fd)
    assert sorted(os.listdir(mount.path)) == ["README", "connect", "default"]


def test_second_process_cannot_connect_the_same_localfs_repository(mount, tmp_path):
    shared = f"shared localfs-1.0 path={mount.data / 'default'}"
    cmd = [sys.executable, "-m", "repofs", "mount", str(tmp_path / "other-mnt"), "--foreground",
           "--data-dir", str(tmp_path / "other-data"), "--connect", shared]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "is connected by another repofs process" in result.stderr
    assert not os.path.ismount(tmp_path / "other-mnt")
