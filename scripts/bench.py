#!/usr/bin/env python3
"""Measures repofs against peers in the same run.

Data path: the same fio job on an image through a fresh repofs mount and on a
peer (a plain file on the file system that holds the repository); `native`:
the same through kernel passthrough, on XFS with reflink and on Gluster
(scripts/bench_native.py). Copies: a
copy of a snapshot between repositories against `qemu-img convert -O raw` of
the same volume, and an incremental copy against the full one. Commit latency
of the operations on 1 GiB and 1 TiB images; a repository of many images
(`ls -l`, the check, the process's memory); work redone after kill -9. Results
go to bench/results.json; docs/performance.md sums them up.

    make bench                                  # everything, full sizes
    .venv/bin/python scripts/bench.py --only copy
    .venv/bin/python scripts/bench.py --quick --results /tmp/r.json   # CI: small, fast
"""

import argparse
import concurrent.futures
import contextlib
import itertools
import json
import mmap
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import bench_live_jobs
import bench_long_step
import bench_native
import bench_reflink
from bench_native import cold

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench/results.json"

JOBS = {
    **bench_native.JOBS,
    "rand-write-4k-qd1": {"rw": "randwrite", "bs": "4k", "iodepth": "1"},
}
# Seconds of each fio job (--quick: 1).
FIO_RUNTIME_S = 10


def fio(path: Path, job: dict, size_mib: int, direct: bool = True) -> float:
    """Bandwidth in MiB/s of one fio job; O_DIRECT (QEMU's cache=none) by default."""
    return fio_requests(path, job, size_mib, direct)[0]


def fio_requests(path: Path, job: dict, size_mib: int, direct: bool = True) -> tuple[float, int]:
    """fio's bandwidth in MiB/s and how many requests it made."""
    cmd = [
        "fio", "--name=bench", f"--filename={path}", f"--size={size_mib}M",
        f"--rw={job['rw']}", f"--bs={job['bs']}", f"--iodepth={job['iodepth']}",
        "--ioengine=libaio", f"--direct={int(direct)}", f"--runtime={FIO_RUNTIME_S}",
        "--time_based=0",
        "--output-format=json",
    ]  # fmt: skip
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    result = out["jobs"][0]["read" if "read" in job["rw"] else "write"]
    return result["bw_bytes"] / (1 << 20), result["total_ios"]


def fio_through(mnt: Path, path: Path, job: dict, size_mib: int) -> tuple[float, float]:
    """fio on an image of the mount: MiB/s, and the CPU time repofs and its storage
    daemon spent per request, in microseconds."""
    pid = int(os.getxattr(mnt, "user.repofs.pid"))
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return fio_with_cpu([pid, *map(int, children)], path, job, size_mib)


