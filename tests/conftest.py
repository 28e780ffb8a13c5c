"""Fixtures that mount the real filesystem, as a shell user would use it.

Every mount is a `repofs mount --foreground` subprocess owned by its fixture:
teardown unmounts it, then terminates, then kills it by PID, always. A test
fails if the mount logged an unexpected error or traceback (s3ql's approach).
"""

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repofs.mounts import repofs_pid as mount_pid

REPO = Path(__file__).resolve().parent.parent
MOUNT_TIMEOUT_S = 30
STOP_TIMEOUT_S = 20
MiB = 1 << 20


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def qemu_accel() -> list[str]:
    """qemu-system arguments for KVM where this machine has it, TCG otherwise.
    Without arch-capabilities: some KVMs (gVisor's) refuse that MSR, and QEMU
    aborts at the first vCPU reset ("failed to set MSR 0x10a")."""
    if os.access("/dev/kvm", os.W_OK):
        return ["-enable-kvm", "-cpu", "host,-arch-capabilities"]
    return ["-accel", "tcg"]


def sh(cmd: str, check: bool = True, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs a shell command line; on failure the assertion shows its output."""
    result = subprocess.run(
        cmd, shell=True, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert result.returncode == 0, f"{cmd!r} failed:\n{result.stdout}\n{result.stderr}"
    return result


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


class Mount:
    """One repofs process mounted at `path`, with its data in `data`."""

    def __init__(self, base: Path, extra_args: tuple[str, ...] = (), module: str = "repofs",
                 env: dict[str, str] | None = None):  # fmt: skip
        self.module = module
        self.env = env or {}
        # Fixes the test leaves on purpose (besides cleaning what it removed).
        self.expected_fixes: set[str] = set()
        self.path = base / "mnt"
        self.data = base / "data"
        self.log = base / "repofs.log"
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self._log_checked_upto = 0
        self.path.mkdir(exist_ok=True)

    @property
    def default(self) -> Path:
        return self.path / "default"

    def start(self) -> "Mount":
        cmd = [sys.executable, "-m", self.module, "mount", str(self.path), "--foreground",
               "--data-dir", str(self.data), "--log-file", str(self.log),
               "--host-id", "test-host", *self.extra_args]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), **self.env}
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, env=env)
        wait_for(lambda: self.proc.poll() is not None or mount_pid(self.path) == self.proc.pid,
                 MOUNT_TIMEOUT_S, "the mount")  # fmt: skip
        assert self.proc.poll() is None, f"repofs exited: {self.log_text()}"
        return self

    @property
    def storage_daemon_pid(self) -> int:
        return wait_for(lambda: children(self.proc.pid), 10, "qemu-storage-daemon")[0]

    def stop(self) -> None:
        """Unmounts and waits for the process (and so its storage daemon) to end."""
        if self.proc is None:
            # Perhaps a crash left the mount point dead.
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
            return
        proc, self.proc = self.proc, None
        daemons = children(proc.pid)
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT_S)
        for pid in daemons:  # gone with their parent (PDEATHSIG); make sure
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """kill -9: a crash. The mount point is left dead until the next mount."""
        self.proc.kill()
        self.proc.wait(STOP_TIMEOUT_S)
        self.proc = None

    def remount(self) -> "Mount":
        self.stop()
        return self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def unexpected_log_lines(self) -> list[str]:
        lines = self.log_text().splitlines()[self._log_checked_upto :]
        return [line for line in lines if re.search(r" ERROR |Traceback", line)]

    def expect_log(self, pattern: str) -> None:
        """Asserts a log line matches, and forgives the ERROR lines so far."""
        text = self.log_text()
        assert re.search(pattern, text), f"no log line matches {pattern!r}:\n{text[-3000:]}"
        self._log_checked_upto = len(text.splitlines())


def assert_consistent(root: Path, garbage_expected: bool = False) -> None:
    """What a test leaves in a repository, seen from outside repofs: every record
    readable, every volume it names present and passing `qemu-img check`; unless
    the test expects a clean (`garbage_expected`), every volume named by a record
    or a task and no temp files."""
    named = set()
    for path in root.glob("*/.tmp-*"):
        assert garbage_expected, f"leftover {path}"
    for task_path in root.glob("tasks/[!.]*"):
        named.update(json.loads(task_path.read_text())["checkpoint"].get("volumes", ()))
    for record_path in [*root.glob("images/[!.]*"), *root.glob("trash/[!.]*")]:
        record = json.loads(record_path.read_text())
        for volume in record["chain"]:
            owner, _, name = volume.rpartition("/")  # `REPO/NAME`: a base elsewhere
            path = (root.parent / owner if owner else root) / "volumes" / name
            assert path.exists(), f"{record_path.name} names missing {volume}"
            named.add(volume)
    for path in (root / "volumes").iterdir():
        assert garbage_expected or path.name in named, f"{path.name} is named by no record"
        if path.suffix == ".qcow2":
            sh(f"qemu-img check -q -f qcow2 {path}")


TASKS_TIMEOUT_S = 120


def kill_at_a_random_moment(m: Mount, task: Path, root: Path | None = None) -> dict:
    """kill -9 of the mount at a random moment of a running task, after its first
    progress report (so past a checkpoint) and before its end, judged by its rate;
    returns the task record as stored at the kill, which must show it under way.
    `root`: the repository's directory on storage, if not in the mount's data dir."""

    def progress() -> dict | None:
        view = json.loads(task.read_text())
        return view if view["percent_complete"] > 0 and view["rate"] > 0 else None

    view = wait_for(progress, 60, f"progress of {task.name}")
    remaining_s = (view["bytes_total"] - view["bytes_done"]) / view["rate"]
    # The rate so far includes the task's start, so the rest goes faster than
    # it says: a third of the estimate still ends before the task (0.6 did not,
    # once in a while, under load).
    time.sleep(random.uniform(0, 0.3 * remaining_s))
    m.kill()
    root = root or m.data / task.parent.parent.name
    stored = json.loads((root / "tasks" / f"{task.name}.json").read_text())
    assert stored["state"] == "running" and stored["percent_complete"] < 100, stored
    return stored


def crash_then_remount(m: Mount) -> None:
    """Waits for the process to die at its REPOFS_CRASH_AT step; mounts again."""
    assert m.proc.wait(TASKS_TIMEOUT_S) == 99
    m.proc = None
    m.env = {}
    m.start()


def settled(repo: Path) -> bool:
    """No task of the repository queued or running; False while it cannot be
    read (a shared repository that fenced this host rejoins LEASE_S later)."""
    try:
        return not active_tasks(repo)
    except OSError:
        return False


def active_tasks(repo: Path) -> list[str]:
    active = []
    for name in os.listdir(repo / "tasks"):
        try:
            if json.loads((repo / "tasks" / name).read_text())["state"] in ("queued", "running"):
                active.append(name)
        except FileNotFoundError:
            pass  # it ended while we listed
    return active


def run_every_fix(repos) -> None:
    """Queues what the check offers until it offers nothing."""
    for _ in range(20):
        # Tasks still running (copies) change what the check finds: it is asked
        # once they ended.
        for repo in repos:
            wait_for(lambda r=repo: not active_tasks(r), TASKS_TIMEOUT_S, f"{repo.name}'s tasks")
            assert not os.listdir(repo / "tasks"), (
                f"failed in {repo.name}: {os.listdir(repo / 'tasks')}"
            )
        offered = [(r, f) for r in repos for f in os.listdir(r / "fixes")]
        if not offered:
            return
        for repo, fix in offered:
            os.rename(repo / "fixes" / fix, repo / "tasks" / fix)
    raise AssertionError(f"fixes still offered: {offered}")


def check_through_the_mount(m: Mount) -> None:
    """repofs's own check after a test (like s3ql's fsck after its tests): once the
    tasks the test queued are done, `fixes/` offers only cleans of what the test
    removed, and the fixes the test declared in `mount.expected_fixes`."""
    for repo in sorted(p for p in m.path.iterdir() if p.is_dir()):
        wait_for(lambda r=repo: settled(r), TASKS_TIMEOUT_S, f"{repo.name}'s tasks")
        failed = os.listdir(repo / "tasks")
        assert not failed, f"tasks left in {repo.name}: {failed}"
        allowed = {f"clean-{i}" for i in os.listdir(repo / "trash")} | m.expected_fixes
        unexpected = set(os.listdir(repo / "fixes")) - allowed
        assert not unexpected, f"the check of {repo.name} found {sorted(unexpected)}"


@contextlib.contextmanager
def checked(m: Mount):
    """Starts `m` for a test; then repofs's own check, the log and every
    repository's storage are judged, and `m` is stopped whatever happens."""
    try:
        yield m.start()
        try:
            check_through_the_mount(m)
        except (AssertionError, OSError) as exc:
            # The test's own tmp dir may be gone by the time anyone looks.
            tail = "\n".join(m.log_text().splitlines()[-40:])
            raise AssertionError(f"{exc}\nthe log's end:\n{tail}") from exc
        unexpected = m.unexpected_log_lines()
        assert not unexpected, "unexpected errors in the log:\n" + "\n".join(unexpected)
    finally:
        m.stop()
    for root in m.data.iterdir():
        if (root / "repofs.json").exists():
            assert_consistent(root, "clean-volumes" in m.expected_fixes)


