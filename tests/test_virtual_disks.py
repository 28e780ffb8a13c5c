"""createVirtualDisk and the raw data path, through the mount."""

import errno
import mmap
import os

import pytest
from conftest import MiB, errno_of, pattern, sh, status

pytestmark = pytest.mark.mount

GiB = 1 << 30


def test_truncate_creates_a_thin_raw_disk(repo):
    sh(f"truncate -s 20G {repo}/disks/vm1")
    st = os.stat(repo / "disks/vm1")
    assert st.st_size == 20 * GiB
    assert st.st_blocks * 512 < MiB
    s = status(repo, "vm1")
    assert (s["kind"], s["state"], s["size"]) == ("virtual-disk", "optimized", 20 * GiB)
    assert len(s["chain"]) == 1 and s["chain"][0].endswith(".raw")
    assert os.path.getsize(s["chain"][0]) == 20 * GiB
    with open(repo / "disks/vm1", "rb") as f:
        f.seek(10 * GiB)
        assert f.read(4096) == bytes(4096)


def test_performance_strategy_preallocates(repo):
    sh(f"setfattr -n user.repofs.strategy -v performance {repo}")
    assert os.getxattr(repo, "user.repofs.strategy") == b"performance"
    sh(f"truncate -s 64M {repo}/disks/fast")
    assert os.stat(repo / "disks/fast").st_blocks * 512 >= 64 * MiB
    sh(f"truncate -s 96M {repo}/disks/fast")
    assert os.stat(repo / "disks/fast").st_blocks * 512 >= 96 * MiB


def test_fallocate_is_not_supported(repo):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    result = sh(f"fallocate -l 2M {repo}/disks/vm1", check=False)
    assert result.returncode != 0
    assert "not supported" in result.stderr


def test_cp_dd_and_qemu_img_convert_import(repo, tmp_path):
    data = pattern(b"import!", 3 * MiB + 512)
    (tmp_path / "disk.raw").write_bytes(data)
    sh(f"cp {tmp_path}/disk.raw {repo}/disks/vm3")
    assert (repo / "disks/vm3").read_bytes() == data
    sh(f"dd if={tmp_path}/disk.raw of={repo}/disks/vm4 bs=64k status=none")
    assert (repo / "disks/vm4").read_bytes() == data
    sh(f"qemu-img convert -f raw -O qcow2 {tmp_path}/disk.raw {tmp_path}/x.qcow2")
    sh(f"qemu-img convert -f qcow2 -O raw {tmp_path}/x.qcow2 {repo}/disks/vm5")
    assert (repo / "disks/vm5").read_bytes() == data
    sh(f"cmp {tmp_path}/disk.raw {repo}/disks/vm5")
    for image_id in ("vm3", "vm4", "vm5"):
        assert status(repo, image_id)["size"] == len(data)


def test_sparse_copy_keeps_holes(repo, tmp_path):
    sh(f"truncate -s 1G {tmp_path}/sparse.raw")
    sh(f"printf start | dd of={tmp_path}/sparse.raw conv=notrunc status=none")
    sh(f"cp --sparse=always {tmp_path}/sparse.raw {repo}/disks/sparse")
    st = os.stat(repo / "disks/sparse")
    assert st.st_size == GiB
    assert st.st_blocks * 512 < 16 * MiB
    sh(f"cmp {tmp_path}/sparse.raw {repo}/disks/sparse")


def test_grow_works_and_shrink_is_einval(repo, mount):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    with open(repo / "disks/vm1", "r+b") as f:
        f.write(pattern(b"grow", MiB))
    sh(f"truncate -s 3M {repo}/disks/vm1")
    data = (repo / "disks/vm1").read_bytes()
    assert data == pattern(b"grow", MiB) + bytes(2 * MiB)
    assert errno_of(os.truncate, repo / "disks/vm1", MiB) == errno.EINVAL
    assert os.stat(repo / "disks/vm1").st_size == 3 * MiB
    mount.expect_log("cannot shrink vm1 from 3145728 to 1048576 bytes")


