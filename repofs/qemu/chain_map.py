"""Reads and writes of an open qcow2 chain straight from its volume files.

`qemu-img map` of the chain, taken at open before the daemon opens it, says
which volume file holds each range and where. Two kinds of range then need no
storage daemon:

- What the layers below the top hold. Those are snapshots' volumes, which
  nothing writes to, so the map stays true for a range until the top takes it
  over: a write marks the MiBs it touches before it is sent, and a read that
  touches a marked MiB goes to the daemon.
- The clusters the top had allocated at open, while it is the top of a disk
  ("in place"). QEMU overwrites an allocated qcow2 cluster where it is and
  moves it only to discard it, which repofs never asks for (and an open image
  only grows), so reads and overwrites of those clusters go to the top's file
  at their mapped offset. Writes that would allocate go to the daemon. Once a
  live snapshot puts an overlay above it, the old top is a layer below like the
  others.

Everything else goes to the daemon: ranges written since the open outside the
top's clusters (until the image is opened again), compressed clusters, and
anything past the mapped size.
"""

import bisect
from collections.abc import Awaitable, Callable
from pathlib import Path

from repofs.drivers.volume_io import RawVolumeFile
from repofs.model import VolumeFormat
from repofs.qemu import img

# Writes are remembered per MiB touched: a read of such a MiB goes to the daemon.
# One byte per MiB: 1 MB of memory per TiB of open chain.
GRAIN = 1 << 20
ZEROS, DAEMON = -1, -2  # sources other than a layer's file
# About 20 MB of map; a more fragmented chain is served by the daemon only.
MAX_EXTENTS = 100_000


class ChainMap:
    def __init__(
        self, extents: list[img.Extent], files: list[RawVolumeFile], size: int, in_place: bool
    ):
        self._starts = [e.offset for e in extents]
        self._extents = extents
        self._files = files  # by depth, the top first
        self._size = size
        self._written = bytearray((size + GRAIN - 1) // GRAIN)
        self._in_place = in_place
        self._unsynced = False  # in-place writes the daemon's flush would not cover

    @classmethod
    async def map(
        cls, chain: list[Path], size: int, writable: bool, run: Callable[..., Awaitable]
    ) -> "ChainMap | None":
        """The map of the chain whose volumes are `chain`, top (qcow2) first, taken
        before the daemon opens the top. None for a chain too fragmented to keep
        its map in memory."""
        extents = await img.map_extents(chain[0], VolumeFormat.QCOW2)
        if len(extents) > MAX_EXTENTS:
            return None
        files: list[RawVolumeFile] = []
        try:
            for depth, path in enumerate(chain):
                file = await run(RawVolumeFile, path, writable and not depth)
                files.append(file)
        except BaseException:
            await _close(files)
            raise
        return cls(extents, files, size, in_place=writable)

    async def read(self, offset: int, length: int) -> bytes | None:
        """The bytes of a range the volume files serve alone; None if any of it is
        not (the caller asks the daemon)."""
        pieces = self._pieces(offset, length, writing=False)
        if pieces is None:
            return None
        data = []
        for source, host, piece_length in pieces:
            if source == ZEROS:
                data.append(bytes(piece_length))
            else:
                data.append(await self._files[source].read(host, piece_length))
        return data[0] if len(data) == 1 else b"".join(data)

    async def write(self, offset: int, data: bytes) -> bool:
        """Writes the range in place if the top's clusters hold all of it; else
        marks it taken over by the top and returns False (the caller sends it to
        the daemon)."""
        pieces = self._pieces(offset, len(data), writing=True) if self._in_place else None
        if pieces is None:
            self._mark_written(offset, len(data))
            return False
        self._unsynced = True
        done = 0
        for _, host, piece_length in pieces:
            await self._files[0].write(host, data[done : done + piece_length])
            done += piece_length
        return True

    async def fsync(self) -> None:
        """Makes the in-place writes durable: QEMU skips a flush when nothing was
        written through it since the last one, so the top's file is synced here."""
        if self._unsynced:
            self._unsynced = False
            try:
                await self._files[0].fsync()
            except BaseException:
                self._unsynced = True
                raise

    def stop_in_place(self) -> None:
        """Every write goes to the daemon from now on, and the top's clusters are
        read from its file like a lower layer's until written: a new top is above
        the old one (a live snapshot, during its pause), or a block job copies
        the top and must see every write (called while none is in flight)."""
        self._in_place = False

    def _pieces(self, offset: int, length: int, writing: bool):
        """(source, host offset, length) of each piece of the range, or None if any
        piece needs the daemon. A write's pieces must all be the top's clusters."""
        end = offset + length
        if end > self._size:
            return None
        pieces = []
        index = bisect.bisect_right(self._starts, offset) - 1
        position = offset
        while position < end:
            if index == len(self._extents):
                return None  # past what the map covers
            extent = self._extents[index]
            piece_end = min(end, extent.offset + extent.length)
            source = self._source(extent)
            in_place = self._in_place and source == 0
            if writing and not in_place:
                return None
            if source == DAEMON or (not in_place and self._taken_over(position, piece_end)):
                return None
            host = None if source == ZEROS else extent.host_offset + (position - extent.offset)
            pieces.append((source, host, piece_end - position))
            position = piece_end
            index += 1
        return pieces

    def _source(self, extent: img.Extent) -> int:
        if extent.zero:
            return ZEROS  # also what no layer holds
        if extent.depth < len(self._files) and extent.host_offset is not None:
            return extent.depth
        return DAEMON

    def _mark_written(self, offset: int, length: int) -> None:
        first = offset // GRAIN
        last = min((offset + max(length, 1) - 1) // GRAIN, len(self._written) - 1)
        if first <= last:
            self._written[first : last + 1] = b"\1" * (last - first + 1)

    def _taken_over(self, start: int, end: int) -> bool:
        return 1 in self._written[start // GRAIN : (end - 1) // GRAIN + 1]

    async def close(self) -> None:
        await _close(self._files)


async def _close(files: list[RawVolumeFile]) -> None:
    for file in files:
        await file.close()
