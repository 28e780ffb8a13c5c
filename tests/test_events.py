"""The events file: what it streams, and that no reader can hold the mount up."""

import errno
import json
import os
import time

import pytest
import xattr
from conftest import errno_of, sh, wait_for

from repofs.events import MAX_READERS, QUEUE_LINES, READ_WAIT_S

pytestmark = pytest.mark.mount


def test_a_reader_sees_each_change_in_order(repo):
    with open(repo / "events", "rb", buffering=0) as events:
        sh(f"truncate -s 1M {repo}/disks/vm1")
        sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
        sh(f"mv {repo}/disks/vm1 {repo}/disks/vm2")
        sh(f"rm {repo}/disks/vm2")
        seen = []
        deadline = time.monotonic() + 10
        while len(seen) < 8 and time.monotonic() < deadline:
            seen += [json.loads(x) for x in events.read(65536).splitlines() if x.strip()]
    steps = [(e["event"], e["id"]) for e in seen]
    assert steps[0] == ("created", "vm1") and ("created", "s1") in steps
    assert steps.index(("removed", "vm1")) < steps.index(("renamed", "vm2"))
    assert steps[-1] == ("removed", "vm2")
    snapshot = next(e for e in seen if e["id"] == "s1" and e["event"] == "created")
    assert (snapshot["kind"], snapshot["state"]) == ("snapshot", "broken")  # until finished


def test_an_idle_read_ends_within_a_second(repo):
    with open(repo / "events", "rb", buffering=0) as events:
        started = time.monotonic()
        assert events.read(100) == b"\n"
        assert time.monotonic() - started < READ_WAIT_S + 1


def test_a_slow_reader_loses_the_oldest_lines_and_is_told(repo):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    with open(repo / "events", "rb", buffering=0) as events:
        for i in range(QUEUE_LINES + 50):
            xattr.setxattr(str(repo / "disks/vm1"), "user.n", str(i).encode())
        first = json.loads(events.read(65536).splitlines()[0])
    assert first["event"] == "lost" and first["lines"] >= 50


def _can_open(path) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError:
        return False  # the kernel releases closed files a moment later
    return True


def test_readers_are_limited(repo, mount):
    readers = [open(repo / "events", "rb", buffering=0) for _ in range(MAX_READERS)]
    try:
        assert errno_of(os.open, repo / "events", os.O_RDONLY) == errno.EBUSY
    finally:
        for reader in readers:
            reader.close()
    wait_for(lambda: _can_open(repo / "events"), 10, "the readers to be released")
    mount.expect_log(f"default/events already has {MAX_READERS} readers")
