"""A resumable copy of a chain's guest-visible data into a raw volume.

Only extents that hold data are copied (`qemu-img map`): unallocated and zero
ranges stay holes of the target. The checkpoint is the offset below which the
target holds the source's bytes; it is saved with each progress report (about
once a second or per 1%), only after the target was fsynced, so a crash redoes
at most that much work and the persisted percent never goes back.
"""

import logging
from pathlib import Path

import trio

from repofs.fixes.context import TaskContext
from repofs.model import VolumeFormat
from repofs.qemu import img
from repofs.qemu.chain_io import open_chain

log = logging.getLogger(__name__)

CHUNK = 4 << 20


async def copy_chain(ctx: TaskContext, step: str, source: Path, source_format: VolumeFormat,
                     target: Path, target_format: VolumeFormat, size: int,
                     above_depth: int | None = None) -> None:  # fmt: skip
    """Copies the data of the chain topped by volume `source` into `target`, from
    the task's checkpoint `copied` (an offset) on; saves `copied` as it goes.

    With `above_depth`, only what the source's top `above_depth` layers hold is
    copied, zeros included (they hide older data): the target is an overlay over
    a copy of the layers below.
    """
    if above_depth is None:
        wanted = [e for e in await img.map_extents(source, source_format) if e.data]
    else:
        wanted = [
            e for e in await img.map_extents(source, source_format)
            if e.depth < above_depth and (e.data or e.zero)
        ]  # fmt: skip
    extents = [e for e in wanted if e.offset < size]
    total = sum(min(e.length, size - e.offset) for e in extents)
    copied = ctx.checkpoint.get("copied", 0)
    done = sum(max(0, min(e.offset + e.length, copied, size) - e.offset) for e in extents)
    chain = await open_chain(ctx.daemon, source, source_format, writable=False)
    out = await open_chain(ctx.daemon, target, target_format, writable=True)
    try:
        await ctx.report(step, done, total, force=True)
        for extent in extents:
            offset = max(extent.offset, copied)
            end = min(extent.offset + extent.length, size)
            while offset < end:
                length = min(CHUNK, end - offset)
                data = bytes(length) if extent.zero else await chain.read(offset, length)
                await out.write(offset, data)
                offset += length
                done += length
                if ctx.progress_due(done, total):
                    await out.fsync()  # the checkpoint promises this data
                    await ctx.report(step, done, total, checkpoint={"copied": offset})
        await out.fsync()
        await ctx.report(step, total, total, force=True, checkpoint={"copied": size})
    finally:
        with trio.CancelScope(shield=True):  # a stopped task still closes its nodes
            await out.close()
            await chain.close()
