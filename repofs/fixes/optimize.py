"""optimize: turns a degraded image optimized, by one of two plans (the fix's
`plan`, chosen by fixes/check.py's optimize_fix).

`localize`: the image's base is a snapshot S of another repository (a disk made
by `ln r1/snapshots/S r2/disks/V` under strategy space, or a copy built on an
ancestor in a participating repository). S is copied into this repository under
its own ID (fixes/copy.py, moving only what differs from an ancestor already
here), then the image is based on that copy. Durable steps: (1) S's record here,
broken, pending its copy, (2) its data, checkpointed, then S usable, (3) its
top's backing file points at the local S (same bytes, `qemu-img rebase -u`),
(4) the image record's chain becomes the top over local S's chain. Steps 3 and
4 run with the image closed, or, open here, in a pause of its requests with
its chain closed in the storage daemon and opened again after (OpenImage.reopen).
A crash resumes at the first step not done; each is idempotent.

`flatten`: a disk is degraded when it is a qcow2 overlay committed for speed
under strategy `performance`, when its chain is longer than the repository's
max_chain, or when its base is in another repository (and the strategy is
performance, or it is a clone that must become independent). Everything below
the disk's top is immutable (snapshot layers), so it is copied into a new raw
volume while the disk stays in use; then, with the disk closed, the top is
rebased onto that copy and committed into it (steps 2-5), or, with the disk
open here, the storage daemon copies the top into it and keeps it in sync
until a pause of the disk's requests switches the disk over (_flatten_live).
A raw disk is never flattened (it is one volume) and so never moves to the
daemon for it.

Durable steps of flatten, and what a crash after each leaves:
1. copy: create TARGET (raw) and name it and the base chain in the task's
   checkpoint, then copy the base chain's data into it, checkpointing the
   offset after each fsync. Snapshots, removal and renames of the disk are EBUSY
   while the task exists, so the chain under the top stays what was copied. A crash
   resumes the copy from the checkpoint; TARGET is the task's, not garbage.
2. rebase: point the top's backing file at TARGET (same bytes as the old base,
   `qemu-img rebase -u`). The record still names the old chain, whose data is
   identical: reads are right either way; the step is redone.
3. record: the image record's chain becomes TOP, TARGET (base: none). The old
   base volumes are no longer this image's.
4. commit: `qemu-img commit` of TOP into TARGET (redone whole after a crash:
   it writes the same data), then the record's chain becomes TARGET alone and
   its state optimized.
5. unlink TOP, named by nothing since step 4. A crash just before leaves it for
   a clean; a run without a crash leaves nothing to clean.
The image is never broken: until step 4's record write it is degraded and reads
its old, equal bytes.
"""

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from repofs import errors
from repofs.fixes.context import FixKindSpec, TaskContext
from repofs.fixes.copy import copy_chain, copy_snapshot_in, start_snapshot_copy
from repofs.model import (
    Checkpoint,
    ImageKind,
    ImageRecord,
    ImageState,
    Pending,
    Plan,
    Volume,
    VolumeFormat,
)
from repofs.qemu import img
from repofs.repository import guarded

log = logging.getLogger(__name__)


async def run(ctx: TaskContext) -> None:
    image = await ctx.read_image()
    if ctx.task.fix.data.plan is Plan.LOCALIZE:
        return await _localize(ctx, image)
    if image.kind is not ImageKind.VIRTUAL_DISK:
        raise errors.invalid(f"{image.id} is a snapshot: only virtual disks are optimized")
    target = ctx.checkpoint.target
    rebased = len(image.chain) > 1 and image.chain[1].file_name == target  # after step 3
    if image.is_raw:
        await ctx.update_image(lambda r: r.evolve(state=ImageState.OPTIMIZED))
        return
    if target is None:
        preallocate = await ctx.repo.preallocates()
        volume = await ctx.repo.create_raw_volume(image.size, preallocate)
        target = volume.file_name
        base_chain = tuple(v.ref for v in image.chain[1:])
        await ctx.save_checkpoint(target=target, volumes=(target,), copied=0, base=base_chain)
    target_path = ctx.repo.volume_path(Volume.from_file_name(target))
    if not rebased:
        base_top = image.chain[1]
        await ctx.repo.verify_chain(image.chain[1:])
        await copy_chain(ctx, "copy", ctx.repo, ctx.repo.volume_path(base_top), base_top.format,
                         target_path, VolumeFormat.RAW, image.size)  # fmt: skip
    ctx.crash_point("rebase")
    if await _flatten_live(ctx, Volume.from_file_name(target)):
        return
    if rebased:
        async with ctx.exclusive("commit", [image.id]):
            return await _commit_locked(ctx, target)
    async with ctx.exclusive("rebase", [image.id]):
        image = await _same_base(ctx, await ctx.read_image())
        top = ctx.repo.volume_path(image.top)
        await img.rebase_unsafe(top, target_path, VolumeFormat.RAW)
        ctx.crash_point("record")
        await ctx.enter_stage("record")
        await ctx.update_image(
            lambda r: r.evolve(chain=(r.top, Volume.from_file_name(target)), base=None)
        )
        ctx.crash_point("commit")
        await _commit_locked(ctx, target)


async def _same_base(ctx: TaskContext, image: ImageRecord) -> ImageRecord:
    """The image, if its chain under the top is still the one copied (unless
    step 3 named the target already)."""
    if image.chain[1].file_name == ctx.checkpoint.target:
        return image
    if tuple(v.ref for v in image.chain[1:]) != ctx.checkpoint.base:
        # Defended by EBUSY on snapshots while the task runs; another host
        # could still have changed it. The copy is of the wrong base: start over.
        await ctx.save(checkpoint=Checkpoint())
        raise errors.conflict(f"{image.id}'s chain changed during the optimize; queue it again")
    return image


