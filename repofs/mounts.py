"""FUSE mount points: whether one is live, dead (its process gone) or absent,
and unmounting them. Used for repofs's own mount (cli.py) and for the Gluster
volumes repofs mounts (drivers/glusterfs.py)."""

import errno
import os
import subprocess
from pathlib import Path


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


def fusermount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["fusermount3", *args], capture_output=True, text=True)


def clear_dead_mount(mountpoint: Path) -> None:
    """Detaches what a dead FUSE process left at `mountpoint` ("Transport
    endpoint is not connected")."""
    if mount_state(mountpoint) == MountState.DEAD:
        fusermount("-u", "-z", str(mountpoint))
