"""clean: frees the space of removed images, of volumes no record names, of
temp files that interrupted atomic writes left, and forgets stopped or failed
tasks whose image is gone.

A clean of a trashed image ("clean-ID") first forgets its record, then removes
the volumes that nothing names any more; "clean-volumes" only does the second.

Durable steps, and what a crash after each leaves:
1. purge: unlink the trashed record (refused while an image builds on it). After
   a crash its volumes are named by nothing: the next check offers clean-volumes.
2. free: forget the stale tasks, then unlink each volume that no record and no
   other task names and that is not being made (drivers/localfs.py
   unsettled_volumes: no lock holds creates back), and every temp file. Each
   unlink is final; a crash leaves fewer to do. Then the repository's reserve
   of free space is allocated again if bookkeeping on a full storage used it
   (drivers/localfs.py).
"""

import logging

from repofs import errors
from repofs.fixes.check import Inventory
from repofs.fixes.context import FixKindSpec, TaskContext
from repofs.model import Volume
from repofs.repository import Repository

log = logging.getLogger(__name__)


async def run(ctx: TaskContext) -> None:
    repo = ctx.repo
    image_id = ctx.task.image
    if image_id is not None:
        await ctx.enter_stage("purge")
        inventory = await Inventory.read(repo)
        record = next((r for r in inventory.trashed if r.id == image_id), None)
        if record is not None:
            references = inventory.references(record)
            if references:
                raise errors.busy(f"cannot purge {image_id}: {', '.join(references)} build on it")
            await repo.purge_trashed_image(image_id)
            ctx.crash_point("free")
    await ctx.enter_stage("free")
    freed = await _free(repo)
    await repo.keep_reserve()
    await ctx.report("free", freed, freed, force=True)
    log.info("clean of %s freed %d bytes", repo.name, freed)


async def _free(repo: Repository) -> int:
    inventory = await Inventory.read(repo)
    for task in inventory.stale_tasks():
        await repo.delete_task(task)
    garbage = [Volume.from_file_name(name) for name in inventory.orphans()]
    freed = await repo.run(lambda: sum(repo.allocated_bytes(v) for v in garbage))
    for volume in garbage:
        await repo.remove_volume(volume)
    await repo.remove_temp_files()
    return freed


CLEAN = FixKindSpec(stages=("purge", "free"), progress_on_image=False, run=run)
