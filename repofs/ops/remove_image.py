"""removeImage (`rm disks/X`, `rm snapshots/X`) and its undo (`mv trash/X disks/`).

Removal is logical: the record moves into the trash in one rename and the volumes
stay until a clean fix frees them.
"""

from repofs import errors
from repofs.model import ImageKind
from repofs.ops.logged import logged
from repofs.repository import Repository


@logged()
async def remove_image(repo: Repository, image_id: str, kind: ImageKind) -> None:
    """Durable step: one rename of the record into the trash. Under the image's
    guard, which a disk made on it would need too: no dependent comes between
    the look and the trash."""
    async with repo.guard(image_id):
        record = await repo.read_image(image_id)
        if record.kind is not kind:
            raise errors.not_found(f"{image_id} is a {record.kind}, not a {kind}")
        await repo.ensure_closed(image_id, "remove")
        await repo.ensure_no_task(image_id, "remove")
        if kind is ImageKind.SNAPSHOT:  # only snapshots are bases, and copied
            await _check_unused(repo, image_id)
        await repo.trash_image(image_id)


async def _check_unused(repo: Repository, snapshot_id: str) -> None:
    """EBUSY while images build on the snapshot, here or in another repository,
    or its copy into another one is not finished."""
    dependents = await repo.dependents(snapshot_id)
    if dependents:
        raise errors.busy(f"cannot remove {snapshot_id}: {', '.join(dependents)} depend on it")
    copies = await repo.copies_elsewhere(snapshot_id)
    if copies:
        raise errors.busy(
            f"cannot remove {snapshot_id}: its copy into {', '.join(copies)} is not finished "
            "(wait for it, or remove the copy)"
        )


@logged()
async def restore_image(repo: Repository, image_id: str, kind: ImageKind) -> None:
    """Durable step: one rename of the record out of the trash."""
    async with repo.guard(image_id):
        record = await repo.read_image(image_id, True)
        if record.kind is not kind:
            raise errors.invalid(f"{image_id} is a {record.kind}; restore it to its own kind")
        # A base in the trash is fine: the image reads through its layer, and a
        # merge fix folds that layer in so the base can be cleaned.
        holder = repo.peers.get(record.base_repository or repo.name)
        if record.base is not None and not (holder and (
            await holder.has_image(record.base) or await holder.has_image(record.base, True)
        )):  # fmt: skip
            where = record.base_repository or repo.name
            raise errors.not_found(
                f"cannot restore {image_id}: its base {record.base} is gone from {where}"
            )
        await repo.restore_image(image_id)
