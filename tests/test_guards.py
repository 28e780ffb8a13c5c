"""Issue 19: a long fix on one image holds only that image.

While a 4 GiB `qemu-img commit` runs in a repository, opening another disk of
that repository and reading its first block, creating a disk, snapshotting a
closed disk and removing one wait for no lock the commit holds: each takes
under a second (waiting for the commit took 13.9-16.2 s). The issue's target,
100 ms p99, is a speed target: scripts/bench.py's `long_step` section measures
it (docs/performance.md, "Long steps and the rest of the repository"): here the
tests' own load on a 2-core VM makes a snapshot slower than that now and then.

The commit is an optimize's: vm2 over snapshot gold under strategy performance
(degraded), its overlay filled with 4 GiB, then `mv fixes/optimize-vm2 tasks/`.
The copy of gold is mostly holes; the commit step writes vm2's 4 GiB into the
new raw volume, in the task's exclusive block. Until the per-image guards,
that block holds the repository's `changing` lock, which each of the four
operations takes: they wait for the commit, and this test fails.
"""

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from conftest import MiB, Mount, checked, pattern, sh, status, wait_for, write_at

pytestmark = pytest.mark.mount

GiB = 1 << 30
WRITTEN = 4 * GiB  # what the optimize commits: the size issue 19 names
CHUNK = 16 * MiB
GOLD_TAIL = 16 * MiB  # gold's own data, past what vm2 overwrites
ROUNDS = 20  # of each operation: the p99 of 20 is their max
# Far above an fsync behind the commit's writeback, far below the commit.
LIMIT_S = 1.0
FIRST_BLOCK = pattern(b"other's first block ", 4096)
ROUNDS_TIMEOUT_S = 120
COMMIT_TIMEOUT_S = 180
PAUSE_S = 0.02


@pytest.fixture
def mount(tmp_path):
    """A mount whose data goes at the end even when the test fails: 8 GiB of
    volumes are not worth keeping to look at (the log is kept)."""
    try:
        with checked(Mount(tmp_path)) as m:
            yield m
    finally:
        shutil.rmtree(tmp_path / "data", ignore_errors=True)


def chunk(index: int, noise: bytes) -> bytes:
    """Chunk `index` of vm2's data: non-zero, and distinct from every other one."""
    return index.to_bytes(8, "little") + noise[8:]


