"""The `repofs` command: mount, umount, tour."""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from repofs import errors, logs
from repofs.client.status import gather, render
from repofs.client.wait import STATES, wait_for_state
from repofs.client.watch import watch
from repofs.mounts import MountState, clear_dead_mount, fusermount, mount_state
from repofs.qemu.tools import require

MOUNT_TIMEOUT_S = 30
UMOUNT_TIMEOUT_S = 30
PID_ATTRIBUTE = "user.repofs.pid"


def mount_pid(mountpoint: Path) -> int | None:
    try:
        return int(os.getxattr(mountpoint, PID_ATTRIBUTE))
    except OSError:
        return None


def _check_environment(mountpoint: Path) -> None:
    if not os.path.exists("/dev/fuse"):
        raise errors.not_found("/dev/fuse is missing: load the fuse module (modprobe fuse)")
    require("qemu-img")
    require("qemu-storage-daemon")
    clear_dead_mount(mountpoint)  # a crashed repofs left it behind
    if mount_state(mountpoint) == MountState.LIVE:
        raise errors.busy(f"{mountpoint} is already mounted")
    mountpoint.mkdir(parents=True, exist_ok=True)


def cmd_mount(args) -> int:
    mountpoint = Path(args.mountpoint).absolute()
    data_dir = Path(args.data_dir).absolute()
    if mount_state(mountpoint) == MountState.LIVE and mount_pid(mountpoint):
        print(f"repofs is already mounted at {args.mountpoint}")
        return 0
    _check_environment(mountpoint)
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.foreground:
        from repofs.fs.mount import MountConfig, serve  # pyfuse3 only where it mounts

        log_fd = logs.setup(args.log_file, args.log_level)
        host_id = args.host_id or f"{socket.gethostname()}:{data_dir}"
        serve(MountConfig(mountpoint, data_dir, args.connect, host_id, args.allow_other, log_fd))
        return 0
    return _mount_in_background(args, mountpoint, data_dir)


def _mount_in_background(args, mountpoint: Path, data_dir: Path) -> int:
    log_file = Path(args.log_file or data_dir / "repofs.log").absolute()
    cmd = [
        sys.executable,
        "-m",
        "repofs",
        "mount",
        str(mountpoint),
        "--foreground",
        "--data-dir",
        str(data_dir),
        "--log-file",
        str(log_file),
        "--log-level",
        args.log_level,
    ]
    for line in args.connect:
        cmd += ["--connect", line]
    if args.host_id:
        cmd += ["--host-id", args.host_id]
    if args.allow_other:
        cmd.append("--allow-other")
    start = log_file.stat().st_size if log_file.exists() else 0
    child = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + MOUNT_TIMEOUT_S
    while time.monotonic() < deadline:
        if mount_pid(mountpoint) == child.pid:
            return 0
        if child.poll() is not None:
            break
        time.sleep(0.05)
    else:
        child.kill()
    with open(log_file, errors="replace") as f:
        f.seek(start)
        tail = f.read().strip().splitlines()[-5:]
    print(f"repofs: mount failed; from {log_file}:", *tail, sep="\n  ", file=sys.stderr)
    return 1


def cmd_umount(args) -> int:
    mountpoint = Path(args.mountpoint).absolute()
    state = mount_state(mountpoint)
    if state == MountState.ABSENT:
        print(f"{args.mountpoint} is not mounted")
        return 0
    if state == MountState.DEAD:
        fusermount("-u", "-z", str(mountpoint))
        print(f"cleaned up the dead mount at {args.mountpoint}")
        return 0
    pid = mount_pid(mountpoint)
    result = fusermount("-u", str(mountpoint))
    if result.returncode != 0:
        print(f"repofs: cannot unmount: {result.stderr.strip()}", file=sys.stderr)
        return 1
    # The process stops its storage daemon before it exits.
    deadline = time.monotonic() + UMOUNT_TIMEOUT_S
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return 0
        time.sleep(0.05)
    if pid:
        print(f"repofs: process {pid} is still running after unmount", file=sys.stderr)
        return 1
    return 0


def cmd_tour(args) -> int:
    readme = Path(args.mountpoint) / "README"
    print(f"repofs is mounted at {args.mountpoint}; try, in {args.mountpoint}:\n")
    print(readme.read_text())
    return 0


def cmd_status(args) -> int:
    repos = gather(Path(args.path))
    print(json.dumps(repos, indent=1) + "\n" if args.json else render(repos), end="")
    return 0


def cmd_wait(args) -> int:
    status = wait_for_state(Path(args.image).absolute(), args.state, args.timeout)
    print(f"{status['id']} is {status['state']}")
    return 0


def cmd_watch(args) -> int:
    return watch(Path(args.path).absolute(), sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repofs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    mount = sub.add_parser("mount", help="mount repofs (in the background unless --foreground)")
    mount.add_argument("mountpoint")
    mount.add_argument(
        "--data-dir",
        required=True,
        help="where the mount's own repositories live (default among them)",
    )
    mount.add_argument(
        "--connect",
        action="append",
        default=[],
        metavar='"NAME FORMAT k=v ..."',
        help="connect a repository for this mount (repeatable)",
    )
    mount.add_argument("--foreground", action="store_true")
    mount.add_argument("--host-id", help="this host's ID (default: hostname:data-dir)")
    mount.add_argument(
        "--log-file",
        help="log here (default: DATA/repofs.log; with --foreground, stderr, "
        "in the journal's format when systemd connected it to the journal)",
    )
    mount.add_argument(
        "--log-level",
        choices=logs.LEVELS,
        default="info",
        help="info: a line per operation and per task state change; warning: only "
        "refusals and failures; debug: also what probes were answered",
    )
    mount.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users (e.g. libvirt's qemu user) open images",
    )
    mount.set_defaults(func=cmd_mount)
    umount = sub.add_parser("umount", help="unmount and wait for repofs to stop")
    umount.add_argument("mountpoint")
    umount.set_defaults(func=cmd_umount)
    tour = sub.add_parser("tour", help="print a short tour of a mount")
    tour.add_argument("mountpoint")
    tour.set_defaults(func=cmd_tour)
    show = sub.add_parser("status", help="every image and task of a mount or a repository")
    show.add_argument("path", help="MOUNT or MOUNT/REPO")
    show.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    show.set_defaults(func=cmd_status)
    progress = sub.add_parser(
        "watch",
        help="progress bars of running tasks (plain lines when not on a terminal) until "
        "none is queued or running; exit 1 if one failed or was stopped",
    )
    progress.add_argument("path", help="MOUNT or MOUNT/REPO")
    progress.set_defaults(func=cmd_watch)
    wait = sub.add_parser(
        "wait",
        help="wait until an image reaches a state (exit 1 on timeout, when a task on it "
        "fails, when it becomes broken or is removed)",
    )
    wait.add_argument("image", help="MOUNT/REPO/disks/ID or MOUNT/REPO/snapshots/ID")
    wait.add_argument("--state", choices=STATES, default="optimized")
    wait.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")
    wait.set_defaults(func=cmd_wait)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        sys.exit(args.func(args))
    except errors.RepofsError as exc:
        print(f"repofs: {exc.reason}", file=sys.stderr)
        sys.exit(1)
