"""`make bench`'s live_jobs section (issue 20): the rates of a live merge and
of a live flatten against their peer, `qemu-img commit` of a layer holding as
much, in the same run, on the same file system, from a cold page cache each.

The merge: disk lj-vm (twice `mib` MiB) with `mib` MiB written, snapshot
lj-s1, a little written since; the disk is held open while `rm
snapshots/lj-s1` queues the merge, which streams lj-s1's layer up into the
disk's top in the storage daemon (fixes/merge.py). The flatten: disk lj-fv on
an empty snapshot lj-gold under strategy performance, `mib` MiB written into
its own top; held open while its optimize is queued, which mirrors that top
into a new raw volume and switches the disk to it (fixes/optimize.py). Each
timed from the command to the task's end. The peer: a qcow2 layer with the
same `mib` MiB over an empty raw file, committed into it by `qemu-img commit`."""

import os
import tempfile
import time
from pathlib import Path

from bench_long_step import wait_until
from bench_native import cold, run

MiB = 1 << 20
TIMEOUT_S = 600


def live_jobs_section(repo: Path, data_dir: Path, mib: int) -> dict:
    merge_s, flatten_s = _live_merge(repo, mib), _live_flatten(repo, mib)
    commit_s = _commit(data_dir, mib)
    result = {"mib": mib, "commit_s": round(commit_s, 2),
              "commit_mib_s": round(mib / commit_s, 1)}  # fmt: skip
    for job, seconds in (("merge", merge_s), ("flatten", flatten_s)):
        result |= {f"{job}_s": round(seconds, 2), f"{job}_mib_s": round(mib / seconds, 1),
                   f"{job}_ratio": round(commit_s / seconds, 2)}  # fmt: skip
        print(f"live {job} of {mib} MiB: {result[f'{job}_mib_s']} MiB/s ({seconds:.2f} s), "
              f"qemu-img commit {result['commit_mib_s']} MiB/s ({commit_s:.2f} s): "
              f"{result[f'{job}_ratio']}x")  # fmt: skip
    return result


def _live_merge(repo: Path, mib: int) -> float:
    _write(repo / "disks/lj-vm", 2 * mib * MiB, mib)
    run(f"ln {repo}/disks/lj-vm {repo}/snapshots/lj-s1")
    run(f"head -c {4 * MiB} /dev/urandom | dd of={repo}/disks/lj-vm bs=4M seek=1 "
        "conv=notrunc status=none")  # fmt: skip
    fd = os.open(repo / "disks/lj-vm", os.O_RDWR)
    try:
        cold()
        started = time.monotonic()
        os.unlink(repo / "snapshots/lj-s1")
        task = repo / "tasks/merge-lj-s1"
        wait_until(lambda: not task.exists(), TIMEOUT_S, "the live merge")
        return time.monotonic() - started
    finally:
        os.close(fd)
        run(f"rm -f {repo}/disks/lj-vm")


def _live_flatten(repo: Path, mib: int) -> float:
    run(f"truncate -s {2 * mib * MiB} {repo}/disks/lj-g")
    run(f"ln {repo}/disks/lj-g {repo}/snapshots/lj-gold")
    run(f"setfattr -n user.repofs.strategy -v performance {repo}")
    run(f"setfattr -n user.repofs.autofix -v false {repo}")
    try:
        run(f"ln {repo}/snapshots/lj-gold {repo}/disks/lj-fv")
        _write(repo / "disks/lj-fv", None, mib)
        fd = os.open(repo / "disks/lj-fv", os.O_RDWR)
        try:
            cold()
            started = time.monotonic()
            task = repo / "tasks/optimize-lj-fv"
            os.rename(repo / "fixes/optimize-lj-fv", task)
            wait_until(lambda: not task.exists(), TIMEOUT_S, "the live flatten")
            return time.monotonic() - started
        finally:
            os.close(fd)
    finally:
        run(f"setfattr -x user.repofs.strategy {repo}; setfattr -x user.repofs.autofix {repo}")
        run(f"rm -f {repo}/disks/lj-fv {repo}/disks/lj-g {repo}/snapshots/lj-gold")


def _write(disk: Path, size: int | None, mib: int) -> None:
    """`mib` MiB of random data at the start of the disk, made `size` bytes first."""
    if size is not None:
        run(f"truncate -s {size} {disk}")
    run(f"head -c {mib * MiB} /dev/urandom | dd of={disk} bs=4M conv=notrunc status=none")


def _commit(data_dir: Path, mib: int) -> float:
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        base, layer = Path(tmp) / "base.raw", Path(tmp) / "layer.qcow2"
        size = 2 * mib * MiB
        run(f"truncate -s {size} {base}")
        run(f"qemu-img create -q -f qcow2 -b {base} -F raw {layer} {size}")
        run(f"qemu-io -f qcow2 -c 'write -P 7 0 {mib}M' {layer}")
        cold()
        started = time.monotonic()
        run(f"qemu-img commit -q -f qcow2 {layer}")
        return time.monotonic() - started
