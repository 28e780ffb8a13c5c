"""mend: repairs a broken image, or says what a person must decide.

What it repairs alone: a snapshot whose creation was interrupted
(ops/create_snapshot.py). Its disk either still writes to the snapshot's top
volume (the switch never happened) or already has its new top over it.

Durable steps for that case, and what a crash after each leaves:
1. switch: (if the disk's top is still the snapshot's) create a new qcow2 top
   over it and write the disk's record with it and base = the snapshot. A crash
   before the record leaves an unnamed volume (clean); after, step 2 remains.
2. finish: write the snapshot's record `optimized`.

What it cannot decide (volumes missing, an unknown base, a looping chain, two
records claiming one volume) fails the task with the question as last_error.
"""

import trio

from repofs import errors
from repofs.fixes.context import TaskContext
from repofs.model import ImageKind, ImageState, VolumeFormat
from repofs.qemu import img

# Whether the image record shows the task's progress.
PROGRESS_ON_IMAGE = True
STAGES = ("switch", "finish")


async def run(ctx: TaskContext) -> None:
    fix = ctx.task.fix
    if fix.data.get("decision"):
        raise errors.invalid(fix.description)
    if not fix.data.get("unfinished_snapshot"):
        raise errors.invalid(f"{fix.image} is broken and mend cannot tell why: {fix.description}")
    snapshot = await ctx.read_image()
    driver = ctx.driver
    disks = await trio.to_thread.run_sync(driver.list_images)
    unswitched = [d for d in disks if d.kind is ImageKind.VIRTUAL_DISK and d.top == snapshot.top]
    for disk in unswitched:
        async with ctx.repo.changing:
            await ctx.enter_stage("switch")
            if not await ctx.repo.wait_for_release(disk.id):
                raise errors.busy(f"{disk.id} is open: close it so its snapshot can finish")
            new_top = driver.new_volume(VolumeFormat.QCOW2)
            await img.create_overlay(driver.volume_path(new_top), disk.size,
                                     driver.volume_path(disk.top), disk.top.format)  # fmt: skip
            await trio.to_thread.run_sync(
                driver.update_image,
                disk.evolve(chain=(new_top, *disk.chain), base=snapshot.id),
            )
    ctx.crash_point("finish")
    await ctx.enter_stage("finish")
    await ctx.update_image(
        lambda r: r.evolve(state=ImageState.OPTIMIZED, last_error=None, stage=None)
    )
