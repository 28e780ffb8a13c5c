"""createVirtualDisk: an empty disk (`truncate`, `cp`, `dd`, `qemu-img convert`
into disks/) or a disk based on a snapshot (`ln snapshots/S disks/D`)."""

import logging

import trio

from repofs import errors
from repofs.fixes.check import optimize_fix
from repofs.model import ImageKind, ImageRecord, ImageState, Owner, Strategy, Volume, VolumeFormat
from repofs.names import check_name
from repofs.ops.fix_repository import queue_fix
from repofs.qemu import img
from repofs.registry import ConnectedRepository, Registry

log = logging.getLogger(__name__)


async def create_virtual_disk(
    repo: ConnectedRepository, image_id: str, size: int, owner: Owner
) -> ImageRecord:
    """An empty thin raw disk; preallocated when the repository's strategy is
    `performance`.

    Durable steps: (1) create the raw volume, (2) write the record. A crash after
    (1) leaves a volume no record names: a clean fix removes it.
    """
    check_name(image_id)
    driver = repo.driver
    async with repo.changing:
        check_free(repo, image_id)
        preallocate = await repo.preallocates()
        volume = await trio.to_thread.run_sync(driver.create_raw_volume, size, preallocate)
        record = ImageRecord(image_id, ImageKind.VIRTUAL_DISK, size, (volume,), owner=owner)
        record = await commit_new_image(repo, record, record.top)
    log.info(
        "created virtual disk %s/%s, %d bytes%s",
        repo.name,
        image_id,
        size,
        ", preallocated" if preallocate else "",
    )
    return record


async def create_virtual_disk_from_snapshot(
    registry: Registry, repo: ConnectedRepository, image_id: str, base_id: str, owner: Owner
) -> ImageRecord:
    """A disk that reads as snapshot `base_id` and writes to its own qcow2 overlay.

    Under strategy `performance` the overlay is `degraded`: its standalone form
    comes from an optimize fix, queued at once unless autofix is off.

    Durable steps: (1) create the overlay over the snapshot's top volume, (2) write
    the record. A crash after (1) leaves a volume no record names (clean removes it).
    """
    check_name(image_id)
    driver = repo.driver
    async with repo.changing:
        check_free(repo, image_id)
        base = await trio.to_thread.run_sync(driver.read_image, base_id)
        if base.kind is not ImageKind.SNAPSHOT:
            raise errors.invalid(f"{base_id} is not a snapshot; a disk is based on a snapshot")
        if base.state is ImageState.BROKEN:
            raise errors.invalid(f"snapshot {base_id} is broken: {base.last_error}")
        options = await trio.to_thread.run_sync(driver.read_options)
        overlay = driver.new_volume(VolumeFormat.QCOW2)
        await img.create_overlay(
            driver.volume_path(overlay), base.size, driver.volume_path(base.top), base.top.format
        )
        state = (
            ImageState.DEGRADED
            if options.strategy is Strategy.PERFORMANCE
            else ImageState.OPTIMIZED
        )
        record = ImageRecord(
            image_id,
            ImageKind.VIRTUAL_DISK,
            base.size,
            (overlay, *base.chain),
            base=base_id,
            state=state,
            owner=owner,
        )
        record = await commit_new_image(repo, record, record.top)
    log.info("created virtual disk %s/%s based on %s (%s)", repo.name, image_id, base_id, state)
    if state is ImageState.DEGRADED and options.autofix:
        fix = optimize_fix(repo.driver, record, "strategy performance")
        await queue_fix(registry, repo, fix)
    return record


def check_free(repo: ConnectedRepository, image_id: str) -> None:
    """EEXIST early, before volumes are made for an ID that is taken."""
    if repo.driver.has_image(image_id):
        raise errors.exists(f"{image_id} already exists in {repo.name}")


async def commit_new_image(
    repo: ConnectedRepository, record: ImageRecord, new_volume: Volume
) -> ImageRecord:
    """Writes a new image's record; if that fails, removes `new_volume`, made for
    it and named by no record yet."""
    try:
        return await trio.to_thread.run_sync(repo.driver.create_image, record)
    except BaseException:
        await trio.to_thread.run_sync(repo.driver.volume_path(new_volume).unlink)
        raise
