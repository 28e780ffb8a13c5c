#!/usr/bin/env python3
"""Measures repofs against peers in the same run.

Data path: the same fio job on an image through a fresh repofs mount and on a
peer (a plain file on the file system that holds the repository). Copies: a
copy of a snapshot between repositories against `qemu-img convert -O raw` of
the same volume, and an incremental copy against the full one. Also: work
redone after kill -9, and the check of many images. Results go to
docs/bench-results.json; docs/performance.md sums them up.

    .venv/bin/python scripts/bench.py [--size-mib N]
"""

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs/bench-results.json"

JOBS = {
    "seq-read-1M": {"rw": "read", "bs": "1M", "iodepth": "1"},
    "seq-write-1M": {"rw": "write", "bs": "1M", "iodepth": "1"},
    "rand-read-4k-qd1": {"rw": "randread", "bs": "4k", "iodepth": "1"},
    "rand-read-4k-qd16": {"rw": "randread", "bs": "4k", "iodepth": "16"},
}


def fio(path: Path, job: dict, size_mib: int, direct: bool = True) -> float:
    """Bandwidth in MiB/s of one fio job; O_DIRECT (QEMU's cache=none) by default."""
    cmd = [
        "fio", "--name=bench", f"--filename={path}", f"--size={size_mib}M",
        f"--rw={job['rw']}", f"--bs={job['bs']}", f"--iodepth={job['iodepth']}",
        "--ioengine=libaio", f"--direct={int(direct)}", "--runtime=10", "--time_based=0",
        "--output-format=json",
    ]  # fmt: skip
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    result = out["jobs"][0]["read" if "read" in job["rw"] else "write"]
    return result["bw_bytes"] / (1 << 20)


