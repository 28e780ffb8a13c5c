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
from repofs.ops.open_image import OpenImage, hold_open_image, release_image
from repofs.registry import ConnectedRepository

log = logging.getLogger(__name__)


async def create_snapshot(repo: ConnectedRepository, disk_id: str, snapshot_id: str) -> ImageRecord:
    """The disk's current top volume becomes the snapshot's; the disk gets a new
    qcow2 top over it. An open disk is paused meanwhile (its requests in flight
    finish, new ones wait) and its data synced first, so the snapshot holds
    exactly the writes acknowledged before it (crash-consistent); its requests
    then go to the new top.

    Durable steps:
    1. create the disk's new top NEW over its top volume TOP;
    2. write the snapshot record (chain from TOP down), `broken` with UNFINISHED_SNAPSHOT;
    3. (open disk) put NEW above TOP where the disk is served; write the disk
       record: chain NEW, TOP, ...; base = the snapshot;
    4. write the snapshot record `optimized` (`degraded` if its base is elsewhere).
    After (1): NEW is named by no record (clean removes it). After (2): a broken
    snapshot whose top is still its disk's top; a mend finishes it by redoing (3)
    and (4) (or a removal drops it); the disk is untouched, and no request of an
    open disk reached NEW yet (they resume after 3). After (3): the snapshot is
    complete but still says broken; a mend does (4).
    """
    check_name(snapshot_id)
    driver = repo.driver
    async with repo.changing:
        disk = await trio.to_thread.run_sync(driver.read_image, disk_id)
        if disk.kind is not ImageKind.VIRTUAL_DISK:
            raise errors.invalid(f"{disk_id} is a snapshot; snapshots are taken of disks")
        await repo.ensure_no_task(disk_id, "snapshot")
        if disk.state is ImageState.BROKEN:
            raise errors.invalid(f"cannot snapshot broken disk {disk_id}: {disk.last_error}")
        repo.check_free(snapshot_id)
        image = await hold_open_image(repo, disk_id)
        if image is None:
            snapshot = await _take(repo, disk, snapshot_id, None)
        else:
            try:
                # Most of the sync while requests go on: the pause then syncs
                # only what was written meanwhile.
                await image.io.fsync()
                async with image.paused():
                    await image.sync()
                    snapshot = await _take(repo, image.record, snapshot_id, image)
            finally:
                await release_image(image)
    log.info("created snapshot %s/%s of %s", repo.name, snapshot_id, disk_id)
    return snapshot


async def _take(
    repo: ConnectedRepository, disk: ImageRecord, snapshot_id: str, image: OpenImage | None
) -> ImageRecord:
    driver = repo.driver
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
    switched = disk.evolve(chain=chain, base=snapshot_id, state=state)
    if image is None:
        await trio.to_thread.run_sync(driver.update_image, switched)
    else:
        await _switch_open_disk(repo, image, switched, snapshot_id)
    crash_point("snapshot:finish")
    return await trio.to_thread.run_sync(
        driver.update_image,
        snapshot.evolve(state=snapshot.usable_state, last_error=None, pending=None),
    )


async def _switch_open_disk(
    repo: ConnectedRepository, image: OpenImage, switched: ImageRecord, snapshot_id: str
) -> None:
    """Step 3 for an open disk: NEW goes above TOP where the disk is served, then
    the record follows. If the first fails, the disk stays as it was and the
    half-made snapshot goes (its record, then NEW; if that fails too, it is what
    a crash after step 2 leaves). If the record cannot be written, the disk's
    requests fail from then on: its writes would go where no record points."""
    driver = repo.driver
    try:
        await image.add_overlay(driver.volume_path(switched.top))
    except errors.RepofsError:
        with trio.CancelScope(shield=True):
            for undo in (driver.trash_image, driver.purge_trashed_image):
                await trio.to_thread.run_sync(undo, snapshot_id)
            await trio.to_thread.run_sync(driver.remove_volume, switched.top)
        raise
    try:
        image.record = await trio.to_thread.run_sync(driver.update_image, switched)
    except BaseException as exc:
        image.fail(f"its live snapshot {snapshot_id} could not be recorded: {exc}")
        raise
