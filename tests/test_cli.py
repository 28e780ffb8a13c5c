"""The `repofs` command and the README's `make run` / `make stop`."""

import errno
import logging
import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import REPO, Mount, children, errno_of, mount_pid, sh, wait_for

pytestmark = pytest.mark.mount

REPOFS = f"{sys.executable} -m repofs"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stopped(mountpoint, pid: int) -> None:
    """Asserts the mount is gone and its process and storage daemon ended."""
    daemons = children(pid)
    result = sh(f"{REPOFS} umount {mountpoint}", cwd=REPO)
    assert result.returncode == 0
    assert not os.path.ismount(mountpoint)
    assert not alive(pid)
    wait_for(lambda: not any(alive(d) for d in daemons), 10, "the storage daemon to end")


def test_background_mount_tour_and_umount(tmp_path):
    mnt, data = tmp_path / "mnt", tmp_path / "data"
    sh(f"{REPOFS} mount {mnt} --data-dir {data}", cwd=REPO)
    pid = mount_pid(mnt)
    try:
        assert pid and alive(pid)
        assert (data / "repofs.log").exists()
        again = sh(f"{REPOFS} mount {mnt} --data-dir {data}", cwd=REPO)
        assert "already mounted" in again.stdout and mount_pid(mnt) == pid
        tour = sh(f"{REPOFS} tour {mnt}", cwd=REPO).stdout
        assert "truncate -s 20G default/disks/vm1" in tour
        sh(f"truncate -s 1M {mnt}/default/disks/vm1")
    finally:
        stopped(mnt, pid)
    assert "not mounted" in sh(f"{REPOFS} umount {mnt}", cwd=REPO).stdout


def test_make_run_twice_is_harmless_and_make_stop_stops(tmp_path):
    args = f"MOUNT={tmp_path}/mnt DATA={tmp_path}/data PREFIX={tmp_path}/usr"
    first = sh(f"make -s run {args}", cwd=REPO, timeout=600)
    assert "try, in" in first.stdout and "ln default/disks/vm1" in first.stdout
    pid = mount_pid(tmp_path / "mnt")
    try:
        second = sh(f"make -s run {args}", cwd=REPO, timeout=600)
        assert "already mounted" in second.stdout and mount_pid(tmp_path / "mnt") == pid
        assert os.listdir(tmp_path / "mnt/default/disks") == []
    finally:
        daemons = children(pid)
        sh(f"make -s stop {args}", cwd=REPO)
    assert not os.path.ismount(tmp_path / "mnt") and not alive(pid)
    wait_for(lambda: not any(alive(d) for d in daemons), 10, "the storage daemon to end")


def test_mount_over_a_dead_mount_after_kill_9(tmp_path):
    m = Mount(tmp_path)
    try:
        m.start()
        sh(f"truncate -s 1M {m.default}/disks/vm1")
        daemon = m.storage_daemon_pid
        m.kill()
        assert errno_of(os.statvfs, m.path) == errno.ENOTCONN
        # The storage daemon dies with its parent, releasing its image locks.
        wait_for(lambda: not alive(daemon), 10, "the orphaned storage daemon to end")
        m.start()
        assert os.listdir(m.default / "disks") == ["vm1"]
    finally:
        m.stop()


