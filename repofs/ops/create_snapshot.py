"""createSnapshot: `ln disks/D snapshots/S`, O(1) whatever the disk's size."""

import logging

import trio

from repofs import errors
from repofs.crash import crash_point
from repofs.model import (
    UNFINISHED_SNAPSHOT,
    ImageKind,
    ImageRecord,
    ImageState,
    Pending,
)
from repofs.names import check_name
from repofs.registry import ConnectedRepository

log = logging.getLogger(__name__)


async def create_snapshot(repo: ConnectedRepository, disk_id: str, snapshot_id: str) -> ImageRecord:
    """The disk's current top volume becomes the snapshot's; the disk gets a new
    qcow2 top over it.

    Durable steps:
    1. create the disk's new top NEW over its top volume TOP;
    2. write the snapshot record (chain from TOP down), `broken` with UNFINISHED_SNAPSHOT;
    3. write the disk record: chain NEW, TOP, ...; base = the snapshot;
    4. write the snapshot record `optimized` (`degraded` if its base is elsewhere).
    After (1): NEW is named by no record (clean removes it). After (2): a broken
    snapshot whose top is still its disk's top; a mend finishes it by redoing (3)
    and (4) (or a removal drops it); the disk is untouched. After (3): the snapshot
    is complete but still says broken; a mend does (4).
    """
    check_name(snapshot_id)
    driver = repo.driver
    async with repo.changing:
        disk = await trio.to_thread.run_sync(driver.read_image, disk_id)
        if disk.kind is not ImageKind.VIRTUAL_DISK:
            raise errors.invalid(f"{disk_id} is a snapshot; snapshots are taken of disks")
        # Live snapshots (blockdev-snapshot on the open node) are not built yet.
        await repo.ensure_closed(disk_id, "snapshot")
        await repo.ensure_no_task(disk_id, "snapshot")
        if disk.state is ImageState.BROKEN:
            raise errors.invalid(f"cannot snapshot broken disk {disk_id}: {disk.last_error}")
        repo.check_free(snapshot_id)

        chain = await repo.new_overlay(disk)
        new_top = chain[0]
        snapshot = ImageRecord(
            snapshot_id,
            ImageKind.SNAPSHOT,
            disk.size,
            disk.chain,
            base=disk.base,
            state=ImageState.BROKEN,
            last_error=UNFINISHED_SNAPSHOT,
            pending=Pending.SNAPSHOT,
            owner=disk.owner,
        )
        snapshot = await repo.commit_new_image(snapshot, new_top)
        crash_point("snapshot:switch")
        max_chain = (await trio.to_thread.run_sync(driver.read_options)).max_chain
        state = ImageState.DEGRADED if len(chain) > max_chain else disk.state
        await trio.to_thread.run_sync(
            driver.update_image, disk.evolve(chain=chain, base=snapshot_id, state=state)
        )
        crash_point("snapshot:finish")
        snapshot = await trio.to_thread.run_sync(
            driver.update_image,
            snapshot.evolve(state=snapshot.usable_state, last_error=None, pending=None),
        )
    log.info("created snapshot %s/%s of %s", repo.name, snapshot_id, disk_id)
    return snapshot
