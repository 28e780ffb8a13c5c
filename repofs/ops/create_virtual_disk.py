"""createVirtualDisk: an empty disk (`truncate`, `cp`, `dd`, `qemu-img convert`
into disks/) or a disk based on a snapshot (`ln snapshots/S disks/D`)."""

from repofs import errors
from repofs.crash import crash_point
from repofs.fix_daemon import FixDaemon
from repofs.fixes.check import optimize_fix
from repofs.fixes.copy import usable_snapshot
from repofs.model import ImageKind, ImageRecord, ImageState, Owner, Plan, Strategy
from repofs.names import check_name
from repofs.ops.fix_repository import queue_fix
from repofs.ops.logged import logged
from repofs.ops.open_image import clones_quickly
from repofs.repository import Repository, guarded


@logged()
async def create_virtual_disk(
    repo: Repository, image_id: str, size: int, owner: Owner
) -> ImageRecord:
    """An empty thin raw disk; preallocated when the repository's strategy is
    `performance`.

    Durable steps: (1) create the raw volume, (2) write the record. A crash after
    (1) leaves a volume no record names: a clean fix removes it.
    """
    check_name(image_id)
    async with repo.guard(image_id):
        await repo.check_free(image_id)
        preallocate = await repo.preallocates()
        volume = await repo.create_raw_volume(size, preallocate)
        record = ImageRecord(image_id, ImageKind.VIRTUAL_DISK, size, (volume,), owner=owner)
        record = await repo.commit_new_image(record, record.top)
    return record


@logged()
async def create_virtual_disk_from_snapshot(
    fixes: FixDaemon,
    repo: Repository,
    image_id: str,
    base_id: str,
    owner: Owner,
    base_repo: Repository | None = None,
    clone: bool = False,
) -> ImageRecord:
    """A disk that reads as snapshot `base_id` (of `base_repo`, by default this
    repository): on reflink storage, a clone of a raw snapshot's volume
    (_clone_of_snapshot) if it clones quickly (ops/open_image.py
    clones_quickly); otherwise a disk that writes to its own qcow2 overlay.

    The overlay is `degraded` under strategy `performance`, or when its base is
    in another repository; the fix that gives it its better form is queued at
    once unless autofix is off, except the copy of a remote base under strategy
    space (offered in fixes/). A `clone` is always to become independent: its
    queued optimize flattens it.

    Durable steps: (1) create the overlay over the snapshot's top volume, (2) write
    the record. A crash after (1) leaves a volume no record names (clean removes it).
    """
    check_name(image_id)
    base_repo = base_repo or repo
    # The base's guard too: its removal or rename must not come between.
    async with guarded((repo, image_id), (base_repo, base_id)):
        await repo.check_free(image_id)
        base = await base_repo.read_image(base_id)
        if base.kind is not ImageKind.SNAPSHOT:
            raise errors.invalid(f"{base_id} is not a snapshot; a disk is based on a snapshot")
        if base.state is ImageState.BROKEN:
            raise errors.invalid(f"snapshot {base_id} is broken: {base.last_error}")
        if base_repo is not repo:
            # A snapshot ID names the same data wherever it is: a usable copy here
            # spares the disk reading through (and depending on) the other one.
            local = await usable_snapshot(repo, base_id)
            if local is not None:
                base, base_repo = local, repo
        if (
            base.is_raw
            and await repo.run(repo.clones_from, base_repo)
            and await clones_quickly(base_repo, base)
        ):
            return await _clone_of_snapshot(repo, image_id, base, base_repo, owner)
        options = await repo.read_options()
        chain = await repo.new_overlay(base, base_repo)
        elsewhere = any(v.repo is not None for v in chain)
        degraded = elsewhere or options.strategy is Strategy.PERFORMANCE
        state = ImageState.DEGRADED if degraded else ImageState.OPTIMIZED
        record = ImageRecord(image_id, ImageKind.VIRTUAL_DISK, base.size, chain,
                             base=base_id, state=state, owner=owner)  # fmt: skip
        record = await repo.commit_new_image(record, record.top)
    fix = await repo.run(optimize_fix, repo, record, options, clone)
    if degraded and options.autofix and fix.data.plan is Plan.FLATTEN:
        await queue_fix(fixes, repo, fix)
    return record


async def _clone_of_snapshot(
    repo: Repository,
    image_id: str,
    base: ImageRecord,
    base_repo: Repository,
    owner: Owner,
) -> ImageRecord:
    """A disk sharing the extents of raw snapshot `base` (of `base_repo`, on the
    same reflink file system): raw, independent, `optimized` at once; its
    lineage is the snapshot. Call under the guards of both images.

    Durable steps: (1) clone the snapshot's volume, (2) write the record. A crash
    after (1) leaves a volume no record names (clean removes it)."""
    volume = await repo.clone_volume(base_repo, base.top, base.size)
    crash_point("disk:clone")
    record = ImageRecord(image_id, ImageKind.VIRTUAL_DISK, base.size, (volume,),
                         lineage=base.id, owner=owner)  # fmt: skip
    return await repo.commit_new_image(record, volume)
