"""Task records the fix daemon cannot read. It looks at every repository's
tasks each second: a record it cannot parse is skipped, and said in the log once
(per record and reason), while the other tasks run; tasks it cannot list at all
are said once too, until they can be listed again."""

import os
import time

import pytest
from conftest import sh, wait_for

from repofs.fix_daemon import POLL_S

pytestmark = pytest.mark.mount

# Looks of the fix daemon at the tasks that each would have said it again.
LOOKS = 4


def lines_with(mount, text: str) -> int:
    return sum(text in line for line in mount.log_text().splitlines())


def test_an_unparsable_task_record_is_said_once_and_the_others_run(repo, mount):
    record = mount.data / "default/tasks/optimize-x.json"
    record.write_text('{"kind": "optim')
    wait_for(lambda: lines_with(mount, "skipping task optimize-x.json"), 10, "the first say")
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"rm {repo}/disks/vm1")
    sh(f"mv {repo}/fixes/clean-vm1 {repo}/tasks/")  # runs, next to the unreadable one
    wait_for(lambda: not os.listdir(repo / "trash"), 30, "the clean")
    time.sleep(LOOKS * POLL_S)
    assert lines_with(mount, "skipping task optimize-x.json") == 1, mount.log_text()
    assert "is unreadable" in mount.log_text()  # with the reason

    record.write_text("garbage")  # another reason: said again, once
    wait_for(lambda: lines_with(mount, "skipping task optimize-x.json") == 2, 10, "a new say")
    time.sleep(LOOKS * POLL_S)
    assert lines_with(mount, "skipping task optimize-x.json") == 2, mount.log_text()

    record.unlink()
    wait_for(lambda: lines_with(mount, "task record optimize-x.json is readable again"), 10,
             "the record's end said")  # fmt: skip
    mount.expect_log("skipping task optimize-x.json")


def test_tasks_that_cannot_be_listed_are_said_once(repo, mount):
    blocker = mount.data / "default/tasks/mend-y.json"
    blocker.mkdir()  # reading it fails: EISDIR, an OSError as an unreadable disk's EIO
    wait_for(lambda: lines_with(mount, "cannot read the tasks of default"), 10, "the first say")
    time.sleep(LOOKS * POLL_S)
    assert lines_with(mount, "cannot read the tasks of default") == 1, mount.log_text()
    assert "Is a directory" in mount.log_text()  # with the reason

    blocker.rmdir()
    wait_for(lambda: lines_with(mount, "the tasks of default can be read again"), 10,
             "the tasks listed again")  # fmt: skip
    mount.expect_log("cannot read the tasks of default")
