"""Renaming an image: `mv disks/a disks/b` (within one repository)."""

from repofs import errors
from repofs.model import ImageKind
from repofs.names import check_name
from repofs.ops.logged import logged
from repofs.repository import Repository


@logged(image="old_id")
async def rename_image(repo: Repository, old_id: str, new_id: str) -> None:
    """Durable step: one rename of the record.

    Refused while the image is open (a running VM keeps using the old path), and
    for a snapshot that images (live or in the trash) depend on: they name their
    base by ID.
    """
    check_name(new_id)
    async with repo.guard(old_id, new_id):
        record = await repo.read_image(old_id)
        await repo.ensure_closed(old_id, "rename")
        await repo.ensure_no_task(old_id, "rename")
        if record.kind is ImageKind.SNAPSHOT:  # only snapshots are bases
            dependents = await repo.dependents(old_id) + await repo.trashed_dependents(old_id)
            if dependents:
                raise errors.busy(f"cannot rename {old_id}: {', '.join(dependents)} depend on it")
        await repo.rename_image(old_id, new_id)
