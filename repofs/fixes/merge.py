"""merge: folds the layer of a removed snapshot into the layers above it.

When a snapshot S is in the trash but images still build on its top volume L
(`rm snapshots/S` while they did, or restored after S was removed), every chain
holding L reads through it, and S cannot be purged. The merge writes L's data
into each layer U directly above L (only where U has none of its own: what each
image reads does not change) and points U at L's backing B; then no record
names L and S can be cleaned.

Each U is folded live when an image reading through it is open on this host:
the storage daemon serving it streams L into U in the open chain
(block-stream); else offline, by `qemu-img rebase` (safe mode).

Durable steps, and what a crash after each leaves:
1. measure: read the chains (no change).
2. commit data + rebase: for each U, the stream or the rebase copies the
   clusters of L that U lacks, then rewrites U's backing name last (flushed
   before the next step). A crash mid-way leaves U naming L with some of L's
   data copied into it: the same bytes either way; the step is redone for every
   U still naming L (reconciled from `qemu-img info`).
3. record: every record (live or trashed) whose chain holds L drops it, and those
   whose base is S take S's base. A crash between records leaves some naming L
   while their U already skips it: reads are right, the step is redone.
4. clean is left to the clean fix now offered for S.
When the one layer above L holds less than L, the merge goes the other way
instead (fixes/merge_down.py).
The images reading through L are held (their guards) throughout: their
snapshots, removal, renames and first opens wait. One open on another host (a
shared repository) is waited for. None of another repository may read through
L (EBUSY: its record would name a layer its header skips). An open chain that
is closed during its stream cancels it; the task then folds U offline.
"""

import logging
from functools import partial

from repofs import errors
from repofs.fixes import merge_down
from repofs.fixes.check import Inventory
from repofs.fixes.context import FixKindSpec, TaskContext
from repofs.fixes.removal import drop_from_chain
from repofs.model import ImageRecord, Volume
from repofs.qemu import img

log = logging.getLogger(__name__)


async def run(ctx: TaskContext) -> None:
    try:
        snapshot = await ctx.repo.read_image(ctx.task.image, True)
    except errors.NotFound:
        if ctx.checkpoint.target is None:
            raise
        return await merge_down.finish(ctx, ctx.task.image)  # after its step 5
    layer = snapshot.top
    await ctx.enter_stage("measure")
    elsewhere = (await ctx.repo.volumes_used_elsewhere()).get(layer.file_name)
    if elsewhere:
        raise errors.busy(f"{', '.join(elsewhere)} read through {snapshot.id}'s layer from "
                          "another repository: optimize them there first")  # fmt: skip
    # S too: its restore waits (a merge down changes its layer).
    held = [snapshot.id, *(u.id for u in await _users(ctx, layer))]
    while True:
        async with ctx.held("commit", held):
            # A snapshot of a user, or a copy into the repository, may have made a
            # chain through the layer since: every user is held, or none is merged.
            users = await _users(ctx, layer)
            new = [u.id for u in users if u.id not in held]
            if not new:
                uppers = sorted({r.chain[r.chain.index(layer) - 1] for r in users},
                                key=lambda v: v.file_name)  # fmt: skip
                down = await merge_down.plan(ctx, snapshot, users)
                if down is not None:
                    await merge_down.fold_down(ctx, snapshot, users, down)
                else:
                    await _fold_up(ctx, snapshot, users, uppers)
                break
        held += new
    await ctx.report("record", 1, 1, force=True)


async def _fold_up(ctx: TaskContext, snapshot: ImageRecord, users: list[ImageRecord],
                   uppers: list[Volume]) -> None:  # fmt: skip
    """Steps 2 and 3."""
    layer = snapshot.top
    below = snapshot.chain[1] if len(snapshot.chain) > 1 else None
    for done, upper in enumerate(uppers):
        await _fold_into(ctx, upper, layer, below, users)
        await ctx.report("commit", done + 1, len(uppers), force=True)
    ctx.crash_point("record")
    await ctx.enter_stage("record")
    for user in users:
        await drop_from_chain(ctx.repo, user, layer, snapshot)


async def _users(ctx: TaskContext, layer: Volume) -> list:
    """Records (live or trashed) that read through `layer` from above."""
    inventory = await Inventory.read(ctx.repo, elsewhere=False)
    return [r for r in inventory.live + inventory.trashed if layer in r.chain[1:]]


async def _fold_into(ctx: TaskContext, upper: Volume, layer: Volume, below: Volume | None,
                     users: list[ImageRecord]) -> None:  # fmt: skip
    """Step 2 for one layer U above L: live in the chain of an image open here
    that reads through U, else offline."""
    path = ctx.repo.volume_path(upper)
    info = await img.info(path, upper.format)
    if info.get("backing-filename") != layer.file_name:
        return  # done before a crash
    below_path = ctx.repo.volume_path(below) if below else None
    served = [u for u in users if upper in u.chain and u.id in ctx.repo.open_images]
    if not served:
        log.info("merge: folding %s into %s offline", layer.file_name, upper.file_name)
        await img.rebase_safe(path, below_path, below.format if below else None)
        return
    user = served[0]
    log.info("merge: folding %s into %s live, in the open chain of %s", layer.file_name,
             upper.file_name, user.id)  # fmt: skip

    try:
        await ctx.daemon.stream(ctx.repo.volume_path(user.top), user.chain.index(upper),
                                img.backing_name(path, below_path) if below_path else None,
                                partial(ctx.report, "commit"))  # fmt: skip
    except (errors.NotFound, errors.IOFailure):
        if not await ctx.closed_meanwhile(user.id):
            raise
        await _fold_into(ctx, upper, layer, below, users)


MERGE = FixKindSpec(stages=("measure", "commit", "record"), progress_on_image=False, run=run)
