#!/usr/bin/env python3
"""The `native` section of scripts/bench.py: kernel FUSE passthrough (docs/
performance.md, "Kernel passthrough") on XFS with reflink (a loop file), through
a repofs mount whose data dir is on it, against the same job on a plain file of
that XFS read directly (O_DIRECT), in the same run:

- a raw disk (the kernel reads and writes its volume): the data path's five fio
  jobs;
- a snapshot read by a VM-like reader (4 KiB random reads at QD16, O_DIRECT),
  from storage (caches dropped before each side);
- the same reader on a snapshot of a glusterfs-1.0 repository (a single-brick
  volume on loopback, as the tests make it) against the plain Gluster mount.

    .venv/bin/python scripts/bench.py --only native
    .venv/bin/python scripts/bench_native.py [--quick]
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPOFS = f"cd {ROOT} && {sys.executable} -m repofs"
FULL = {"mib": 2048, "fio_runtime_s": 10}
QUICK = {"mib": 64, "fio_runtime_s": 1}
# The fio jobs (every one O_DIRECT) of issue 18's targets; the data_path
# section of scripts/bench.py runs them too.
JOBS = {
    "seq-read-1M-qd4": {"rw": "read", "bs": "1M", "iodepth": "4"},
    "seq-write-1M-qd4": {"rw": "write", "bs": "1M", "iodepth": "4"},
    "rand-read-4k-qd1": {"rw": "randread", "bs": "4k", "iodepth": "1"},
    "rand-read-4k-qd16": {"rw": "randread", "bs": "4k", "iodepth": "16"},
    "rand-write-4k-qd16": {"rw": "randwrite", "bs": "4k", "iodepth": "16"},
}


def run(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout


def fio(path: Path, job: dict, size_mib: int, runtime_s: int) -> float:
    """MiB/s of one O_DIRECT fio job."""
    out = run(f"fio --name=bench --filename={path} --size={size_mib}M --rw={job['rw']} "
              f"--bs={job['bs']} --iodepth={job['iodepth']} --ioengine=libaio --direct=1 "
              f"--runtime={runtime_s} --output-format=json")  # fmt: skip
    result = json.loads(out)["jobs"][0]["read" if "read" in job["rw"] else "write"]
    return result["bw_bytes"] / (1 << 20)


def cold() -> None:
    """Both sides of a comparison start from storage, not from the page cache."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


@contextlib.contextmanager
def xfs_with_reflink(image: Path, path: Path, size_gib: int = 16):
    """An XFS with reflink (mkfs.xfs -m reflink=1) on a loop file, mounted at
    `path` for the block; unmounted, detached and removed after. The loop
    device reads and writes its file with O_DIRECT: through the host's page
    cache, 1 MiB O_DIRECT writes on the XFS measured memory (2.6-6.2 GB/s from
    one run to the next, in one minute)."""
    run(f"truncate -s {size_gib}G {image} && mkfs.xfs -q -m reflink=1 {image}")
    device = run(f"losetup --find --show --direct-io=on {image}").strip()
    try:
        path.mkdir()
        run(f"mount {device} {path}")
        try:
            yield path
        finally:
            run(f"umount {path}")
    finally:
        run(f"losetup --detach {device}")
        image.unlink()


@contextlib.contextmanager
def repofs_mount(mnt: Path, data: Path):
    run(f"{REPOFS} mount {mnt} --data-dir {data}")
    try:
        yield mnt
    finally:
        run(f"{REPOFS} umount {mnt}")


def data_path(repo: Path, image_id: str) -> str | None:
    return json.loads((repo / f"status/{image_id}").read_text())["data_path"]


