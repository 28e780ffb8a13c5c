"""`repofs mount`: its arguments and what it does. Both ways in run it: the
`repofs` command (cli.py) and the fstab helper `mount.fuse.repofs`
(mount_helper.py), which turns mount(8)'s options into these arguments."""

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from repofs import errors, logs
from repofs.mounts import MountState, clear_dead_mount, mount_state, repofs_pid
from repofs.qemu.tools import require

MOUNT_TIMEOUT_S = 30


def add_arguments(mount: argparse.ArgumentParser) -> None:
    """The arguments of `repofs mount`."""
    mount.add_argument("mountpoint", help="where to mount (made if missing)")
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
        help="connect a repository until unmount (repeatable); formats: localfs-1.0 "
        "path=DIR, posix-1.0 path=DIR (shared by hosts), glusterfs-1.0 server=H volume=V",
    )
    mount.add_argument(
        "--connect-file",
        metavar="FILE",
        help='connect the repositories FILE lists, one "NAME FORMAT k=v ..." per line '
        "(# comments); for the systemd unit and fstab",
    )
    mount.add_argument(
        "--foreground",
        action="store_true",
        help="serve in this process until unmounted (systemd's way); tells systemd "
        "READY=1 once mounted when it set $NOTIFY_SOCKET",
    )
    mount.add_argument(
        "--host-id",
        help="this host's ID in shared repositories, the same at every mount "
        "(default: hostname:data-dir)",
    )
    mount.add_argument(
        "--log-file",
        help="log here (default: DATA/repofs.log; with --foreground, stderr, "
        "in the journal's format when systemd connected it to the journal)",
    )
    mount.add_argument(
        "--log-level",
        choices=logs.LEVELS,
        default="info",
        help="info (default): a line per operation and per task state change; warning: "
        "only refusals and failures; debug: also what probes were answered",
    )
    mount.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users (e.g. libvirt's qemu user) open images; file modes and "
        "owners still apply (docs/permissions.md)",
    )


def _check_environment(mountpoint: Path) -> None:
    if not os.path.exists("/dev/fuse"):
        raise errors.not_found("/dev/fuse is missing: load the fuse module (modprobe fuse)")
    require("qemu-img")
    require("qemu-storage-daemon")
    clear_dead_mount(mountpoint)  # a crashed repofs left it behind
    if mount_state(mountpoint) == MountState.LIVE:
        raise errors.busy(f"{mountpoint} is already mounted")
    mountpoint.mkdir(parents=True, exist_ok=True)


def mount(args) -> int:
    """`repofs mount`; its exit status."""
    mountpoint = Path(args.mountpoint).absolute()
    data_dir = Path(args.data_dir).absolute()
    if mount_state(mountpoint) == MountState.LIVE and repofs_pid(mountpoint):
        print(f"repofs is already mounted at {args.mountpoint}")
        return 0
    _check_environment(mountpoint)
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.connect_file:
        args.connect += read_connect_file(Path(args.connect_file))
    if args.foreground:
        from repofs.fs.mount import MountConfig, serve  # pyfuse3 only where it mounts

        log_fd = logs.setup(args.log_file, args.log_level)
        host_id = args.host_id or f"{socket.gethostname()}:{data_dir}"
        serve(MountConfig(mountpoint, data_dir, args.connect, host_id, args.allow_other, log_fd))
        return 0
    return _mount_in_background(args, mountpoint, data_dir)


def read_connect_file(path: Path) -> list[str]:
    """The connections of a --connect-file: one "NAME FORMAT key=value ..." per
    line, as written to MOUNT/connect; blank lines and # comments skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise errors.from_os_error(exc, f"connect file {path}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


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
        if repofs_pid(mountpoint) == child.pid:
            return 0
        if child.poll() is not None:
            break
        time.sleep(0.05)
    else:
        child.kill()
    try:
        with open(log_file, errors="replace") as f:
            f.seek(start)
            tail = f.read().strip().splitlines()[-5:]
    except FileNotFoundError:
        tail = ["(it exited before it could write its log)"]
    print(f"repofs: mount failed; from {log_file}:", *tail, sep="\n  ", file=sys.stderr)
    return 1


def exit_with(command, args) -> None:
    """Runs `command(args)` and exits with its status; a refusal exits 1 with its
    reason (as every repofs command does)."""
    try:
        sys.exit(command(args))
    except errors.RepofsError as exc:
        print(f"repofs: {exc.reason}", file=sys.stderr)
        sys.exit(1)
