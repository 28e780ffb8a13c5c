"""The whole mount against a small model of it (hypothesis, stateful).

Random sequences of what an admin does — create (thin, preallocated, by cp),
write, snapshot, disks on snapshots, copies and disks across two repositories,
rm, restore, rename, running every fix, remount, kill -9 — and after every
step: each image's bytes are the model's, listings and sizes are the model's,
states are valid, tasks ended, and the check offers what the model expects
(and nothing it cannot explain). Every refusal is compared with the model's
errno.

The model gives every new image an ID never used before: an ID names one
image for good (DESIGN.md: IDs are the storage API's UUIDs), and a copy into
the other repository keeps it.

`make model` runs many more examples (REPOFS_MODEL_EXAMPLES, _STEPS, a fresh
seed each time); CI runs a fixed seed.
"""

import errno
import itertools
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from conftest import TASKS_TIMEOUT_S, Mount, active_tasks, assert_consistent, pattern, wait_for
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

pytestmark = pytest.mark.mount

REPOS = ("default", "r2")
KINDS = ("disks", "snapshots")
SIZES = (0, 4096, 65536, 200_000)  # any byte count is a size
MAX_CHAIN = 8  # the default user.repofs.max_chain
EXAMPLES = int(os.environ.get("REPOFS_MODEL_EXAMPLES", "6"))
STEPS = int(os.environ.get("REPOFS_MODEL_STEPS", "50"))
LONG_RUN = "REPOFS_MODEL_EXAMPLES" in os.environ
# (rule, outcome) of every step of the run: outcome is "ok" or the errno's name.
STEPS_RUN: Counter[tuple[str, str]] = Counter()


@dataclass(frozen=True)
class Image:
    kind: str  # the folder it shows in: disks or snapshots
    data: bytes
    base: tuple[str, str] | None = None  # (repository, snapshot ID) it builds on


class Model:
    """What each repository should show."""

    def __init__(self):
        self.live: dict[str, dict[str, Image]] = {r: {} for r in REPOS}
        self.trash: dict[str, dict[str, Image]] = {r: {} for r in REPOS}
        self.ids = (f"i{n}" for n in itertools.count())

    def any_live(self, kind: str | None = None) -> bool:
        return any(kind in (None, img.kind) for r in REPOS for img in self.live[r].values())

    def taken(self, repo: str, image_id: str) -> bool:
        """An ID names one image: a new one may not take an ID the trash holds."""
        return image_id in self.live[repo] or image_id in self.trash[repo]

    def image(self, repo: str, image_id: str) -> Image:
        return self.live[repo].get(image_id) or self.trash[repo][image_id]

    def builders(self, repo: str, image_id: str, trashed: bool) -> list[tuple[str, str]]:
        """Images (live, or live and trashed) of any repository built on this one."""
        areas = [self.live] + ([self.trash] if trashed else [])
        return [
            (r, i) for area in areas for r in REPOS for i, img in area[r].items()
            if img.base == (repo, image_id)
        ]  # fmt: skip

    def readers(self, repo: str, snap: str) -> list[tuple[str, str]]:
        """Images (live or trashed, of any repository) that read through the
        snapshot's layer: their bases lead to it."""
        found = []
        for area in (self.live, self.trash):
            for r in REPOS:
                for i, img in area[r].items():
                    base = img.base
                    while base is not None and base != (repo, snap):
                        base = self.image(*base).base
                    if base is not None:
                        found.append((r, i))
        return found

    def merges(self, repo: str, snap: str) -> bool:
        """Whether the check offers to merge a trashed snapshot: live images of
        its repository read through it, and none of another repository does."""
        readers = self.readers(repo, snap)
        live_here = any(r == repo and i in self.live[r] for r, i in readers)
        return live_here and all(r == repo for r, _ in readers)

    def merge(self, repo: str, snap: str) -> None:
        """What the merge of a trashed snapshot does: what built on it builds on its base."""
        base = self.trash[repo][snap].base
        for r, i in self.builders(repo, snap, trashed=True):
            area = self.live if i in self.live[r] else self.trash
            area[r][i] = replace(area[r][i], base=base)

    def reads_elsewhere(self, repo: str, image_id: str) -> bool:
        """Whether the image's chain goes through another repository's volumes."""
        base = self.image(repo, image_id).base
        while base is not None:
            if base[0] != repo:
                return True
            base = self.image(*base).base
        return False

    def nearest_copy(self, src: str, snap: str, dst: str) -> tuple[str, str] | None:
        """The nearest ancestor of src's `snap` that `dst` holds, which a copy of
        it into dst builds on; a base in yet another repository ends the walk."""
        base = self.image(src, snap).base
        while base is not None and base[0] == src:
            if self.live[dst].get(base[1], Image("", b"")).kind == "snapshots":
                return (dst, base[1])
            base = self.image(*base).base
        return None

    def settle_fixes(self, optimized: set[tuple[str, str]]) -> None:
        """What running every fix does: merges fold a trashed snapshot's layer
        into the live images on it, cleans forget trashed images nothing builds
        on, optimizes flatten."""
        for repo, image_id in optimized:
            self.live[repo][image_id] = replace(self.live[repo][image_id], base=None)
        changed = True
        while changed:
            changed = False
            for repo in REPOS:
                for image_id in list(self.trash[repo]):
                    if self.merges(repo, image_id):
                        self.merge(repo, image_id)
                    if not self.builders(repo, image_id, trashed=True):
                        del self.trash[repo][image_id]
                        changed = True

    def expected_fixes(self, repo: str) -> set[str]:
        fixes = set()
        for image_id in self.trash[repo]:
            if self.merges(repo, image_id):
                fixes.add(f"merge-{image_id}")
            elif not self.builders(repo, image_id, trashed=True):
                fixes.add(f"clean-{image_id}")
        return fixes