def fio_with_cpu(pids: list[int], path: Path, job: dict, size_mib: int) -> tuple[float, float]:
    """fio's MiB/s, and the CPU time of processes `pids` per request in microseconds."""
    before = cpu_s(pids)
    mib_s, requests = fio_requests(path, job, size_mib)
    return mib_s, (cpu_s(pids) - before) / requests * 1e6


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def run(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout


REPOFS = f"cd {ROOT} && {sys.executable} -m repofs"


def data_path(repo: Path, data: Path, size: int) -> list[dict]:
    """fio through the mount against its peers: for the raw disk the same file
    read directly (O_DIRECT) and buffered; for the qcow2 chain (an overlay over
    a raw base) qemu-storage-daemon's own FUSE export of an identical chain.
    Then queue depth 1 against 16 (queue_depths) on the raw disk and on the
    qcow2 chain served by the storage daemon."""
    results = []
    peer = data / "peer.raw"
    run(f"dd if=/dev/urandom of={peer} bs=1M count={size} status=none")
    run(f"cp {peer} {repo}/disks/gold")
    run(f"ln {repo}/disks/gold {repo}/snapshots/base")
    # Two overlays over base: one through the mount, one through the peer export;
    # each job writes to both alike, so they stay identical.
    run(f"ln {repo}/snapshots/base {repo}/disks/qcow2")
    run(f"ln {repo}/snapshots/base {repo}/disks/qcow2-peer")
    peer_top = Path(json.loads((repo / "status/qcow2-peer").read_text())["chain"][0])
    run(f"cp {peer} {repo}/disks/raw")
    mnt = repo.parent
    for name, job in JOBS.items():
        through, cpu_us = fio_through(mnt, repo / "disks/raw", job, size)
        direct = fio(peer, job, size)
        # repofs serves O_DIRECT requests through the host page cache
        # (drivers/volume_io.py), so the buffered file is a peer too.
        cached = fio(peer, job, size, direct=False)
        results.append({
            "image": "raw", "job": name, "repofs_mib_s": round(through, 1),
            "repofs_cpu_us_per_request": round(cpu_us, 1),
            "file_direct_mib_s": round(direct, 1),
            "file_buffered_mib_s": round(cached, 1),
            "ratio_to_direct": round(through / direct, 3),
            "ratio_to_buffered": round(through / cached, 3),
        })  # fmt: skip
        print(f"raw    {name:18} repofs {through:7.1f} ({cpu_us:.0f} us CPU)  file O_DIRECT "
              f"{direct:7.1f} ({through / direct:.2f}x)  file buffered "
              f"{cached:7.1f} ({through / cached:.2f}x) MiB/s")  # fmt: skip
    for name, job in JOBS.items():
        through, cpu_us = fio_through(mnt, repo / "disks/qcow2", job, size)
        with qsd_fuse_export(peer_top, data / "qsd-export") as (exported, qsd_pid):
            qsd, qsd_cpu_us = fio_with_cpu([qsd_pid], exported, job, size)
        results.append({
            "image": "qcow2", "job": name, "repofs_mib_s": round(through, 1),
            "repofs_cpu_us_per_request": round(cpu_us, 1),
            "qsd_fuse_mib_s": round(qsd, 1), "ratio_to_qsd_fuse": round(through / qsd, 3),
            "qsd_fuse_cpu_us_per_request": round(qsd_cpu_us, 1),
        })  # fmt: skip
        print(f"qcow2  {name:18} repofs {through:7.1f} ({cpu_us:.0f} us CPU)  "
              f"qemu-storage-daemon FUSE export "
              f"{qsd:7.1f} ({through / qsd:.2f}x) MiB/s")  # fmt: skip
    results += queue_depths("raw", repo / "disks/raw", size, peer)
    # A live snapshot of an open chain leaves it served by the storage daemon
    # alone (NBD) until it is opened again: what a qcow2 disk's server path is
    # at its slowest. The handle held keeps the image open across fio's jobs.
    held = os.open(repo / "disks/qcow2", os.O_RDWR)
    try:
        os.link(repo / "disks/qcow2", repo / "snapshots/qcow2-live")
        results += queue_depths("qcow2-daemon", repo / "disks/qcow2", size)
    finally:
        os.close(held)
    return results


def queue_depths(image: str, path: Path, size: int, peer: Path | None = None) -> list[dict]:
    """4k random reads and writes at queue depth 1 and 16, each from cold caches,
    through the mount (and on `peer`, the same file without repofs): the server
    path must serve at least as many requests at depth 16 as at depth 1."""
    results = []
    for rw in ("read", "write"):
        row = {"image": image, "job": f"rand-{rw}-4k-qd1-vs-qd16"}
        for side, file in (("repofs", path), ("peer", peer)):
            if file is None:
                continue
            for depth in (1, 16):
                cold()
                row[f"{side}_qd{depth}_iops"] = round(
                    fio(file, JOBS[f"rand-{rw}-4k-qd{depth}"], size) * 256
                )
            row[f"{side}_qd16_to_qd1"] = round(
                row[f"{side}_qd16_iops"] / row[f"{side}_qd1_iops"], 2
            )
        print(f"{image:12} 4k rand {rw:5} cold: repofs QD1 {row['repofs_qd1_iops']:6} "
              f"QD16 {row['repofs_qd16_iops']:6} IOPS ({row['repofs_qd16_to_qd1']:.2f}x)" + (
                  f"; plain file QD1 {row['peer_qd1_iops']:6} QD16 {row['peer_qd16_iops']:6}"
                  if peer else ""))  # fmt: skip
        results.append(row)
    return results


@contextlib.contextmanager
def qsd_fuse_export(top: Path, mountpoint: Path, timeout_s: float = 20):
    """qemu-storage-daemon exporting the qcow2 chain topped by `top` over FUSE at
    `mountpoint` (a regular file), with the options repofs's own daemon uses;
    yields the mountpoint and the daemon's PID."""
    mountpoint.touch()
    proc = subprocess.Popen([
        "qemu-storage-daemon",
        "--blockdev", f"driver=file,node-name=file,filename={top},aio=threads",
        "--blockdev", "driver=qcow2,node-name=chain,file=file",
        "--export", f"type=fuse,id=export,node-name=chain,mountpoint={mountpoint},writable=on",
    ])  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while f" {mountpoint} fuse" not in Path("/proc/mounts").read_text():
            assert proc.poll() is None, "qemu-storage-daemon exited"
            assert time.monotonic() < deadline, "the FUSE export did not come up"
            time.sleep(0.05)
        yield mountpoint, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=timeout_s)


