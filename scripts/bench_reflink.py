#!/usr/bin/env python3
"""The `reflink` section of scripts/bench.py: clones on XFS with reflink (a loop
file), through a repofs mount whose data dir is on it.

- FICLONE time against the extent count of the file cloned (drivers/reflink.py,
  straight on the XFS: the kernel's cost, which stalls the file's writers);
- `ln disks/D snapshots/S` and `ln snapshots/S disks/V` of a 4 GiB raw disk
  (p50, p99);
- live snapshots of that disk under 16 threads of 4 KiB O_DIRECT random
  writes (a QD16 guest), after 30 s of them: how long a write waited at most
  around each snapshot (p50, p99 over the snapshots; and in as long a window
  without a snapshot, between them: the writers' own); then the same once the
  disk was closed and opened again with its many extents (repofs's path, a
  live snapshot is an overlay: ops/create_snapshot.py).

    .venv/bin/python scripts/bench.py --only reflink
    .venv/bin/python scripts/bench_reflink.py [--quick]
"""

import argparse
import json
import mmap
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_native import data_path, repofs_mount, run, xfs_with_reflink  # noqa: E402

from repofs.drivers import reflink  # noqa: E402

BLOCK = 4096
GiB = 1 << 30
FULL = {"extents": [1_000, 10_000, 100_000], "rounds": 20, "warm_s": 30, "disk_gib": 4}
QUICK = {"extents": [100, 1_000], "rounds": 3, "warm_s": 2, "disk_gib": 1}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def clone_times(xfs: Path, counts: list[int]) -> list[dict]:
    """A file with N extents (every other 4 KiB block written: N data extents
    between holes), cloned three times; the best."""
    results = []
    for count in counts:
        source = xfs / f"extents-{count}"
        fd = os.open(source, os.O_WRONLY | os.O_CREAT, 0o600)
        block = b"\xa5" * BLOCK
        for i in range(count):
            os.pwrite(fd, block, 2 * i * BLOCK)
        os.fsync(fd)
        os.close(fd)
        found = len(reflink.data_extents(source))
        best = float("inf")
        for n in range(3):
            target = xfs / f"extents-{count}.clone{n}"
            started = time.perf_counter()
            reflink.clone(source, target, os.stat(source).st_size)
            best = min(best, time.perf_counter() - started)
        for path in xfs.glob(f"extents-{count}*"):
            path.unlink()
        print(f"clone of a file of {found:7} extents: {best * 1000:7.1f} ms")
        results.append({"extents": found, "clone_ms": round(best * 1000, 2)})
    return results


def _timed(action, *args) -> float:
    started = time.perf_counter()
    action(*args)
    return time.perf_counter() - started