def test_clear_error_when_a_qemu_tool_is_missing(tmp_path):
    env = {**os.environ, "PATH": "/nonexistent"}
    result = subprocess.run(
        [sys.executable, "-m", "repofs", "mount", str(tmp_path / "mnt"),
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "repofs: qemu-img not found: install the Debian package qemu-utils "
        "(or run `make run`, which installs it)"
    )


def test_clear_error_when_dev_fuse_is_missing(tmp_path):
    # A private mount namespace whose /dev lacks fuse: the error is real, not mocked.
    result = sh(
        f"unshare -m sh -c 'mount -t tmpfs none /dev && exec {REPOFS} mount "
        f"{tmp_path}/mnt --data-dir {tmp_path}/data'",
        check=False, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "repofs: /dev/fuse is missing: load the fuse module (modprobe fuse)"
    )


def test_a_data_directory_serves_one_mount(tmp_path):
    m = Mount(tmp_path)
    try:
        m.start()
        second = sh(f"{REPOFS} mount {tmp_path}/mnt2 --data-dir {m.data}", check=False, cwd=REPO)
        assert second.returncode == 1
        assert f"data directory {m.data} is in use by another repofs mount" in second.stderr
        assert not os.path.ismount(tmp_path / "mnt2")
    finally:
        m.stop()


def test_sigterm_unmounts_cleanly(tmp_path):
    m = Mount(tmp_path)
    try:
        m.start()
        proc = m.proc
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not os.path.ismount(m.path)
        m.expect_log("signal 15: unmounting")
    finally:
        m.stop()


@pytest.mark.unit
def test_a_reply_the_kernel_dropped_is_not_an_error():
    """pyfuse3 logs an ERROR when a reply finds no request (an unmount right
    after a close); repofs says it at debug level. Other reply failures stay."""
    from repofs.fs.mount import UndeliveredReplies

    def record(reason: str) -> logging.LogRecord:
        message = "fuse_release(): fuse_reply_* failed with %s"
        return logging.LogRecord("pyfuse3", logging.ERROR, "", 1, message, (reason,), None)

    assert not UndeliveredReplies().filter(record("No such file or directory"))
    assert UndeliveredReplies().filter(record("Invalid argument"))


@pytest.mark.unit
def test_every_command_and_option_has_its_help():
    """`repofs --help` lists every command; each command's help says what it does
    and every option of it has a line of its own."""
    from repofs.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    top = sh(f"{REPOFS} --help", cwd=REPO).stdout
    assert set(commands) == {"mount", "umount", "tour", "status", "watch", "wait", "why"}
    for name, command in commands.items():
        assert f"    {name} " in top, name
        assert len(command.description) > 80, name
        for action in command._actions:
            assert action.help, f"repofs {name} {action.dest} has no help"
        shown = sh(f"{REPOFS} {name} --help", cwd=REPO).stdout
        assert all(a.option_strings[0] in shown for a in command._actions if a.option_strings)


def test_make_run_puts_repofs_on_path_for_the_commands_it_prints(tmp_path):
    """In a new shell after `make run`, `repofs` is on PATH (a link in PREFIX/bin
    to this checkout's), the README's session runs as printed (only its shrink
    fails) and every repofs command of the tour works as printed; an installed
    repofs or a file of someone else's at that place is left alone."""
    prefix, mnt = tmp_path / "usr", tmp_path / "mnt"
    args = f"MOUNT={mnt} DATA={tmp_path}/data PREFIX={prefix}"
    run = sh(f"make -s run {args}", cwd=REPO, timeout=600).stdout
    pid = mount_pid(mnt)
    try:
        command = prefix / "bin/repofs"
        assert os.readlink(command) == f"{REPO}/.venv/bin/repofs"
        assert f"{command} -> {REPO}/.venv/bin/repofs" in run
        shell = f"env -i HOME={tmp_path} PATH={prefix}/bin:/usr/bin:/bin"
        readme = (REPO / "README.md").read_text()
        session = readme.split("## A session", 1)[1].split("```sh\n", 1)[1].split("```")[0]
        trap = """trap 'echo "failed: $BASH_COMMAND" >&2' ERR\n"""
        result = subprocess.run([*shell.split(), "bash", "-c", trap + session], cwd=tmp_path,
                                capture_output=True, text=True, timeout=600)  # fmt: skip
        failed = re.findall(r"^failed: (.*)$", result.stderr, re.M)
        assert failed == ["truncate -s 1G disks/vm1"], result.stdout + result.stderr
        said = result.stdout
        assert "default: 4 images" in said and "s1 is optimized" in said, said
        assert "resize_virtual_disk default/vm1: EINVAL (Invalid argument)" in said, said
        assert sorted(os.listdir(mnt)) == ["README", "connect", "default", "r2", "r3"]
        assert sorted(os.listdir(mnt / "r2/disks")) == ["vm1", "vm3", "vm4"]
        tour = run.split("try, in", 1)[1]
        printed = re.findall(r"\brepofs (?:status|watch|wait|why) \S+", tour)
        assert len(printed) == 4, tour
        said = sh(f"{shell} sh -ec '{'; '.join(printed)}'", cwd=mnt).stdout
        assert "default: 4 images, 0 tasks" in said and "s1 is optimized" in said

        installed = prefix / "lib/repofs/bin/repofs"  # as `make install` links it
        installed.parent.mkdir(parents=True)
        installed.write_text("#!/bin/sh\n")
        for theirs in ("link", "file"):
            command.unlink()
            if theirs == "link":
                command.symlink_to(installed)
            else:
                command.write_text("#!/bin/sh\necho theirs\n")
            again = sh(f"make -s run {args}", cwd=REPO, timeout=600).stdout
            assert command.is_symlink() == (theirs == "link")
            assert command.read_text() == ("#!/bin/sh\n" if theirs == "link" else
                                           "#!/bin/sh\necho theirs\n")  # fmt: skip
            assert f"{command} is not this checkout's" in again, again
    finally:
        sh(f"make -s stop {args}", cwd=REPO)
    assert not os.path.ismount(mnt) and not alive(pid)


def test_a_wrong_path_is_said_in_one_line_with_exit_2(mount, tmp_path):
    """status, watch, wait and why on a path that names nothing they take:
    one line naming what is wrong, exit 2, before doing anything."""
    (tmp_path / "anyfile").write_text("")
    sh(f"truncate -s 1M {mount.default}/disks/vm1")
    no_mount = f"{tmp_path} is not a repofs mount"
    not_repo = "is not a mount or a repository of a mount"
    not_image = "is not an image (MOUNT/REPO/disks/ID or MOUNT/REPO/snapshots/ID)"
    cases = {
        "status /nonexist": "/nonexist: No such file or directory",
        f"status {tmp_path}": no_mount,
        f"status {tmp_path}/anyfile": f"{tmp_path}/anyfile is not a repofs mount",
        "status mnt/default/disks": f"mnt/default/disks {not_repo}",
        "status mnt/default/status/vm1": f"mnt/default/status/vm1 {not_repo}",
        "status mnt/README": f"mnt/README {not_repo}",
        "watch /nonexist": "/nonexist: No such file or directory",
        f"watch {tmp_path}": no_mount,
        "watch mnt/default/disks": f"mnt/default/disks {not_repo}",
        "wait /nonexist": "/nonexist: No such file or directory",
        f"wait {tmp_path}/anyfile": f"{tmp_path}/anyfile {not_image} of a repofs mount",
        "wait mnt/default/disks/vm9": "mnt/default/disks/vm9: No such file or directory",
        "wait mnt/default/status/vm1": f"mnt/default/status/vm1 {not_image}",
        "wait mnt/default": f"mnt/default {not_image}",
        "wait mnt/README": f"mnt/README {not_image}",
        "why /nonexist": "/nonexist: No such file or directory",
        f"why {tmp_path}": f"{tmp_path} is not in a repofs mount",
    }
    for args, said in cases.items():
        result = sh(f"{REPOFS} {args}", check=False, cwd=tmp_path)
        assert (result.returncode, result.stdout, result.stderr) == (2, "", f"repofs: {said}\n"), (
            args, result.stderr)  # fmt: skip


def test_umount_names_the_processes_that_hold_the_mount(mount):
    """EBUSY from `repofs umount` (`make stop`) names who holds the mount's files:
    pid, command line and how, in one line, and the mount stays."""
    sh(f"truncate -s 1M {mount.default}/disks/vm1")
    with open(mount.default / "disks/vm1", "rb") as image:
        reader = subprocess.Popen(["sleep", "600"], stdin=image)
    inside = subprocess.Popen(["sleep", "601"], cwd=mount.default)
    try:
        result = sh(f"{REPOFS} umount {mount.path}", check=False, cwd=REPO)
        assert result.returncode == 1 and result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith(f"repofs: cannot unmount {mount.path}: "), line
        assert f'{reader.pid} "sleep 600" (open file)' in line, line
        assert f'{inside.pid} "sleep 601" (working directory)' in line, line
        assert f"{os.getpid()} " not in line  # pytest has nothing open there
        assert os.path.ismount(mount.path)
    finally:
        for proc in (reader, inside):
            proc.kill()
            proc.wait(10)