def best_of_3(action) -> float:
    timings = []
    for _ in range(3):
        started = time.monotonic()
        action()
        timings.append(time.monotonic() - started)
    return min(timings)


def scale(mnt: Path, counts: list[int]) -> list[dict]:
    """Repositories of `counts` images (empty disks): `ls -l disks/`, the check
    (`ls fixes/`), and the repofs process's resident memory."""
    results = []
    pid = int(os.getxattr(mnt, "user.repofs.pid"))
    for count in counts:
        repo = mnt / f"many{count}"
        repo.mkdir()
        # Several creates in flight: repofs serves them concurrently.
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for fd in pool.map(os.open, (repo / f"disks/d{i}" for i in range(count)),
                               itertools.repeat(os.O_CREAT | os.O_WRONLY)):  # fmt: skip
                os.close(fd)
        assert len(os.listdir(repo / "disks")) == count
        ls_s = best_of_3(lambda r=repo: run(f"ls -l {r}/disks > /dev/null"))
        check_s = best_of_3(lambda r=repo: os.listdir(r / "fixes"))
        status = Path(f"/proc/{pid}/status").read_text()
        rss_mib = int(status.split("VmRSS:")[1].split()[0]) / 1024
        print(f"{count} images: ls -l {ls_s:.2f}s, check {check_s:.2f}s, "
              f"repofs RSS {rss_mib:.0f} MiB")  # fmt: skip
        results.append({"images": count, "ls_l_s": round(ls_s, 3),
                        "check_s": round(check_s, 3), "rss_mib": round(rss_mib, 1)})  # fmt: skip
    return results


