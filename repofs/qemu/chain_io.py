"""Reads and writes of a chain: a qcow2 one through the storage daemon's NBD export.

If the daemon restarts (or the export is re-made around a resize), the NBD
connection breaks; the request is retried once on a new connection.
"""

from pathlib import Path

import trio

from repofs import errors
from repofs.drivers.volume_io import RawVolumeFile
from repofs.model import VolumeFormat
from repofs.qemu.nbd import NbdConnection, NbdError
from repofs.qemu.storage_daemon import StorageDaemon


class QcowChainFile:
    def __init__(self, daemon: StorageDaemon, top: Path, node: str, conn: NbdConnection):
        self._daemon = daemon
        self._top = top
        self._node = node
        self._conn = conn

    @classmethod
    async def open(cls, daemon: StorageDaemon, top: Path, writable: bool) -> "QcowChainFile":
        node = await daemon.open_node(top, read_only=not writable)
        try:
            conn = await daemon.connect(node)
        except BaseException:
            await daemon.close_node(top)
            raise
        return cls(daemon, top, node, conn)

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
        return await self._call("pread", offset, length)

    async def write(self, offset: int, data: bytes) -> int:
        await self._call("pwrite", offset, data)
        return len(data)

    async def fsync(self) -> None:
        await self._call("flush")

    async def resize(self, size: int) -> None:
        await self._daemon.resize(self._top, size)

    async def add_overlay(self, overlay: Path) -> None:
        await self._daemon.add_overlay(self._top, overlay)
        self._top = overlay

    async def close(self) -> None:
        await self._conn.close()
        await self._daemon.close_node(self._top)


async def open_chain(daemon: StorageDaemon, top: Path, fmt: VolumeFormat, writable: bool):
    """The raw view of the chain topped by volume `top`: a lone raw volume is read
    and written directly, a qcow2 top through the storage daemon. Both kinds have
    read, write, fsync and close."""
    if fmt is VolumeFormat.RAW:
        return await trio.to_thread.run_sync(RawVolumeFile, top, writable)
    return await QcowChainFile.open(daemon, top, writable)


async def add_overlay(daemon: StorageDaemon, io, overlay: Path):
    """Puts the qcow2 volume `overlay`, made over the top of an open chain, above
    it while no request is in flight; returns the file to use from then on. A
    qcow2 top gets it in the daemon (the export then writes to the overlay); a
    lone raw volume is served by the daemon from then on, as the overlay's
    backing."""
    if isinstance(io, QcowChainFile):
        await io.add_overlay(overlay)
        return io
    chain = await QcowChainFile.open(daemon, overlay, writable=True)
    await io.close()
    return chain
