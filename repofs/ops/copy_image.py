"""copyImage: `ln r1/snapshots/S r2/snapshots/S`, a copy of snapshot S into r2
under the same ID (snapshot IDs name the same immutable data everywhere), and
`ln r1/disks/D r2/snapshots/B`, a backup of disk D as snapshot B.

The operation only commits the new image, `broken` until its data is in; the
copy itself is the mend fix of that image, queued at once unless autofix is off.
"""

import logging

import trio

from repofs import errors
from repofs.fixes.check import mend_fix
from repofs.model import (
    COPY_UNFINISHED,
    ImageKind,
    ImageRecord,
    ImageState,
    Pending,
    VolumeFormat,
)
from repofs.ops.create_snapshot import create_snapshot
from repofs.ops.create_virtual_disk import check_free, commit_new_image
from repofs.ops.fix_repository import queue_fix
from repofs.qemu import img
from repofs.registry import ConnectedRepository, Registry

log = logging.getLogger(__name__)


async def copy_snapshot(registry: Registry, source_repo: ConnectedRepository, snapshot_id: str,
                        target_repo: ConnectedRepository) -> ImageRecord:  # fmt: skip
    """Durable steps: (1) create the target's volume: an empty raw one (allocated
    under strategy performance), or a qcow2 overlay over the nearest ancestor of S
    the target holds, (2) write the image's record, broken, pending its copy,
    (3) queue its mend. A crash after (1) leaves a volume no record names (clean);
    after (2) a broken image whose mend the check offers."""
    source = await trio.to_thread.run_sync(source_repo.driver.read_image, snapshot_id)
    if source.kind is not ImageKind.SNAPSHOT:
        raise errors.invalid(f"{snapshot_id} is a {source.kind}; this copies snapshots")
    if source.state is ImageState.BROKEN:
        raise errors.invalid(f"snapshot {snapshot_id} is broken: {source.last_error}")
    driver = target_repo.driver
    async with target_repo.changing:
        check_free(target_repo, snapshot_id)
        ancestor = await trio.to_thread.run_sync(
            nearest_ancestor, source_repo.driver, source, driver
        )
        if ancestor is None:
            preallocate = await target_repo.preallocates()
            volume = await trio.to_thread.run_sync(
                driver.create_raw_volume, source.size, preallocate
            )
            chain = (volume,)
        else:
            volume = driver.new_volume(VolumeFormat.QCOW2)
            await img.create_overlay(
                driver.volume_path(volume), source.size,
                driver.volume_path(ancestor.top), ancestor.top.format,
            )  # fmt: skip
            chain = (volume, *ancestor.chain)
        record = ImageRecord(
            snapshot_id, ImageKind.SNAPSHOT, source.size, chain,
            base=ancestor.id if ancestor else None, state=ImageState.BROKEN,
            last_error=COPY_UNFINISHED, pending=Pending.COPY, owner=source.owner,
        )  # fmt: skip
        record = await commit_new_image(target_repo, record, volume)
    log.info("copying %s from %s to %s%s", snapshot_id, source_repo.name, target_repo.name,
             f" over its ancestor {ancestor.id}" if ancestor else "")  # fmt: skip
    if (await trio.to_thread.run_sync(driver.read_options)).autofix:
        await queue_fix(registry, target_repo, mend_fix(record))
    return record


async def back_up_disk(
    registry: Registry,
    source_repo: ConnectedRepository,
    disk_id: str,
    backup_id: str,
    target_repo: ConnectedRepository,
) -> ImageRecord:
    """`ln r1/disks/D r2/snapshots/B`: snapshot D as B in r1 (point in time, O(1)),
    then copy B into r2. B stays in r1 as the base of D's next backup, which then
    copies only what changed since (B is its ancestor in r2).

    Durable steps: those of createSnapshot, then those of copy_snapshot. A crash
    between leaves snapshot B in r1 only: repeat the ln as a copy of B."""
    check_free(target_repo, backup_id)
    await create_snapshot(source_repo, disk_id, backup_id)
    return await copy_snapshot(registry, source_repo, backup_id, target_repo)


def nearest_ancestor(source_driver, snapshot: ImageRecord, target_driver) -> ImageRecord | None:
    """The nearest snapshot on `snapshot`'s base chain that the target holds in
    full: the copy then builds on it and moves only what differs. Blocking."""
    base = snapshot.base
    while base is not None:
        if target_driver.has_image(base):
            held = target_driver.read_image(base)
            if held.kind is ImageKind.SNAPSHOT and held.state is not ImageState.BROKEN:
                return held
        trashed = not source_driver.has_image(base)
        if trashed and not source_driver.has_image(base, trashed=True):
            return None
        base = source_driver.read_image(base, trashed).base
    return None
