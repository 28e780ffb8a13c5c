"""Issue 20, its whole story in one run: a writer keeps writing a known pattern
into an open qcow2-chained disk while five snapshots are taken, three removed
and merged live, the disk flattened live, and ten backups made into a second
repository; with a kill -9 of repofs in the middle of the longest live merge,
or of the live flatten's mirror. Afterwards the disk holds exactly the writer's
bytes, its chain is at most three layers, every kept snapshot and backup reads
back its point in time, the check offers only cleans, and after them storage
holds only what records name (checked's assert_consistent at unmount)."""

import contextlib
import hashlib
import json
import os
import random
import threading
import time
from collections import deque

import pytest
from conftest import MiB, active_tasks, pattern, run_every_fix, sh, status, wait_for

pytestmark = pytest.mark.mount

SIZE = 256 * MiB
BLOCK = 64 * 1024
BULK = 96 * MiB  # layers this big make the longest merge and the mirror last seconds
THROTTLE = 40 * MiB  # bytes/s of the disk under the merge and the flatten
TIMEOUT_S = 120


class Writer(threading.Thread):
    """Writes 64 KiB blocks at spread offsets of the open disk, each followed by
    an fsync, and bulks when asked; `expected` holds the disk's bytes. Ends when
    told, or at its first error (the mount died): the block then in flight may
    have landed or not (`after_a_crash`)."""

    def __init__(self, path, expected: bytearray, first: int = 0):
        super().__init__(daemon=True)
        self.fd = os.open(path, os.O_RDWR)
        self.expected = expected
        self.n = first
        self.gate = threading.Lock()  # held by the writer around each write
        self.bulks: deque = deque()
        self.in_flight: tuple[int, bytes] | None = None
        self.error: OSError | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                with self.gate:
                    self._write_one()
        except OSError as exc:
            self.error = exc
        finally:
            with contextlib.suppress(OSError):  # the mount may be dead
                os.close(self.fd)

    def _write_one(self) -> None:
        if self.bulks:  # (next offset, end, finished)
            offset, end, _ = self.bulks[0]
            data = pattern(b"bulk %d " % offset, min(MiB, end - offset))
        else:
            offset = (self.n * 7919 * BLOCK) % SIZE
            data = pattern(b"write %d " % self.n, BLOCK)
        self.in_flight = (offset, data)
        os.pwrite(self.fd, data, offset)
        os.fsync(self.fd)
        self.expected[offset : offset + len(data)] = data
        self.in_flight = None
        self.n += 1
        if self.bulks:
            _, end, finished = self.bulks.popleft()
            if offset + len(data) < end:
                self.bulks.appendleft((offset + len(data), end, finished))
            else:
                finished.set()

    def bulk(self, offset: int, length: int) -> None:
        """Writes `length` bytes from `offset` (MiB-aligned) in MiB writes; returns
        once they are done."""
        finished = threading.Event()
        self.bulks.append((offset, offset + length, finished))
        assert finished.wait(TIMEOUT_S), "the bulk did not end"

    @contextlib.contextmanager
    def held(self):
        """A point in time: nothing in flight inside; yields a digest of it."""
        with self.gate:
            assert self.error is None, self.error
            yield hashlib.sha256(self.expected).digest()

    def stop(self) -> None:
        self.done.set()
        self.join(30)
        assert not self.is_alive()
        assert self.error is None, self.error

    def after_a_crash(self, disk: bytes) -> None:
        """Once the mount died under it: the block in flight reads as before or
        as written, and `expected` says which."""
        self.join(30)
        assert self.error is not None, "the writer saw no crash"
        if self.in_flight is not None:
            offset, data = self.in_flight
            landed = disk[offset : offset + len(data)]
            assert landed in (data, bytes(self.expected[offset : offset + len(data)]))
            self.expected[offset : offset + len(data)] = landed


