"""`repofs status`: every image and task at a glance, and `--json` for scripts,
from the mount's files alone."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, sh, wait_for

from repofs.client.status import human, task_row

pytestmark = pytest.mark.mount


def repofs_status(*args) -> str:
    cmd = [sys.executable, "-m", "repofs", "status", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True,
                          timeout=60).stdout  # fmt: skip


def test_status_shows_images_in_every_state_and_running_tasks(mount):
    r1, r2 = mount.default, mount.path / "r2"
    assert repofs_status(mount.path) == (
        "default: 0 images, 0 tasks; kernel passthrough on\n\n" + "  ".join(
            ("ID", "KIND", "STATE", "SIZE", "ALLOCATED", "BASE", "HOST", "IO", "STAGE", "%",
             "LAST ERROR")
        ) + "\n"
    )  # a fresh mount  # fmt: skip
    sh(f"mkdir {r2}")
    sh(f"setfattr -n user.repofs.autofix -v false {r2}")
    sh(f"truncate -s 1G {r1}/disks/vm1")
    sh(f"dd if=/dev/urandom of={r1}/disks/vm1 bs=1M count=8 conv=notrunc status=none")
    sh(f"ln {r1}/disks/vm1 {r1}/snapshots/gold")  # optimized
    sh(f"ln {r1}/snapshots/gold {r2}/disks/vm2")  # degraded: its base is in default
    sh(f"ln {r1}/snapshots/gold {r2}/snapshots/gold")  # broken until copied
    seen = json.loads(repofs_status(mount.path, "--json"))
    states = {(repo, i["id"]): i["state"] for repo in seen for i in seen[repo]["images"]}
    assert states == {("default", "gold"): "optimized", ("default", "vm1"): "optimized",
                      ("r2", "gold"): "broken", ("r2", "vm2"): "degraded"}  # fmt: skip
    assert json.loads(repofs_status(r2, "--json")).keys() == {"r2"}
    here = subprocess.run([sys.executable, "-m", "repofs", "status", "."], cwd=r2, check=True,
                          capture_output=True, text=True, timeout=60, env={**os.environ,
                          "PYTHONPATH": str(REPO)}).stdout  # fmt: skip
    assert here.startswith("r2: 2 images, 0 tasks;")  # `.` names the repository
    table = repofs_status(r2)
    assert table.startswith("r2: 2 images, 0 tasks; kernel passthrough on\n")
    assert [line.split()[:3] for line in table.splitlines()[3:5]] == [
        ["gold", "snapshot", "broken"], ["vm2", "disk", "degraded"],
    ]  # fmt: skip
    assert "1.0G" in table and "copy not finished" in table
    with open(r1 / "snapshots/gold", "rb"), open(r1 / "disks/vm1", "rb"):  # who serves them
        rows = {row[0]: row for row in map(str.split, repofs_status(r1).splitlines()[3:])}
    assert rows["gold"][7] == "kernel" and rows["vm1"][7] == "repofs"
    sh(f"setfattr -n user.repofs.image_hints -v gold=r3 {r2}")  # no r3: the copy fails
    sh(f"mv {r2}/fixes/mend-gold {r2}/tasks/")
    wait_for(lambda: "failed" in (r2 / "tasks/mend-gold").read_text(), 30, "the copy to fail")
    [task] = json.loads(repofs_status(r2, "--json"))["r2"]["tasks"]
    assert repofs_status(r2).startswith("r2: 2 images, 1 task;")
    assert (task["id"], task["state"]) == ("mend-gold", "failed")
    tasks_table = repofs_status(r2).split("TASK", 1)[1]
    assert "mend-gold" in tasks_table and "no usable snapshot gold in r3" in tasks_table
    os.unlink(r2 / "tasks/mend-gold")
    sh(f"rm {r2}/disks/vm2 {r2}/snapshots/gold")  # so that default can go at unmount
    mount.expected_fixes.add("clean-volumes")  # forgets the stopped task of a removed image
    mount.expect_log("task=mend-gold repo=r2 .*state=failed")


@pytest.mark.unit
def test_a_running_task_shows_its_rate_and_eta():
    task = {"id": "optimize-vm", "image": "vm", "state": "running", "host": "h1",
            "stage": "1/4", "bytes_done": 1 << 30, "bytes_total": 3 << 30, "rate": 100 << 20,
            "last_error": None}  # fmt: skip
    assert task_row(task)[5:9] == ("1.0G", "3.0G", "100.0M/s", "20s")


@pytest.mark.unit
def test_sizes_read_as_ls_h_shows_them():
    assert [human(n) for n in (0, 1000, 1 << 20, 3 << 30, 5 << 40)] == [
        "0B", "1000B", "1.0M", "3.0G", "5.0T",
    ]  # fmt: skip
