"""removeImage (`rm disks/X`, `rm snapshots/X`) and its undo (`mv trash/X disks/`).

Removal is logical: the record moves into the trash in one rename and the volumes
stay until a clean fix frees them. A removed snapshot that images still read
through keeps its layer until a merge fix folds it into them (fixes/merge.py).
"""

from repofs import errors
from repofs.fix_daemon import FixDaemon
from repofs.fixes.removal import merge_of_removed, trash
from repofs.model import ImageKind
from repofs.ops.fix_repository import queue_fix
from repofs.ops.logged import logged
from repofs.repository import Repository


@logged()
async def remove_image(fixes: FixDaemon, repo: Repository, image_id: str,
                       kind: ImageKind) -> None:  # fmt: skip
    """Durable steps: (1) one rename of the record into the trash, under the
    image's guard, which a disk made on it would need too: nothing comes between
    the look and the trash; (2) for a snapshot that exactly one live image reads
    through, unless autofix is off: its merge's task. A crash between them leaves
    the merge offered in fixes/."""
    async with repo.guard(image_id):
        record = await repo.read_image(image_id)
        if record.kind is not kind:
            raise errors.not_found(f"{image_id} is a {record.kind}, not a {kind}")
        await trash(repo, record)
    if kind is ImageKind.SNAPSHOT and (await repo.read_options()).autofix:
        merge = await merge_of_removed(repo, record)
        if merge is not None and len(merge[1]) == 1:  # else the check offers it
            await queue_fix(fixes, repo, merge[0])


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
