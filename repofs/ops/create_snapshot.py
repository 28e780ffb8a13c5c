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
    Volume,
    VolumeFormat,
)
from repofs.names import check_name
from repofs.ops.logged import logged
from repofs.ops.open_image import OpenImage, clones_quickly, hold_open_image, release_image
from repofs.qemu import img
from repofs.repository import QUICK_CLONE_EXTENTS, Repository

log = logging.getLogger(__name__)


@logged(image="snapshot_id")
async def create_snapshot(
    repo: Repository, disk_id: str, snapshot_id: str, backup_for: str | None = None
) -> ImageRecord:
    """On reflink storage, the snapshot of a raw disk is a clone of its volume
    (_clone_snapshot), unless it has too many extents to clone in time
    (_clones_in_time); otherwise the disk's current top volume becomes the
    snapshot's and the disk gets a new qcow2 top over it. An open disk is
    paused for steps 2 and 3 (its requests in flight finish, new ones wait) and
    its data synced first, so the snapshot holds exactly the writes acknowledged
    before it (crash-consistent); its requests then go to the new top.
    `backup_for`: the repository a backup copies it into (ops/copy_image.py).

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
    async with repo.guard(disk_id, snapshot_id):
        disk = await repo.read_image(disk_id)
        if disk.kind is not ImageKind.VIRTUAL_DISK:
            raise errors.invalid(f"{disk_id} is a snapshot; snapshots are taken of disks")
        await repo.ensure_no_task(disk_id, "snapshot")
        if disk.state is ImageState.BROKEN:
            raise errors.invalid(f"cannot snapshot broken disk {disk_id}: {disk.last_error}")
        await repo.check_free(snapshot_id)
        max_chain = (await repo.read_options()).max_chain
        writer = repo.writer_elsewhere(disk)
        if writer is not None:
            raise errors.busy(f"cannot snapshot {disk_id}: it is open for writing on host "
                              f"{writer}, whose I/O only that host can pause")  # fmt: skip
        image = await hold_open_image(repo, disk_id)
        if image is not None and not image.writable:
            # Opened for reading only (a shared repository): its readers go on
            # reading the chain they opened, the snapshot's from now on.
            await release_image(image)
            image = None
        if disk.is_raw and repo.reflink and await _clones_in_time(repo, disk, image):
            try:
                return await _clone_snapshot(repo, disk, snapshot_id, image, backup_for)
            finally:
                if image is not None:
                    await release_image(image)
        if image is None:
            chain = await repo.new_overlay(disk)
            snapshot = await _switch(repo, disk, chain, snapshot_id, max_chain, None, backup_for)
        else:
            try:
                snapshot = await _switch_live(repo, image, snapshot_id, max_chain, backup_for)
            finally:
                await release_image(image)
        crash_point("snapshot:finish")
        snapshot = await repo.update_image(
            snapshot.evolve(state=snapshot.usable_state, last_error=None, pending=None)
        )
    return snapshot


async def _clones_in_time(repo: Repository, disk: ImageRecord, image: OpenImage | None) -> bool:
    """Whether a raw disk on reflink storage is snapshotted by a clone: if its
    volume has few enough extents for the clone to take no longer than a live
    snapshot may stall the disk's writers (clones_quickly; of an open disk,
    counted once its dirty data is written, which the count would otherwise
    write under the file's I/O lock), or if the kernel serves its I/O
    (passthrough): then a clone is the only barrier for its writes, however
    long. Else the disk gets a qcow2 overlay, O(1) whatever its extents (an
    open one is paused for it). Writes through the mount wait for the whole
    `ln` anyway: the kernel holds the disk's inode lock through a link."""
    if image is not None:
        await image.io.fsync()
    return await clones_quickly(repo, disk) or (image is not None and image.passthrough)


