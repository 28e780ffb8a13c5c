"""copyImage: `ln r1/snapshots/S r2/snapshots/S`, a copy of snapshot S into r2
under the same ID (snapshot IDs name the same immutable data everywhere).

The operation only commits the new image, `broken` until its data is in; the
copy itself is the mend fix of that image, queued at once unless autofix is off.
"""

import logging

import trio

from repofs import errors
from repofs.fixes.check import mend_fix
from repofs.model import COPY_UNFINISHED, ImageKind, ImageRecord, ImageState, Pending
from repofs.ops.create_virtual_disk import check_free, commit_new_image
from repofs.ops.fix_repository import queue_fix
from repofs.registry import ConnectedRepository, Registry

log = logging.getLogger(__name__)


async def copy_snapshot(registry: Registry, source_repo: ConnectedRepository, snapshot_id: str,
                        target_repo: ConnectedRepository) -> ImageRecord:  # fmt: skip
    """Durable steps: (1) create an empty raw volume in the target (allocated under
    strategy performance), (2) write the image's record, broken with
    COPY_UNFINISHED, (3) queue its mend. A crash after (1) leaves a volume no
    record names (clean); after (2) a broken image whose mend the check offers."""
    source = await trio.to_thread.run_sync(source_repo.driver.read_image, snapshot_id)
    if source.kind is not ImageKind.SNAPSHOT:
        raise errors.invalid(f"{snapshot_id} is a {source.kind}; this copies snapshots")
    if source.state is ImageState.BROKEN:
        raise errors.invalid(f"snapshot {snapshot_id} is broken: {source.last_error}")
    driver = target_repo.driver
    async with target_repo.changing:
        check_free(target_repo, snapshot_id)
        preallocate = await target_repo.preallocates()
        volume = await trio.to_thread.run_sync(driver.create_raw_volume, source.size, preallocate)
        record = ImageRecord(
            snapshot_id, ImageKind.SNAPSHOT, source.size, (volume,),
            state=ImageState.BROKEN, last_error=COPY_UNFINISHED, pending=Pending.COPY,
            owner=source.owner,
        )  # fmt: skip
        record = await commit_new_image(target_repo, record, volume)
    log.info("copying %s from %s to %s", snapshot_id, source_repo.name, target_repo.name)
    if (await trio.to_thread.run_sync(driver.read_options)).autofix:
        await queue_fix(registry, target_repo, mend_fix(record))
    return record
