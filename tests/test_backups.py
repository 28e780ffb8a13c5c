"""Issue 20: backups of a disk into another repository keep the disk's chain
short (fixes/backups.py), each after the first copying only what changed, and
every backup reading back the disk as it was at its point in time."""

import os

import pytest
from conftest import MiB, active_tasks, pattern, sh, status, wait_for

pytestmark = pytest.mark.mount

SIZE = 32 * MiB
BACKUPS = 30
WRITE = 64 * 1024
TIMEOUT_S = 60


def test_thirty_backups_of_a_disk_in_use(mount):
    r1, r2 = mount.default, mount.path / "r2"
    sh(f"mkdir {r2}")
    sh(f"truncate -s {SIZE} {r1}/disks/vm")
    sh(f"head -c {16 * MiB} /dev/urandom | dd of={r1}/disks/vm conv=notrunc status=none")
    points = {}
    with open(r1 / "disks/vm", "r+b", buffering=0) as disk:  # the guest's, all along
        for n in range(BACKUPS):
            for k in range(4):  # what the guest writes between two backups
                disk.seek(((n * 4 + k) * 1_234_567) % (SIZE - WRITE))
                disk.write(pattern(b"backup %d write %d " % (n, k), WRITE))
            os.fsync(disk.fileno())
            disk.seek(0)
            points[f"b{n}"] = disk.read()
            sh(f"ln {r1}/disks/vm {r2}/snapshots/b{n}")
            # The copy's task writes the older point's merge task as it ends.
            wait_for(lambda: not active_tasks(r2), TIMEOUT_S, f"backup b{n} whole in r2")
            wait_for(lambda: not active_tasks(r1), TIMEOUT_S, "the merge of the older point")
            assert status(r2, f"b{n}")["state"] == "optimized"
            chain = status(r1, "vm")["chain"]
            assert len(chain) <= 3, (n, chain)
        disk.seek(0)
        assert disk.read() == points[f"b{BACKUPS - 1}"]
    assert len(status(r1, "vm")["chain"]) == 2
    assert os.listdir(r1 / "snapshots") == [f"b{BACKUPS - 1}"]
    assert os.listdir(r1 / "trash") == [] and os.listdir(r1 / "fixes") == []
    for name, data in points.items():
        assert (r2 / "snapshots" / name).read_bytes() == data, name
    log = mount.log_text()
    for n in range(1, BACKUPS):
        assert f"copying b{n} from default to r2 over its ancestor b{n - 1} in r2" in log, n
    # Each merge moved one backup's changes down, live, not the disk up.
    folds = [line for line in log.splitlines() if "merge: folding" in line]
    assert len(folds) == BACKUPS - 1, folds
    assert all("down into" in line and "live, in the open chain of vm" in line
               for line in folds), folds  # fmt: skip
