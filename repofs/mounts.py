"""FUSE mount points: whether one is live, dead (its process gone) or absent,
which process serves a repofs mount and which hold it busy, and unmounting them.
Used for repofs's own mount (cli.py, client/) and for the Gluster volumes repofs
mounts (drivers/glusterfs.py)."""

import errno
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

# The mount root's attribute that names the repofs process serving it.
PID_ATTRIBUTE = "user.repofs.pid"
# "on", or "off: REASON": whether the mount hands open images to the kernel.
PASSTHROUGH_ATTRIBUTE = "user.repofs.passthrough"


class MountState:
    ABSENT, DEAD, LIVE = "absent", "dead", "live"


def mount_state(mountpoint: Path) -> str:
    try:
        # statfs always reaches the file system (the kernel may answer stat from
        # its attribute cache for a second after the process died).
        os.statvfs(mountpoint)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            return MountState.DEAD
        # Otherwise a live file system may have failed this one call (EIO).
    return MountState.LIVE if os.path.ismount(mountpoint) else MountState.ABSENT


def repofs_pid(path: Path) -> int | None:
    """The process serving the repofs mount whose root is `path`, if it is one."""
    try:
        return int(os.getxattr(path, PID_ATTRIBUTE))
    except OSError:
        return None


def fusermount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["fusermount3", *args], capture_output=True, text=True)


def clear_dead_mount(mountpoint: Path) -> None:
    """Detaches what a dead FUSE process left at `mountpoint` ("Transport
    endpoint is not connected")."""
    if mount_state(mountpoint) == MountState.DEAD:
        fusermount("-u", "-z", str(mountpoint))


@dataclass(frozen=True)
class Holder:
    """A process that keeps a mount busy, and how."""

    pid: int
    command: str  # its command line, cut
    uses: tuple[str, ...]  # "open file", "working directory", "root", "mapped file"


COMMAND_CHARS = 60


def holders(mountpoint: Path) -> list[Holder]:
    """The processes (but this one) with a file, working directory, root or
    mapping on the file system mounted at `mountpoint`, found the way `fuser -m`
    finds them: by the device of each in /proc. Run as root, everyone's; else
    the caller's own."""
    device = os.stat(mountpoint).st_dev
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            uses = _uses(Path(entry.path), device)
            if uses:
                found.append(Holder(int(entry.name), _command(Path(entry.path)), uses))
        except OSError:
            pass  # it ended meanwhile, or is not ours to look at
    return found


def _uses(proc: Path, device: int) -> tuple[str, ...]:
    uses = []
    for fd in os.scandir(proc / "fd"):
        if _device(fd.path) == device:
            uses.append("open file")
            break
    for link, use in (("cwd", "working directory"), ("root", "root")):
        if _device(proc / link) == device:
            uses.append(use)
    with open(proc / "maps") as maps:
        for line in maps:
            major, minor = line.split()[3].split(":")
            if os.makedev(int(major, 16), int(minor, 16)) == device:
                uses.append("mapped file")
                break
    return tuple(uses)


def _device(path) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None  # closed meanwhile, or on a file system that does not answer


def _command(proc: Path) -> str:
    words = (proc / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    command = " ".join(os.fsdecode(w) for w in words) or (proc / "comm").read_text().strip()
    return command if len(command) <= COMMAND_CHARS else command[:COMMAND_CHARS] + "..."
