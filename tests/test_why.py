"""`repofs why`: the latest refusals of a mount, with their reasons, for
whoever can read the mount, wherever its log goes."""

import re
import sys

import pytest
from conftest import REPO, sh

pytestmark = pytest.mark.mount

WHEN = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def repofs_why(path) -> str:
    return sh(f"{sys.executable} -m repofs why {path}", cwd=REPO).stdout


def test_why_tells_each_refusal_once_with_its_reason(mount):
    assert repofs_why(mount.path) == "no refusal since the mount started\n"
    said = sh(f"bash -c 'echo \"r6 foo-1.0 path=/tmp\" > {mount.path}/connect'", check=False)
    assert said.stderr.endswith("write error: Invalid argument\n"), said.stderr
    sh(f"truncate -s 2M {mount.default}/disks/vm1")
    said = sh(f"truncate -s 1M {mount.default}/disks/vm1", check=False)  # an operation's
    assert "Invalid argument" in said.stderr
    said = sh(f"mkdir {mount.default}/disks/sub", check=False)  # the file system layer's
    assert "Operation not permitted" in said.stderr
    sh(f"ls {mount.default}/disks/nope", check=False)  # a probe: not a refusal to tell
    lines = repofs_why(f"{mount.default}/disks").splitlines()  # any path in the mount
    assert len(lines) == 3, lines
    assert re.fullmatch(f"{WHEN} connect_repository r6: EINVAL \\(Invalid argument\\): "
                        "unknown repository format 'foo-1.0'", lines[0]), lines  # fmt: skip
    assert re.fullmatch(f"{WHEN} resize_virtual_disk default/vm1: EINVAL \\(Invalid argument\\): "
                        ".*shrink.*", lines[1]), lines  # fmt: skip
    assert re.fullmatch(f"{WHEN} mkdir: EPERM \\(Operation not permitted\\): .+", lines[2]), lines
    assert sh(f"getfattr -d {mount.path}").stdout.count("user.repofs.refusals=") == 1


@pytest.mark.unit
def test_the_latest_refusals_stay_well_under_the_size_of_an_attribute():
    from repofs import refusals

    for n in range(2 * refusals.KEPT):
        refusals.record("create_snapshot", "r1/" + "v" * 5000, 22, f"{n} " + "\x01" * 20000)
    value = refusals.encoded()
    assert len(value) < 48 << 10
    kept = refusals.decoded(value)
    assert 10 < len(kept) <= refusals.KEPT
    assert kept[-1].reason.startswith(f"{2 * refusals.KEPT - 1} ")
    assert (kept[-1].operation, kept[-1].errno) == ("create_snapshot", "EINVAL")
