"""Reflink repositories (XFS with reflink on a loop file): snapshots of raw
disks, disks on snapshots and copies within one file system are clones of a
volume; an incremental copy between two clones moves only the extents they do
not share. filefrag shows which extents two volumes share."""

import json
import mmap
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    REPO,
    MiB,
    Mount,
    active_tasks,
    assert_consistent,
    check_through_the_mount,
    checked,
    crash_then_remount,
    loop_file_system,
    run_every_fix,
    sh,
    status,
    wait_for,
)

from repofs.drivers import reflink

pytestmark = pytest.mark.mount

BLOCK = 4096


def repofs_status(path: Path) -> str:
    cmd = [sys.executable, "-m", "repofs", "status", str(path)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True,
                          timeout=60).stdout  # fmt: skip


XFS = "mkfs.xfs -q -m reflink=1"


@pytest.fixture
def xfs(xfs_disk) -> Path:
    return xfs_disk.path


@pytest.fixture
def other_xfs(tmp_path):
    """A second reflink file system: copies into it cannot be clones."""
    with loop_file_system(tmp_path / "xfs2.img", tmp_path / "xfs2", XFS, "8G") as made:
        yield made.path


def reflink_mount(tmp_path: Path, xfs: Path, env: dict | None = None) -> Mount:
    m = Mount(tmp_path, env=env)
    m.data = xfs / "data"
    return m


@pytest.fixture
def mount(tmp_path, xfs):
    """A mount whose data directory (its repositories) is on the XFS."""
    with checked(reflink_mount(tmp_path, xfs)) as m:
        yield m


@pytest.fixture
def repo(mount) -> Path:
    return mount.default


def extents(path: Path) -> list[tuple[int, int, int, bool]]:
    """(logical block, physical block, blocks, shared) of each extent, as
    `filefrag -v` shows them."""
    found = []
    for line in sh(f"filefrag -v -b{BLOCK} {path}").stdout.splitlines():
        m = re.match(r"\s*\d+:\s+(\d+)\.\.\s*(\d+):\s+(\d+)\.\.\s*\d+:\s+(\d+):\s*(\S*)", line)
        if m:
            logical, _, physical, length, flags = m.groups()
            found.append((int(logical), int(physical), int(length), "shared" in line))
    return found


def volume(repo: Path, image_id: str) -> Path:
    """The one raw volume of an image (the test fails if it has a chain)."""
    [path] = status(repo, image_id)["chain"]
    assert path.endswith(".raw"), path
    return Path(path)


def unshared_bytes(path: Path) -> int:
    return sum(length for _, _, length, shared in extents(path) if not shared) * BLOCK


def same_extents(a: Path, b: Path) -> bool:
    """Whether two files keep every data block at the same physical place."""
    return [e[:3] for e in extents(a)] == [e[:3] for e in extents(b)]


def pattern_disk(repo: Path, name: str, mib: int) -> bytes:
    sh(f"truncate -s {mib}M {repo}/disks/{name}")
    sh(f"dd if=/dev/urandom of={repo}/disks/{name} bs=1M count={mib // 2} conv=notrunc,fsync "
       "status=none")  # fmt: skip
    return (repo / "disks" / name).read_bytes()


