"""The `repofs` command: mount, umount, tour, status, watch, wait, why."""

import argparse
import errno
import json
import os
import sys
import textwrap
import time
from pathlib import Path

from repofs import errors, refusals
from repofs.client import mount_command, paths, status, why
from repofs.client.wait import STATES, wait_for_state
from repofs.client.watch import watch
from repofs.mounts import (
    MountState,
    fusermount,
    holders,
    mount_state,
    repofs_pid,
)

UMOUNT_TIMEOUT_S = 30
# A path that names nothing the command takes is a usage error, as argparse's
# own are: exit 2, told apart from what went wrong once it ran (exit 1).
USAGE_ERROR = 2


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
    pid = repofs_pid(mountpoint)
    result = fusermount("-u", str(mountpoint))
    if result.returncode != 0:
        print(f"repofs: cannot unmount {args.mountpoint}: {_why_busy(mountpoint, result.stderr)}",
              file=sys.stderr)  # fmt: skip
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


def _why_busy(mountpoint: Path, said: str) -> str:
    """Who holds the mount, when fusermount said it is busy; else what it said."""
    found = holders(mountpoint) if os.strerror(errno.EBUSY) in said else []
    if not found:
        return said.strip()
    named = ", ".join(f'{h.pid} "{h.command}" ({", ".join(h.uses)})' for h in found)
    return f"in use by {named}; stop them or leave the mount, then run it again"


def cmd_tour(args) -> int:
    readme = Path(args.mountpoint) / "README"
    print(f"repofs is mounted at {args.mountpoint}; try, in {args.mountpoint}:\n")
    print(readme.read_text())
    return 0