async def _flatten_live(ctx: TaskContext, target: Volume) -> bool:
    """The rest of a flatten while the disk is open here and written; False if
    it is not open here (the offline steps 2-5 then).

    Durable steps, and what a crash after each leaves:
    a. sync: the storage daemon copies into TARGET what TOP holds and then every
       write of the guest (qemu/storage_daemon.py synced_copy). The record names
       the old chain, whose bytes are TOP's: reads are right; a resume copies
       again (TOP's clusters only ever get written, so what an earlier run left
       in TARGET is overwritten).
    b. switch, in a pause of the disk's requests: the job ends with TARGET in
       sync, TARGET is fsynced, the record's chain becomes TARGET alone
       (optimized), and the disk is served from TARGET in place. Before the
       record write the old chain holds the same bytes, nothing having written
       since the pause began.
    c. unlink TOP, as step 5."""
    async with ctx.held("commit", [ctx.task.image]):
        opened = ctx.repo.open_images.get(ctx.task.image)
        if opened is None or not opened.handles:
            return False
        async with opened.kept():
            image = await _same_base(ctx, await ctx.read_image())
            log.info("optimize: flattening %s live, in its open chain", image.id)

            await opened.hand_writes_to_daemon()
            synced = ctx.daemon.synced_copy(ctx.repo.volume_path(image.top),
                                            ctx.repo.volume_path(target),
                                            partial(ctx.report, "commit"))  # fmt: skip
            async with synced as settle:
                await ctx.repo.sync_volume(target)  # most of it, before the pause

                async def switch() -> ImageRecord:
                    await ctx.repo.sync_volume(target)
                    ctx.crash_point("done")
                    return await ctx.update_image(_optimized(target.file_name))

                paused_ms = await _reopened(opened, switch, settle)
            log.info("optimize: %s served from its one raw volume from now on: its requests "
                     "paused %.0f ms", image.id, paused_ms)  # fmt: skip
    ctx.crash_point("unlink")
    await ctx.repo.remove_volume(image.top)
    return True


async def _reopened(opened, change: Callable[[], Awaitable[ImageRecord]],
                    settle: Callable[[], Awaitable[None]] | None = None) -> float:  # fmt: skip
    """In a pause of the open image's requests: `settle` (the end of a job in
    its chain), then OpenImage.reopen with `change`. Returns the pause in ms."""
    started = trio.current_time()
    async with opened.paused():
        if settle is not None:
            await settle()
        await opened.reopen(change)
    return (trio.current_time() - started) * 1000


def _optimized(target: str) -> Callable[[ImageRecord], ImageRecord]:
    """The record's change once TARGET holds the whole disk."""
    return lambda r: r.evolve(
        chain=(Volume.from_file_name(target),), base=None, state=ImageState.OPTIMIZED,
        stage=None, percent_complete=100, last_error=None,
    )  # fmt: skip


async def _commit_locked(ctx: TaskContext, target: str) -> None:
    await ctx.enter_stage("commit")
    image = await ctx.read_image()
    await ctx.repo.verify_chain(image.chain)
    await img.commit(ctx.repo.volume_path(image.top))
    ctx.crash_point("done")
    await ctx.update_image(_optimized(target))
    ctx.crash_point("unlink")
    await ctx.repo.remove_volume(image.top)


async def _localize(ctx: TaskContext, image: ImageRecord) -> None:
    base_id, elsewhere = image.base, image.base_repository
    if elsewhere is None:
        return  # done before a crash, or by someone else
    if not await ctx.repo.has_image(base_id):
        source_repo = ctx.registry.get(elsewhere)
        source = await source_repo.read_image(base_id)
        async with guarded((source_repo, base_id), (ctx.repo, base_id)):
            await start_snapshot_copy(source_repo, source, ctx.repo)
    local = await ctx.repo.read_image(base_id)
    if local.pending is Pending.COPY:
        local = await copy_snapshot_in(ctx, base_id)
    if not local.is_usable_snapshot:
        raise errors.conflict(f"{base_id} here is no usable snapshot to base {image.id} on: "
                              f"{local.state} {local.kind}, {local.last_error}")  # fmt: skip
    ctx.crash_point("rebase")

    async def rebase() -> ImageRecord:
        image = await ctx.read_image()
        if image.base != base_id or image.base_repository != elsewhere:
            raise errors.conflict(f"{image.id}'s base changed during the optimize")
        await img.rebase_unsafe(ctx.repo.volume_path(image.top), ctx.repo.volume_path(local.top),
                                local.top.format)  # fmt: skip
        ctx.crash_point("record")
        return await ctx.update_image(lambda r: r.evolve(
            chain=(r.top, *local.chain), state=local.usable_state, stage=None,
            percent_complete=100,
        ))  # fmt: skip

    async with ctx.held("rebase", [image.id]):
        opened = ctx.repo.open_images.get(image.id)
        if opened is not None and opened.handles:
            # Open here: in a pause of its requests, its chain is closed, rebased
            # and opened again (OpenImage.reopen).
            async with opened.kept():
                paused_ms = await _reopened(opened, rebase)
            log.info("optimize: rebased %s onto %s here, live: its requests paused %.0f ms",
                     image.id, base_id, paused_ms)  # fmt: skip
            return
    async with ctx.exclusive("rebase", [image.id]):
        await rebase()


OPTIMIZE = FixKindSpec(
    stages=("copy", "rebase", "record", "commit"), progress_on_image=True, run=run
)
