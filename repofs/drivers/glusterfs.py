"""glusterfs-1.0: a posix-1.0 repository at the root of a Gluster volume that
repofs mounts itself (docs/multi-host.md).

`--connect "NAME glusterfs-1.0 server=HOST volume=VOLUME"` runs the Gluster
FUSE client (`glusterfs`, from Debian's glusterfs-client) as a child of repofs,
mounting the volume at DATA_DIR/.glusterfs/NAME; disconnecting unmounts it. The
layout on the volume is posix-1.0's, marker included, so a host may as well
connect the same volume as posix-1.0 through a mount its admin made.

Owning the client is what lets a host fence itself: when its storage stalls
(heartbeats not renewed for LEASE_S / 2), it kills its client. Requests the
client held and writes it buffered die with it instead of landing after
another host has taken over; threads stuck on the mount get ECONNABORTED; the
brick drops the client's fcntl locks, so the repository lock is free for the
others. The repository rejoins with a new client once no host can still count
on this one's leases (fix_daemon.py).
"""

import logging
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from repofs import errors
from repofs.drivers.posix import SharedRepository
from repofs.mounts import MountState, clear_dead_mount, fusermount, mount_state

log = logging.getLogger(__name__)

FORMAT = "glusterfs-1.0"
MOUNT_TIMEOUT_S = 30
# How long a new client may take to answer its first statfs. A client whose
# brick does not answer (a stalled storage: a rejoin after a fence while the
# stall lasts) holds every call on the repository until Gluster gives up on the
# brick (network.ping-timeout, 42 s), each call a thread of repofs: mount() gives
# up sooner, and the fix daemon tries again LEASE_S later.
ANSWER_TIMEOUT_S = 5
UNMOUNT_TIMEOUT_S = 30
# A host name or an IPv4/IPv6 address; Gluster's own rule for volume names.
_SERVER = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:\-]{0,252}")
_VOLUME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}")


def check_volume(server: str, volume: str) -> None:
    """EINVAL for a server or volume that is no host name or volume name (the
    values become arguments of the client: none may look like an option)."""
    if not _SERVER.fullmatch(server):
        raise errors.invalid(f"{FORMAT} server={server!r} is not a host name or address")
    if not _VOLUME.fullmatch(volume):
        raise errors.invalid(f"{FORMAT} volume={volume!r} is not a Gluster volume name")


