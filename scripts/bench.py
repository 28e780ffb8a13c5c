#!/usr/bin/env python3
"""Measures repofs's data path against peers in the same run, with fio.

Each case runs the same fio job on an image through a fresh repofs mount and on
a peer (a plain file on the file system that holds the repository), and reports
the ratio. Results go to docs/bench-results.json; docs/performance.md sums them up.

    .venv/bin/python scripts/bench.py [--size-mib N]
"""

import argparse
import json
import platform
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


def run(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=512)
    args = parser.parse_args()
    size = args.size_mib
    repofs = f"{sys.executable} -m repofs"
    results = []
    with tempfile.TemporaryDirectory(prefix="repofs-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        mnt, data = work / "mnt", work / "data"
        run(f"cd {ROOT} && {repofs} mount {mnt} --data-dir {data}")
        try:
            repo = mnt / "default"
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
        finally:
            run(f"cd {ROOT} && {repofs} umount {mnt}")
    RESULTS.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "machine": platform.node(),
        "cpus": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
        "size_mib": size, "results": results,
    }, indent=1) + "\n")  # fmt: skip
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
