"""The log an operator reads: a line per operation and per task state change,
with repository, image, outcome and duration; --log-level; the journal's format
when systemd connected stderr to the journal."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, Mount, mount_pid, sh, wait_for

pytestmark = pytest.mark.mount

DURATION = r"duration=\d+\.\d+s"
OK = rf"outcome=ok {DURATION}"


def lines_matching(m: Mount, pattern: str) -> list[str]:
    return [line for line in m.log_text().splitlines() if re.search(pattern, line)]


def test_a_line_per_operation_and_per_task_state_change(mount):
    r1, r2 = mount.default, mount.path / "r2"
    sh(f"truncate -s 64M {r1}/disks/vm1")
    sh(f"ln {r1}/disks/vm1 {r1}/snapshots/s1")
    sh(f"ln {r1}/disks/vm1 {r1}/snapshots/vm1", check=False)  # EEXIST: a disk is vm1
    sh(f"mkdir {r2}")
    sh(f"ln {r1}/snapshots/s1 {r2}/snapshots/s1")
    wait_for(lambda: lines_matching(mount, "task=mend-s1 .*state=done"), 30, "the copy")
    sh(f"rm {r1}/disks/vm1")

    def one(pattern: str) -> str:
        found = lines_matching(mount, pattern)
        assert len(found) == 1, f"{pattern!r}: {found}\n{mount.log_text()}"
        return found[0]

    one(rf"INFO .*operation=create_virtual_disk repo=default image=vm1 size=0 {OK}")
    one(rf"operation=resize_virtual_disk repo=default image=vm1 size=67108864 {OK}")
    one(rf"INFO .*operation=create_snapshot repo=default image=s1 disk_id=vm1 {OK}")
    one(rf"WARNING .*operation=create_snapshot repo=default image=vm1 disk_id=vm1 outcome=EEXIST "
        rf'{DURATION} reason="image vm1 already exists"')  # fmt: skip
    one(r"operation=connect_repository repo=r2 fmt=localfs-1.0 .* outcome=ok")
    one(r"operation=copy_snapshot repo=r2 image=s1 source_repo=default outcome=ok")
    one(r"task=mend-s1 repo=r2 image=s1 state=queued description=")
    one(r"task=mend-s1 repo=r2 image=s1 state=running description=")
    one(r"task=mend-s1 repo=r2 image=s1 state=done duration=\d+\.\ds")
    one(rf"operation=remove_image repo=default image=vm1 kind=virtual-disk {OK}")
    # The refusal is said once, by the operation: not again by the FUSE boundary.
    assert not lines_matching(mount, "refused: .*vm1 already exists")


def test_log_level_warning_keeps_only_refusals_and_failures(tmp_path):
    m = Mount(tmp_path, extra_args=("--log-level", "warning"))
    try:
        m.start()
        sh(f"truncate -s 1M {m.default}/disks/vm1")
        sh(f"truncate -s 1K {m.default}/disks/vm1", check=False)  # EINVAL: no shrinking
    finally:
        m.stop()
    text = m.log_text()
    assert " INFO " not in text, text
    assert re.search("WARNING .*operation=resize_virtual_disk .*outcome=EINVAL", text), text


def test_under_systemd_stderr_gets_the_journal_s_format(tmp_path):
    """systemd names the stream it connected stderr to in $JOURNAL_STREAM: lines
    then carry their priority as <N> and no time stamp (the journal has its own)."""
    journal, mnt = tmp_path / "journal", tmp_path / "mnt"
    mnt.mkdir()
    with open(journal, "w") as stderr:
        st = os.fstat(stderr.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        cmd = [sys.executable, "-m", "repofs", "mount", str(mnt), "--foreground",
               "--data-dir", str(tmp_path / "data")]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stderr=stderr, env=env)
    try:
        wait_for(lambda: mount_pid(mnt) == proc.pid, 30, "the mount")
        sh(f"truncate -s 1M {mnt}/default/disks/vm1")
        sh(f"truncate -s 1K {mnt}/default/disks/vm1", check=False)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        proc.wait(30)
    lines = journal.read_text().splitlines()
    assert "<6>repofs.fs.mount: unmounted " + str(mnt) in lines, lines
    created = rf"<6>repofs.operations: operation=create_virtual_disk repo=default image=vm1 .* {OK}"
    assert any(re.fullmatch(created, line) for line in lines), lines
    assert any(line.startswith("<4>repofs.operations: operation=resize_virtual_disk ")
               for line in lines), lines  # fmt: skip