def run(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout


REPOFS = f"cd {ROOT} && {sys.executable} -m repofs"


def data_path(repo: Path, data: Path, size: int) -> list[dict]:
    """fio through the mount against the same file directly and buffered."""
    results = []
    peer = data / "peer.raw"
    run(f"dd if=/dev/urandom of={peer} bs=1M count={size} status=none")
    run(f"cp {peer} {repo}/disks/gold")
    run(f"ln {repo}/disks/gold {repo}/snapshots/base")
    run(f"ln {repo}/snapshots/base {repo}/disks/qcow2")  # overlay over base
    run(f"cp {peer} {repo}/disks/raw")
    for image in ("raw", "qcow2"):
        for name, job in JOBS.items():
            through = fio(repo / "disks" / image, job, size)
            direct = fio(peer, job, size)
            # repofs serves O_DIRECT requests through the host page cache
            # (drivers/volume_io.py), so the buffered file is a peer too.
            cached = fio(peer, job, size, direct=False)
            results.append({
                "image": image, "job": name, "repofs_mib_s": round(through, 1),
                "file_direct_mib_s": round(direct, 1),
                "file_buffered_mib_s": round(cached, 1),
                "ratio_to_direct": round(through / direct, 3),
                "ratio_to_buffered": round(through / cached, 3),
            })  # fmt: skip
            print(f"{image:6} {name:18} repofs {through:7.1f}  file O_DIRECT "
                  f"{direct:7.1f} ({through / direct:.2f}x)  file buffered "
                  f"{cached:7.1f} ({through / cached:.2f}x) MiB/s")  # fmt: skip
    return results


def check(mnt: Path, images: int) -> dict:
    """How long `ls fixes/` (checkStorageRepository) takes with `images` images."""
    repo = mnt / "many"
    repo.mkdir()
    for i in range(images):
        (repo / "disks" / f"d{i}").touch()  # createVirtualDisk, 0 bytes
    assert len(os.listdir(repo / "disks")) == images
    timings = []
    for _ in range(3):
        started = time.monotonic()
        os.listdir(repo / "fixes")
        timings.append(time.monotonic() - started)
    print(f"check of {images} images: {min(timings):.2f}s (best of 3)")
    return {"images": images, "check_s": round(min(timings), 3)}


def _equal_bytes_from(a: Path, b: Path, offset: int, piece: int = 4 << 20) -> int:
    """How many bytes of the pieces from `offset` on are equal in files a and b."""
    equal = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(offset)
        fb.seek(offset)
        while data := fa.read(piece):
            equal += len(data) if fb.read(piece) == data else 0
    return equal


def resume(mnt: Path, data: Path, size: int, kills: int) -> list[dict]:
    """kill -9 during an optimize of a `size` MiB image (a qcow2 chain), remount,
    let it finish: how much of the copy was done twice, as a share of the
    image's data. The work redone is what the target volume held at the kill
    beyond the last checkpoint: the 4 MiB pieces there already equal to the
    source's (random data, so none by chance)."""
    repo = mnt / "default"
    run(f"truncate -s {size}M {repo}/disks/src")
    # The data in a qcow2 layer: the copy reads through the storage daemon, slow
    # enough (seconds) to be killed at a random moment.
    run(f"ln {repo}/disks/src {repo}/snapshots/src-0")
    source = data / "resume-source.raw"
    run(f"dd if=/dev/urandom of={source} bs=1M count={size} status=none")
    run(f"dd if={source} of={repo}/disks/src bs=1M conv=notrunc status=none")
    run(f"ln {repo}/disks/src {repo}/snapshots/src-1")
    run(f"setfattr -n user.repofs.strategy -v performance {repo}")
    results = []
    for i in range(kills):
        run(f"ln {repo}/snapshots/src-1 {repo}/disks/copy{i}")
        # A random moment: past a random percent, then anywhere between reports.
        percent = random.randint(5, 50)
        task_view = repo / f"tasks/optimize-copy{i}"
        deadline = time.monotonic() + 120
        while json.loads(task_view.read_text())["percent_complete"] < percent:
            assert time.monotonic() < deadline, f"the optimize never reached {percent}%"
            time.sleep(0.02)
        time.sleep(random.uniform(0, 0.5))
        os.kill(int(os.getxattr(mnt, "user.repofs.pid")), signal.SIGKILL)
        task = json.loads((data / f"default/tasks/optimize-copy{i}.json").read_text())
        target = data / "default/volumes" / task["checkpoint"]["target"]
        redone = _equal_bytes_from(source, target, task["checkpoint"]["copied"])
        time.sleep(0.5)
        run(f"{REPOFS} mount {mnt} --data-dir {data}")
        run(f"timeout 120 grep -m1 '\"id\":\"copy{i}\".*\"state\":\"optimized\"' "
            f"{repo}/events")  # fmt: skip
        run(f"cmp {repo}/disks/copy{i} {repo}/snapshots/src-1")
        share = redone / (size << 20)
        print(f"kill at {task['percent_complete']}%: redone {redone >> 20} MiB = {share:.1%}")
        results.append({"percent_at_kill": task["percent_complete"],
                        "redone_bytes": redone, "redone_share": round(share, 4)})  # fmt: skip
    return results


def cold() -> None:
    """Both sides of a comparison start from storage, not from the page cache."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--check-images", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--copy-mib", type=int, default=2048)
    parser.add_argument("--only", choices=("data_path", "copy", "resume", "check"))
    args = parser.parse_args()
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.node(),
        "cpus": os.cpu_count(), "size_mib": args.size_mib,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="repofs-bench-", dir="/var/tmp") as tmp:
        mnt, data = Path(tmp) / "mnt", Path(tmp) / "data"
        run(f"{REPOFS} mount {mnt} --data-dir {data}")
        try:
            sections = {
                "data_path": lambda: data_path(mnt / "default", data, args.size_mib),
                "copy": lambda: copies(mnt, data, args.copy_mib, args.copy_mib // 32),
                "resume": lambda: resume(mnt, data, 1024, args.kills),
                "check": lambda: check(mnt, args.check_images),
            }
            for name, measure in sections.items():
                if args.only in (None, name):
                    report[name] = measure()
        finally:
            run(f"{REPOFS} umount {mnt}")
    if args.only and RESULTS.exists():  # one section again: keep the others
        report = {**json.loads(RESULTS.read_text()), **report}
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