def _write_randomly(path: Path, size: int, stop: threading.Event,
                    waits: list[tuple[float, float]]) -> list[threading.Thread]:  # fmt: skip
    """16 writers of 4 KiB O_DIRECT random writes (QD16); each write's (start,
    end) goes into `waits` (monotonic)."""

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        buf = mmap.mmap(-1, BLOCK)
        buf[:] = rng.randbytes(BLOCK)
        fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
        try:
            while not stop.is_set():
                offset = rng.randrange(size // BLOCK) * BLOCK
                started = time.monotonic()
                os.pwritev(fd, [buf], offset)
                waits.append((started, time.monotonic()))
        finally:
            os.close(fd)

    started = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
    for thread in started:
        thread.start()
    return started


def _ms(values: list[float], p: float) -> float:
    return round(percentile(values, p) * 1000, 2)


def raw_volume(repo: Path, disk: Path) -> Path:
    """A disk's raw volume: the bottom of its chain, below the overlays of its
    snapshots if any."""
    return Path(json.loads((repo / f"status/{disk.name}").read_text())["chain"][-1])


def _closed_links(repo: Path, disk: Path, name: str, rounds: int) -> dict:
    """p50/p99 of `ln disks/D snapshots/S` and `ln snapshots/S disks/V` of a
    closed disk, and its raw volume's extent count."""
    volume = raw_volume(repo, disk)
    extents = len(reflink.data_extents(volume))
    time.sleep(1.5)  # the kernel's last release of the file
    snap = [_timed(os.link, disk, repo / f"snapshots/{name}-{i}") for i in range(rounds)]
    on = [_timed(os.link, repo / f"snapshots/{name}-{i}", repo / f"disks/{name}-on-{i}")
          for i in range(rounds)]  # fmt: skip
    return {"extents": extents, "snapshot_p50_ms": _ms(snap, 50),
            "snapshot_p99_ms": _ms(snap, 99), "disk_on_snapshot_p50_ms": _ms(on, 50),
            "disk_on_snapshot_p99_ms": _ms(on, 99)}  # fmt: skip


def _live(repo: Path, disk: Path, sizes: dict, warm_s: float, name: str) -> dict:
    """Live snapshots of `disk` under 16 random writers that open it and write
    for `warm_s` first: the longest a write waited around each snapshot."""
    stop, waits = threading.Event(), []
    writers = _write_randomly(disk, sizes["disk_gib"] * GiB, stop, waits)
    try:
        while not waits:  # the first open (a count of the disk's extents) done
            time.sleep(0.01)
        time.sleep(warm_s)
        path = data_path(repo, disk.name)
        live, links = [], []
        for i in range(sizes["rounds"]):
            started = time.monotonic()
            live.append(_timed(os.link, disk, repo / f"snapshots/{name}-{i}"))
            links.append((started, time.monotonic()))
            time.sleep(0.5)
    finally:
        stop.set()
        for thread in writers:
            thread.join()
    time.sleep(1.5)  # the kernel's last release of the file

    # The longest any write overlapping each ln waited (counted once all ended:
    # a write the clone held ends after the ln).
    def longest(start: float, end: float) -> float:
        return max((e - s for s, e in waits if e >= start and s <= end), default=0.0)

    stalls = [longest(started, ended) for started, ended in links]
    # The same under no snapshot, the writers' own: a window as long (at most
    # 0.3 s), 0.1 s after each ln, within the 0.5 s before the next.
    quiet = [longest(ended + 0.1, ended + 0.1 + min(ended - started, 0.3))
             for started, ended in links]  # fmt: skip
    all_waits = [e - s for s, e in waits]
    return {"data_path": path, "extents": len(reflink.data_extents(raw_volume(repo, disk))),
            "writes": len(all_waits),
            "write_p50_ms": _ms(all_waits, 50), "snapshot_p50_ms": _ms(live, 50),
            "snapshot_p99_ms": _ms(live, 99), "stall_p50_ms": _ms(stalls, 50),
            "stall_p99_ms": _ms(stalls, 99), "no_snapshot_stall_p50_ms": _ms(quiet, 50),
            "no_snapshot_stall_p99_ms": _ms(quiet, 99)}  # fmt: skip


def snapshots(repo: Path, sizes: dict) -> dict:
    """Snapshot and disk-on-snapshot latency of a raw disk written sequentially
    (1 GiB of it: few extents); live snapshots of a new disk under random
    writers after warm_s of them (its extent count grows with that; opened
    while it had none, the kernel serves it); live snapshots of it opened again
    under those writers (opened with that many extents, repofs serves it, and
    the first snapshot puts it on a qcow2 chain); the latency of that disk's
    snapshots once closed."""
    size = sizes["disk_gib"] * GiB
    sequential = repo / "disks/sequential"
    run(f"truncate -s {size} {sequential} && dd if=/dev/urandom of={sequential} bs=1M "
        "count=1024 conv=notrunc,fsync status=none")  # fmt: skip
    closed_sequential = _closed_links(repo, sequential, "seq", sizes["rounds"])
    disk = repo / "disks/bench"
    fd = os.open(disk, os.O_CREAT | os.O_WRONLY)
    os.ftruncate(fd, size)
    os.close(fd)
    time.sleep(1.5)  # the kernel's last release of the new file
    result = {
        "disk_gib": sizes["disk_gib"], "rounds": sizes["rounds"],
        "sequential": closed_sequential,
        "live": _live(repo, disk, sizes, sizes["warm_s"], "live"),
        "live_reopened": _live(repo, disk, sizes, 2, "relive"),
        "random": _closed_links(repo, disk, "rnd", sizes["rounds"]),
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    return result


def reflink_section(tmp: Path, sizes: dict) -> dict:
    """The whole section, on an XFS of its own (unmounted and detached after)."""
    with xfs_with_reflink(tmp / "xfs.img", tmp / "xfs") as xfs:
        result = {"clone": clone_times(xfs, sizes["extents"])}
        with repofs_mount(tmp / "mnt-xfs", xfs / "data") as mnt:
            result["snapshots"] = snapshots(mnt / "default", sizes)
        return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="repofs-bench-", dir="/var/tmp") as tmp:
        reflink_section(Path(tmp), QUICK if args.quick else FULL)


if __name__ == "__main__":
    main()
