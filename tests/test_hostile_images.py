"""Hostile images: what a guest writes into its disk is data. repofs names the
format of every volume it hands to QEMU, so a guest cannot make it read a
header of its own making and open a host file through it."""

import ast
import errno
import json
import os
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, MiB, active_tasks, errno_of, sh, status, wait_for

from repofs.qemu.headers import RECENT_S

pytestmark = pytest.mark.mount

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
        wait_for(lambda: _cleaned(repo), 60, "the cleans", interval=0.5)
        mount.expected_fixes.add("clean-volumes")  # what a flattening still ending leaves
        images.remove(repo / "snapshots/s1")
        _assert_raw(images, guest_bytes)
        mount.remount()
        _assert_raw(images, guest_bytes)
    finally:
        opened = watch.stop()
    assert not opened, "a host file named in a guest's header was opened"
    os.rmdir(r2)


def _cleaned(repo: Path) -> bool:
    """Runs the cleans offered (s1's, the volumes the flattening left; the
    offer changes as they run) until none is left."""
    for fix in os.listdir(repo / "fixes"):
        if fix.startswith("clean-"):
            sh(f"mv {repo}/fixes/{fix} {repo}/tasks/", check=False)
    return not active_tasks(repo) and not os.listdir(repo / "fixes")


def _flat(view: dict) -> bool:
    return view["state"] == "optimized" and len(view["chain"]) == 1


def _assert_raw(images, guest_bytes: bytes) -> None:
    for image in images:
        with open(image, "rb") as f:
            assert f.read(len(guest_bytes)) == guest_bytes, f"{image} does not read raw"


@pytest.mark.parametrize("spelling", ["absolute", "relative", "another volume"])
def test_a_header_naming_a_backing_file_out_of_its_record_is_refused_and_reported(
    repo, mount, tmp_path, spelling
):
    """Storage tampered with: a disk's qcow2 top names as its backing a host file
    (an absolute path, or ../ out of the repository) or a volume its record does
    not list. The check, which had looked at that header before, looks again and
    offers a mend that asks a person, naming both files and the command that
    restores the header; the disk's status says broken with the same words;
    opening the disk is EIO with the reason, and the file is never opened;
    running the mend fails with the question. Once the header is restored,
    nothing is offered and the disk reads its own bytes."""
    secret = tmp_path / "host-secret"
    os.mkfifo(secret)
    sh(f"truncate -s 1M {repo}/disks/vm1 {repo}/disks/other")
    sh(f"printf mine | dd of={repo}/disks/vm1 conv=notrunc status=none")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    sh(f"ln {repo}/disks/other {repo}/snapshots/s2")
    sh(f"printf MINE | dd of={repo}/disks/vm1 bs=1 seek=4096 conv=notrunc status=none")
    top, base = (Path(p) for p in status(repo, "vm1")["chain"])
    if spelling == "another volume":
        named = Path(status(repo, "s2")["chain"][0]).name
    else:
        named = secret if spelling == "absolute" else os.path.relpath(secret, top.parent)
    # A look at a header is reused only once the file has been still for a while.
    time.sleep(RECENT_S)
    assert os.listdir(repo / "fixes") == []
    watch = ReaderWatch(secret)
    try:
        sh(f"qemu-img rebase -q -u -f qcow2 -b {named} -F raw {top}")
        assert os.listdir(repo / "fixes") == ["mend-vm1"]
        question = json.loads((repo / "fixes/mend-vm1").read_text())["description"]
        restore = f"qemu-img rebase -u -f qcow2 -b {base.name} -F raw {top}"
        for words in ("vm1 needs a decision", top.name, Path(named).name, str(base), restore):
            assert words in question, f"{words!r} not in {question!r}"
        view = status(repo, "vm1")
        assert view["state"] == "broken" and restore in view["last_error"], view
        assert os.getxattr(repo / "disks/vm1", "user.repofs.status") == b"broken"
        assert errno_of((repo / "disks/vm1").read_bytes) == errno.EIO
        mount.expect_log(f"names backing file '[^']*{Path(named).name}' .* refused, never opened")
        sh(f"mv {repo}/fixes/mend-vm1 {repo}/tasks/")
        task = repo / "tasks/mend-vm1"
        wait_for(lambda: json.loads(task.read_text())["state"] == "failed", 30, "the mend to fail")
        assert restore in json.loads(task.read_text())["last_error"]
        os.unlink(task)
        mount.expect_log("task=mend-vm1 repo=default .*state=failed")
        sh(restore)  # what the person decided
        assert os.listdir(repo / "fixes") == []
        assert status(repo, "vm1")["state"] == "optimized"
        data = (repo / "disks/vm1").read_bytes()
    finally:
        opened = watch.stop()
    assert not opened, "a backing file out of the record was opened"
    assert data[:4] == b"mine" and data[4096:4100] == b"MINE" and len(data) == MiB


@pytest.mark.unit
def test_every_subprocess_gets_an_argv_list_never_a_shell():
    """No shell ever parses a name, a path or a parameter repofs passes on."""
    calls = 0
    for path in (REPO / "repofs").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            if node.func.attr not in ("run", "Popen", "run_process", "check_output", "call"):
                continue
            if getattr(node.func.value, "id", None) not in ("subprocess", "trio"):
                continue
            calls += 1
            where = f"{path.name}:{node.lineno}"
            assert not any(k.arg == "shell" for k in node.keywords), f"{where}: shell="
            first = node.args[0]
            assert not isinstance(first, ast.Constant | ast.JoinedStr), f"{where}: a string"
    assert calls >= 4  # fusermount, the background mount, qemu-img, the storage daemon


def test_headers_are_looked_at_once_connected_before_any_check(repo, mount):
    """A header damaged while repofs was not mounted: once the repository is
    connected, the first look at its headers runs by itself, so the image's
    status says broken before anyone lists fixes/ or opens it, and the check
    then offers the mend at once."""
    sh(f"truncate -s 1M {repo}/disks/vm1 {repo}/disks/other")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    sh(f"ln {repo}/disks/other {repo}/snapshots/s2")
    top = Path(status(repo, "vm1")["chain"][0])
    wrong = Path(status(repo, "s2")["chain"][0]).name
    mount.stop()
    sh(f"qemu-img rebase -q -u -f qcow2 -b {wrong} -F raw {top}")
    time.sleep(RECENT_S)
    mount.start()
    said = wait_for(lambda: (s := status(repo, "vm1"))["state"] == "broken" and s, 20,
                    "vm1's status to say broken")  # fmt: skip
    assert wrong in said["last_error"], said
    assert os.listdir(repo / "fixes") == ["mend-vm1"]
    sh(f"qemu-img rebase -q -u -f qcow2 -b {Path(status(repo, 's1')['chain'][0]).name} "
       f"-F raw {top}")  # fmt: skip
    assert os.listdir(repo / "fixes") == []
