"""Reads of an open chain's lower layers straight from their volume files.

The layers below a chain's top are snapshots' volumes: nothing writes to them.
So where the top holds nothing, a read need not go through the storage daemon:
`qemu-img map` of the chain, taken before the daemon opens it, says which file
holds each range and where (or that it reads as zeros), and that stays true
for every range the top does not take over. The top takes over a range when it
is written; QcowChainFile tells this map about every write before sending it,
so a read that touches a MiB written since the open, the top's data, a
compressed cluster or anything past the mapped size goes to the daemon.
"""

import bisect
from pathlib import Path

import trio

from repofs.drivers.volume_io import RawVolumeFile
from repofs.model import VolumeFormat
from repofs.qemu import img

# Writes are remembered per MiB touched: a read of such a MiB goes to the daemon.
# One byte per MiB: 1 MB of memory per TiB of open chain.
GRAIN = 1 << 20
ZEROS, DAEMON = -1, -2  # sources other than a lower layer's file
# About 20 MB of map; a more fragmented chain is read through the daemon only.
MAX_EXTENTS = 100_000


class LowerLayers:
    def __init__(self, extents: list[img.Extent], files: list[RawVolumeFile | None], size: int):
        self._starts = [e.offset for e in extents]
        self._extents = extents
        self._files = files  # by depth; None where the daemon serves the layer
        self._size = size
        self._written = bytearray((size + GRAIN - 1) // GRAIN)

    @classmethod
    async def map(cls, chain: list[Path], size: int, with_top: bool) -> "LowerLayers | None":
        """The map of the chain whose volumes are `chain`, top (qcow2) first, taken
        before the top is opened for writing. The top's own data is read from its
        file too if `with_top` (a read-only chain: nothing writes to the top).
        None for a chain too fragmented to keep its map in memory."""
        extents = await img.map_extents(chain[0], VolumeFormat.QCOW2)
        if len(extents) > MAX_EXTENTS:
            return None
        files: list[RawVolumeFile | None] = []
        try:
            for depth, path in enumerate(chain):
                opened = depth or with_top
                files.append(
                    await trio.to_thread.run_sync(RawVolumeFile, path, False) if opened else None
                )
        except BaseException:
            await _close(files)
            raise
        return cls(extents, files, size)

    def written(self, offset: int, length: int) -> None:
        """The top takes over this range (call before the write is sent)."""
        first = offset // GRAIN
        last = min((offset + max(length, 1) - 1) // GRAIN, len(self._written) - 1)
        if first <= last:
            self._written[first : last + 1] = b"\1" * (last - first + 1)

    async def read(self, offset: int, length: int) -> bytes | None:
        """The bytes of a range served by lower layers alone; None if any of it is
        not (the caller asks the daemon)."""
        end = offset + length
        if end > self._size or 1 in self._written[offset // GRAIN : (end - 1) // GRAIN + 1]:
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
            if source == DAEMON:
                return None
            if source == ZEROS:
                pieces.append(bytes(piece_end - position))
            else:
                host = extent.host_offset + (position - extent.offset)
                pieces.append(await self._files[source].read(host, piece_end - position))
            position = piece_end
            index += 1
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _source(self, extent: img.Extent) -> int:
        if extent.zero:
            return ZEROS  # also what no layer holds
        depth = extent.depth
        if depth < len(self._files) and self._files[depth] and extent.host_offset is not None:
            return depth
        return DAEMON

    async def close(self) -> None:
        await _close(self._files)


async def _close(files: list[RawVolumeFile | None]) -> None:
    for file in files:
        if file is not None:
            await file.close()
