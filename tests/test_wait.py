"""`repofs wait`: returns when the image reaches the state, fails on timeout,
when a task working on it fails, and when it becomes broken or is removed."""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO, sh, status, wait_for

pytestmark = pytest.mark.mount


def repofs_wait(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "repofs", "wait", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def finished(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def reading_events(proc: subprocess.Popen) -> None:
    """Waits until `proc` has a repository's `events` open."""

    def opened() -> bool:
        fds = f"/proc/{proc.pid}/fd"
        for fd in os.listdir(fds):
            try:
                if os.readlink(f"{fds}/{fd}").endswith("/events"):
                    return True
            except FileNotFoundError:
                pass  # closed since the listing (Python's start-up opens and closes)
        return False

    wait_for(opened, 10, "the wait to open events")


def two_repositories(mount):
    r1, r2 = mount.default, mount.path / "r2"
    sh(f"mkdir {r2}")
    sh(f"setfattr -n user.repofs.autofix -v false {r2}")  # copies wait in fixes/
    sh(f"truncate -s 64M {r1}/disks/g")
    sh(f"dd if=/dev/urandom of={r1}/disks/g bs=1M count=8 conv=notrunc status=none")
    sh(f"ln {r1}/disks/g {r1}/snapshots/gold")
    return r1, r2


def test_wait_returns_once_the_copy_is_in(mount):
    r1, r2 = two_repositories(mount)
    proc = repofs_wait(r1 / "snapshots/gold")
    assert finished(proc) == (0, "gold is optimized\n")  # already
    sh(f"ln {r1}/snapshots/gold {r2}/snapshots/gold")
    proc = repofs_wait(r2 / "snapshots/gold", "--timeout", 60)
    time.sleep(1.5)
    assert proc.poll() is None, "it did not wait for the copy"
    sh(f"mv {r2}/fixes/mend-gold {r2}/tasks/")
    assert finished(proc) == (0, "gold is optimized\n")
    assert status(r2, "gold")["state"] == "optimized"


def test_wait_gives_up_at_the_timeout_and_when_a_task_fails(mount):
    r1, r2 = two_repositories(mount)
    sh(f"ln {r1}/snapshots/gold {r2}/snapshots/gold")
    started = time.monotonic()
    code, said = finished(repofs_wait(r2 / "snapshots/gold", "--timeout", 2))
    assert code == 1 and "timed out: gold is broken" in said
    assert 2 <= time.monotonic() - started < 10
    proc = repofs_wait(r2 / "snapshots/gold")
    sh(f"setfattr -n user.repofs.image_hints -v gold=r3 {r2}")  # r3 does not exist: it fails
    sh(f"mv {r2}/fixes/mend-gold {r2}/tasks/")
    code, said = finished(proc)
    assert code == 1 and "task mend-gold failed" in said, said
    os.unlink(r2 / "tasks/mend-gold")
    sh(f"rm {r2}/snapshots/gold")  # the half copy
    mount.expected_fixes.add("clean-volumes")  # forgets the stopped task of a removed image
    mount.expect_log("task=mend-gold repo=r2 .*state=failed")


def test_wait_fails_when_the_image_is_removed_meanwhile(mount):
    r1, _ = two_repositories(mount)
    sh(f"ln {r1}/snapshots/gold {r1}/disks/vm")
    proc = repofs_wait(r1 / "disks/vm", "--state", "degraded")
    reading_events(proc)
    sh(f"rm {r1}/disks/vm")
    code, said = finished(proc)
    assert code == 1 and "vm is not in default (removed?)" in said, said


def test_wait_for_broken_and_when_an_image_becomes_broken(mount, tmp_path):
    r1, r2 = two_repositories(mount)
    sh(f"ln {r1}/snapshots/gold {r2}/snapshots/gold")
    assert finished(repofs_wait(r2 / "snapshots/gold", "--state", "broken")) == (
        0, "gold is broken\n")  # fmt: skip
    # In a repository that hosts share, another host's write of a record is how
    # an image becomes broken under a waiter (a crash there mid-snapshot): made
    # here by writing the record on the storage, as that host would.
    shared = tmp_path / "shared"
    shared.mkdir()
    (mount.path / "connect").write_text(f"sh posix-1.0 path={shared}\n")
    sh(f"truncate -s 1M {mount.path}/sh/disks/vm")
    proc = repofs_wait(mount.path / "sh/disks/vm", "--state", "degraded", "--timeout", 60)
    reading_events(proc)
    record_path = shared / "images/vm.json"
    record = json.loads(record_path.read_text())
    record.update(state="broken", last_error="damaged elsewhere",
                  generation=record["generation"] + 1)  # fmt: skip
    (shared / "images/.tmp-vm").write_text(json.dumps(record))
    os.rename(shared / "images/.tmp-vm", record_path)
    code, said = finished(proc)
    assert code == 1 and "vm became broken: damaged elsewhere" in said, said
    sh(f"rm {mount.path}/sh/disks/vm")
    sh(f"mv {r2}/fixes/mend-gold {r2}/tasks/")
