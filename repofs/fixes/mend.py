"""mend: repairs a broken image, or says what a person must decide.

What it repairs alone:

A copy still to be done (ops/copy_image.py): the image's data is copied in from
another connected repository holding the same snapshot ID, into the volume its
record already names, skipping holes and zeros and checkpointing the offset
(fixes/copy.py); then the record says `optimized` (`degraded` if it builds on
an ancestor in another repository). A crash resumes the copy; a
stop leaves the image broken, saying so; removing it then drops the half copy.

A snapshot whose creation was interrupted (ops/create_snapshot.py). Its disk
either still writes to the snapshot's top volume (the switch never happened) or
already has its new top over it. Durable steps for that case, and what a crash
after each leaves:
1. switch: (if the disk's top is still the snapshot's) create a new qcow2 top
   over it and write the disk's record with it and base = the snapshot. A crash
   before the record leaves an unnamed volume (clean); after, step 2 remains.
2. finish: write the snapshot's record `optimized`.

What it cannot decide (volumes missing, an unknown base, a looping chain, two
records claiming one volume, a qcow2 header naming another backing file than
the record does) fails the task with the question as last_error. A header is
not rewritten here: whether the header or the whole volume was replaced, only
a person can tell.
"""

from repofs import errors
from repofs.fixes.context import FixKindSpec, TaskContext
from repofs.fixes.copy import copy_snapshot_in, settle
from repofs.model import ImageKind


async def run(ctx: TaskContext) -> None:
    fix = ctx.task.fix
    if fix.data.decision:
        raise errors.invalid(fix.description)
    if fix.data.copy:
        await copy_snapshot_in(ctx, fix.image)
        return
    if not fix.data.unfinished_snapshot:
        raise errors.invalid(f"{fix.image} is broken and mend cannot tell why: {fix.description}")
    snapshot = await ctx.read_image()
    disks = await ctx.repo.list_images()
    unswitched = [d for d in disks if d.kind is ImageKind.VIRTUAL_DISK and d.top == snapshot.top]
    for disk in unswitched:
        async with ctx.repo.guard(disk.id, snapshot.id):
            await ctx.enter_stage("switch")
            if not await ctx.repo.wait_for_release(disk.id):
                raise errors.busy(f"{disk.id} is open: close it so its snapshot can finish")
            chain = await ctx.repo.new_overlay(disk)
            await ctx.repo.update_image(disk.evolve(chain=chain, base=snapshot.id))
    await ctx.enter_stage("finish")
    await settle(ctx, snapshot.id)


MEND = FixKindSpec(stages=("copy", "switch", "finish"), progress_on_image=True, run=run)