def digest(path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def under_way(task, step: str):
    try:
        view = json.loads(task.read_text())
    except FileNotFoundError:
        return None
    return view if view["step"] == step and view["percent_complete"] > 0 else None


def killed_in(m, task, step: str, started: str | None = None) -> None:
    """kill -9 of the mount at a random moment of `task`'s `step`, judged by the
    disk's throttle (once the log says `started`: the step's progress may be
    the previous step's until its first report)."""
    view = wait_for(lambda: under_way(task, step), 60, f"{task.name} in its {step}")
    if started is not None:
        wait_for(lambda: started in m.log_text(), 30, started)
    time.sleep(random.uniform(0, 0.3 * (view["bytes_total"] - view["bytes_done"]) / THROTTLE))
    m.kill()
    stored = json.loads((m.data / "default/tasks" / f"{task.name}.json").read_text())
    assert stored["state"] == "running" and stored["step"] == step, stored


@pytest.mark.parametrize("kill", [None, "merge", "flatten"])
def test_the_whole_life_of_a_running_disk(mount_on_disk, disk, kill):
    m = mount_on_disk
    r1, r2 = m.default, m.path / "r2"
    vm = r1 / "disks/vm"
    sh(f"mkdir {r2}")
    sh(f"truncate -s {SIZE} {vm}")
    sh(f"head -c {128 * MiB} /dev/urandom | dd of={vm} bs=4M conv=notrunc status=none")
    sh(f"ln {vm} {r1}/snapshots/s0")  # from here vm is a qcow2 layer over s0
    writer = Writer(vm, bytearray(vm.read_bytes()))
    writer.start()

    def restarted() -> None:
        nonlocal writer
        m.start()
        writer.after_a_crash(vm.read_bytes())
        writer = Writer(vm, writer.expected, writer.n)
        writer.start()

    # Five snapshots, with two bulks between them: s2's and s3's layers are big.
    points = {}
    for i in range(1, 6):
        if i in (2, 3):
            writer.bulk((i - 2) * BULK, BULK)
        time.sleep(0.2)
        with writer.held() as point:
            sh(f"ln {vm} {r1}/snapshots/s{i}")
        points[f"s{i}"] = point
    # Three removed: each has two live readers (s5 and vm), so their merges
    # are offered, not queued; newest first, each goes down into the older layer.
    for i in (2, 3, 4):
        sh(f"rm {r1}/snapshots/s{i}")
    for i in (4, 3, 2):
        task = r1 / f"tasks/merge-s{i}"
        # s2's: 96 MiB moved up, at THROTTLE from storage, not the page cache
        with disk.throttled(THROTTLE, reads=True) if i == 2 else contextlib.nullcontext():
            sh(f"mv {r1}/fixes/merge-s{i} {task}")
            if i == 2 and kill == "merge":
                killed_in(m, task, "commit")
                restarted()
            wait_for(lambda: not active_tasks(r1), TIMEOUT_S, f"the merge of s{i}")
    assert "live, in the open chain of vm" in m.log_text()
    assert len(status(r1, "vm")["chain"]) == 4  # vm, s5, s1, s0

    # A flatten, its mirror of 96 MiB in vm's own top at THROTTLE.
    writer.bulk(2 * BULK, BULK // 2)
    sh(f"setfattr -n user.repofs.max_chain -v 2 {r1}")
    task = r1 / "tasks/optimize-vm"
    with disk.throttled(THROTTLE, reads=True):
        sh(f"mv {r1}/fixes/optimize-vm {task}")
        if kill == "flatten":
            killed_in(m, task, "commit", "blockdev-mirror from the top")
            restarted()
        wait_for(lambda: not active_tasks(r1), TIMEOUT_S, "the flatten")
    assert "optimize: flattening vm live" in m.log_text()
    assert len(status(r1, "vm")["chain"]) == 1
    sh(f"setfattr -n user.repofs.max_chain -v 8 {r1}")

    # Ten backups into r2, each after the first incremental.
    for n in range(10):
        time.sleep(0.2)
        with writer.held() as point:
            sh(f"ln {vm} {r2}/snapshots/b{n}")
        points[f"b{n}"] = point
        wait_for(lambda: not active_tasks(r2), TIMEOUT_S, f"backup b{n} whole in r2")
        wait_for(lambda: not active_tasks(r1), TIMEOUT_S, "the merge of the older point")
        assert len(status(r1, "vm")["chain"]) <= 3

    writer.stop()
    assert vm.read_bytes() == writer.expected
    assert len(status(r1, "vm")["chain"]) <= 3
    for name in ("s1", "s5"):
        assert digest(r1 / "snapshots" / name) == points[name], name
    for n in range(10):
        assert digest(r2 / f"snapshots/b{n}") == points[f"b{n}"], n
    log = m.log_text()
    for n in range(1, 10):
        assert f"copying b{n} from default to r2 over its ancestor b{n - 1} in r2" in log, n
    offered = {f for r in (r1, r2) for f in os.listdir(r / "fixes")}
    assert all(f.startswith("clean-") for f in offered), offered
    run_every_fix([r1, r2])
    assert os.listdir(r1 / "trash") == [] and os.listdir(r2 / "trash") == []