class GlusterClient:
    """One `glusterfs` FUSE client process of this repofs, mounting one volume."""

    def __init__(self, server: str, volume: str, mountpoint: Path):
        self.server = server
        self.volume = volume
        self.mountpoint = mountpoint
        self.log_file = mountpoint.with_name(f"{mountpoint.name}.log")
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def mount(self, cut_off: bool = False) -> None:
        """Starts the client and waits until the volume answers at the mount
        point; EHOSTUNREACH, with the client's reason, if it cannot be reached.

        `cut_off`: the host fenced itself off the volume, and this is a try at
        rejoining it. If it fails, the mount point is left with a dead mount, as
        the fence left it: the repository's paths keep failing with ENOTCONN (the
        storage cannot be reached) instead of finding the empty directory below,
        where every disk would look gone (ENOENT)."""
        # Whatever is mounted there is stale: this client's dead mount after a
        # fence, or the mount of a repofs that was killed (its client may live on).
        if mount_state(self.mountpoint) != MountState.ABSENT:
            fusermount("-u", "-z", str(self.mountpoint))
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        start = self.log_file.stat().st_size if self.log_file.exists() else 0
        # Kernel attribute and entry caches off: records are replaced by rename on
        # other hosts, and each host must see that within 2 s (Gluster's own
        # metadata cache keeps 1 s).
        self._process = subprocess.Popen(
            ["glusterfs", "--no-daemon", "--process-name=fuse",
             f"--volfile-server={self.server}", f"--volfile-id={self.volume}",
             "--attribute-timeout=0", "--entry-timeout=0", "--negative-timeout=0",
             "--xlator-option=*-md-cache.md-cache-timeout=0",
             f"--log-file={self.log_file}", str(self.mountpoint)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        waited = MOUNT_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            state = _within(ANSWER_TIMEOUT_S, mount_state, self.mountpoint)
            if state is None:  # mounted, and its statfs waits for the brick
                waited = ANSWER_TIMEOUT_S
                break
            if state == MountState.LIVE:
                log.info("mounted gluster volume %s:%s at %s (client %d)", self.server,
                         self.volume, self.mountpoint, self._process.pid)  # fmt: skip
                return
            time.sleep(0.05)
        exited = self._process.poll()
        self.kill()  # which ends a statfs left waiting (ECONNABORTED); its mount stays, dead
        if cut_off:
            self._stay_cut_off()
        else:
            clear_dead_mount(self.mountpoint)
        raise errors.unreachable(f"cannot mount gluster volume {self.server}:{self.volume}: "
                                 f"{self._reason(start, exited, waited)}")  # fmt: skip

    def _reason(self, start: int, exited: int | None, waited: float) -> str:
        """The client's last error line since `start` in its log; else how it ended."""
        try:
            with open(self.log_file, errors="replace") as f:
                f.seek(start)
                failed = [line for line in f if "] E [" in line]
        except OSError:
            failed = []
        if not failed:
            if exited is not None:
                return f"the glusterfs client exited with status {exited} (see {self.log_file})"
            return f"no answer within {waited}s"
        return failed[-1].split("]", 2)[-1].strip()

    def _stay_cut_off(self) -> None:
        """Leaves a dead mount at the mount point: the client's own, killed, or,
        where it exited before it mounted (glusterd unreachable, say), one with
        no process at all: a FUSE mount of a /dev/fuse whose only descriptor is
        closed at once. unmount() and the next mount() detach it like the other."""
        if mount_state(self.mountpoint) == MountState.DEAD:
            return
        fuse = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        try:
            # -i: no mount.fuse helper, which would look for a program to run.
            result = subprocess.run(
                ["mount", "-i", "-t", "fuse.repofs-cut-off", "-o",
                 f"fd={fuse},rootmode=40000,user_id=0,group_id=0", "repofs-cut-off",
                 str(self.mountpoint)],
                pass_fds=(fuse,), capture_output=True, text=True,
            )  # fmt: skip
        finally:
            os.close(fuse)
        if result.returncode != 0:
            log.error("cannot leave a dead mount at %s: %s; its repository's paths find "
                      "an empty directory until it rejoins", self.mountpoint,
                      result.stderr.strip())  # fmt: skip

    def unmount(self) -> None:
        """Unmounts the volume; the client exits with it. A client fenced off and
        not mounted again since is gone: what it left is at most a dead mount."""
        if self._process is None or self._process.poll() is not None:
            clear_dead_mount(self.mountpoint)
            return
        result = fusermount("-u", str(self.mountpoint))
        if result.returncode != 0:
            log.error("cannot unmount %s: %s; detaching it", self.mountpoint, result.stderr.strip())
            fusermount("-u", "-z", str(self.mountpoint))
        try:
            self._process.wait(UNMOUNT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("gluster client %d still runs after unmount: killing it", self.pid)
            self.kill()

    def kill(self) -> None:
        """Ends the client at once (a stopped one too). Its mount stays, dead:
        every access fails (ENOTCONN) instead of reaching the empty directory
        below, until the next mount() replaces it."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()


def _within(seconds: float, fn, *args):
    """fn(*args) from a thread of its own; None if it has not returned within
    `seconds`. The thread is left to its call (a daemon: it cannot keep the
    process alive)."""
    returned = []
    thread = threading.Thread(target=lambda: returned.append(fn(*args)), daemon=True,
                              name=f"repofs {fn.__name__}")  # fmt: skip
    thread.start()
    thread.join(seconds)
    return returned[0] if returned else None


class GlusterRepository(SharedRepository):
    """posix-1.0 on the volume `client` mounts. Blocking, like its parents."""

    client: GlusterClient

    @classmethod
    def attach(cls, server: str, volume: str, mountpoint: Path) -> "GlusterRepository":
        check_volume(server, volume)
        client = GlusterClient(server, volume, mountpoint)
        client.mount()
        try:
            repo = cls.open(mountpoint)
        except BaseException:
            client.unmount()
            raise
        repo.client = client
        return repo

    def close(self) -> None:
        super().close()
        self.client.unmount()

    def fence(self) -> bool:
        log.error("fencing %s: killing gluster client %d", self.root, self.client.pid)
        self.client.kill()
        return True

    def rejoin(self) -> None:
        self.client.mount(cut_off=True)
