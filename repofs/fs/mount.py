"""Running one repofs mount: the storage daemon, the connected repositories and
the FUSE session, all in one trio run, until unmounted or terminated."""

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

log = logging.getLogger(__name__)

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
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        registry = Registry(config.data_dir, config.host_id, daemon)
        await connect_data_dir(registry)
        for line in config.connections:
            await connect_repository(registry, *parse_connection(line))
        registry.fix_daemon = FixDaemon(registry)
        await nursery.start(registry.fix_daemon.run)
        options = set(pyfuse3.default_options) | {"fsname=repofs", "subtype=repofs"}
        if config.allow_other:
            options.add("allow_other")
        pyfuse3.init(RepofsOperations(registry), str(config.mountpoint), options)
        nursery.start_soon(_terminate_on_signal)
        log.info(
            "mounted %s (data %s, host %s)", config.mountpoint, config.data_dir, config.host_id
        )
        try:
            await pyfuse3.main(max_tasks=MAX_CONCURRENT_REQUESTS)
        finally:
            pyfuse3.close(unmount=True)
            for repo in registry.repositories.values():
                repo.driver.close()
            nursery.cancel_scope.cancel()
    log.info("unmounted %s", config.mountpoint)


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return


def serve(config: MountConfig) -> None:
    """Mounts and serves in the foreground until unmounted."""
    run_dir = Path(tempfile.mkdtemp(prefix="repofs-"))
    try:
        trio.run(_serve, config, run_dir)
    except* errors.RepofsError as group:
        raise group.exceptions[0] from None
    finally:
        for entry in run_dir.iterdir():
            entry.unlink()
        os.rmdir(run_dir)
