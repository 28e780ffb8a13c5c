"""Reads and writes of a chain: a qcow2 one through the storage daemon's NBD export.

If the daemon restarts (or the export is re-made around a resize), the NBD
connection breaks; the request is retried once on a new connection.
"""

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from repofs import errors
from repofs.drivers.volume_io import RawVolumeFile
from repofs.model import VolumeFormat
from repofs.qemu.chain_map import ChainMap
from repofs.qemu.nbd import NbdConnection, NbdError
from repofs.qemu.storage_daemon import StorageDaemon


class ImageIO(Protocol):
    """The raw view of an open chain: what an open image (ops/open_image.py) and
    a copy (fixes/copy.py) read and write through. Two kinds: a lone raw volume
    (drivers/volume_io.py RawVolumeFile), and a chain with a qcow2 top served by
    the storage daemon (QcowChainFile)."""

    # Whether it is a lone raw volume that repofs reads and writes itself: then
    # another such copies into it in the kernel (copy_to), zeros are holes, and
    # a full storage shows as ENOSPC on its writes.
    in_place: bool

    async def read(self, offset: int, length: int) -> bytes: ...

    async def write(self, offset: int, data: bytes) -> int: ...

    async def zero(self, offset: int, length: int) -> None:
        """The range reads as zeros."""

    async def fsync(self) -> None: ...

    async def close(self) -> None: ...


class QcowChainFile:
    """A chain with a qcow2 top, served by the storage daemon over NBD."""

    in_place = False

    def __init__(
        self,
        daemon: StorageDaemon,
        top: Path,
        node: str,
        conn: NbdConnection,
        files: ChainMap | None,
    ):
        self._daemon = daemon
        self._top = top
        self._node = node
        self._conn = conn
        self._files = files

    @classmethod
    async def open(
        cls,
        daemon: StorageDaemon,
        chain: list[Path],
        size: int,
        writable: bool,
        run: Callable[..., Awaitable],
    ) -> "QcowChainFile":
        """Opens the chain of volume files `chain` (top first) in the daemon. Given
        with its layers below the top, what the files can serve skips the daemon
        (chain_map.py); given as the top alone (a copy's source or target, a live
        snapshot's new top), the daemon serves everything. `size` is the image's."""
        files = None
        if len(chain) > 1:
            files = await ChainMap.map(chain, size, writable, run)
        try:
            node = await daemon.open_node(chain[0], read_only=not writable)
            try:
                conn = await daemon.connect(node)
            except BaseException:
                await daemon.close_node(chain[0])
                raise
        except BaseException:
            if files is not None:
                await files.close()
            raise
        return cls(daemon, chain[0], node, conn, files)

    async def _call(self, method: str, *args):
        for attempt in (1, 2):
            if not self._conn.alive:
                self._conn = await self._daemon.connect(self._node)
            try:
                return await getattr(self._conn, method)(*args)
            except NbdError as exc:
                if self._conn.alive or attempt == 2:
                    raise errors.from_os_error(exc, f"I/O on chain {self._top.name}") from None

    async def read(self, offset: int, length: int) -> bytes:
        if self._files is not None:
            data = await self._files.read(offset, length)
            if data is not None:
                return data
        return await self._call("pread", offset, length)

    async def write(self, offset: int, data: bytes) -> int:
        if self._files is None or not await self._files.write(offset, data):
            await self._call("pwrite", offset, data)
        return len(data)

    async def zero(self, offset: int, length: int) -> None:
        await self.write(offset, bytes(length))

    async def fsync(self) -> None:
        if self._files is not None:
            await self._files.fsync()
        await self._call("flush")

    async def resize(self, size: int) -> None:
        await self._daemon.resize(self._top, size)

    async def add_overlay(self, overlay: Path) -> None:
        await self._daemon.add_overlay(self._top, overlay)
        self._top = overlay
        self.stop_in_place()

    def stop_in_place(self) -> None:
        """See ChainMap.stop_in_place."""
        if self._files is not None:
            self._files.stop_in_place()

    async def close(self) -> None:
        await self._conn.close()
        try:
            await self._daemon.close_node(self._top)
        finally:
            if self._files is not None:
                await self._files.close()


async def open_chain(
    daemon: StorageDaemon,
    chain: list[Path],
    top_format: VolumeFormat,
    size: int,
    writable: bool,
    run: Callable[..., Awaitable],
) -> ImageIO:
    """The raw view of the chain of volume files `chain` (top first): a lone raw
    volume is read and written directly, a qcow2 top through the storage daemon.
    `run` opens files on the threads of the repository that holds them."""
    if top_format is VolumeFormat.RAW:
        return await run(RawVolumeFile, chain[0], writable)
    return await QcowChainFile.open(daemon, chain, size, writable, run)


async def add_overlay(daemon: StorageDaemon, io: ImageIO, overlay: Path, size: int,
                      run: Callable[..., Awaitable]) -> ImageIO:  # fmt: skip
    """Puts the qcow2 volume `overlay`, made over the top of an open chain, above
    it while no request is in flight; returns the file to use from then on. A
    qcow2 top gets it in the daemon (the export then writes to the overlay); a
    lone raw volume is served by the daemon from then on, as the overlay's
    backing."""
    if isinstance(io, QcowChainFile):
        await io.add_overlay(overlay)
        return io
    # Without the raw volume in the chain given: mapping it would lengthen the
    # pause; the daemon serves all reads.
    chain = await QcowChainFile.open(daemon, [overlay], size, True, run)
    await io.close()
    return chain
