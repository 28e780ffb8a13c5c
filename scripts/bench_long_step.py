"""`make bench`'s long_step section (issue 19): while an optimize's qemu-img commit
of a large overlay runs in a repository, how long opening another disk and
reading its first block, creating a disk, snapshotting a closed disk and
removing one take there (target: under 100 ms p99). tests/test_guards.py checks
that none of them waits for the commit; this measures how fast they are meanwhile."""

import json
import os
import time
from pathlib import Path

from bench_native import run

MiB = 1 << 20
CHUNK = 16 * MiB
ROUNDS = 20
START_TIMEOUT_S = 120
END_TIMEOUT_S = 600


def long_step_section(repo: Path, gib: int) -> dict:
    """vm over snapshot gold under strategy performance, `gib` GiB written into
    its overlay; its optimize started; the rounds timed while the task's step is
    the commit. The repository's options are put back after."""
    size = gib << 30
    run(f"truncate -s {size} {repo}/disks/ls-g && ln {repo}/disks/ls-g {repo}/snapshots/ls-gold")
    run(f"setfattr -n user.repofs.strategy -v performance {repo}")
    run(f"setfattr -n user.repofs.autofix -v false {repo}")
    try:
        run(f"ln {repo}/snapshots/ls-gold {repo}/disks/ls-vm")
        data = os.urandom(CHUNK)
        fd = os.open(repo / "disks/ls-vm", os.O_WRONLY)
        try:
            for offset in range(0, size, CHUNK):
                os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        run(f"truncate -s 1M {repo}/disks/ls-other")
        for i in range(ROUNDS):
            run(f"truncate -s 1M {repo}/disks/ls-closed-{i} {repo}/disks/ls-doomed-{i}")
        task = repo / "tasks/optimize-ls-vm"
        os.rename(repo / "fixes/optimize-ls-vm", task)
        wait_until(lambda: _step(task) == "commit", START_TIMEOUT_S, "the optimize's commit")
        started = time.monotonic()
        times = _rounds(repo)
        rounds_s = time.monotonic() - started
        still_committing = _step(task) == "commit"
        wait_until(lambda: _step(task) is None, END_TIMEOUT_S, "the optimize's end")
        commit_s = time.monotonic() - started
    finally:
        run(f"setfattr -x user.repofs.strategy {repo}; setfattr -x user.repofs.autofix {repo}")
    result = {"commit_gib": gib, "commit_s": round(commit_s, 1), "rounds_s": round(rounds_s, 1),
              "rounds_within_commit": still_committing, "rounds": ROUNDS}  # fmt: skip
    for kind, values in times.items():
        values.sort()
        p50, p99 = values[len(values) // 2] * 1000, values[-1] * 1000  # p99 of 20: the max
        result[kind] = {"p50_ms": round(p50, 1), "p99_ms": round(p99, 1)}
        print(f"long step: {kind:9} p50 {p50:6.1f} ms, p99 {p99:6.1f} ms, while a "
              f"{gib} GiB commit ran ({commit_s:.1f} s)")  # fmt: skip
    return result


def _rounds(repo: Path) -> dict[str, list[float]]:
    """The four operations in turn, as a user at the shell makes them."""
    times: dict[str, list[float]] = {"open+read": [], "create": [], "snapshot": [],
                                     "remove": []}  # fmt: skip
    for i in range(ROUNDS):
        for kind in times:
            started = time.perf_counter()
            if kind == "open+read":
                with open(repo / "disks/ls-other", "rb") as disk:
                    disk.read(4096)
            elif kind == "create":
                with open(repo / f"disks/ls-new-{i}", "wb") as disk:
                    disk.truncate(MiB)
            elif kind == "snapshot":
                os.link(repo / f"disks/ls-closed-{i}", repo / f"snapshots/ls-snap-{i}")
            else:
                os.unlink(repo / f"disks/ls-doomed-{i}")
            times[kind].append(time.perf_counter() - started)
        time.sleep(0.02)
    return times


def _step(task: Path) -> str | None:
    try:
        return json.loads(task.read_text())["step"]
    except FileNotFoundError:
        return None


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come within {timeout_s}s")
        time.sleep(0.005)
