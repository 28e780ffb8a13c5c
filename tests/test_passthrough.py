"""Kernel FUSE passthrough (fs/passthrough.py): where it applies, the kernel reads
and writes an image's volume and repofs sees none of it; elsewhere, and when the
kernel refuses it, repofs serves the open itself."""

import errno
import os
import time
from pathlib import Path

import pytest
import test_live_snapshot as live
import xattr
from conftest import MiB, Mount, checked, errno_of, mount_pid, sh, status, wait_for

PASSTHROUGH = "user.repofs.passthrough"


def process_io(mnt: Path) -> dict[str, int]:
    """The mount's process's I/O counters so far (/proc/PID/io)."""
    text = Path(f"/proc/{mount_pid(mnt)}/io").read_text()
    return {key: int(value) for key, value in (line.split(": ") for line in text.splitlines())}


def served_bytes(mnt: Path) -> int:
    """What the mount's process read and wrote so far: every byte it serves is
    written to the kernel (and read from a volume or the storage daemon's
    socket, unless a hole)."""
    io = process_io(mnt)
    return io["rchar"] + io["wchar"]


def system_calls(mnt: Path) -> int:
    """The reads and writes the mount's process made so far: each request the
    kernel sends it costs one of each at least (from and to /dev/fuse)."""
    io = process_io(mnt)
    return io["syscr"] + io["syscw"]


def read_through(mnt: Path, image: Path) -> int:
    """Reads `image` whole, from storage (no page cache), and returns how many
    bytes the mount's process moved meanwhile."""
    sh("sync; echo 3 > /proc/sys/vm/drop_caches")
    before = served_bytes(mnt)
    sh(f"cat {image} > /dev/null")
    return served_bytes(mnt) - before


def make_disk_and_snapshot(repo: Path) -> None:
    sh(f"truncate -s 256M {repo}/disks/d")
    sh(f"dd if=/dev/urandom of={repo}/disks/d bs=1M count=64 conv=notrunc status=none")
    sh(f"ln {repo}/disks/d {repo}/snapshots/s")


@pytest.mark.mount
def test_a_snapshot_is_read_by_the_kernel(mount, repo):
    """A snapshot's one raw volume is handed to the kernel: reading its 256 MiB
    moves almost nothing through repofs, the bytes are the disk's at the
    snapshot, and the image says which path its opens take."""
    assert xattr.getxattr(mount.path, PASSTHROUGH) == b"on"
    make_disk_and_snapshot(repo)
    assert status(repo, "s")["data_path"] is None  # closed
    with open(repo / "snapshots/s", "rb") as held:
        assert status(repo, "s")["data_path"] == "passthrough"
        assert xattr.getxattr(repo / "snapshots/s", "user.repofs.data_path") == b"passthrough"
        moved = read_through(mount.path, repo / "snapshots/s")
        assert held.read(4096) == (repo / "disks/d").read_bytes()[:4096]
    assert moved < 1 * MiB, moved
    sh(f"cmp {repo}/snapshots/s {repo}/disks/d")
    assert status(repo, "s")["data_path"] is None


@pytest.mark.mount
def test_a_disk_on_storage_without_reflink_is_served_by_repofs(mount, repo):
    """Its snapshots are overlays that need the disk paused: it keeps repofs's path."""
    make_disk_and_snapshot(repo)
    with open(repo / "disks/d", "rb"):
        assert status(repo, "d")["data_path"] == "repofs"
        assert read_through(mount.path, repo / "disks/d") >= 256 * MiB


@pytest.mark.mount
def test_when_the_kernel_refuses_repofs_serves_the_open_and_says_why(tmp_path):
    m = Mount(tmp_path, module="injected_passthrough_refusal")
    with checked(m):
        repo = m.default
        make_disk_and_snapshot(repo)
        with open(repo / "snapshots/s", "rb"):
            assert status(repo, "s")["data_path"] == "repofs"
            assert read_through(m.path, repo / "snapshots/s") >= 256 * MiB
        sh(f"cmp {repo}/snapshots/s {repo}/disks/d")
        state = xattr.getxattr(m.path, PASSTHROUGH).decode()
        assert state.startswith("off: the kernel refused a backing file"), state
        assert f"kernel passthrough {state}" in sh(f".venv/bin/repofs status {m.path}").stdout
        m.expect_log("kernel passthrough is off: the kernel refused a backing file")
        # Said once, not at every open.
        sh(f"cat {repo}/snapshots/s > /dev/null")
        assert m.log_text().count("kernel passthrough is off") == 1


@pytest.fixture
def reflink_mount(tmp_path, xfs_disk):
    """A mount whose repositories are on XFS with reflink: raw disks pass through."""
    m = Mount(tmp_path)
    m.data = xfs_disk.path / "data"
    with checked(m) as started:
        yield started