def passthrough_against_direct(path: Path, peer: Path, job_names: list[str], sizes: dict,
                               storage: str = "xfs") -> list[dict]:  # fmt: skip
    """Each job on `path` (an image of the mount, open meanwhile to check that the
    kernel serves it) and on `peer`, a plain file of the same storage; in the
    order repofs, file, file, repofs, each side's mean: this VM's storage drifts
    by tens of percent within minutes, and the order cancels a steady drift."""
    repo, image_id = path.parent.parent, path.name

    def through_mount(name: str) -> float:
        with open(path, "rb"):
            assert data_path(repo, image_id) == "passthrough", f"{image_id} is not passed through"
            cold()
            return fio(path, JOBS[name], sizes["mib"], sizes["fio_runtime_s"])

    def on_peer(name: str) -> float:
        cold()
        return fio(peer, JOBS[name], sizes["mib"], sizes["fio_runtime_s"])

    results = []
    for name in job_names:
        samples = first, direct_1, direct_2, second = (
            through_mount(name), on_peer(name), on_peer(name), through_mount(name))  # fmt: skip
        through, direct = (first + second) / 2, (direct_1 + direct_2) / 2
        image = "raw disk" if path.parent.name == "disks" else "snapshot"
        results.append({"storage": storage, "image": image, "job": name,
                        "repofs_mib_s": round(through, 1), "file_direct_mib_s": round(direct, 1),
                        "ratio_to_direct": round(through / direct, 3),
                        "samples_mib_s": [round(x, 1) for x in samples]})  # fmt: skip
        print(f"passthrough {storage:7} {image:8} {name:18} repofs {through:8.1f}  file O_DIRECT "
              f"{direct:8.1f} ({through / direct:.2f}x) MiB/s; in turn "
              f"{first:.0f} {direct_1:.0f} {direct_2:.0f} {second:.0f}")  # fmt: skip
    return results


def native_section(tmp: Path, sizes: dict) -> list[dict]:
    return on_xfs(tmp, sizes) + on_gluster(tmp, sizes)


def on_xfs(tmp: Path, sizes: dict) -> list[dict]:
    with (
        xfs_with_reflink(tmp / "native.img", tmp / "native-xfs") as xfs,
        repofs_mount(tmp / "native-mnt", xfs / "data") as mnt,
    ):
        assert os.getxattr(mnt, "user.repofs.passthrough") == b"on"
        repo, peer = mnt / "default", xfs / "peer.raw"
        run(f"dd if=/dev/urandom of={peer} bs=1M count={sizes['mib']} status=none")
        run(f"cp {peer} {repo}/disks/raw")
        results = passthrough_against_direct(repo / "disks/raw", peer, list(JOBS), sizes)
        # The disk's bytes now differ from the peer's: the reads compare access, not data.
        run(f"ln {repo}/disks/raw {repo}/snapshots/snap")
        return results + passthrough_against_direct(
            repo / "snapshots/snap", peer, ["rand-read-4k-qd16"], sizes
        )


def on_gluster(tmp: Path, sizes: dict) -> list[dict]:
    sys.path.insert(0, str(ROOT / "tests"))
    from gluster import ClientMount, GlusterServer, unmount_left_behind

    server = GlusterServer(tmp / "native-gluster").start()
    try:
        volume = server.create_volume("native")
        view = ClientMount(volume, tmp / "native-gluster-view")
        mnt, data = tmp / "native-gluster-mnt", tmp / "native-gluster-data"
        try:
            run(f"{REPOFS} mount {mnt} --data-dir {data} "
                f"--connect 'g glusterfs-1.0 server=127.0.0.1 volume={volume}'")  # fmt: skip
            try:
                repo, peer = mnt / "g", view.path / "peer.raw"
                run(f"dd if=/dev/urandom of={peer} bs=1M count={sizes['mib']} status=none")
                run(f"cp {peer} {repo}/disks/raw && ln {repo}/disks/raw {repo}/snapshots/snap")
                return passthrough_against_direct(
                    repo / "snapshots/snap", peer, ["rand-read-4k-qd16"], sizes, "gluster"
                )
            finally:
                run(f"{REPOFS} umount {mnt}")
                unmount_left_behind(data)
        finally:
            view.unmount()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="repofs-bench-", dir="/var/tmp") as tmp:
        print(json.dumps(native_section(Path(tmp), QUICK if args.quick else FULL), indent=1))


if __name__ == "__main__":
    main()
