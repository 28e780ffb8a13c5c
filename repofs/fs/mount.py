"""Running one repofs mount: the storage daemon, the connected repositories and
the FUSE session, all in one trio run, until unmounted or terminated."""

import errno
import fcntl
import logging
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from repofs import errors
from repofs.fix_daemon import FixDaemon
from repofs.fs.operations import RepofsOperations
from repofs.ops.connect_repository import connect_data_dir, connect_repository, parse_connection
from repofs.qemu.storage_daemon import StorageDaemon
from repofs.registry import Registry
from repofs.service import notify

log = logging.getLogger(__name__)

# In the data directory, held by the process that mounts it (a dot name: no
# repository is called that).
DATA_DIR_LOCK = ".mount.lock"
# Readers of `events` hold a request each while they wait (at most a second).
MAX_CONCURRENT_REQUESTS = 128


@dataclass(frozen=True)
class MountConfig:
    mountpoint: Path
    data_dir: Path
    connections: list[str]  # "NAME FORMAT key=value ..." lines, connected at start
    host_id: str
    allow_other: bool
    log_fd: int | None  # where qemu-storage-daemon's output goes


async def _serve(config: MountConfig, run_dir: Path) -> None:
    daemon = StorageDaemon(run_dir, config.log_fd)
    registry = Registry(config.data_dir, config.host_id, daemon)
    try:
        await _serve_registry(config, registry)
    finally:
        # Once the storage daemon and the fix daemon stopped: nothing holds a file
        # of a repository open any more (a Gluster volume unmounts only then).
        with trio.CancelScope(shield=True):
            for repo in registry.repositories.values():
                await repo.close()
    log.info("unmounted %s", config.mountpoint)


async def _serve_registry(config: MountConfig, registry: Registry) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.daemon.run)
        await connect_data_dir(registry)
        for line in config.connections:
            await connect_repository(registry, *parse_connection(line))
        fixes = FixDaemon(registry)
        await nursery.start(fixes.run)
        options = set(pyfuse3.default_options) | {"fsname=repofs", "subtype=repofs"}
        if config.allow_other:
            options.add("allow_other")
        pyfuse3.init(RepofsOperations(registry, fixes), str(config.mountpoint), options)
        nursery.start_soon(_terminate_on_signal)
        log.info(
            "mounted %s (data %s, host %s)", config.mountpoint, config.data_dir, config.host_id
        )
        notify("READY=1", f"STATUS=mounted at {config.mountpoint}")
        try:
            await pyfuse3.main(max_tasks=MAX_CONCURRENT_REQUESTS)
        finally:
            notify("STOPPING=1")
            pyfuse3.close(unmount=True)
            nursery.cancel_scope.cancel()


class UndeliveredReplies(logging.Filter):
    """pyfuse3 logs an ERROR when the kernel no longer waits for a reply (ENOENT):
    the caller was interrupted, or the mount went away while a release was under
    way (an unmount right after a close). The operation itself ran; nothing is
    wrong, so it is said at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.endswith(f"fuse_reply_* failed with {os.strerror(errno.ENOENT)}"):
            log.debug("%s (the kernel dropped the request)", message)
            return False
        return True


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return


def serve(config: MountConfig) -> None:
    """Mounts and serves in the foreground until unmounted."""
    lock = _lock_data_dir(config.data_dir)
    run_dir = Path(tempfile.mkdtemp(prefix="repofs-"))
    logging.getLogger("pyfuse3").addFilter(UndeliveredReplies())
    try:
        trio.run(_serve, config, run_dir)
    except* errors.RepofsError as group:
        raise group.exceptions[0] from None
    finally:
        for entry in run_dir.iterdir():
            entry.unlink()
        os.rmdir(run_dir)
        os.close(lock)


def _lock_data_dir(data_dir: Path) -> int:
    """One mount per data directory: a second would find its repositories taken
    and serve none of them. The lock goes with the process (a crash too)."""
    fd = os.open(data_dir / DATA_DIR_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        reason = f"data directory {data_dir} is in use by another repofs mount"
        log.error("cannot mount: %s", reason)
        raise errors.busy(reason) from None
    return fd
