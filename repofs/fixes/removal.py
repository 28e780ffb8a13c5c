"""Removing a snapshot that images may read through: what refuses it, and the
merge it leaves (fixes/merge.py). Shared by `rm snapshots/S`
(ops/remove_image.py) and by a backup retiring the older backup points of its
disk (fixes/copy.py)."""

from repofs import errors
from repofs.fixes.check import merge_fix
from repofs.model import Fix, ImageRecord
from repofs.repository import Repository


async def check_removable(repo: Repository, snapshot: ImageRecord) -> None:
    """EBUSY while images of another repository read through the snapshot's
    layer (this repository's merge folds it only into its own images), or while
    its copy into another one is not finished."""
    elsewhere = await repo.dependents_elsewhere(snapshot.top)
    if elsewhere:
        raise errors.busy(f"cannot remove {snapshot.id}: {', '.join(elsewhere)} read through "
                          "it from another repository (optimize them there first)")  # fmt: skip
    copies = await repo.copies_elsewhere(snapshot.id)
    if copies:
        raise errors.busy(
            f"cannot remove {snapshot.id}: its copy into {', '.join(copies)} is not finished "
            "(wait for it, or remove the copy)"
        )


async def merge_of_removed(repo: Repository, snapshot: ImageRecord) -> tuple[Fix, list[str]] | None:
    """The merge of a removed snapshot's layer and the live images reading
    through it; None if nothing reads through it, or if images of another
    repository do (fixes/check.py offers no merge then)."""
    records = await repo.list_images() + await repo.list_images(trashed=True)
    readers = [r for r in records if snapshot.top in r.chain[1:]]
    if not readers or (await repo.volumes_used_elsewhere()).get(snapshot.top.file_name):
        return None
    live = [r.id for r in await repo.list_images() if r in readers]
    return await repo.run(merge_fix, repo, snapshot, readers, live), live