def test_overwriting_a_disk_with_truncation_is_einval(repo, tmp_path):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    (tmp_path / "x").write_bytes(b"x" * 4096)
    result = sh(f"cp {tmp_path}/x {repo}/disks/vm1", check=False)
    assert result.returncode != 0 and "Invalid argument" in result.stderr
    assert os.stat(repo / "disks/vm1").st_size == MiB


def test_o_direct_reads_and_writes(repo):
    sh(f"truncate -s 4M {repo}/disks/vm1")
    fd = os.open(repo / "disks/vm1", os.O_RDWR | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, 8192)
        buf.write(pattern(b"direct", 8192))
        assert os.pwritev(fd, [buf], 65536) == 8192
        # QEMU probes alignment with unaligned requests: they work too.
        assert os.pread(fd, 1, 65536) == b"d"
        assert os.pread(fd, 700, 65536 + 3) == pattern(b"direct", 8192)[3:703]
        out = mmap.mmap(-1, 8192)
        assert os.preadv(fd, [out], 65536) == 8192
        assert bytes(out) == pattern(b"direct", 8192)
        os.fsync(fd)
    finally:
        os.close(fd)
    sh(f"dd if={repo}/disks/vm1 of=/dev/null bs=1M iflag=direct status=none")


def test_fsync_reaches_the_volume(repo):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    volume = status(repo, "vm1")["chain"][0]
    fd = os.open(repo / "disks/vm1", os.O_WRONLY)
    try:
        os.pwrite(fd, b"durable", 4096)
        os.fsync(fd)
        with open(volume, "rb") as f:
            f.seek(4096)
            assert f.read(7) == b"durable"
    finally:
        os.close(fd)


def test_writes_past_the_end_grow_the_disk_and_persist(repo, mount):
    with open(repo / "disks/log", "wb") as f:
        for i in range(4):
            f.write(pattern(str(i).encode(), 100_000))
    assert os.stat(repo / "disks/log").st_size == 400_000
    mount.remount()
    assert status(repo, "log")["size"] == 400_000
    assert (repo / "disks/log").read_bytes()[300_000:300_010] == b"3" * 10


def test_blocks_report_allocation(repo):
    sh(f"truncate -s 100M {repo}/disks/vm1")
    before = os.stat(repo / "disks/vm1").st_blocks
    sh(f"dd if=/dev/urandom of={repo}/disks/vm1 bs=1M count=8 conv=notrunc status=none")
    after = os.stat(repo / "disks/vm1").st_blocks
    assert after * 512 - before * 512 >= 8 * MiB
    assert status(repo, "vm1")["allocated"] == after * 512


def dirty_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Dirty:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no Dirty: in /proc/meminfo")


def test_writes_repofs_serves_are_written_back_as_they_come(repo):
    """A disk's dirty pages are what a live snapshot's sync writes while every
    write through the mount waits (drivers/volume_io.py): repofs syncs them
    behind the writes as they come instead of leaving them to the kernel (up to
    10% of memory, 30 s)."""
    sh(f"truncate -s 256M {repo}/disks/vm1")
    chunk = mmap.mmap(-1, MiB)  # aligned, for O_DIRECT
    chunk.write(pattern(b"vm1", MiB))
    fd = os.open(repo / "disks/vm1", os.O_WRONLY | os.O_DIRECT)
    try:
        assert status(repo, "vm1")["data_path"] == "repofs"
        before = dirty_bytes()
        for offset in range(0, 256 * MiB, MiB):
            os.pwrite(fd, chunk, offset)
        grown = dirty_bytes() - before
    finally:
        os.close(fd)
    assert grown < 64 * MiB, f"{grown / MiB:.0f} MiB of the disk's writes are dirty in memory"
