"""Opening an image's raw view: the bytes the guest sees, whatever the layout.

A single raw volume is read and written directly (drivers/volume_io.py); a chain
with a qcow2 top goes through the storage daemon (qemu/chain_io.py). All handles
of one image share one OpenImage, which also holds the image's current size.
"""

import errno
import logging

import trio

from repofs import errors
from repofs.model import ImageKind, ImageRecord, Pending
from repofs.qemu.chain_io import open_chain
from repofs.registry import ConnectedRepository, Registry

log = logging.getLogger(__name__)


class OpenImage:
    def __init__(self, repo: ConnectedRepository, record: ImageRecord, io, writable: bool):
        self.repo = repo
        self.record = record
        self.io = io
        self.writable = writable
        self.size = record.size
        self.handles = 0
        self.closed = trio.Event()
        self._resizing = trio.Lock()

    async def read(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        return await self.io.read(offset, length) if length else b""

    async def write(self, offset: int, data: bytes) -> int:
        """Writes past the end grow the disk. A raw volume grows by itself, and the
        new size is persisted lazily (at flush, fsync and close) like a file's; a
        qcow2 top is resized by QEMU first, and the record follows at once."""
        end = offset + len(data)
        if end > self.size and not self.record.is_raw:
            await self.grow(end)
        written = await self.io.write(offset, data)
        self.size = max(self.size, offset + written)
        return written

    async def grow(self, size: int) -> None:
        async with self._resizing:
            if size <= self.size:
                return
            driver = self.repo.driver
            if self.record.is_raw:
                preallocate = await self.repo.preallocates()
                await trio.to_thread.run_sync(
                    driver.grow_raw_volume, self.record.top, self.size, size, preallocate
                )
            else:
                await self.io.resize(size)
            self.size = size
            await self.persist_size()

    async def persist_size(self) -> None:
        """Durable steps: fsync the volume (the data up to the new end), then write
        the record with the new size. A crash between leaves the old size."""
        if self.size == self.record.size:
            return
        await self.io.fsync()
        size = self.size
        self.record = await trio.to_thread.run_sync(
            self.repo.driver.change_image, self.record.id, lambda r: r.evolve(size=size)
        )

    async def flush(self) -> None:
        if self.writable:
            await self.persist_size()

    async def fsync(self) -> None:
        await self.io.fsync()
        await self.persist_size()


async def open_image(
    registry: Registry, repo: ConnectedRepository, image_id: str, write: bool
) -> OpenImage:
    """Opens an image for one more handle. Snapshots are read-only (EROFS).

    A first open holds the repository's `changing` lock, so that it cannot open
    the top volume that a snapshot, removal or rename of the image is changing.
    """
    image = repo.open_images.get(image_id)
    if image is None:
        async with repo.changing:
            image = repo.open_images.get(image_id)
            if image is None:
                record = await trio.to_thread.run_sync(repo.driver.read_image, image_id)
                _check_writable(record.kind, image_id, write)
                if record.pending is Pending.COPY:
                    raise errors.RepofsError(
                        errno.EAGAIN, f"{image_id} is not usable yet: {record.last_error}"
                    )
                image = await _first_open(registry, repo, record)
    _check_writable(image.record.kind, image_id, write)
    image.handles += 1
    return image


def _check_writable(kind: ImageKind, image_id: str, write: bool) -> None:
    if write and kind is ImageKind.SNAPSHOT:
        raise errors.read_only(f"{image_id} is a snapshot: snapshots are read-only")


async def _first_open(
    registry: Registry, repo: ConnectedRepository, record: ImageRecord
) -> OpenImage:
    writable = record.kind is ImageKind.VIRTUAL_DISK
    path = repo.driver.volume_path(record.top)
    io = await open_chain(registry.daemon, path, record.top.format, writable)
    if writable and record.is_raw:
        # Growth written but never persisted before a crash is dropped, so that a
        # later grow reads zeros there, not stale bytes.
        await io.truncate(record.size)
    image = repo.open_images[record.id] = OpenImage(repo, record, io, writable)
    return image


async def release_image(image: OpenImage) -> None:
    image.handles -= 1
    if image.handles:
        return
    try:
        if image.writable:
            await image.persist_size()
    finally:
        del image.repo.open_images[image.record.id]
        await image.io.close()
        image.closed.set()
