"""`repofs watch`: without a terminal, one plain line per task change, driven by
`events`; it ends when no task is queued or running (exit 1 if one failed)."""

import select
import subprocess
import sys
import time

import pytest
from conftest import REPO, MiB, sh

pytestmark = pytest.mark.mount


def repofs_watch(path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "repofs", "watch", str(path)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip


def read_until(proc: subprocess.Popen, text: str, timeout: float) -> list[str]:
    """The lines `proc` printed up to one containing `text`."""
    lines, deadline = [], time.monotonic() + timeout
    while not lines or text not in lines[-1]:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([proc.stdout], [], [], left)[0], (
            f"no line with {text!r} within {timeout}s: {lines}"
        )
        line = proc.stdout.readline()
        assert line, f"watch ended before printing {text!r}: {lines}"
        lines.append(line.rstrip("\n"))
    return lines


def test_watch_follows_tasks_of_every_repository_until_they_end(mount_on_disk, disk):
    mount = mount_on_disk
    r1, r2, r3 = mount.default, mount.path / "r2", mount.path / "r3"
    sh(f"mkdir {r2}")
    sh(f"setfattr -n user.repofs.autofix -v false {r2}")  # fixes wait to be queued
    sh(f"truncate -s 1G {r1}/disks/g")
    sh(f"dd if=/dev/urandom of={r1}/disks/g bs=1M count=256 conv=notrunc status=none")
    sh(f"ln {r1}/disks/g {r1}/snapshots/gold")
    sh(f"ln {r1}/snapshots/gold {r2}/disks/vm")  # degraded until gold's data is in r2
    sh(f"mkdir {r3} && setfattr -n user.repofs.autofix -v false {r3}")
    quiet = subprocess.run([sys.executable, "-m", "repofs", "watch", str(mount.path)], cwd=REPO,
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    assert (quiet.returncode, quiet.stdout) == (0, "no task is queued or running\n")

    with disk.throttled(50 * MiB, reads=True):  # the optimize copies 256 MiB: seconds
        sh(f"mv {r2}/fixes/optimize-vm {r2}/tasks/")
        proc = repofs_watch(mount.path)
        seen = watch_both(proc, r1, r3)
    out, _ = proc.communicate(timeout=60)
    seen += out.splitlines()
    assert proc.returncode == 1, seen  # mend-gold failed
    assert "r2/optimize-vm done" in seen, seen
    copying = [line for line in seen if line.startswith("r2/optimize-vm running 1/4 copy ")]
    assert copying[-1].split()[4:6] == ["100%", "256.0M/256.0M"], seen
    assert not any("\r" in line or "\x1b" in line for line in seen), "terminal codes in a pipe"
    assert (r3 / "tasks/mend-gold").exists(), "the failed task stays listed"
    sh(f"rm {r3}/tasks/mend-gold {r3}/snapshots/gold")
    mount.expected_fixes.add("clean-volumes")  # what the failed copy wrote


def watch_both(proc: subprocess.Popen, r1, r3) -> list[str]:
    """What watch prints while r2's optimize copies and r3's copy, queued then,
    fails."""
    try:
        seen = read_until(proc, "r2/optimize-vm running 1/4 copy", 60)
        sh(f"ln {r1}/snapshots/gold {r3}/snapshots/gold")
        sh(f"setfattr -n user.repofs.image_hints -v gold=r9 {r3}")  # r9: no such repository
        sh(f"mv {r3}/fixes/mend-gold {r3}/tasks/")
        return seen + read_until(proc, "r3/mend-gold failed", 60)
    except BaseException:
        proc.kill()
        raise


@pytest.mark.unit
def test_on_a_terminal_a_bar_per_task_even_one_that_does_not_know_its_size():
    """On a pty (script(1); its size unset: 0 x 0), bars with the task's own
    figures, left on screen when done."""
    code = (
        "import sys; from repofs.client.watch import Bars; b = Bars(sys.stdout); "
        "b.show('r2', {'id': 'mend-gold', 'bytes_total': 100 << 20, 'bytes_done': 50 << 20, "
        "'rate': 10 << 20, 'percent_complete': 50, 'state': 'running', 'stage': '1/3', "
        "'step': 'copy', 'last_error': None}); b.done('r2', 'mend-gold'); b.close()"
    )
    drawn = subprocess.run(["script", "-qec", f'{sys.executable} -c "{code}"', "/dev/null"],
                           cwd=REPO, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr
    frames = [line for line in drawn.stdout.replace("\r", "\n").splitlines() if "|" in line]
    assert any(f.startswith("r2/mend-gold running 1/3 copy 50% 50.0M/100.0M 10.0M/s ETA 5s |")
               and "█" in f for f in frames), frames  # fmt: skip
    assert frames[-1].startswith("r2/mend-gold done |█"), frames
