"""Kernel FUSE passthrough (fs/passthrough.py): where it applies, the kernel reads
and writes an image's volume and repofs sees none of it; elsewhere, and when the
kernel refuses it, repofs serves the open itself."""

from pathlib import Path

import pytest
import xattr
from conftest import MiB, Mount, checked, mount_pid, sh, status

PASSTHROUGH = "user.repofs.passthrough"


def served_bytes(mnt: Path) -> int:
    """What the mount's process read and wrote so far (its /proc/PID/io): every
    byte it serves is written to the kernel (and read from a volume or the
    storage daemon's socket, unless a hole)."""
    fields = dict(
        line.split(": ") for line in Path(f"/proc/{mount_pid(mnt)}/io").read_text().splitlines()
    )
    return int(fields["rchar"]) + int(fields["wchar"])


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
