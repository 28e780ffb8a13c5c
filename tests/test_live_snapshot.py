"""Live snapshots under a running VM (ops/create_snapshot.py).

A guest (tests/guest/seqwriter.asm, a boot sector) writes sequence numbers to
consecutive sectors of its disk, which QEMU opens on the mount with cache=none;
the test snapshots the disk several times while it runs. Each snapshot must be
a prefix of the final sequence: every sector up to its last written one holds
its number, none is torn, nothing follows; and it must not change afterwards.
"""

import contextlib
import hashlib
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest
from conftest import active_tasks, qemu_accel, sh, status, wait_for

pytestmark = [pytest.mark.mount, pytest.mark.vm]

GUEST = Path(__file__).parent / "guest" / "seqwriter.asm"
SECTOR = 512
DISK_SIZE = 64 << 20  # more than the guest writes while the test runs
SNAPSHOTS = 4
BOOT_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20


def written_prefix(data: bytes) -> int:
    """How many sectors after the boot sector hold their sequence numbers; fails
    if anything else follows them (a torn or missing sector)."""
    count = 0
    for lba in range(1, len(data) // SECTOR):
        sector = data[lba * SECTOR : (lba + 1) * SECTOR]
        if sector != struct.pack("<I", lba) * (SECTOR // 4):
            break
        count += 1
    rest = data[(count + 1) * SECTOR :]
    assert rest.count(0) == len(rest), f"sector {count + 1} is torn or a sector is missing"
    return count


@pytest.fixture
def guest_disk(repo, tmp_path):
    boot = tmp_path / "seqwriter.bin"
    sh(f"nasm -f bin {GUEST} -o {boot}")
    disk = repo / "disks/vm1"
    sh(f"truncate -s {DISK_SIZE} {disk}")
    sh(f"dd if={boot} of={disk} conv=notrunc status=none")
    return disk


@contextlib.contextmanager
def running_guest(disk: Path, workdir: Path):
    """QEMU booting `disk` as the block runs (its log in `workdir`); stopped by
    PID at the end."""
    log = open(workdir / "qemu.log", "wb")
    cmd = ["qemu-system-x86_64", *qemu_accel(), "-m", "32", "-nodefaults",
           "-display", "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
           "-drive", f"file={disk},format=raw,if=virtio,cache=none,aio=threads"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)
        log.close()


@pytest.fixture
def vm(guest_disk, tmp_path):
    with running_guest(guest_disk, tmp_path) as proc:
        yield proc


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_snapshots_under_a_running_vm_are_crash_consistent(repo, guest_disk, vm, tmp_path):
    wait_for(lambda: written_prefix(read(guest_disk)) > 0, BOOT_TIMEOUT_S, "the guest to write")
    taken = []
    for i in range(SNAPSHOTS):
        time.sleep(0.5)
        assert vm.poll() is None, f"the guest stopped: {(tmp_path / 'qemu.log').read_text()}"
        snapshot = repo / f"snapshots/s{i}"
        sh(f"ln {guest_disk} {snapshot}")
        data = read(snapshot)
        taken.append((snapshot, written_prefix(data), hashlib.sha256(data).digest()))
    time.sleep(0.5)
    # A guest that saw an I/O error exits by itself (status 3); SIGTERM makes
    # QEMU exit with 0.
    assert vm.poll() is None, f"the guest stopped: {(tmp_path / 'qemu.log').read_text()}"
    vm.send_signal(signal.SIGTERM)
    assert vm.wait(timeout=STOP_TIMEOUT_S) == 0

    final = written_prefix(read(guest_disk))
    counts = [count for _, count, _ in taken]
    assert 0 < counts[0] and counts == sorted(set(counts)) and counts[-1] < final, counts
    for snapshot, _, digest in taken:
        assert hashlib.sha256(read(snapshot)).digest() == digest, f"{snapshot.name} changed"
        assert status(repo, snapshot.name)["state"] == "optimized"
    assert status(repo, "vm1")["base"] == f"s{SNAPSHOTS - 1}"


def test_the_whole_life_of_a_disk_under_a_running_vm(repo, mount, guest_disk, vm, tmp_path):
    """Issue 20: five snapshots taken while the guest writes, the middle three
    removed and their merges run, the disk flattened, and ten backups made into
    a second repository, all while it goes on writing: the guest sees no I/O
    error, the kept snapshots still read as they were taken, every backup is a
    whole sequence that does not change, the disk is a whole sequence, and its
    chain ends at most three deep."""

    def running() -> None:
        assert vm.poll() is None, f"the guest stopped: {(tmp_path / 'qemu.log').read_text()}"

    wait_for(lambda: written_prefix(read(guest_disk)) > 0, BOOT_TIMEOUT_S, "the guest to write")
    digests = {}
    for i in range(5):
        time.sleep(0.3)
        sh(f"ln {guest_disk} {repo}/snapshots/s{i}")
        digests[f"s{i}"] = hashlib.sha256(read(repo / f"snapshots/s{i}")).digest()
    depth = len(status(repo, "vm1")["chain"])
    for i in (1, 2, 3):
        sh(f"rm {repo}/snapshots/s{i}")
    wait_for(lambda: not active_tasks(repo), 60, "autofix merges")  # none: two readers each
    for i in (3, 2, 1):  # newest first: each merge goes down into the older layer
        sh(f"mv {repo}/fixes/merge-s{i} {repo}/tasks/")
        wait_for(lambda: not active_tasks(repo), 60, f"the merge of s{i}")
        running()
    assert "live, in the open chain of vm1" in mount.log_text()
    assert len(status(repo, "vm1")["chain"]) == depth - 3

    sh(f"setfattr -n user.repofs.max_chain -v 2 {repo}")
    sh(f"mv {repo}/fixes/optimize-vm1 {repo}/tasks/")
    wait_for(lambda: not active_tasks(repo), 60, "the flatten")
    assert "optimize: flattening vm1 live" in mount.log_text()
    assert len(status(repo, "vm1")["chain"]) == 1
    sh(f"setfattr -n user.repofs.max_chain -v 8 {repo}")
    running()

    r2 = mount.path / "r2"
    sh(f"mkdir {r2}")
    counts = []
    for n in range(10):
        time.sleep(0.2)
        sh(f"ln {guest_disk} {r2}/snapshots/b{n}")
        wait_for(lambda: not active_tasks(r2), 60, f"backup b{n} whole in r2")
        wait_for(lambda: not active_tasks(repo), 60, "the merge of the older point")
        data = read(r2 / f"snapshots/b{n}")
        counts.append(written_prefix(data))
        digests[f"b{n}"] = hashlib.sha256(data).digest()
        assert len(status(repo, "vm1")["chain"]) <= 3
        running()
    assert counts == sorted(set(counts)), counts

    time.sleep(0.5)
    running()
    vm.send_signal(signal.SIGTERM)
    assert vm.wait(timeout=STOP_TIMEOUT_S) == 0
    assert written_prefix(read(guest_disk)) > counts[-1]
    assert len(status(repo, "vm1")["chain"]) <= 3
    kept = [repo / "snapshots/s0", repo / "snapshots/s4",
            *(r2 / f"snapshots/b{n}" for n in range(10))]  # fmt: skip
    for path in kept:
        assert hashlib.sha256(read(path)).digest() == digests[path.name], path.name