def headers(mnt: Path, count: int) -> dict:
    """A repository of `count` disks on one snapshot (qcow2 overlays over its raw
    volume, as clones of a template are): the first check, which reads every
    qcow2 header (`qemu-img info`, several at once), and the checks after it,
    which reuse what they read while the files are unchanged."""
    repo = mnt / f"headers{count}"
    repo.mkdir()
    _create(repo / "disks/installed", 1 << 20)
    os.link(repo / "disks/installed", repo / "snapshots/template")
    disks = (repo / f"disks/d{i}" for i in range(count))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(os.link, itertools.repeat(repo / "snapshots/template"), disks))
    time.sleep(1)  # a header read less than a second after its write is read again
    first_s = _timed(os.listdir, repo / "fixes")
    again_s = best_of_3(lambda: os.listdir(repo / "fixes"))
    print(f"{count + 1} qcow2 headers: first check {first_s:.2f}s, then {again_s:.2f}s")
    return {"images": count + 2, "qcow2_volumes": count + 1, "first_check_s": round(first_s, 3),
            "check_s": round(again_s, 3)}  # fmt: skip


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def latency(repo: Path, rounds: int) -> list[dict]:
    """p50 and p99 of the commit of createVirtualDisk (`truncate`), createSnapshot
    (`ln disks/ snapshots/`), create-from-snapshot (`ln snapshots/ disks/`) and
    removeImage (`rm`), on 1 GiB and 1 TiB images: the system calls the shell
    commands make, timed one by one."""
    results = []
    sizes = {"1GiB": 1 << 30, "1TiB": 1 << 40}
    # Rounds of both sizes alternate: each sees the same repository (its number
    # of images changes the cost of some steps; the image's size must not).
    rounds_of = [(label, i) for i in range(rounds) for label in sizes]
    disks = {key: repo / "disks" / f"lat-{key[0]}-{key[1]}" for key in rounds_of}
    snapshots = {key: repo / "snapshots" / f"{disks[key].name}-s" for key in rounds_of}
    clones = {key: repo / "disks" / f"{disks[key].name}-c" for key in rounds_of}
    times = {key: {} for key in rounds_of}
    for key in rounds_of:
        times[key]["create"] = _timed(_create, disks[key], sizes[key[0]])
    time.sleep(1.5)  # the kernel's last release of each new file comes after close
    for key in rounds_of:
        times[key]["snapshot"] = _timed(os.link, disks[key], snapshots[key])
    for key in rounds_of:
        times[key]["from_snapshot"] = _timed(os.link, snapshots[key], clones[key])
    for key in rounds_of:
        times[key]["remove"] = _timed(os.unlink, clones[key])
    for label in sizes:
        for op in ("create", "snapshot", "from_snapshot", "remove"):
            values = [times[key][op] for key in rounds_of if key[0] == label]
            p50, p99 = percentile(values, 50) * 1000, percentile(values, 99) * 1000
            print(f"{op:14} {label}: p50 {p50:5.1f} ms, p99 {p99:5.1f} ms")
            results.append({"operation": op, "image": label, "p50_ms": round(p50, 2),
                            "p99_ms": round(p99, 2), "rounds": rounds})  # fmt: skip
    results.append(live_snapshots(repo, max(2, rounds // 5)))
    return results


def live_snapshots(repo: Path, rounds: int) -> dict:
    """`ln disks/D snapshots/S` while a writer keeps 64 KiB O_DIRECT writes going
    to D (as a VM would): the ln's latency, and the longest a write waited (the
    pause the guest sees)."""
    disk = repo / "disks/live"
    _create(disk, 1 << 30)
    stop = threading.Event()
    waits: list[float] = []

    def writer() -> None:
        buf = mmap.mmap(-1, 64 << 10)  # page-aligned, as O_DIRECT wants
        fd = os.open(disk, os.O_WRONLY | os.O_DIRECT)
        try:
            offset = 0
            while not stop.is_set():
                started = time.perf_counter()
                os.pwritev(fd, [buf], offset)
                waits.append(time.perf_counter() - started)
                offset = (offset + len(buf)) % (1 << 30)
        finally:
            os.close(fd)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.5)
        links = []
        for i in range(rounds):
            links.append(_timed(os.link, disk, repo / f"snapshots/live-{i}"))
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    p50, p99 = percentile(links, 50) * 1000, percentile(links, 99) * 1000
    longest = max(waits) * 1000
    print(
        f"live snapshot  1GiB: p50 {p50:5.1f} ms, p99 {p99:5.1f} ms; longest write "
        f"{longest:.1f} ms of {len(waits)} (median {percentile(waits, 50) * 1000:.2f} ms)"
    )
    return {"operation": "live_snapshot", "image": "1GiB", "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2), "rounds": rounds,
            "longest_write_ms": round(longest, 2), "writes": len(waits)}  # fmt: skip


def _timed(action, *args) -> float:
    started = time.perf_counter()
    action(*args)
    return time.perf_counter() - started


def _create(path: Path, size: int) -> None:
    """What `truncate -s SIZE PATH` does."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY)
    os.ftruncate(fd, size)
    os.close(fd)


def _equal_bytes_from(a: Path, b: Path, offset: int, piece: int = 4 << 20) -> int:
    """How many bytes of the pieces from `offset` on are equal in files a and b."""
    equal = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(offset)
        fb.seek(offset)
        while data := fa.read(piece):
            equal += len(data) if fb.read(piece) == data else 0
    return equal


def _optimize_source(repo: Path, source: Path, size: int) -> None:
    """Snapshot src-1 of `size` MiB of random data (kept in `source`) in a qcow2
    layer: a disk made on it under strategy performance is optimized by a copy
    that reads through the storage daemon, slow enough (seconds) to be killed
    at a random moment."""
    run(f"truncate -s {size}M {repo}/disks/src")
    run(f"ln {repo}/disks/src {repo}/snapshots/src-0")
    run(f"dd if=/dev/urandom of={source} bs=1M count={size} status=none")
    run(f"dd if={source} of={repo}/disks/src bs=1M conv=notrunc status=none")
    run(f"ln {repo}/disks/src {repo}/snapshots/src-1")
    run(f"setfattr -n user.repofs.strategy -v performance {repo}")


def resume(mnt: Path, data: Path, size: int, kills: int) -> list[dict]:
    """kill -9 during an optimize of a `size` MiB image (a qcow2 chain), remount,
    let it finish: how much of the copy was done twice, as a share of the
    image's data. The work redone is what the target volume held at the kill
    beyond the last checkpoint: the 4 MiB pieces there already equal to the
    source's (random data, so none by chance)."""
    repo = mnt / "default"
    source = data / "resume-source.raw"
    _optimize_source(repo, source, size)
    results = []
    for i in range(kills):
        run(f"ln {repo}/snapshots/src-1 {repo}/disks/copy{i}")
        # A random moment: after the first progress report, before the end
        # (judged by the task's rate).
        task_view = repo / f"tasks/optimize-copy{i}"
        deadline = time.monotonic() + 120
        while (view := json.loads(task_view.read_text()))["rate"] == 0:
            assert time.monotonic() < deadline, "the optimize made no progress"
            time.sleep(0.02)
        remaining_s = (view["bytes_total"] - view["bytes_done"]) / view["rate"]
        # The rate so far includes the task's start: the rest goes faster than it
        # says (0.6 of the estimate once let the optimize end first).
        time.sleep(random.uniform(0, 0.3 * remaining_s))
        os.kill(int(os.getxattr(mnt, "user.repofs.pid")), signal.SIGKILL)
        task = json.loads((data / f"default/tasks/optimize-copy{i}.json").read_text())
        target = data / "default/volumes" / task["checkpoint"]["target"]
        redone = _equal_bytes_from(source, target, task["checkpoint"].get("copied", 0))
        time.sleep(0.5)
        run(f"{REPOFS} mount {mnt} --data-dir {data}")
        wait_optimized(repo, f"copy{i}")
        run(f"cmp {repo}/disks/copy{i} {repo}/snapshots/src-1")
        share = redone / (size << 20)
        print(f"kill at {task['percent_complete']}%: redone {redone >> 20} MiB = {share:.1%}")
        results.append({"percent_at_kill": task["percent_complete"],
                        "redone_bytes": redone, "redone_share": round(share, 4)})  # fmt: skip
    return results


def wait_optimized(repo: Path, image_id: str, timeout_s: float = 300) -> None:
    """Polls the image's status (a task resumed at mount may end before an events
    reader could open the file)."""
    deadline = time.monotonic() + timeout_s
    while json.loads((repo / "status" / image_id).read_text())["state"] != "optimized":
        assert time.monotonic() < deadline, f"{image_id} not optimized after {timeout_s}s"
        time.sleep(0.05)


def copy_into(mnt: Path, snapshot: str, target: str) -> float:
    """Seconds from `ln` to the copy's event saying it is optimized."""
    cold()
    started = time.monotonic()
    run(f"ln {mnt}/default/snapshots/{snapshot} {mnt}/{target}/snapshots/{snapshot}")
    run(f"timeout 600 grep -m1 '\"id\":\"{snapshot}\".*\"state\":\"optimized\"' "
        f"{mnt}/{target}/events")  # fmt: skip
    return time.monotonic() - started


def copies(mnt: Path, data: Path, size: int, changed: int, rounds: int = 3) -> dict:
    """A full copy of a `size` MiB snapshot of random data into another
    repository, against qemu-img convert of its volume in the same run (best of
    `rounds` each, alternating: this machine's disk is noisy); then an
    incremental copy after `changed` MiB were rewritten."""
    r1 = mnt / "default"
    run(f"dd if=/dev/urandom of={r1}/disks/cs bs=1M count={size} status=none")
    run(f"ln {r1}/disks/cs {r1}/snapshots/full")
    volume = json.loads((r1 / "status/full").read_text())["chain"][0]
    # qemu-img convert writes its target with cache=unsafe unless told: no flush,
    # the data may still be in the page cache when it returns. repofs's copy is
    # durable (it fsyncs before saying optimized), like convert -t writeback.
    peers = {"convert_unsafe": [], "convert_writeback": []}
    full = []
    for i in range(rounds):
        for peer, cache in (("convert_unsafe", "unsafe"), ("convert_writeback", "writeback")):
            cold()
            started = time.monotonic()
            run(f"qemu-img convert -t {cache} -f raw -O raw {volume} {data}/convert.raw")
            peers[peer].append(time.monotonic() - started)
            os.unlink(data / "convert.raw")
        run(f"mkdir {mnt}/copies{i}")
        full.append(copy_into(mnt, "full", f"copies{i}"))
    run(f"cmp {r1}/snapshots/full {mnt}/copies0/snapshots/full")
    run(f"dd if=/dev/urandom of={r1}/disks/cs bs=1M seek={size // 3} count={changed} "
        "conv=notrunc status=none")  # fmt: skip
    run(f"ln {r1}/disks/cs {r1}/snapshots/incr")
    incremental_s = copy_into(mnt, "incr", "copies0")
    run(f"cmp {r1}/snapshots/incr {mnt}/copies0/snapshots/incr")
    full_s = min(full)
    result = {"size_mib": size, "full_copy_s": [round(t, 2) for t in full]}
    for peer, times in peers.items():
        result[f"{peer}_s"] = [round(t, 2) for t in times]
        result[f"speed_to_{peer}"] = round(min(times) / full_s, 3)
    result.update(changed_mib=changed, incremental_copy_s=round(incremental_s, 2),
                  incremental_to_full=round(incremental_s / full_s, 3))  # fmt: skip
    print(f"copy of {size} MiB: repofs {full_s:.2f}s; its speed to qemu-img convert's: "
          f"{result['speed_to_convert_writeback']:.2f}x (-t writeback, durable), "
          f"{result['speed_to_convert_unsafe']:.2f}x (default -t unsafe, no flush); "
          f"incremental ({changed} MiB changed) {incremental_s:.2f}s "
          f"({incremental_s / full_s:.2f} of the full copy)")  # fmt: skip
    return result


GLUSTER_JOBS = ("seq-read-1M-qd4", "seq-write-1M-qd4", "rand-read-4k-qd16", "rand-write-4k-qd16")


def gluster(tmp: Path, size: int, takeovers: int) -> dict:
    """Two repofs hosts on one glusterfs-1.0 repository (a single-brick volume on
    loopback, as the tests make it): fio on a raw disk through host a against
    the same job on a file of the plain gluster mount; then kill -9 of the host
    running an optimize, and the time until the other host runs it."""
    sys.path.insert(0, str(ROOT / "tests"))
    from gluster import ClientMount, GlusterServer, unmount_left_behind

    server = GlusterServer(tmp / "gluster").start()
    hosts = {name: (tmp / f"g{name}/mnt", tmp / f"g{name}/data") for name in "ab"}
    try:
        volume = server.create_volume("bench")
        view = ClientMount(volume, tmp / "gluster-view")
        connect = f"g glusterfs-1.0 server=127.0.0.1 volume={volume}"
        for name, (mnt, data) in hosts.items():
            run(f"{REPOFS} mount {mnt} --data-dir {data} --host-id host-{name} "
                f"--connect '{connect}'")  # fmt: skip
        try:
            return {"data_path": _gluster_data_path(hosts["a"][0] / "g", view.path, size),
                    "queue_depths": _gluster_queue_depths(hosts["a"][0] / "g", view.path, size),
                    "takeover": _takeovers(hosts, size, takeovers)}  # fmt: skip
        finally:
            for mnt, data in hosts.values():
                run(f"{REPOFS} umount {mnt}")
                unmount_left_behind(data)
            view.unmount()
    finally:
        server.stop()


def _gluster_data_path(repo: Path, plain: Path, size: int) -> list[dict]:
    peer = plain / "peer.raw"
    run(f"dd if=/dev/urandom of={peer} bs=1M count={size} status=none")
    run(f"cp {peer} {repo}/disks/raw")
    results = []
    for name in GLUSTER_JOBS:
        # Each side from the bricks: repofs reads through the page cache of its
        # own gluster mount, which the `cp` above filled.
        cold()
        through = fio(repo / "disks/raw", JOBS[name], size)
        cold()
        direct = fio(peer, JOBS[name], size)
        # repofs serves O_DIRECT requests through that page cache: the buffered
        # file is a peer too.
        cold()
        cached = fio(peer, JOBS[name], size, direct=False)
        results.append({"job": name, "repofs_mib_s": round(through, 1),
                        "gluster_direct_mib_s": round(direct, 1),
                        "gluster_buffered_mib_s": round(cached, 1),
                        "ratio_to_direct": round(through / direct, 3),
                        "ratio_to_buffered": round(through / cached, 3)})  # fmt: skip
        print(f"gluster raw {name:18} repofs {through:7.1f}  gluster mount O_DIRECT "
              f"{direct:7.1f} ({through / direct:.2f}x)  buffered {cached:7.1f} "
              f"({through / cached:.2f}x) MiB/s")  # fmt: skip
    os.unlink(repo / "disks/raw")
    return results


def _gluster_queue_depths(repo: Path, plain: Path, size: int) -> list[dict]:
    """queue_depths of a raw disk of the glusterfs-1.0 repository, the peer being
    the same data in a file of the plain gluster mount."""
    peer = plain / "peer.raw"
    run(f"cp {peer} {repo}/disks/depths")  # raw is in the trash: its ID is taken
    try:
        return queue_depths("gluster-raw", repo / "disks/depths", size, peer)
    finally:
        os.unlink(repo / "disks/depths")


def _takeovers(hosts: dict, size: int, rounds: int) -> list[float]:
    """Seconds from kill -9 of the host running an optimize to the other host
    running it (the lease: 10 s from the dead host's last heartbeat)."""
    repo_a = hosts["a"][0] / "g"
    _optimize_source(repo_a, hosts["a"][1] / "takeover-source.raw", size)
    took = []
    for i in range(rounds):
        run(f"ln {repo_a}/snapshots/src-1 {repo_a}/disks/copy{i}")
        deadline = time.monotonic() + 120
        while not (view := _task_view(repo_a / f"tasks/optimize-copy{i}")).get("rate"):
            assert time.monotonic() < deadline, "the optimize made no progress"
            time.sleep(0.02)
        victim = view["host"].removeprefix("host-")
        rescuer = "b" if victim == "a" else "a"
        mnt, data = hosts[victim]
        os.kill(int(os.getxattr(mnt, "user.repofs.pid")), signal.SIGKILL)
        killed = time.monotonic()
        rescued = hosts[rescuer][0] / "g"
        while _task_view(rescued / f"tasks/optimize-copy{i}").get("host") != f"host-{rescuer}":
            assert time.monotonic() - killed < 60, "no takeover"
            time.sleep(0.05)
        took.append(round(time.monotonic() - killed, 2))
        print(f"takeover of optimize-copy{i} by host-{rescuer}: {took[-1]:.1f} s after the kill")
        wait_optimized(rescued, f"copy{i}")
        run(f"{REPOFS} mount {mnt} --data-dir {data} --host-id host-{victim} "
            f"--connect 'g glusterfs-1.0 server=127.0.0.1 volume=bench'")  # fmt: skip
    return took


def _task_view(path: Path) -> dict:
    """A task's view, or {} before it is queued (the check queues it after `ln`)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def main() -> None:
    global FIO_RUNTIME_S
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and short runs (CI: the script must not rot)",
    )
    parser.add_argument("--only", choices=SECTIONS)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.quick:
        FIO_RUNTIME_S = 1
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.node(),
        "cpus": os.cpu_count(), "quick": args.quick, "sizes": sizes,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="repofs-bench-", dir="/var/tmp") as tmp:
        mnt, data = Path(tmp) / "mnt", Path(tmp) / "data"
        run(f"{REPOFS} mount {mnt} --data-dir {data}")
        try:
            measures = {
                "data_path": lambda: data_path(mnt / "default", data, sizes["data_path_mib"]),
                "copy": lambda: copies(mnt, data, sizes["copy_mib"], sizes["copy_mib"] // 32),
                "latency": lambda: latency(mnt / "default", sizes["latency_rounds"]),
                "scale": lambda: scale(mnt, sizes["scale_images"]),
                "headers": lambda: headers(mnt, sizes["headers"]),
                "resume": lambda: resume(mnt, data, sizes["resume_mib"], sizes["kills"]),
                "gluster": lambda: gluster(Path(tmp), sizes["gluster_mib"], sizes["kills"]),
                "reflink": lambda: bench_reflink.reflink_section(Path(tmp), sizes["reflink"]),
                "native": lambda: bench_native.native_section(Path(tmp), sizes["native"]),
                "long_step": lambda: bench_long_step.long_step_section(
                    mnt / "default", sizes["long_step_gib"]
                ),
                "live_jobs": lambda: bench_live_jobs.live_jobs_section(
                    mnt / "default", data, sizes["live_jobs_mib"]
                ),
            }
            if args.only and args.results.exists():  # one section again: keep the others
                report = {**json.loads(args.results.read_text()), **report}
            for name in SECTIONS:
                if args.only in (None, name):
                    report[name] = measures[name]()
                    # After each section: a long run stopped later keeps what it measured.
                    args.results.parent.mkdir(parents=True, exist_ok=True)
                    args.results.write_text(json.dumps(report, indent=1) + "\n")
                    print(f"{name}: written to {args.results}")
        finally:
            run(f"{REPOFS} umount {mnt}")


# scale last: the longest
SECTIONS = ("data_path", "native", "copy", "latency", "long_step", "live_jobs", "resume",
            "gluster", "reflink", "headers", "scale")  # fmt: skip
# 100,000 images wait for the scale work: `ls -l` of 10,000 takes 7-10 s, and
# the list of live records that it rereads each second grows with them
# (docs/performance.md).
FULL = {"data_path_mib": 2048, "copy_mib": 2048, "latency_rounds": 100,
        "scale_images": [10_000, 100_000], "resume_mib": 1024, "kills": 5,
        "gluster_mib": 1024, "headers": 10_000, "reflink": bench_reflink.FULL,
        "native": bench_native.FULL, "long_step_gib": 4, "live_jobs_mib": 1024}  # fmt: skip
QUICK = {"data_path_mib": 64, "copy_mib": 64, "latency_rounds": 5,
         "scale_images": [100], "resume_mib": 256, "kills": 1, "gluster_mib": 64,
         "headers": 100, "reflink": bench_reflink.QUICK,
         "native": bench_native.QUICK, "long_step_gib": 1, "live_jobs_mib": 64}  # fmt: skip


if __name__ == "__main__":
    main()