def write_vm2(path: Path, noise: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for index in range(WRITTEN // CHUNK):
            assert os.pwrite(fd, chunk(index, noise), index * CHUNK) == CHUNK
        os.fsync(fd)
    finally:
        os.close(fd)


def assert_vm2_reads(path: Path, noise: bytes, tail: bytes) -> None:
    with open(path, "rb") as f:
        for index in range(WRITTEN // CHUNK):
            if f.read(CHUNK) != chunk(index, noise):  # not assert: no diff of 16 MiB
                pytest.fail(f"vm2's chunk {index} (offset {index * CHUNK}) differs")
        if f.read() != tail:
            pytest.fail("vm2's tail (gold's data) differs")


def process_identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time) of a live process (not a zombie): a PID reused by another
    process is not the same one."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] in ("Z", "X") else (pid, fields[19])


def qemu_img_commit(m: Mount) -> tuple[int, str] | None:
    """The mount's `qemu-img commit` child, if one runs. Any thread of the mount
    may have started it (trio spawns from a worker thread): its children are
    found by their parent PID, not in /proc/PID/task/PID/children."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if ppid == m.proc.pid and argv[0].endswith(b"qemu-img") and b"commit" in argv:
            return process_identity(int(entry.name))
    return None


def optimize_step(repo: Path) -> str | None:
    """The step of vm2's optimize task; None once it ended."""
    try:
        return json.loads((repo / "tasks/optimize-vm2").read_text())["step"]
    except FileNotFoundError:
        return None


def open_and_read(repo: Path, i: int) -> None:
    fd = os.open(repo / "disks/other", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == FIRST_BLOCK
    finally:
        os.close(fd)


def create(repo: Path, i: int) -> None:
    """`truncate -s 1M disks/new-I`, as truncate(1) makes its calls."""
    fd = os.open(repo / f"disks/new-{i}", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, MiB)
    finally:
        os.close(fd)


def snapshot(repo: Path, i: int) -> None:
    os.link(repo / f"disks/closed-{i}", repo / f"snapshots/snap-{i}")


def remove(repo: Path, i: int) -> None:
    os.unlink(repo / f"disks/doomed-{i}")


OPERATIONS = {"open+read": open_and_read, "create": create, "snapshot": snapshot,
              "remove": remove}  # fmt: skip


def time_rounds(repo: Path, latencies: dict[str, list[float]],
                failures: list[BaseException]) -> None:  # fmt: skip
    """ROUNDS rounds of the four operations, one after the other as a user at the
    shell makes them, each timed as its command takes."""
    try:
        for i in range(ROUNDS):
            for kind, operation in OPERATIONS.items():
                started = time.perf_counter()
                operation(repo, i)
                latencies[kind].append(time.perf_counter() - started)
            time.sleep(PAUSE_S)
    except BaseException as exc:  # reported by the test's thread
        failures.append(exc)


def test_other_images_are_not_held_up_by_a_4_gib_commit(repo, mount):
    # gold: WRITTEN + GOLD_TAIL bytes, its own data at the end; created before the
    # strategy is performance, which would allocate all of it.
    tail = os.urandom(GOLD_TAIL)
    sh(f"truncate -s {WRITTEN + GOLD_TAIL} {repo}/disks/g")
    write_at(repo / "disks/g", WRITTEN, tail)
    sh(f"ln {repo}/disks/g {repo}/snapshots/gold")

    # vm2 over gold under strategy performance: degraded, its optimize offered
    # (and held back: autofix off). Its overlay takes 4 GiB of data.
    sh(f"setfattr -n user.repofs.strategy -v performance {repo}")
    sh(f"setfattr -n user.repofs.autofix -v false {repo}")
    sh(f"ln {repo}/snapshots/gold {repo}/disks/vm2")
    noise = os.urandom(CHUNK)
    started = time.monotonic()
    write_vm2(repo / "disks/vm2", noise)
    write_s = time.monotonic() - started
    assert status(repo, "vm2")["state"] == "degraded"

    # The other images: one to open and read; per round, a closed disk to snapshot
    # and one to remove.
    sh(f"truncate -s 1M {repo}/disks/other")
    write_at(repo / "disks/other", 0, FIRST_BLOCK)
    for i in range(ROUNDS):
        sh(f"truncate -s 1M {repo}/disks/closed-{i} {repo}/disks/doomed-{i}")

    # The optimize: its copy of gold is mostly holes (quick); its commit writes
    # vm2's 4 GiB into the new raw volume, in the repository's exclusive block.
    os.rename(repo / "fixes/optimize-vm2", repo / "tasks/optimize-vm2")
    commit = wait_for(lambda: optimize_step(repo) == "commit" and qemu_img_commit(mount),
                      60, "the optimize's qemu-img commit", interval=0.005)  # fmt: skip
    commit_started = time.monotonic()
    commit_ended: list[float] = []  # when the watcher saw it gone

    def watch_commit() -> None:
        deadline = commit_started + COMMIT_TIMEOUT_S
        while process_identity(commit[0]) == commit and time.monotonic() < deadline:
            time.sleep(0.005)
        commit_ended.append(time.monotonic())

    watcher = threading.Thread(target=watch_commit, daemon=True)
    watcher.start()

    # In a thread, so that a hung operation fails the test in bounded time (the
    # fixture's unmount then ends its call).
    latencies = {kind: [] for kind in OPERATIONS}
    failures: list[BaseException] = []
    measuring = threading.Thread(target=time_rounds, daemon=True,
                                 args=(repo, latencies, failures))  # fmt: skip
    measuring.start()
    measuring.join(ROUNDS_TIMEOUT_S)
    assert not measuring.is_alive(), f"the operations took over {ROUNDS_TIMEOUT_S}s: {latencies}"
    still_committing = process_identity(commit[0]) == commit
    rounds_ended = time.monotonic()
    if failures:
        raise failures[0]

    watcher.join(COMMIT_TIMEOUT_S)
    assert process_identity(commit[0]) != commit, f"the commit ran over {COMMIT_TIMEOUT_S}s"
    commit_s = commit_ended[0] - commit_started

    report = (
        f"vm2's 4 GiB written in {write_s:.1f}s; its commit ran {commit_s:.1f}s; the "
        f"{ROUNDS} rounds ended {rounds_ended - commit_started:.1f}s after its start, "
        f"{'while it still ran' if still_committing else 'after it ended'}"
        + "".join(
            f"\n{kind}: max {max(values) * 1000:.0f} ms; "
            + ", ".join(f"{v * 1000:.0f}" for v in values)
            for kind, values in latencies.items()
        )
    )
    print(report)  # the figures of a pass too (pytest -s; docs/performance.md)
    slow = [kind for kind, values in latencies.items() if max(values) >= LIMIT_S]
    assert not slow, f"{', '.join(slow)} took {LIMIT_S * 1000:.0f} ms or more:\n{report}"
    # Otherwise the latencies were not measured during the commit: the test
    # would prove nothing.
    assert still_committing, f"the commit ended before the rounds did:\n{report}"

    wait_for(lambda: status(repo, "vm2")["state"] == "optimized", COMMIT_TIMEOUT_S,
             "vm2 optimized")  # fmt: skip
    chain = status(repo, "vm2")["chain"]
    assert len(chain) == 1 and chain[0].endswith(".raw"), chain
    assert_vm2_reads(repo / "disks/vm2", noise, tail)
    assert (repo / "disks/other").read_bytes()[:4096] == FIRST_BLOCK
    assert sorted(os.listdir(repo / "snapshots")) == sorted(
        ["gold", *(f"snap-{i}" for i in range(ROUNDS))]
    )
    disks = set(os.listdir(repo / "disks"))
    assert {f"new-{i}" for i in range(ROUNDS)} <= disks
    assert not {f"doomed-{i}" for i in range(ROUNDS)} & disks
