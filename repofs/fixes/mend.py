"""mend: repairs a broken image, or says what a person must decide.

What it repairs alone:

A copy still to be done (ops/copy_image.py): the image's data is copied in from
another connected repository holding the same snapshot ID, into the raw volume
its record already names, skipping holes and zeros and checkpointing the offset
(fixes/copy.py); then the record says `optimized`. A crash resumes the copy; a
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
records claiming one volume) fails the task with the question as last_error.
"""

import trio

from repofs import errors
from repofs.fixes.context import TaskContext
from repofs.fixes.copy import copy_chain
from repofs.model import ImageKind, ImageState, VolumeFormat
from repofs.qemu import img

# Whether the image record shows the task's progress.
PROGRESS_ON_IMAGE = True
STAGES = ("copy", "switch", "finish")


async def run(ctx: TaskContext) -> None:
    fix = ctx.task.fix
    if fix.data.get("decision"):
        raise errors.invalid(fix.description)
    if fix.data.get("copy"):
        return await _copy_in(ctx)
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
    await _finish(ctx)


async def _copy_in(ctx: TaskContext) -> None:
    """The whole snapshot into a raw volume; or, when the image is an overlay over
    an ancestor snapshot (its base) already here, only what differs from it."""
    image = await ctx.read_image()
    source_repo, source = await trio.to_thread.run_sync(
        find_source, ctx.registry, ctx.repo, image.id
    )
    above_depth = None
    if image.base is not None:
        above_depth = await trio.to_thread.run_sync(
            _layers_above, source_repo.driver, source, image.base
        )
    await copy_chain(
        ctx, "copy", source_repo.driver.volume_path(source.top), source.top.format,
        ctx.driver.volume_path(image.top), image.top.format, image.size, above_depth,
    )  # fmt: skip
    await _finish(ctx)


async def _finish(ctx: TaskContext) -> None:
    ctx.crash_point("finish")
    await ctx.enter_stage("finish")
    await ctx.update_image(
        lambda r: r.evolve(state=ImageState.OPTIMIZED, last_error=None, stage=None, pending=None)
    )


def _layers_above(source_driver, source, ancestor_id: str) -> int:
    """How many layers of `source`'s chain lie above its ancestor's top. Blocking."""
    trashed = not source_driver.has_image(ancestor_id)
    ancestor = source_driver.read_image(ancestor_id, trashed)
    if ancestor.top not in source.chain:
        raise errors.invalid(f"{ancestor_id} is no longer under {source.id} in its repository")
    return source.chain.index(ancestor.top)


def find_source(registry, target, image_id: str):
    """A connected repository other than `target` holding a usable snapshot
    `image_id` (snapshot IDs name the same immutable data everywhere), looked for
    where the target's options allow: a hint `ID=repo` names the only place, and
    `participating` narrows the search to the repositories it lists. Blocking."""
    options = target.driver.read_options()
    hinted = dict(options.image_hints).get(image_id)
    if hinted is not None:
        names = [hinted]
    elif options.participating:
        names = list(options.participating)
    else:
        names = list(registry.repositories)
    for name in names:
        repo = registry.repositories.get(name)
        if repo is None or repo is target or not repo.driver.has_image(image_id):
            continue
        record = repo.driver.read_image(image_id)
        if record.kind is ImageKind.SNAPSHOT and record.state is not ImageState.BROKEN:
            return repo, record
    where = f"{hinted} (user.repofs.image_hints)" if hinted else ", ".join(names) or "nowhere"
    raise errors.not_found(f"no usable snapshot {image_id} in {where}")