@pytest.fixture
def mount(tmp_path):
    with checked(Mount(tmp_path)) as m:
        yield m


@pytest.fixture
def repo(mount) -> Path:
    """The default repository of a fresh mount."""
    return mount.default


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs, for repositories that must run out of space for real."""
    path = tmp_path / "small"
    path.mkdir()
    sh(f"mount -t tmpfs -o size=32m repofs-test {path}")
    try:
        yield path
    finally:
        sh(f"umount -l {path}", check=False)


def status(repo: Path, image_id: str) -> dict:
    """getImageStatus, as `cat status/ID` shows it."""
    return json.loads((repo / "status" / image_id).read_text())


def errno_of(call, *args) -> int:
    """The errno that `call(*args)` fails with (the test fails if it succeeds)."""
    with pytest.raises(OSError) as info:
        call(*args)
    return info.value.errno


def write_at(path, offset: int, data: bytes) -> None:
    """pwrite(2) of all of `data` into the file at `path`."""
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, offset) == len(data)
    finally:
        os.close(fd)


def pattern(tag: bytes, length: int) -> bytes:
    """A distinct, recognisable byte pattern."""
    return (tag * (length // len(tag) + 1))[:length]


# The root blkio cgroup's limits (cgroup v1): they slow down every write (or
# read) of one device, the flusher's and the journal's included.
THROTTLE = Path("/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device")
READ_THROTTLE = THROTTLE.with_name("blkio.throttle.read_bps_device")


class Disk:
    def __init__(self, device: str, path: Path):
        self.device = device
        self.path = path
        self.number = Path(f"/sys/class/block/{Path(device).name}/dev").read_text().strip()

    @contextlib.contextmanager
    def throttled(self, bytes_per_s: int, reads: bool = False):
        """Writes to the disk (and `reads`: reads from it, past the page cache,
        which it drops first) at no more than `bytes_per_s`, as a busy disk."""
        if not THROTTLE.exists():
            pytest.skip(f"no {THROTTLE} (cgroup v1 blkio) to slow a disk down")
        limits = [THROTTLE, READ_THROTTLE] if reads else [THROTTLE]
        if reads:
            sh("sync && echo 3 > /proc/sys/vm/drop_caches")
        for limit in limits:
            limit.write_text(f"{self.number} {bytes_per_s}\n")
        try:
            yield
        finally:
            for limit in limits:
                limit.write_text(f"{self.number} 0\n")

    @contextlib.contextmanager
    def frozen(self):
        """Every write to the disk waits until the end of the block (fsfreeze)."""
        sh(f"fsfreeze --freeze {self.path}")
        try:
            yield
        finally:
            sh(f"fsfreeze --unfreeze {self.path}")


@contextlib.contextmanager
def loop_file_system(image: Path, path: Path, mkfs: str, size: str = "4G"):
    """A file system made by `mkfs` on a loop file, mounted at `path`; unmounted
    and its loop device detached whatever happens."""
    sh(f"truncate -s {size} {image} && {mkfs} {image}")
    device = sh(f"losetup --find --show {image}").stdout.strip()
    try:
        path.mkdir()
        sh(f"mount {device} {path}")
        try:
            yield Disk(device, path)
        finally:
            if sh(f"umount {path}", check=False).returncode != 0:
                sh(f"umount -l {path}", check=False)
    finally:
        sh(f"losetup --detach {device}", check=False)


@pytest.fixture
def disk(tmp_path):
    """An ext4 of its own."""
    with loop_file_system(tmp_path / "disk.img", tmp_path / "disk", "mkfs.ext4 -q") as made:
        yield made


@pytest.fixture
def xfs_disk(tmp_path):
    """An XFS with reflink: storage where snapshots are clones."""
    with loop_file_system(tmp_path / "xfs.img", tmp_path / "xfs", "mkfs.xfs -q -m reflink=1",
                          "8G") as made:  # fmt: skip
        yield made


@pytest.fixture
def mount_on_disk(tmp_path, disk):
    """A mount whose data directory (its repositories) is on `disk`; its log and
    mount point are not."""
    m = Mount(tmp_path)
    m.data = disk.path / "data"
    with checked(m) as started:
        yield started


def check_of(driver) -> list:
    """The check's fixes of a repository opened by its driver, without a mount:
    through a Repository facade for one trio run."""
    import trio

    from repofs.leases import HostWatch
    from repofs.ops.fix_repository import list_fixes
    from repofs.repository import Repository

    async def main() -> list:
        repo = Repository("r", driver, driver.format, {}, False, "h", HostWatch())
        try:
            return await list_fixes(repo)
        finally:
            driver.on_change = driver.on_task_change = None  # told only in that run

    return trio.run(main)


@pytest.fixture(scope="module")
def gluster_server(tmp_path_factory):
    """A glusterd of the tests' own on loopback (gluster.py), for a module's tests."""
    from gluster import GlusterServer

    server = GlusterServer(tmp_path_factory.mktemp("gluster"))
    try:
        yield server.start()
    finally:
        server.stop()