def _named(find, path: str):
    """What `path` names for the command (`find` of client/paths.py); exits with
    USAGE_ERROR and one line when it names nothing the command takes."""
    try:
        return find(path)
    except errors.RepofsError as exc:
        print(f"repofs: {exc.reason}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


def cmd_status(args) -> int:
    repos = status.gather(_named(paths.repositories, args.path))
    print(json.dumps(repos, indent=1) + "\n" if args.json else status.render(repos), end="")
    return 0


def cmd_wait(args) -> int:
    found = wait_for_state(*_named(paths.image, args.image), args.state, args.timeout)
    print(f"{found['id']} is {found['state']}")
    return 0


def cmd_watch(args) -> int:
    return watch(_named(paths.repositories, args.path), sys.stdout)


def cmd_why(args) -> int:
    print(why.render(why.latest_refusals(_named(paths.mount, args.path))), end="")
    return 0


USAGE = """\
Everything else is a file operation in the mount (MOUNT/README has the tour):
  truncate -s 20G MOUNT/default/disks/vm1       create a disk
  ln MOUNT/default/disks/vm1 MOUNT/default/snapshots/s1   snapshot it
  cat MOUNT/default/status/vm1                  its state and progress
  ls MOUNT/default/fixes; mv MOUNT/default/fixes/F MOUNT/default/tasks/   repair
A refused file operation says only its errno ("Invalid argument"); the reason:
  repofs why MOUNT                              the mount's latest refusals, and why
status, watch, wait and why exit 2, with one line, on a path that names nothing
they take. Documents: README.md, docs/guide.md (an image's life), docs/errors.md
(what each errno means), docs/admin.md (boot-time mounts, logs), docs/from-vdsm.md."""


def _command(sub, name: str, summary: str, details: str, func, examples: str = ""):
    parser = sub.add_parser(name, help=summary, description=textwrap.fill(f"{summary}. {details}"),
                            epilog=examples or None,
                            formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repofs",
        description="repofs: VM disk images as one FUSE file system. This command mounts\n"
        "and unmounts it, and shows what it is doing.",
        epilog=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    mount = _command(
        sub, "mount", "mount repofs (in the background unless --foreground)",
        "The repositories of the data directory (default, and those made with mkdir) "
        "are connected at every mount; --connect and --connect-file connect others "
        "until unmount. A dead mount left at MOUNTPOINT by a crash is cleaned up first. "
        "In the background it returns once the mount is live (exit 1 with the log's "
        "last lines if it could not mount).", mount_command.mount,
        "examples:\n  repofs mount /srv/repofs --data-dir /var/lib/repofs\n"
        "  repofs mount /srv/repofs --data-dir /var/lib/repofs --allow-other \\\n"
        "      --connect \"shared posix-1.0 path=/mnt/nfs/images\" --host-id host1",
    )  # fmt: skip
    mount_command.add_arguments(mount)
    umount = _command(
        sub, "umount", "unmount and wait for repofs to stop",
        "Returns once the process and its qemu-storage-daemon have ended. While a "
        "process has a file, its working directory or a mapping in the mount, it exits 1 "
        "naming those processes (pid, command line, how). Running tasks stop at their "
        "last checkpoint and resume at the next mount, or on another host.", cmd_umount,
    )  # fmt: skip
    umount.add_argument("mountpoint", help="where repofs is mounted")
    tour = _command(sub, "tour", "print a short tour of a mount",
                    "The mount's README: file operations and what they do.", cmd_tour)  # fmt: skip
    tour.add_argument("mountpoint", help="where repofs is mounted")
    show = _command(
        sub, "status", "every image and task of a mount or a repository, as tables",
        "Images: ID, kind, state, size, allocated, base, host, stage, percent, last "
        "error; tasks: state, host, stage, bytes done and total, rate, ETA. It reads the "
        "mount's status/ and tasks/ files only, so it works on every host with the mount.",
        cmd_status, "examples:\n  repofs status /srv/repofs\n"
        "  repofs status /srv/repofs/default --json | jq '.default.images[].state'",
    )  # fmt: skip
    show.add_argument("path", help="MOUNT or MOUNT/REPO")
    show.add_argument(
        "--json",
        action="store_true",
        help='the same for scripts: {"REPO": {"images": [...], "tasks": [...]}}',
    )
    progress = _command(
        sub, "watch", "progress bars of queued and running tasks until none is left",
        "Driven by the repositories' events files (no polling). On a terminal, a bar per "
        "task; otherwise one plain line per change. Exit 0 when no task of the "
        "repositories connected when it started is queued or running; exit 1 if one "
        "failed or was stopped meanwhile.", cmd_watch,
        "example:\n  mv /srv/repofs/default/fixes/optimize-vm2 /srv/repofs/default/tasks/ "
        "&& repofs watch /srv/repofs",
    )  # fmt: skip
    progress.add_argument("path", help="MOUNT or MOUNT/REPO")
    wait = _command(
        sub, "wait", "wait until an image reaches a state",
        "Reads the repository's events (no polling). Exit 0 once the image is in the "
        "state; exit 1 with the reason on timeout, when a task working on it fails, "
        "when it becomes broken, or when it is removed.", cmd_wait,
        "example:\n  ln /srv/repofs/default/snapshots/s1 /srv/repofs/backup/snapshots/s1\n"
        "  repofs wait /srv/repofs/backup/snapshots/s1 --timeout 3600",
    )  # fmt: skip
    wait.add_argument("image", help="MOUNT/REPO/disks/ID or MOUNT/REPO/snapshots/ID")
    wait.add_argument("--state", choices=STATES, default="optimized",
                      help="the state to wait for (default: optimized)")  # fmt: skip
    wait.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")
    refused = _command(
        sub, "why", "the latest refusals of a mount, with their reasons",
        "A refused file operation says only its errno (`Invalid argument`); the mount "
        f"keeps its last {refusals.KEPT} refusals with the reason its log gives. One line "
        "each, newest last: time, operation (and repository/image) or system call, errno, "
        "reason. It reads an attribute of the mount root, so it works for whoever can read "
        "the mount, wherever the log goes.", cmd_why,
        "example:\n  echo \"r6 foo-1.0 path=/tmp\" > /srv/repofs/connect   # Invalid argument\n"
        "  repofs why /srv/repofs",
    )  # fmt: skip
    refused.add_argument("path", help="MOUNT, or any path in it")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    mount_command.exit_with(args.func, args)
