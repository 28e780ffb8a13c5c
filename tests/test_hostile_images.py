"""Hostile images: what a guest writes into its disk is data. repofs names the
format of every volume it hands to QEMU, so a guest cannot make it read a
header of its own making and open a host file through it."""

import errno
import os
import threading

import pytest
from conftest import active_tasks, sh, status, wait_for

pytestmark = pytest.mark.mount

MiB = 1 << 20
WATCH_S = 0.01


class ReaderWatch:
    """Watches a FIFO for a reader: whoever opens it for reading makes a
    non-blocking open for writing succeed (ENXIO while no one reads)."""

    def __init__(self, fifo):
        self.fifo = fifo
        self.opened = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_S):
            try:
                os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError as exc:
                assert exc.errno == errno.ENXIO
                continue
            self.opened = True

    def stop(self) -> bool:
        self._stop.set()
        self._thread.join()
        return self.opened


def test_a_raw_disk_holding_a_qcow2_header_stays_raw_everywhere(repo, mount, tmp_path):
    """A guest writes into its raw disk a qcow2 header whose backing file is a
    host file. Through a snapshot, a disk based on it, a copy into another
    repository, the flattening fixes, a removal and its clean, and a remount,
    every image reads back the guest's bytes, and the host file is never
    opened: it is a FIFO the test watches for a reader."""
    secret = tmp_path / "host-secret"
    os.mkfifo(secret)
    header = tmp_path / "header.qcow2"
    sh(f"qemu-img create -q -u -f qcow2 -b {secret} -F raw {header} 4M")
    guest_bytes = header.read_bytes()
    watch = ReaderWatch(secret)
    r2 = mount.path / "r2"
    try:
        sh(f"truncate -s 4M {repo}/disks/vm1")
        with open(repo / "disks/vm1", "r+b") as disk:
            disk.write(guest_bytes)
        sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
        sh(f"ln {repo}/snapshots/s1 {repo}/disks/vm2")
        os.mkdir(r2)
        sh(f"ln {repo}/snapshots/s1 {r2}/snapshots/s1")
        wait_for(lambda: status(r2, "s1")["state"] == "optimized", 60, "the copy")
        images = [
            repo / "disks/vm1",
            repo / "snapshots/s1",
            repo / "disks/vm2",
            r2 / "snapshots/s1",
        ]
        _assert_raw(images, guest_bytes)

        sh(f"setfattr -n user.repofs.max_chain -v 1 {repo}")  # vm1 and vm2 are too long
        for disk in ("vm1", "vm2"):
            sh(f"mv {repo}/fixes/optimize-{disk} {repo}/tasks/")
        for disk in ("vm1", "vm2"):
            wait_for(lambda d=disk: _flat(status(repo, d)), 60, f"{disk} flattened")
        sh(f"rm {repo}/snapshots/s1")
        cleans = wait_for(lambda: [f for f in os.listdir(repo / "fixes") if f.startswith("clean-")],
                          10, "cleans offered")  # fmt: skip
        for fix in cleans:  # s1's, and the overlays the flattening left
            sh(f"mv {repo}/fixes/{fix} {repo}/tasks/")
        wait_for(lambda: not active_tasks(repo) and not os.listdir(repo / "fixes"), 60, "cleans")
        images.remove(repo / "snapshots/s1")
        _assert_raw(images, guest_bytes)
        mount.remount()
        _assert_raw(images, guest_bytes)
    finally:
        opened = watch.stop()
    assert not opened, "a host file named in a guest's header was opened"
    os.rmdir(r2)


def _flat(view: dict) -> bool:
    return view["state"] == "optimized" and len(view["chain"]) == 1


def _assert_raw(images, guest_bytes: bytes) -> None:
    for image in images:
        with open(image, "rb") as f:
            assert f.read(len(guest_bytes)) == guest_bytes, f"{image} does not read raw"
