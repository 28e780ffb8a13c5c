"""merge: folds the layer of a removed snapshot into the layers above it.

When a snapshot S is in the trash but images still build on its top volume L
(they were restored after S was removed), every chain holding L reads through
it, and S cannot be purged. The merge writes L's data into each layer U directly
above L (only where U has none of its own: what each image reads does not change)
and points U at L's backing B; then no record names L and S can be cleaned.

Durable steps, and what a crash after each leaves:
1. measure: read the chains (no change).
2. commit data + rebase: for each U above L, `qemu-img rebase` (safe mode) onto
   B: it copies the clusters of L that U lacks, then rewrites U's backing name
   last. A crash mid-way leaves U naming L with some of L's data copied into it:
   the same bytes either way; the step is redone for every U still naming L
   (reconciled from `qemu-img info`).
3. record: every record (live or trashed) whose chain holds L drops it, and those
   whose base is S take S's base. A crash between records leaves some naming L
   while their U already skips it: reads are right, the step is redone.
4. clean is left to the clean fix now offered for S.
All images whose chains hold L must be closed (the task waits, saying so), and
none of another repository may read through L (EBUSY: its record would name a
layer its header skips).
"""

from repofs import errors
from repofs.fixes.check import Inventory
from repofs.fixes.context import FixKindSpec, TaskContext
from repofs.model import ImageRecord, Volume
from repofs.qemu import img


async def run(ctx: TaskContext) -> None:
    snapshot = await ctx.repo.read_image(ctx.task.image, True)
    layer = snapshot.top
    await ctx.enter_stage("measure")
    elsewhere = (await ctx.repo.volumes_used_elsewhere()).get(layer.file_name)
    if elsewhere:
        raise errors.busy(f"{', '.join(elsewhere)} read through {snapshot.id}'s layer from "
                          "another repository: optimize them there first")  # fmt: skip
    guarded = [u.id for u in await _users(ctx, layer)]
    async with ctx.exclusive("commit", guarded):
        # A snapshot of a user, or a disk on one, waits for its guard; a copy into
        # the repository may still have made a chain through the layer.
        users = await _users(ctx, layer)
        for user in users:
            if user.id not in guarded and not await ctx.repo.wait_for_release(user.id):
                raise errors.busy(f"{user.id} is open: queue the merge again when it is closed")
        below = snapshot.chain[1] if len(snapshot.chain) > 1 else None
        uppers = {r.chain[r.chain.index(layer) - 1] for r in users}
        for done, upper in enumerate(sorted(uppers, key=lambda v: v.file_name)):
            await _rebase_past(ctx, upper, layer, below)
            await ctx.report("commit", done + 1, len(uppers))
        ctx.crash_point("record")
        await ctx.enter_stage("record")
        for user in users:
            await _drop_layer(ctx, user, snapshot)
    await ctx.report("record", 1, 1, force=True)


async def _users(ctx: TaskContext, layer: Volume) -> list:
    """Records (live or trashed) that read through `layer` from above."""
    inventory = await Inventory.read(ctx.repo, elsewhere=False)
    return [r for r in inventory.live + inventory.trashed if layer in r.chain[1:]]


async def _rebase_past(ctx: TaskContext, upper: Volume, layer: Volume,
                       below: Volume | None) -> None:  # fmt: skip
    path = ctx.repo.volume_path(upper)
    info = await img.info(path, upper.format)
    if info.get("backing-filename") != layer.file_name:
        return  # done before a crash
    await img.rebase_safe(path, ctx.repo.volume_path(below) if below else None,
                          below.format if below else None)  # fmt: skip


async def _drop_layer(ctx: TaskContext, user: ImageRecord, snapshot: ImageRecord) -> None:
    def drop(record: ImageRecord) -> ImageRecord:
        chain = tuple(v for v in record.chain if v != snapshot.top)
        base = snapshot.base if record.base == snapshot.id else record.base
        return record.evolve(chain=chain, base=base)

    await ctx.repo.change_image(user.id, drop, trashed=not await ctx.repo.has_image(user.id))


MERGE = FixKindSpec(stages=("measure", "commit", "record"), progress_on_image=False, run=run)
