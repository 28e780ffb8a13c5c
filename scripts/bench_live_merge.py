"""`make bench`'s live_merge section (issue 20): the rate of a live merge
against its peer, `qemu-img commit` of a layer holding as much, in the same
run, on the same file system, from a cold page cache each.

The merge: disk lm-vm (twice `mib` MiB) with `mib` MiB written, snapshot
lm-s1, a little written since; the disk is held open while `rm
snapshots/lm-s1` queues the merge, which streams lm-s1's layer up into the
disk's top in the storage daemon (fixes/merge.py). Timed from the `rm` to the
task's end. The peer: a qcow2 layer with the same `mib` MiB over an empty raw
file, committed into it by `qemu-img commit`."""

import os
import subprocess
import tempfile
import time
from pathlib import Path

MiB = 1 << 20
TIMEOUT_S = 600


def live_merge_section(repo: Path, data_dir: Path, mib: int) -> dict:
    size = 2 * mib * MiB
    _sh(f"truncate -s {size} {repo}/disks/lm-vm")
    _sh(f"head -c {mib * MiB} /dev/urandom | dd of={repo}/disks/lm-vm bs=4M conv=notrunc "
        "status=none")  # fmt: skip
    _sh(f"ln {repo}/disks/lm-vm {repo}/snapshots/lm-s1")
    _sh(f"head -c {4 * MiB} /dev/urandom | dd of={repo}/disks/lm-vm bs=4M seek=1 "
        "conv=notrunc status=none")  # fmt: skip
    fd = os.open(repo / "disks/lm-vm", os.O_RDWR)
    try:
        _cold()
        started = time.monotonic()
        os.unlink(repo / "snapshots/lm-s1")
        task = repo / "tasks/merge-lm-s1"
        _wait(lambda: not task.exists(), TIMEOUT_S, "the live merge")
        merge_s = time.monotonic() - started
    finally:
        os.close(fd)
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        base, layer = Path(tmp) / "base.raw", Path(tmp) / "layer.qcow2"
        _sh(f"truncate -s {size} {base}")
        _sh(f"qemu-img create -q -f qcow2 -b {base} -F raw {layer} {size}")
        _sh(f"qemu-io -f qcow2 -c 'write -P 7 0 {mib}M' {layer}")
        _cold()
        started = time.monotonic()
        _sh(f"qemu-img commit -q -f qcow2 {layer}")
        commit_s = time.monotonic() - started
    _sh(f"rm -f {repo}/disks/lm-vm")
    result = {"mib": mib, "merge_s": round(merge_s, 2), "commit_s": round(commit_s, 2),
              "merge_mib_s": round(mib / merge_s, 1), "commit_mib_s": round(mib / commit_s, 1),
              "ratio": round(commit_s / merge_s, 2)}  # fmt: skip
    print(f"live merge of {mib} MiB: {result['merge_mib_s']} MiB/s ({merge_s:.2f} s), "
          f"qemu-img commit {result['commit_mib_s']} MiB/s ({commit_s:.2f} s): "
          f"{result['ratio']}x")  # fmt: skip
    return result


def _cold() -> None:
    """Written back and out of the page cache: each side reads from the disk."""
    _sh("sync && echo 3 > /proc/sys/vm/drop_caches")


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not end within {timeout_s}s")
        time.sleep(0.02)


def _sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True, capture_output=True)