class MountMachine(RuleBasedStateMachine):
    def __init__(self, base: Path):
        super().__init__()
        self.base = base
        self.model = Model()
        self.crashed = False  # since fixes last ran: leftovers may be offered
        # Admin steps since the last restart and the last run of the fixes: those
        # are rarer than the steps themselves, and worth more after many.
        self.since_restart = self.since_fixes = 0
        # The last example run is kept: when a run fails, hypothesis runs the
        # failing example last.
        for earlier in base.parent.glob("example-*"):
            shutil.rmtree(earlier)
        base.mkdir()
        self.mount = Mount(base)
        self.mount.start()
        (self.mount.path / "r2").mkdir()

    def teardown(self):
        try:
            unexpected = self.mount.unexpected_log_lines()
            assert not unexpected, "unexpected errors in the log:\n" + "\n".join(unexpected)
        finally:
            self.mount.stop()
        for repo in REPOS:
            assert_consistent(self.mount.data / repo, garbage_expected=True)

    # Helpers

    def path(self, repo: str, area: str, name: str) -> Path:
        return self.mount.path / repo / area / name

    def attempt(self, expected: int | None, what: str, call, *args) -> bool:
        """Runs call(*args); asserts it fails with `expected`, or succeeds if None."""
        want = errno.errorcode[expected] if expected else "success"
        STEPS_RUN[what.split(":")[0], errno.errorcode[expected] if expected else "ok"] += 1
        self.since_restart += 1
        self.since_fixes += 1
        try:
            call(*args)
        except OSError as e:
            assert e.errno == expected, f"{what}: {errno.errorcode[e.errno]}, model: {want}"
            return False
        assert expected is None, f"{what}: success, model: {want}"
        return True

    def draw_name(self, data, repo: str) -> str:
        """A new ID, or as often one `repo` has (live or trashed)."""
        known = sorted({*self.model.live[repo], *self.model.trash[repo]})
        fresh = st.just(next(self.model.ids))
        return data.draw(fresh | st.sampled_from(known) if known else fresh)

    def draw_existing(self, data, area: str, wanted=lambda repo, name: True) -> tuple[str, str]:
        """A repository with images in `area` (that are `wanted`) and, three
        times in four, one of them; else any name it knows (a refusal)."""
        names = {
            r: {i for i in (self.model.trash[r] if area == "trash" else self.model.live[r])
                if (area == "trash" or self.model.live[r][i].kind == area) and wanted(r, i)}
            for r in REPOS
        }  # fmt: skip
        repo = data.draw(st.sampled_from([r for r in REPOS if names[r]] or REPOS))
        known = sorted({*self.model.live[repo], *self.model.trash[repo]}) or ["none"]
        hits = st.sampled_from(sorted(names[repo]) or known)
        return repo, data.draw(st.one_of(hits, hits, hits, st.sampled_from(known)))

    def ln(self, what: str, source: tuple[str, str, str], target: tuple[str, str, str]) -> bool:
        """`ln REPO/AREA/NAME REPO/AREA/NAME`: ENOENT unless the source is an image
        of its area, EEXIST if the target's ID is taken; whether it worked."""
        (repo, area, name), (new_repo, _, new) = source, target
        if self.kind_of(repo, name) != area:
            expected = errno.ENOENT
        elif self.model.taken(new_repo, new):
            expected = errno.EEXIST
        else:
            expected = None
        source_path, target_path = self.path(*source), self.path(*target)
        return self.attempt(expected, f"{what}: ln {source_path} {target_path}", os.link,
                            source_path, target_path)  # fmt: skip

    def kind_of(self, repo: str, name: str) -> str | None:
        img = self.model.live[repo].get(name)
        return img.kind if img else None

    def strategy(self, repo: str, value: str) -> None:
        os.setxattr(self.mount.path / repo, "user.repofs.strategy", value.encode())

    # Rules

    @rule(data=st.data(), repo=st.sampled_from(REPOS), size=st.sampled_from(SIZES),
          preallocated=st.booleans())  # fmt: skip
    def truncate(self, data, repo, size, preallocated):
        """`truncate -s SIZE disks/NAME`: a create, or a resize of a disk."""
        name = self.draw_name(data, repo)
        img = self.model.live[repo].get(name)
        if img is None:
            expected = errno.EEXIST if self.model.taken(repo, name) else None
            new = Image("disks", bytes(size))
        elif img.kind == "snapshots":
            expected, new = errno.EEXIST, img
        elif size < len(img.data):
            expected, new = errno.EINVAL, img
        else:
            expected, new = None, replace(img, data=img.data + bytes(size - len(img.data)))

        def truncate():
            fd = os.open(self.path(repo, "disks", name), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)

        if preallocated:
            self.strategy(repo, "performance")
        try:
            if self.attempt(expected, f"truncate: -s {size} {repo}/disks/{name}", truncate):
                self.model.live[repo][name] = new
        finally:
            if preallocated:
                self.strategy(repo, "space")

    @rule(data=st.data(), repo=st.sampled_from(REPOS), size=st.sampled_from(SIZES))
    def cp_in(self, data, repo, size):
        """`cp FILE disks/NAME`: an import (over an empty disk too)."""
        name = self.draw_name(data, repo)
        content = pattern(name.encode() + b"-cp-", size)
        source = self.base / "import"
        source.write_bytes(content)
        img = self.model.live[repo].get(name)
        if img is None:
            expected = errno.EEXIST if self.model.taken(repo, name) else None
        elif img.kind == "disks" and not img.data:
            expected = None
        else:
            expected = errno.EEXIST if img.kind == "snapshots" else errno.EINVAL
        target = self.path(repo, "disks", name)
        if self.attempt(expected, f"cp: into {repo}/disks/{name}", shutil.copyfile, source, target):
            self.model.live[repo][name] = Image("disks", content, img.base if img else None)

    @precondition(lambda self: self.model.any_live())
    @rule(data=st.data(), kind=st.sampled_from(KINDS), offset=st.integers(0, 210_000),
          length=st.integers(1, 20_000))  # fmt: skip
    def write(self, data, kind, offset, length):
        """pwrite into a disk (past its end grows it); into a snapshot, EROFS."""
        repo, name = self.draw_existing(data, kind)
        img = self.model.live[repo].get(name)
        chunk = pattern(f"{name}@{offset}:".encode(), length)
        if img is None or img.kind != kind:
            expected = errno.ENOENT
        else:
            expected = errno.EROFS if kind == "snapshots" else None

        def write():
            fd = os.open(self.path(repo, kind, name), os.O_WRONLY)
            try:
                assert os.pwrite(fd, chunk, offset) == length
            finally:
                os.close(fd)

        if self.attempt(expected, f"write: {repo}/{kind}/{name}", write):
            old = img.data.ljust(offset, b"\0")
            written = old[:offset] + chunk + old[offset + length :]
            self.model.live[repo][name] = replace(img, data=written)

    @precondition(lambda self: self.model.any_live("disks"))
    @rule(data=st.data())
    def snapshot(self, data):
        """`ln disks/D snapshots/S`."""
        repo, disk = self.draw_existing(data, "disks")
        snap = self.draw_name(data, repo)
        if self.ln("snapshot", (repo, "disks", disk), (repo, "snapshots", snap)):
            img = self.model.live[repo][disk]
            self.model.live[repo][snap] = Image("snapshots", img.data, img.base)
            self.model.live[repo][disk] = replace(img, base=(repo, snap))

    @precondition(lambda self: self.model.any_live("snapshots"))
    @rule(data=st.data(), dst=st.sampled_from(REPOS))
    def disk_on_snapshot(self, data, dst):
        """`ln SRC/snapshots/S DST/disks/D` (in one repository or across two)."""
        src, snap = self.draw_existing(data, "snapshots")
        disk = self.draw_name(data, dst)
        if self.ln("disk-on-snapshot", (src, "snapshots", snap), (dst, "disks", disk)):
            data = self.model.live[src][snap].data
            # A copy of the snapshot in DST serves as the base (the same data).
            here = self.model.live[dst].get(snap)
            holder = dst if here is not None and here.kind == "snapshots" else src
            self.model.live[dst][disk] = Image("disks", data, (holder, snap))

    @precondition(lambda self: self.model.any_live("snapshots"))
    @rule(data=st.data())
    def copy(self, data):
        """`ln SRC/snapshots/S OTHER/snapshots/S`: copyImage (a mend task)."""

        def other(repo: str) -> str:
            return REPOS[1 - REPOS.index(repo)]

        src, snap = self.draw_existing(
            data, "snapshots", lambda r, i: not self.model.taken(other(r), i)
        )
        dst = other(src)
        if self.ln("copy", (src, "snapshots", snap), (dst, "snapshots", snap)):
            base = self.model.nearest_copy(src, snap, dst)
            self.model.live[dst][snap] = Image("snapshots", self.model.live[src][snap].data, base)

    @precondition(lambda self: self.model.any_live())
    @rule(data=st.data(), kind=st.sampled_from(KINDS))
    def rm(self, data, kind):
        """`rm KIND/NAME`: into the trash."""
        repo, name = self.draw_existing(data, kind)
        if self.kind_of(repo, name) != kind:
            expected = errno.ENOENT
        elif any(r != repo and i in self.model.live[r] for r, i in self.model.readers(repo, name)):
            expected = errno.EBUSY  # the merge here could not fold it into them
        elif name in self.model.trash[repo]:
            expected = errno.EEXIST
        else:
            expected = None
        path = self.path(repo, kind, name)
        if self.attempt(expected, f"rm: {path}", os.unlink, path):
            self.model.trash[repo][name] = self.model.live[repo].pop(name)
            readers = self.model.readers(repo, name)
            if [r for r, i in readers if i in self.model.live[r]] == [repo] and all(
                r == repo for r, _ in readers
            ):  # one live image reads through it: autofix merges it at once
                self.model.merge(repo, name)
                self.wait_for_tasks()
                if name not in os.listdir(self.mount.path / repo / "trash"):
                    # Merged down: the snapshot above it took its layer, which held
                    # more (fixes/merge_down.py, a choice by size the model leaves
                    # to repofs), and its record went.
                    del self.model.trash[repo][name]

    @precondition(lambda self: any(self.model.trash.values()))
    @rule(data=st.data(), kind=st.sampled_from(KINDS))
    def restore(self, data, kind):
        """`mv trash/NAME KIND/`: to its own kind only."""
        repo, name = self.draw_existing(data, "trash")
        img = self.model.trash[repo].get(name)
        if img is None:
            expected = errno.ENOENT
        elif img.kind != kind:
            expected = errno.EINVAL
        elif name in self.model.live[repo]:
            expected = errno.EEXIST
        else:
            expected = None
        source, target = self.path(repo, "trash", name), self.path(repo, kind, name)
        if self.attempt(expected, f"restore: mv {source} {target}", os.rename, source, target):
            self.model.live[repo][name] = self.model.trash[repo].pop(name)

    @precondition(lambda self: self.model.any_live())
    @rule(data=st.data(), kind=st.sampled_from(KINDS))
    def rename(self, data, kind):
        """`mv KIND/OLD KIND/NEW`. Images (live or in the trash) name their base
        by ID, so a snapshot anything builds on keeps its name."""
        repo, old = self.draw_existing(data, kind)
        new = self.draw_name(data, repo)
        if self.kind_of(repo, old) != kind:
            expected = errno.ENOENT
        elif old == new:
            expected = None
        elif self.model.builders(repo, old, trashed=True):
            expected = errno.EBUSY
        elif self.model.taken(repo, new):
            expected = errno.EEXIST
        else:
            expected = None
        source, target = self.path(repo, kind, old), self.path(repo, kind, new)
        if self.attempt(expected, f"rename: mv {source} {target}", os.rename, source, target):
            self.model.live[repo][new] = self.model.live[repo].pop(old)

    @precondition(lambda self: self.since_fixes >= 6)
    @rule()
    def run_fixes(self):
        """Queues every fix the check offers, until it offers none that can run
        here (a cross-repository disk's optimize is left: it would copy its
        base into this repository, a choice the model does not make)."""
        optimized = set()
        for _ in range(10):
            queued = []
            for repo in REPOS:
                for fix in sorted(os.listdir(self.mount.path / repo / "fixes")):
                    kind, _, image_id = fix.partition("-")
                    if kind == "optimize":
                        base = self.model.live[repo][image_id].base
                        if base is not None and base[0] != repo:
                            continue
                        optimized.add((repo, image_id))
                    fixes = self.mount.path / repo / "fixes"
                    os.rename(fixes / fix, self.mount.path / repo / "tasks" / fix)
                    queued.append(fix)
            if not queued:
                break
            self.wait_for_tasks()
        self.model.settle_fixes(optimized)
        self.crashed = False
        self.since_fixes = 0
        STEPS_RUN["run-fixes", "ok"] += 1

    @precondition(lambda self: self.since_restart >= 10)
    @rule()
    def remount(self):
        self.mount.remount()
        self.since_restart = 0
        STEPS_RUN["remount", "ok"] += 1

    @precondition(lambda self: self.since_restart >= 10)
    @rule()
    def kill_9(self):
        """A crash, then a mount again."""
        self.mount.kill()
        self.mount.start()
        self.crashed = True
        self.since_restart = 0
        STEPS_RUN["kill-9", "ok"] += 1

    # Invariants

    def wait_for_tasks(self) -> None:
        for repo in REPOS:
            path = self.mount.path / repo
            wait_for(lambda p=path: not active_tasks(p), TASKS_TIMEOUT_S, f"{repo}'s tasks")
            failed = {t: (path / "tasks" / t).read_text() for t in os.listdir(path / "tasks")}
            assert not failed, f"tasks failed in {repo}: {failed}"

    @invariant()
    def mount_shows_the_model(self):
        self.wait_for_tasks()
        for repo in REPOS:
            root = self.mount.path / repo
            for kind in KINDS:
                want = sorted(i for i, img in self.model.live[repo].items() if img.kind == kind)
                assert sorted(os.listdir(root / kind)) == want, f"{repo}/{kind}"
            assert sorted(os.listdir(root / "trash")) == sorted(self.model.trash[repo])
            for image_id, img in self.model.live[repo].items():
                status = json.loads((root / "status" / image_id).read_text())
                assert status["size"] == len(img.data), f"{repo}/{image_id}: {status}"
                assert status["state"] in ("optimized", "degraded"), f"{repo}/{image_id}"
                if status["state"] == "degraded":
                    elsewhere = self.model.reads_elsewhere(repo, image_id)
                    assert elsewhere or len(status["chain"]) > MAX_CHAIN, f"{repo}/{image_id}"
                got = (root / img.kind / image_id).read_bytes()
                assert got == img.data, f"{repo}/{img.kind}/{image_id}: bytes differ"
            self.check_offers_what_the_model_expects(repo)

    def check_offers_what_the_model_expects(self, repo: str) -> None:
        root = self.mount.path / repo
        offered = set(os.listdir(root / "fixes"))
        expected = self.model.expected_fixes(repo)
        explained = {f"optimize-{i}" for i in self.model.live[repo]}
        if self.crashed:
            explained.add("clean-volumes")
        assert expected <= offered, f"{repo}: the check misses {sorted(expected - offered)}"
        unexplained = offered - expected - explained
        assert not unexplained, f"{repo}: the check offers " + "; ".join(
            (root / "fixes" / fix).read_text() for fix in sorted(unexplained)
        )
        for fix in offered & explained - {"clean-volumes"}:
            image_id = fix.partition("-")[2]
            state = json.loads((root / "status" / image_id).read_text())["state"]
            assert state == "degraded", f"{repo}: {fix} offered for a {state} image"


def test_random_admin_sessions_keep_the_model(tmp_path):
    examples = itertools.count()
    run_state_machine_as_test(
        lambda: MountMachine(tmp_path / f"example-{next(examples)}"),
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            derandomize=not LONG_RUN,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    summary = ", ".join(
        f"{rule} {outcome}: {n}" for (rule, outcome), n in sorted(STEPS_RUN.items())
    )
    print(f"\nsteps run: {STEPS_RUN.total()} ({summary})")
    # A run that never got past refusals would prove nothing.
    succeeded = {rule for rule, outcome in STEPS_RUN if outcome == "ok"}
    assert succeeded >= {"truncate", "cp", "write", "snapshot", "disk-on-snapshot", "copy", "rm",
                         "restore", "rename", "run-fixes"}, STEPS_RUN  # fmt: skip