async def _clone_snapshot(
    repo: Repository,
    disk: ImageRecord,
    snapshot_id: str,
    image: OpenImage | None,
    backup_for: str | None,
) -> ImageRecord:
    """The snapshot of a raw disk on reflink storage: a new raw volume sharing
    the disk's extents. The disk stays as it is, raw, one volume. An open disk is
    synced, then paused for the sync of what was written meanwhile and the
    clone, so the snapshot holds exactly the writes acknowledged before it.

    Durable steps:
    1. clone the disk's volume into NEW (FICLONE, fsync);
    2. write the snapshot's record: chain NEW, `optimized`, lineage = the disk's;
    3. write the disk's record: lineage = the snapshot.
    After (1): NEW is named by no record (clean removes it). After (2): the
    snapshot is whole; the disk's lineage still names an older snapshot, so the
    next incremental copy of its snapshots moves more than it must, never less
    (it compares the volumes' extents, drivers/reflink.py).
    """
    if image is None:
        volume = await repo.clone_volume(repo, disk.top, disk.size)
    else:
        started = trio.current_time()
        async with image.paused():
            await image.sync()
            disk = image.record
            volume = await repo.clone_volume(repo, disk.top, image.size)
            disk = disk.evolve(size=image.size)
        paused_ms = (trio.current_time() - started) * 1000
        if disk.id in repo.slow_clones:
            # Served by the kernel, fragmented since its open (clones_quickly).
            log.warning("live snapshot %s of %s (a clone of a volume of more than %d extents) "
                        "held its writes %.0f ms: the kernel serves it, and nothing but a "
                        "clone can hold the kernel's writes; it is served by repofs from its "
                        "next open", snapshot_id, disk.id, QUICK_CLONE_EXTENTS,
                        paused_ms)  # fmt: skip
        else:
            log.info("live snapshot %s of %s (a clone) paused its I/O %.1f ms",
                     snapshot_id, disk.id, paused_ms)  # fmt: skip
    crash_point("snapshot:clone")
    snapshot = ImageRecord(snapshot_id, ImageKind.SNAPSHOT, disk.size, (volume,),
                           lineage=disk.lineage, owner=disk.owner,
                           backup_for=backup_for)  # fmt: skip
    snapshot = await repo.commit_new_image(snapshot, volume)
    crash_point("snapshot:lineage")

    def descend(current: ImageRecord) -> ImageRecord:
        return current.evolve(lineage=snapshot_id)

    record = await repo.change_image(disk.id, descend)
    if image is not None:
        image.record = record
    return snapshot


async def _switch_live(
    repo: Repository, image: OpenImage, snapshot_id: str, max_chain: int, backup_for: str | None
) -> ImageRecord:
    """Steps 1-3 of an open disk: what does not need the pause (most of the sync,
    NEW) is done while requests go on; the pause lasts steps 2 and 3."""
    await image.io.fsync()
    size = image.size
    chain = await repo.new_overlay(image.record.evolve(size=size))
    started = trio.current_time()
    async with image.paused():
        await image.sync()
        if image.size != size:  # grown by a write meanwhile
            await img.resize(repo.volume_path(chain[0]), VolumeFormat.QCOW2, image.size)
        snapshot = await _switch(repo, image.record, chain, snapshot_id, max_chain, image,
                                 backup_for)  # fmt: skip
    paused_ms = (trio.current_time() - started) * 1000
    log.info(
        "live snapshot %s of %s paused its I/O %.1f ms", snapshot_id, image.record.id, paused_ms
    )
    return snapshot


async def _switch(
    repo: Repository,
    disk: ImageRecord,
    chain: tuple[Volume, ...],
    snapshot_id: str,
    max_chain: int,
    image: OpenImage | None,
    backup_for: str | None,
) -> ImageRecord:
    """Steps 2 and 3, given NEW's chain; returns the snapshot's record (broken)."""
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
        backup_for=backup_for,
    )
    snapshot = await repo.commit_new_image(snapshot, chain[0])
    crash_point("snapshot:switch")
    state = ImageState.DEGRADED if len(chain) > max_chain else disk.state
    switched = disk.evolve(chain=chain, base=snapshot_id, state=state)
    if image is None:
        try:
            await repo.update_image(switched)
        except errors.RepofsError:
            # Another host changed or removed the disk since it was read.
            await _undo(repo, snapshot_id, switched.top)
            raise
    else:
        await _switch_open_disk(repo, image, switched, snapshot_id)
    return snapshot


async def _undo(repo: Repository, snapshot_id: str, new_top: Volume) -> None:
    """Takes back steps 1 and 2 when step 3 did not happen: the snapshot's record
    goes, then NEW (if that fails too, it is what a crash after step 2 leaves)."""
    with trio.CancelScope(shield=True):
        await repo.trash_image(snapshot_id)
        await repo.purge_trashed_image(snapshot_id)
        await repo.remove_volume(new_top)


async def _switch_open_disk(
    repo: Repository, image: OpenImage, switched: ImageRecord, snapshot_id: str
) -> None:
    """Step 3 for an open disk: NEW goes above TOP where the disk is served, then
    the record follows. If the first fails, the disk stays as it was and the
    half-made snapshot goes (its record, then NEW; if that fails too, it is what
    a crash after step 2 leaves). If the record cannot be written, the disk's
    requests fail from then on: its writes would go where no record points."""
    try:
        await image.add_overlay(repo.volume_path(switched.top))
    except errors.RepofsError:
        await _undo(repo, snapshot_id, switched.top)
        raise
    try:
        image.record = await repo.update_image(switched)
    except BaseException as exc:
        image.fail(f"its live snapshot {snapshot_id} could not be recorded: {exc}")
        raise
