"""The connected repositories of one repofs process and what is open in them."""

from dataclasses import dataclass, field
from pathlib import Path

import trio

from repofs import errors
from repofs.drivers.localfs import LocalRepository
from repofs.model import Strategy
from repofs.qemu.storage_daemon import StorageDaemon

RELEASE_GRACE_S = 1.0


@dataclass
class ConnectedRepository:
    name: str
    driver: LocalRepository
    format: str
    params: dict[str, str]
    # Connected through `connect` or --connect: forgotten at unmount (DESIGN.md).
    transient: bool
    # Image ID -> OpenImage (ops/open_image.py), while any handle has it open.
    open_images: dict = field(default_factory=dict)
    # Serialises this process's check-then-change sequences on the repository
    # (e.g. "nothing depends on S" then "trash S"); the driver's lock covers
    # single record writes against other processes.
    changing: trio.Lock = field(default_factory=trio.Lock)

    async def preallocates(self) -> bool:
        """New space of raw volumes is allocated at once under strategy performance."""
        options = await trio.to_thread.run_sync(self.driver.read_options)
        return options.strategy is Strategy.PERFORMANCE

    async def wait_for_release(self, image_id: str) -> bool:
        """Whether the image is closed, after waiting a moment if it is not: the
        kernel sends the last release of a file only after close(2) returned, so
        `cp x disks/a && ln disks/a snapshots/s` may find `a` open for a moment."""
        image = self.open_images.get(image_id)
        if image is not None:
            with trio.move_on_after(RELEASE_GRACE_S):
                await image.closed.wait()
        return image_id not in self.open_images

    async def ensure_closed(self, image_id: str, doing: str) -> None:
        if not await self.wait_for_release(image_id):
            raise errors.busy(f"cannot {doing} {image_id} in {self.name}: it is open")


class Registry:
    def __init__(self, data_dir: Path, host_id: str, daemon: StorageDaemon):
        self.data_dir = data_dir
        self.host_id = host_id
        self.daemon = daemon
        self.repositories: dict[str, ConnectedRepository] = {}

    def get(self, name: str) -> ConnectedRepository:
        try:
            return self.repositories[name]
        except KeyError:
            raise errors.not_found(f"no repository {name} is connected") from None
