"""createSnapshot and disks based on snapshots; qcow2 chains in the raw view."""

import concurrent.futures
import errno
import json
import os
import signal
import time

import pytest
from conftest import MiB, Mount, errno_of, pattern, sh, status, write_at

pytestmark = pytest.mark.mount

SIZE = 8 * MiB


def read_at(path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


# Each layer writes its own pattern at its own offset, and one shared offset
# that every layer overwrites: reads show which layer wins.
LAYERS = [(b"layer0-", 0), (b"layer1-", 1 * MiB + 512), (b"layer2-", 3 * MiB - 100)]
SHARED = 5 * MiB


def build_chain(repo) -> bytes:
    """vm1 with three layers: s0 <- s1 <- vm1's top; returns vm1's expected bytes."""
    sh(f"truncate -s {SIZE} {repo}/disks/vm1")
    expected = bytearray(SIZE)
    for index, (tag, offset) in enumerate(LAYERS):
        data = pattern(tag, 70_000)
        write_at(repo / "disks/vm1", offset, data)
        write_at(repo / "disks/vm1", SHARED, tag)
        expected[offset : offset + len(data)] = data
        expected[SHARED : SHARED + len(tag)] = tag
        if index < 2:
            sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s{index}")
    return bytes(expected)


def expected_upto(layer: int) -> bytes:
    expected = bytearray(SIZE)
    for tag, offset in LAYERS[: layer + 1]:
        data = pattern(tag, 70_000)
        expected[offset : offset + len(data)] = data
        expected[SHARED : SHARED + len(tag)] = tag
    return bytes(expected)


def test_chain_reads_every_layer_byte_by_byte(repo):
    expected = build_chain(repo)
    assert (repo / "disks/vm1").read_bytes() == expected
    assert (repo / "snapshots/s0").read_bytes() == expected_upto(0)
    assert (repo / "snapshots/s1").read_bytes() == expected_upto(1)
    vm1, s1, s0 = status(repo, "vm1"), status(repo, "s1"), status(repo, "s0")
    assert vm1["chain"][1:] == s1["chain"] and s1["chain"][1:] == s0["chain"]
    assert (vm1["base"], s1["base"], s0["base"]) == ("s1", "s0", None)
    assert s0["dependents"] == ["s1"] and s1["dependents"] == ["vm1"]
    assert [s["state"] for s in (vm1, s1, s0)] == ["optimized"] * 3


def test_overlay_names_its_backing_relatively_with_its_format(repo):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    top, base = status(repo, "vm1")["chain"]
    info = json.loads(sh(f"qemu-img info -U --output=json -f qcow2 {top}").stdout)
    assert info["backing-filename"] == os.path.basename(base)
    assert info["backing-filename-format"] == "raw"
    assert os.getxattr(repo / "disks/vm1", "user.repofs.chain").decode() == f"{top},{base}"


def test_snapshot_is_o1_whatever_the_size(repo):
    sh(f"truncate -s 2T {repo}/disks/big")
    sh(f"dd if=/dev/urandom of={repo}/disks/big bs=1M count=4 conv=notrunc status=none")
    started = time.monotonic()
    sh(f"ln {repo}/disks/big {repo}/snapshots/big-1")
    # O(1): a qcow2 header and three small records, never a copy of 2 TiB.
    assert time.monotonic() - started < 10
    assert os.stat(repo / "snapshots/big-1").st_size == 2 << 40
    assert status(repo, "big")["allocated"] - status(repo, "big-1")["allocated"] < 2 * MiB


def test_snapshots_are_read_only(repo, mount):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    for flags in (os.O_WRONLY, os.O_RDWR):
        assert errno_of(os.open, repo / "snapshots/s1", flags) == errno.EROFS
    assert errno_of(os.truncate, repo / "snapshots/s1", 2 * MiB) == errno.EROFS
    assert errno_of(os.open, repo / "snapshots/new", os.O_WRONLY | os.O_CREAT) == errno.EROFS
    # `cp x snapshots/s1` and `> snapshots/s1` open with O_TRUNC: EROFS all the same.
    assert errno_of(os.open, repo / "snapshots/s1", os.O_WRONLY | os.O_TRUNC) == errno.EROFS
    assert "Read-only file system" in sh(f"cp /etc/hostname {repo}/snapshots/s1",
                                         check=False).stderr  # fmt: skip
    assert oct(os.stat(repo / "snapshots/s1").st_mode & 0o777) == "0o444"
    mount.expect_log("s1 is a snapshot: snapshots are read-only")
    os.rmdir(repo)  # the refused opens left nothing open


def test_disk_from_snapshot_reads_the_snapshot_and_never_changes_it(repo):
    build_chain(repo)
    sh(f"ln {repo}/snapshots/s1 {repo}/disks/vm2")
    assert (repo / "disks/vm2").read_bytes() == expected_upto(1)
    write_at(repo / "disks/vm2", 0, b"vm2 writes here")
    write_at(repo / "disks/vm2", SHARED, b"vm2!")
    assert read_at(repo / "disks/vm2", 0, 15) == b"vm2 writes here"
    assert (repo / "snapshots/s1").read_bytes() == expected_upto(1)
    assert (repo / "snapshots/s0").read_bytes() == expected_upto(0)
    vm2 = status(repo, "vm2")
    assert (vm2["base"], vm2["state"], vm2["size"]) == ("s1", "optimized", SIZE)
    assert status(repo, "s1")["dependents"] == ["vm1", "vm2"]


def test_disk_from_snapshot_under_performance_is_degraded(repo, mount):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/gold")
    sh(f"setfattr -n user.repofs.strategy -v performance {repo}")
    sh(f"setfattr -n user.repofs.autofix -v false {repo}")
    sh(f"ln {repo}/snapshots/gold {repo}/disks/vm2")
    assert status(repo, "vm2")["state"] == "degraded"
    assert os.getxattr(repo / "disks/vm2", "user.repofs.status") == b"degraded"
    mount.expected_fixes.add("optimize-vm2")


def test_qcow2_disk_grows_and_takes_writes_past_its_end(repo):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    sh(f"truncate -s 3M {repo}/disks/vm1")
    assert os.stat(repo / "disks/vm1").st_size == 3 * MiB
    assert read_at(repo / "disks/vm1", 2 * MiB, 4096) == bytes(4096)
    with open(repo / "disks/vm1", "ab") as f:
        f.write(b"appended")
    assert os.stat(repo / "disks/vm1").st_size == 3 * MiB + 8
    assert read_at(repo / "disks/vm1", 3 * MiB, 8) == b"appended"
    assert status(repo, "vm1")["size"] == 3 * MiB + 8
    assert os.stat(repo / "snapshots/s1").st_size == MiB


def test_live_snapshots_of_an_open_disk(repo, mount):
    """The open disk stays open across two snapshots: the first switches a raw
    volume served directly to a chain, the second adds a layer to the chain."""
    sh(f"truncate -s 1M {repo}/disks/vm1")
    fd = os.open(repo / "disks/vm1", os.O_RDWR)
    try:
        os.pwrite(fd, b"A" * 4096, 0)
        os.link(repo / "disks/vm1", repo / "snapshots/s1")
        os.pwrite(fd, b"B" * 4096, 0)
        os.pwrite(fd, b"grown", 2 * MiB)  # past the end: the qcow2 top grows
        os.link(repo / "disks/vm1", repo / "snapshots/s2")
        os.pwrite(fd, b"C" * 4096, 0)
        assert os.pread(fd, 4096, 0) == b"C" * 4096
        # The snapshots read while the disk is still open and written.
        assert read_at(repo / "snapshots/s1", 0, 4096) == b"A" * 4096
        assert read_at(repo / "snapshots/s2", 0, 4096) == b"B" * 4096
        assert os.stat(repo / "snapshots/s1").st_size == MiB
        assert os.stat(repo / "snapshots/s2").st_size == 2 * MiB + 5
        assert status(repo, "vm1")["base"] == "s2"
    finally:
        os.close(fd)
    assert read_at(repo / "disks/vm1", 0, 4096) == b"C" * 4096
    assert read_at(repo / "disks/vm1", 2 * MiB, 5) == b"grown"
    assert [status(repo, i)["state"] for i in ("vm1", "s1", "s2")] == ["optimized"] * 3
    mount.expect_log("operation=create_snapshot repo=default image=s2 disk_id=vm1 outcome=ok")


@pytest.mark.parametrize(
    "source, target",
    [("disks/vm1", "disks/vm9"), ("snapshots/s1", "snapshots/s9"), ("disks/vm1", "status/x")],
)
def test_ln_that_maps_to_no_operation_is_einval(repo, source, target):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    assert errno_of(os.link, repo / source, repo / target) == errno.EINVAL


def test_taken_id_is_eexist_across_disks_and_snapshots(repo):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    assert errno_of(os.link, repo / "disks/vm1", repo / "snapshots/vm1") == errno.EEXIST
    assert errno_of(os.link, repo / "snapshots/s1", repo / "disks/vm1") == errno.EEXIST
    assert (
        errno_of(os.open, repo / "disks/s1", os.O_WRONLY | os.O_CREAT | os.O_EXCL) == errno.EEXIST
    )


def test_missing_base_is_enoent(repo):
    assert errno_of(os.link, repo / "snapshots/nothing", repo / "disks/vm2") == errno.ENOENT


def test_storage_daemon_restarts_and_open_chains_go_on(repo, mount):
    build_chain(repo)
    first = mount.storage_daemon_pid
    with open(repo / "disks/vm1", "r+b", buffering=0) as f:
        f.seek(SHARED)
        assert f.read(7) == b"layer2-"
        os.kill(first, 9)
        f.seek(SHARED)
        f.write(b"after-kill")
        os.fsync(f.fileno())
        f.seek(SHARED)
        assert f.read(10) == b"after-kill"
    assert mount.storage_daemon_pid != first
    mount.expect_log("qemu-storage-daemon exited with -9; restarting")
    assert read_at(repo / "disks/vm1", LAYERS[1][1], 7) == b"layer1-"


def test_odd_sized_disk_snapshots_and_clones_keep_their_size(repo, tmp_path):
    data = pattern(b"odd", 1000)
    (tmp_path / "odd").write_bytes(data)
    sh(f"cp {tmp_path}/odd {repo}/disks/odd")
    sh(f"ln {repo}/disks/odd {repo}/snapshots/odd-1")
    sh(f"ln {repo}/snapshots/odd-1 {repo}/disks/odd-2")
    for name in ("disks/odd", "snapshots/odd-1", "disks/odd-2"):
        assert (repo / name).read_bytes() == data
        assert os.stat(repo / name).st_size == 1000


def while_stopped(pid: int, fn, *args):
    """fn(*args) in a thread while process `pid` is stopped: it returns only if
    it does not need that process."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        os.kill(pid, signal.SIGSTOP)
        try:
            return pool.submit(fn, *args).result(timeout=10)
        finally:
            os.kill(pid, signal.SIGCONT)  # before anything waits for fn
    finally:
        pool.shutdown()


def qemu_img_bytes(top: str, scratch) -> bytes:
    """The bytes of the chain topped by `top` as QEMU reads them, not repofs."""
    sh(f"qemu-img convert -U -f qcow2 -O raw {top} {scratch}")
    return scratch.read_bytes()


def test_volume_files_serve_what_they_can_without_the_storage_daemon(repo, mount, tmp_path):
    """Where the top holds nothing, reads go to the snapshots' volume files; the
    clusters the top held at open are read and overwritten in place. Both are
    served while the storage daemon is stopped. Ranges written since the open
    outside those clusters come through the daemon, and after a live snapshot
    the old top's clusters are the snapshot's: writes go to the new top."""
    sh(f"truncate -s {SIZE} {repo}/disks/vm1")
    base = pattern(b"base", SIZE)
    write_at(repo / "disks/vm1", 0, base)
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    write_at(repo / "disks/vm1", MiB, b"top" * 1000)
    daemon = mount.storage_daemon_pid
    fd = os.open(repo / "disks/vm1", os.O_RDWR)
    try:
        lower = while_stopped(daemon, os.pread, fd, 65536, 2 * MiB)
        assert lower == base[2 * MiB : 2 * MiB + 65536]
        assert while_stopped(daemon, os.pread, fd, 3000, MiB) == b"top" * 1000
        assert while_stopped(daemon, os.pwrite, fd, b"TOP" * 100, MiB + 300) == 300
        os.fsync(fd)
        top = status(repo, "vm1")["chain"][0]
        in_place = b"top" * 100 + b"TOP" * 100 + b"top" * 800
        assert qemu_img_bytes(top, tmp_path / "top.raw")[MiB : MiB + 3000] == in_place
        os.pwrite(fd, b"new" * 1000, 4 * MiB + 100)
        assert os.pread(fd, 3100, 4 * MiB) == base[4 * MiB : 4 * MiB + 100] + b"new" * 1000

        sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s2")
        os.pwrite(fd, b"after" * 10, MiB)
        assert os.pread(fd, 50, MiB) == b"after" * 10
    finally:
        os.close(fd)
    assert read_at(repo / "snapshots/s1", 4 * MiB, 65536) == base[4 * MiB : 4 * MiB + 65536]
    assert read_at(repo / "snapshots/s2", MiB, 3000) == in_place
    assert read_at(repo / "disks/vm1", MiB, 3000) == b"after" * 10 + in_place[50:]


def test_open_disk_grows_after_a_live_snapshot_of_its_qcow2_top(repo, mount):
    """A qcow2 top snapshotted live gets an overlay in the storage daemon; the
    grow then resizes and re-exports that overlay, not the read-only layer under
    it (`virsh blockresize` after a live snapshot)."""
    sh(f"truncate -s 1M {repo}/disks/b")
    sh(f"ln {repo}/disks/b {repo}/snapshots/s1")
    sh(f"ln {repo}/snapshots/s1 {repo}/disks/t7")
    fd = os.open(repo / "disks/t7", os.O_RDWR)
    try:
        os.pwrite(fd, b"before", 0)
        os.link(repo / "disks/t7", repo / "snapshots/t7-s")
        os.truncate(repo / "disks/t7", 2 * MiB)
        os.pwrite(fd, b"grown", 2 * MiB - 5)
        assert os.pread(fd, 5, 2 * MiB - 5) == b"grown"
    finally:
        os.close(fd)
    assert os.stat(repo / "disks/t7").st_size == 2 * MiB
    assert read_at(repo / "disks/t7", 0, 6) == b"before"
    assert read_at(repo / "disks/t7", 2 * MiB - 5, 5) == b"grown"
    assert read_at(repo / "snapshots/t7-s", 0, 6) == b"before"
    assert os.stat(repo / "snapshots/t7-s").st_size == MiB
    assert status(repo, "t7")["state"] == "optimized"


def test_a_storage_daemon_left_inconsistent_is_restarted(tmp_path):
    """QEMU refuses the export after a resize: the grow is EIO, the daemon is
    restarted with every open chain, and the disk goes on without a remount."""
    m = Mount(tmp_path, module="injected_qmp_refusal")
    try:
        repo = m.start().default
        sh(f"truncate -s 1M {repo}/disks/d")
        sh(f"ln {repo}/disks/d {repo}/snapshots/s1")
        first = m.storage_daemon_pid
        fd = os.open(repo / "disks/d", os.O_RDWR)
        try:
            os.pwrite(fd, b"kept", 0)
            assert errno_of(os.truncate, repo / "disks/d", 2 * MiB) == errno.EIO
            m.expect_log("no longer matches the open images .resizing .*injected refusal")
            assert os.pread(fd, 4, 0) == b"kept"
            os.truncate(repo / "disks/d", 2 * MiB)
            os.pwrite(fd, b"end", 2 * MiB - 3)
        finally:
            os.close(fd)
        assert m.storage_daemon_pid != first
        assert read_at(repo / "disks/d", 0, 4) == b"kept"
        assert read_at(repo / "disks/d", 2 * MiB - 3, 3) == b"end"
        assert status(repo, "d")["size"] == 2 * MiB
        assert not m.unexpected_log_lines()
    finally:
        m.stop()