@pytest.mark.mount
def test_a_raw_disk_on_reflink_storage_is_written_by_the_kernel(reflink_mount, tmp_path):
    """Writes and reads of 64 MiB move almost nothing through repofs; writes past
    the end grow the disk (its size follows, and is persisted at close); a
    resize of the open disk keeps them; removal and rename of the open disk are
    refused as on repofs's path."""
    repo = reflink_mount.default
    data = tmp_path / "data.bin"
    sh(f"dd if=/dev/urandom of={data} bs=1M count=64 status=none")
    sh(f"truncate -s 32M {repo}/disks/d")
    with open(repo / "disks/d", "r+b") as held:
        assert status(repo, "d")["data_path"] == "passthrough"
        before = served_bytes(reflink_mount.path)
        sh(f"dd if={data} of={repo}/disks/d bs=1M oflag=direct conv=notrunc status=none")
        sh(f"cmp {data} {repo}/disks/d")
        assert served_bytes(reflink_mount.path) - before < 1 * MiB
        # 4096 small writes: the kernel asks repofs nothing for them (no
        # security.capability check: images have no set-user-ID bits to clear).
        calls = system_calls(reflink_mount.path)
        sh(f"dd if={data} of={repo}/disks/d bs=4k count=4096 oflag=direct conv=notrunc "
           "status=none")  # fmt: skip
        assert system_calls(reflink_mount.path) - calls < 200
        assert status(repo, "d")["size"] == 64 * MiB  # grown by the kernel's writes
        assert errno_of(os.truncate, repo / "disks/d", 48 * MiB) == errno.EINVAL  # no shrink
        os.truncate(repo / "disks/d", 96 * MiB)
        assert held.seek(0, os.SEEK_END) == 96 * MiB
        assert errno_of(os.unlink, repo / "disks/d") == errno.EBUSY
        assert errno_of(os.rename, repo / "disks/d", repo / "disks/e") == errno.EBUSY
    assert status(repo, "d")["data_path"] is None
    sh(f"cmp -n {64 * MiB} {data} {repo}/disks/d")
    sh(f"cmp -n {32 * MiB} -i {64 * MiB}:0 {repo}/disks/d /dev/zero")
    reflink_mount.remount()
    assert status(repo, "d")["size"] == 96 * MiB


@pytest.mark.mount
def test_disks_of_a_shared_repository_keep_repofs_s_path(reflink_mount):
    """A posix-1.0 repository on the same XFS: another host may write its disks
    (claims, fencing), so repofs serves them; its snapshots pass through."""
    shared = reflink_mount.data / "shared"
    shared.mkdir()
    (reflink_mount.path / "connect").write_text(f"p posix-1.0 path={shared}\n")
    repo = reflink_mount.path / "p"
    sh(f"truncate -s 16M {repo}/disks/d")
    sh(f"ln {repo}/disks/d {repo}/snapshots/s")
    with open(repo / "disks/d", "r+b"), open(repo / "snapshots/s", "rb"):
        assert status(repo, "d")["data_path"] == "repofs"
        assert status(repo, "s")["data_path"] == "passthrough"


@pytest.mark.vm
def test_a_guest_on_a_passthrough_disk_boots_and_its_live_snapshots_are_point_in_time(
    reflink_mount, tmp_path
):
    """The sequence-writing guest of test_live_snapshot.py, on a raw disk the
    kernel serves: each live snapshot (a clone, no pause) is a prefix of what the
    guest wrote, none torn; the disk stays raw and on the kernel's path."""
    repo = reflink_mount.default
    boot = tmp_path / "seqwriter.bin"
    sh(f"nasm -f bin {live.GUEST} -o {boot}")
    disk = repo / "disks/vm1"
    sh(f"truncate -s {live.DISK_SIZE} {disk}")
    sh(f"dd if={boot} of={disk} conv=notrunc status=none")
    with live.running_guest(disk, tmp_path) as vm:
        wait_for(lambda: live.written_prefix(live.read(disk)) > 0, live.BOOT_TIMEOUT_S,
                 "the guest to write")  # fmt: skip
        assert status(repo, "vm1")["data_path"] == "passthrough"
        counts = []
        for i in range(live.SNAPSHOTS):
            time.sleep(0.5)
            assert vm.poll() is None, (tmp_path / "qemu.log").read_text()
            sh(f"ln {disk} {repo}/snapshots/s{i}")
            counts.append(live.written_prefix(live.read(repo / f"snapshots/s{i}")))
        assert vm.poll() is None, (tmp_path / "qemu.log").read_text()
    final = live.written_prefix(live.read(disk))
    assert 0 < counts[0] and counts == sorted(set(counts)) and counts[-1] < final, counts
    assert len(status(repo, "vm1")["chain"]) == 1 and status(repo, "vm1")["base"] is None