def write_blocks(path: Path, blocks: list[int], tag: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for block in blocks:
            os.pwrite(fd, (tag * BLOCK)[:BLOCK], block * BLOCK)
        os.fsync(fd)
    finally:
        os.close(fd)


def record(m: Mount, repo: str, image_id: str) -> dict:
    return json.loads((m.data / repo / "images" / f"{image_id}.json").read_text())


def test_the_probe_says_whether_the_storage_clones(mount, tmp_path):
    repo = mount.default
    assert json.loads((repo / "repository").read_text())["reflink"] is True
    assert sh(f"getfattr --only-values -n user.repofs.reflink {repo}").stdout == "true"
    assert "reflink storage" in repofs_status(repo).splitlines()[0]
    mount.expect_log("default is on reflink storage")
    # The mount's temp directory is not XFS: a repository there layers.
    (tmp_path / "plain").mkdir()
    (mount.path / "connect").write_text(f"plain localfs-1.0 path={tmp_path / 'plain'}\n")
    plain = mount.path / "plain"
    assert json.loads((plain / "repository").read_text())["reflink"] is False
    assert sh(f"getfattr --only-values -n user.repofs.reflink {plain}").stdout == "false"
    assert "reflink" not in repofs_status(plain).splitlines()[0]
    assert sh(f"setfattr -n user.repofs.reflink -v false {repo}", check=False).returncode != 0
    sh(f"truncate -s 1M {plain}/disks/vm1")
    sh(f"ln {plain}/disks/vm1 {plain}/snapshots/s1")
    assert len(status(plain, "vm1")["chain"]) == 2  # a qcow2 overlay, as ever
    mount.expect_log(r"plain layers snapshots as qcow2 overlays: its storage does not clone")


def test_snapshot_of_a_closed_raw_disk_is_a_clone_and_the_disk_stays_raw(repo, mount):
    before = pattern_disk(repo, "vm1", 64)
    disk_volume = volume(repo, "vm1")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    assert volume(repo, "vm1") == disk_volume  # the same raw volume, no overlay
    snapshot_volume = volume(repo, "s1")
    assert snapshot_volume != disk_volume
    assert same_extents(snapshot_volume, disk_volume)
    assert all(shared for *_, shared in extents(snapshot_volume))
    s1 = record(mount, "default", "s1")
    assert s1["state"] == "optimized" and s1["base"] is None and len(s1["chain"]) == 1
    assert record(mount, "default", "vm1")["lineage"] == "s1"
    assert sh(f"getfattr --only-values -n user.repofs.lineage {repo}/disks/vm1").stdout == "s1"
    write_blocks(repo / "disks/vm1", [0, 100], b"after")
    assert (repo / "snapshots/s1").read_bytes() == before
    assert (repo / "disks/vm1").read_bytes()[:5] == b"after"
    # Only the two blocks written since are the disk's own now.
    assert unshared_bytes(disk_volume) == 2 * BLOCK
    assert status(repo, "vm1")["state"] == "optimized" and not os.listdir(repo / "tasks")


def test_disk_on_a_snapshot_is_a_raw_clone_optimized_at_once(repo, mount):
    sh(f"setfattr -n user.repofs.strategy -v performance {repo}")
    before = pattern_disk(repo, "vm1", 32)
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/gold")
    sh(f"ln {repo}/snapshots/gold {repo}/disks/vm2")
    vm2 = status(repo, "vm2")
    assert vm2["state"] == "optimized" and vm2["base"] is None and vm2["lineage"] == "gold"
    assert same_extents(volume(repo, "vm2"), volume(repo, "gold"))
    assert not os.listdir(repo / "tasks") and not os.listdir(repo / "fixes")
    assert (repo / "disks/vm2").read_bytes() == before
    write_blocks(repo / "disks/vm2", [3], b"vm2")
    assert (repo / "snapshots/gold").read_bytes() == before
    # Nothing builds on gold: it goes like any image.
    assert status(repo, "gold")["dependents"] == []
    sh(f"rm {repo}/snapshots/gold")
    sh(f"mv {repo}/fixes/clean-gold {repo}/tasks/")
    wait_for(lambda: not active_tasks(repo), 30, "the clean")
    assert (repo / "disks/vm2").read_bytes()[3 * BLOCK : 3 * BLOCK + 3] == b"vm2"


class Writer:
    """One O_DIRECT writer (as QEMU with cache=none) writing sequence numbers into
    `blocks` blocks in turn: write i puts i into block i % blocks. It notes how
    many writes were acknowledged and begun, and the longest a write waited."""

    def __init__(self, path: Path, blocks: int):
        self.path, self.blocks = path, blocks
        self.acknowledged = self.begun = 0
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        buf = mmap.mmap(-1, BLOCK)
        fd = os.open(self.path, os.O_WRONLY | os.O_DIRECT)
        try:
            i = 0
            while not self._stop.is_set():
                buf[:] = i.to_bytes(8, "little") * (BLOCK // 8)
                self.begun = i + 1
                started = time.monotonic()
                os.pwritev(fd, [buf], (i % self.blocks) * BLOCK)
                self.longest = max(self.longest, time.monotonic() - started)
                self.acknowledged = i + 1
                i += 1
        finally:
            os.close(fd)

    def __enter__(self) -> "Writer":
        self._thread.start()
        # Every block written once at least: from then on each holds a number.
        wait_for(lambda: self.acknowledged > 2 * self.blocks, 30, "the writer to start")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def moment_of(self, data: bytes, at_least: int, at_most: int) -> int | None:
        """The number of writes k in [at_least, at_most] after which the disk read
        exactly `data` (its first `blocks` blocks), or None: then `data` is no
        point in time of the writes."""
        seen = [int.from_bytes(data[b * BLOCK : b * BLOCK + 8], "little")
                for b in range(self.blocks)]  # fmt: skip
        for k in range(at_least, at_most + 1):
            # After k writes, block b holds the last i < k with i % blocks == b.
            if all(seen[b] == k - 1 - (k - 1 - b) % self.blocks for b in range(self.blocks)):
                return k
        return None


def test_live_snapshots_of_an_open_raw_disk_are_point_in_time_clones(repo, mount):
    sh(f"truncate -s 16M {repo}/disks/vm1")
    disk_volume = volume(repo, "vm1")
    with Writer(repo / "disks/vm1", blocks=256) as writer:
        for i in range(5):
            acknowledged = writer.acknowledged
            sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s{i}")
            begun = writer.begun
            data = (repo / f"snapshots/s{i}").read_bytes()[: 256 * BLOCK]
            assert writer.moment_of(data, acknowledged, begun) is not None, f"s{i}"
            assert volume(repo, "vm1") == disk_volume  # still raw, still its volume
            assert len(record(mount, "default", f"s{i}")["chain"]) == 1
            time.sleep(0.2)
    assert writer.longest < 1.0, f"a write waited {writer.longest:.2f} s"
    assert record(mount, "default", "vm1")["lineage"] == "s4"
    assert record(mount, "default", "s4")["lineage"] == "s3"
    mount.expect_log(r"live snapshot s4 of vm1 \(a clone\) paused its I/O")


def fragment(path: Path, first_block: int) -> None:
    """Writes every other block from `first_block` on: one data extent more than
    a live snapshot may clone (each written block an extent between holes)."""
    extents = reflink.QUICK_CLONE_EXTENTS + 1
    write_blocks(path, list(range(first_block, first_block + 2 * extents, 2)), b"frag")


def test_an_open_disk_with_too_many_extents_to_clone_in_time_is_paused_for_an_overlay(repo, mount):
    """A clone stalls the disk's writers for a time that grows with its extents:
    a disk found past QUICK_CLONE_EXTENTS at its open is served by repofs, and
    its live snapshot pauses it for a qcow2 overlay, as on storage that does
    not clone; the snapshot is still point-in-time, and the disk's old volume
    is the snapshot's."""
    sh(f"truncate -s 64M {repo}/disks/vm1")
    fragment(repo / "disks/vm1", 256)
    disk_volume = volume(repo, "vm1")
    wait_for(lambda: status(repo, "vm1")["data_path"] is None, 10, "the last release")
    with Writer(repo / "disks/vm1", blocks=256) as writer:
        assert status(repo, "vm1")["data_path"] == "repofs"
        acknowledged = writer.acknowledged
        sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
        begun = writer.begun
        data = (repo / "snapshots/s1").read_bytes()
        assert writer.moment_of(data[: 256 * BLOCK], acknowledged, begun) is not None
        assert data[256 * BLOCK : 257 * BLOCK] == b"frag" * (BLOCK // 4)
    assert volume(repo, "s1") == disk_volume
    top, base = status(repo, "vm1")["chain"]
    assert top.endswith(".qcow2") and Path(base) == disk_volume
    assert status(repo, "vm1")["state"] == "optimized"
    mount.expect_log(r"default/vm1 has more than 4096 extents, too many to clone")
    mount.expect_log(r"live snapshot s1 of vm1 paused its I/O")


def test_closed_images_with_too_many_extents_to_clone_in_time_are_layered(repo, mount):
    """`ln` of a disk or a snapshot past QUICK_CLONE_EXTENTS makes a qcow2 overlay,
    O(1), where a clone would take a time that grows with the extents."""
    sh(f"truncate -s 64M {repo}/disks/vm1")
    fragment(repo / "disks/vm1", 0)
    disk_volume = volume(repo, "vm1")
    before = (repo / "disks/vm1").read_bytes()
    wait_for(lambda: status(repo, "vm1")["data_path"] is None, 10, "the last release")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    assert volume(repo, "s1") == disk_volume
    top, base = status(repo, "vm1")["chain"]
    assert top.endswith(".qcow2") and Path(base) == disk_volume
    sh(f"ln {repo}/snapshots/s1 {repo}/disks/vm2")
    top, base = status(repo, "vm2")["chain"]
    assert top.endswith(".qcow2") and Path(base) == disk_volume
    assert (repo / "disks/vm2").read_bytes() == before
    assert [status(repo, d)["state"] for d in ("vm1", "vm2")] == ["optimized", "optimized"]
    mount.expect_log(r"default/vm1 has more than 4096 extents")
    mount.expect_log(r"default/s1 has more than 4096 extents")


def test_a_passthrough_disk_past_the_extents_is_still_cloned_then_served_by_repofs(repo, mount):
    """The kernel's writes to a passthrough disk have no barrier but the clone,
    so its live snapshots stay clones however many extents its writes made
    (said once in the log, and a warning at each); from its next open, repofs
    serves it."""
    sh(f"truncate -s 64M {repo}/disks/vm1")
    disk_volume = volume(repo, "vm1")
    with Writer(repo / "disks/vm1", blocks=256) as writer:
        assert status(repo, "vm1")["data_path"] == "passthrough"
        fragment(repo / "disks/vm1", 256)
        for i in range(2):
            acknowledged = writer.acknowledged
            sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s{i}")
            data = (repo / f"snapshots/s{i}").read_bytes()[: 256 * BLOCK]
            assert writer.moment_of(data, acknowledged, writer.begun) is not None
            assert volume(repo, "vm1") == disk_volume  # a clone: the disk stays raw
    log = mount.log_text()
    assert len(re.findall(r"default/vm1 has more than 4096 extents", log)) == 1, log[-3000:]
    for i in range(2):  # and each such snapshot warns how long it held the writes
        mount.expect_log(rf"WARNING .*live snapshot s{i} of vm1 \(a clone of a volume of more "
                         rf"than 4096 extents\) held its writes \d+ ms")  # fmt: skip
    wait_for(lambda: status(repo, "vm1")["data_path"] is None, 10, "the last release")
    fd = os.open(repo / "disks/vm1", os.O_RDWR)
    try:
        assert status(repo, "vm1")["data_path"] == "repofs"
    finally:
        os.close(fd)


def test_copies_within_one_file_system_are_clones(repo, mount):
    r2 = mount.path / "r2"
    sh(f"mkdir {r2}")  # in the data dir: the same XFS
    before = pattern_disk(repo, "vm1", 32)
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/gold")
    sh(f"ln {repo}/snapshots/gold {r2}/snapshots/gold")
    gold = status(r2, "gold")
    assert gold["state"] == "optimized" and not os.listdir(r2 / "tasks")  # no copy task
    assert same_extents(volume(r2, "gold"), volume(repo, "gold"))
    sh(f"ln {repo}/disks/vm1 {r2}/disks/vm1")  # a clone of a disk across repositories
    vm1 = status(r2, "vm1")
    assert vm1["state"] == "optimized" and vm1["base"] is None
    assert same_extents(volume(r2, "vm1"), volume(repo, "vm1"))
    sh(f"ln {repo}/snapshots/gold {r2}/disks/vm2")  # a disk on r1's snapshot
    assert status(r2, "vm2")["state"] == "optimized"
    sh(f"ln {repo}/disks/vm1 {r2}/snapshots/monday")  # a backup
    assert status(r2, "monday")["state"] == "optimized"
    for image in ("snapshots/gold", "disks/vm1", "disks/vm2", "snapshots/monday"):
        assert (r2 / image).read_bytes() == before, image
    assert not os.listdir(r2 / "tasks")


def monday_in_r3(repo: Path, mount, where: Path) -> Path:
    """Repository r3 connected in `where`, holding a backup `monday` of a new
    disk vm1 (64 blocks of a pattern); returns r3 in the mount."""
    (where / "r3").mkdir()
    (mount.path / "connect").write_text(f"r3 localfs-1.0 path={where / 'r3'}\n")
    r3 = mount.path / "r3"
    pattern_disk(repo, "vm1", 64)
    sh(f"ln {repo}/disks/vm1 {r3}/snapshots/monday")
    wait_for(lambda: status(r3, "monday")["state"] == "optimized", 60, "monday copied")
    return r3


def test_incremental_copy_moves_only_the_extents_that_changed(other_xfs, repo, mount):
    """r3 on another XFS: the backups of vm1 are copies there, each over the
    last (a clone of it in r3), and move what changed since: the blocks written,
    and zeros where vm1 now has a hole (a disk on a snapshot that has one)."""
    r3 = monday_in_r3(repo, mount, other_xfs)
    changed = [7, 8, 9, 1000, 8191, 12000]  # blocks, in and past the data
    write_blocks(repo / "disks/vm1", changed, b"tuesday")
    sh(f"ln {repo}/disks/vm1 {r3}/snapshots/tuesday")
    wait_for(lambda: status(r3, "tuesday")["state"] == "optimized", 60, "tuesday copied")
    wait_for(lambda: not active_tasks(r3), 30, "the copy task")
    sh(f"cmp {repo}/snapshots/tuesday {r3}/snapshots/tuesday")
    tuesday = status(r3, "tuesday")
    assert tuesday["base"] is None and tuesday["lineage"] == "monday"
    assert len(tuesday["chain"]) == 1
    # r3's tuesday shares all but the changed blocks with r3's monday.
    assert unshared_bytes(volume(r3, "tuesday")) == len(changed) * BLOCK
    mount.expect_log("copying tuesday from default to r3 over its ancestor monday in r3")


def test_incremental_copy_into_storage_that_does_not_clone(repo, mount, tmp_path):
    """r3 on the temp directory (no reflink): the copy is a qcow2 overlay over
    r3's monday holding only what changed."""
    r3 = monday_in_r3(repo, mount, tmp_path)
    write_blocks(repo / "disks/vm1", [5, 6000], b"tuesday")
    sh(f"ln {repo}/disks/vm1 {r3}/snapshots/tuesday")
    wait_for(lambda: status(r3, "tuesday")["state"] == "optimized", 60, "tuesday copied")
    wait_for(lambda: not active_tasks(r3), 30, "the copy task")
    sh(f"cmp {repo}/snapshots/tuesday {r3}/snapshots/tuesday")
    tuesday = status(r3, "tuesday")
    assert tuesday["base"] == "monday" and len(tuesday["chain"]) == 2
    # Two 64 KiB qcow2 clusters of data, and the overlay's metadata.
    assert status(r3, "tuesday")["allocated"] - status(r3, "monday")["allocated"] < 2 * MiB


@pytest.mark.parametrize(
    "crash_at",
    ["snapshot:clone", "snapshot:lineage", "disk:clone", "copy:clone", "mend:finish"],
)
def test_a_crash_at_each_durable_step_leaves_what_a_fix_repairs(tmp_path, xfs, other_xfs,
                                                                crash_at):  # fmt: skip
    """kill -9 at each step of a clone (a snapshot, a disk on it, a copy within
    the file system) and at the end of an incremental copy: the check explains
    what is left, the fixes repair it, and the images read right."""
    m = reflink_mount(tmp_path, xfs, env={"REPOFS_CRASH_AT": crash_at})
    repo = m.default
    try:
        if crash_at == "mend:finish":
            return incremental_copy_crashes_and_resumes(m, other_xfs)
        m.start()
        sh(f"mkdir {m.path}/r2")
        before = pattern_disk(repo, "vm1", 16)
        sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1", check=crash_at.startswith(("disk", "copy")))
        if crash_at == "disk:clone":
            sh(f"ln {repo}/snapshots/s1 {repo}/disks/vm2", check=False)
        elif crash_at == "copy:clone":
            sh(f"ln {repo}/snapshots/s1 {m.path}/r2/snapshots/s1", check=False)
        crash_then_remount(m)
        orphan = crash_at != "snapshot:lineage"
        where = m.path / "r2" if crash_at == "copy:clone" else repo
        assert ("clean-volumes" in os.listdir(where / "fixes")) == orphan
        run_every_fix([repo, m.path / "r2"])
        assert (repo / "disks/vm1").read_bytes() == before
        if crash_at == "snapshot:lineage":
            assert (repo / "snapshots/s1").read_bytes() == before
            # The disk's lineage names no snapshot yet: the next one still clones.
            assert record(m, "default", "vm1")["lineage"] is None
            sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s2")
            assert record(m, "default", "vm1")["lineage"] == "s2"
        check_through_the_mount(m)
    finally:
        m.stop()
    for root in (xfs / "data/default", xfs / "data/r2"):
        assert_consistent(root)


def incremental_copy_crashes_and_resumes(m: Mount, other_xfs: Path) -> None:
    """kill -9 once the changed extents are in, before the record says so: the
    copy resumes at the next mount and moves nothing more."""
    env, m.env = m.env, {}
    repo, r3 = m.default, m.path / "r3"
    connect = f"r3 localfs-1.0 path={other_xfs / 'r3'}\n"
    (other_xfs / "r3").mkdir()
    m.start()
    (m.path / "connect").write_text(connect)
    pattern_disk(repo, "vm1", 16)
    sh(f"ln {repo}/disks/vm1 {r3}/snapshots/monday")
    wait_for(lambda: status(r3, "monday")["state"] == "optimized", 60, "monday copied")
    wait_for(lambda: not active_tasks(r3), 30, "the copy task")
    m.stop()
    m.env = env
    m.start()
    (m.path / "connect").write_text(connect)
    write_blocks(repo / "disks/vm1", [1, 2000], b"tuesday")
    sh(f"ln {repo}/disks/vm1 {r3}/snapshots/tuesday")
    assert m.proc.wait(60) == 99
    m.proc = None
    m.env = {}
    m.start()
    (m.path / "connect").write_text(connect)
    wait_for(lambda: status(r3, "tuesday")["state"] == "optimized", 60, "the resumed copy")
    wait_for(lambda: not active_tasks(r3), 30, "the copy task")
    sh(f"cmp {repo}/snapshots/tuesday {r3}/snapshots/tuesday")
    assert unshared_bytes(volume(r3, "tuesday")) == 2 * BLOCK
    check_through_the_mount(m)
    m.stop()
    for root in (m.data / "default", other_xfs / "r3"):
        assert_consistent(root)


def test_incremental_copy_punches_the_range_the_disk_discarded(other_xfs, repo, mount):
    """r3 on another XFS: vm1 loses data between its backups monday and tuesday
    (a guest's discard: a hole in its volume, punched on storage, as repofs has
    no fallocate handler and zeros written through the mount are data). The copy
    of tuesday over r3's monday finds the range by FIEMAP (a hole where monday
    has data) and punches it in r3's clone of monday (RawVolumeFile.zero): the
    bytes are tuesday's, the range is a hole there, and r3's monday keeps its
    data."""
    r3 = monday_in_r3(repo, mount, other_xfs)
    monday = (repo / "snapshots/monday").read_bytes()
    offset, length = 4 * MiB, 8 * MiB  # within vm1's 32 MiB of data
    wait_for(lambda: status(repo, "vm1")["data_path"] is None, 10, "the last release")
    sh(f"fallocate --punch-hole -o {offset} -l {length} {volume(repo, 'vm1')}")
    sh(f"ln {repo}/disks/vm1 {r3}/snapshots/tuesday")
    wait_for(lambda: not active_tasks(r3), 60, "the copy task")
    tuesday = status(r3, "tuesday")
    assert tuesday["state"] == "optimized", tuesday["last_error"]
    assert tuesday["lineage"] == "monday" and len(tuesday["chain"]) == 1
    mount.expect_log("copying tuesday from default to r3 over its ancestor monday in r3")
    expected = monday[:offset] + bytes(length) + monday[offset + length :]
    assert (r3 / "snapshots/tuesday").read_bytes() == expected
    assert (r3 / "snapshots/monday").read_bytes() == monday
    # A hole, not written zeros; and nothing else moved: the rest is monday's extents.
    fd = os.open(volume(r3, "tuesday"), os.O_RDONLY)
    try:
        assert os.lseek(fd, offset, os.SEEK_DATA) == offset + length
    finally:
        os.close(fd)
    assert unshared_bytes(volume(r3, "tuesday")) == 0
