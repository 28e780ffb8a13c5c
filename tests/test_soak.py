"""Concurrency soak: four shell loops (tests/soak_loop.sh) create, write,
snapshot, copy across repositories and remove at once for a bounded time; then
every fix runs, the mount is mounted again, and nothing is lost (every image a
loop kept has the bytes it noted) and nothing is unexplained (the check offers
nothing, storage holds only what records name).

`make soak` runs it for 10 minutes (REPOFS_SOAK_S); `make test` for 20 s."""

import os
import subprocess
import time

import pytest
from conftest import REPO, assert_consistent, run_every_fix, sh

pytestmark = pytest.mark.mount

LOOPS = 4
SOAK_S = int(os.environ.get("REPOFS_SOAK_S", "20"))


def test_four_loops_at_once_lose_nothing(mount, tmp_path):
    r1, r2 = mount.default, mount.path / "r2"
    r2.mkdir()
    end = int(time.time()) + SOAK_S
    manifest = tmp_path / "manifest"
    loops = [
        subprocess.Popen(
            [REPO / "tests/soak_loop.sh", r1, r2, f"l{i}", str(end), manifest],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(LOOPS)
    ]
    rounds = 0
    for loop in loops:
        out, err = loop.communicate(timeout=SOAK_S + 300)
        assert loop.returncode == 0, f"a loop failed:\n{err}"
        rounds += int(out)
    run_every_fix([r1, r2])
    mount.remount()
    kept = dict(line.split() for line in manifest.read_text().splitlines())
    for path, digest in kept.items():
        assert sh(f"sha1sum < {path}").stdout.split()[0] == digest, f"{path} changed"
    for repo in (r1, r2):
        assert not os.listdir(repo / "fixes") and not os.listdir(repo / "trash")
    print(f"\nsoak: {LOOPS} loops, {rounds} rounds in {SOAK_S}s, {len(kept)} images kept")
    mount.stop()
    for repo in ("default", "r2"):
        assert_consistent(mount.data / repo)
