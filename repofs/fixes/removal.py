"""Removing a snapshot that images may read through: what refuses it, and the
merge it leaves (fixes/merge.py). Shared by `rm snapshots/S`
(ops/remove_image.py) and by a backup retiring the older backup points of its
disk (fixes/copy.py)."""

from repofs import errors
from repofs.fixes.check import merge_fix
from repofs.model import Fix, ImageKind, ImageRecord, ImageState, Volume
from repofs.repository import Repository


async def trash(repo: Repository, record: ImageRecord) -> None:
    """removeImage's durable step, one rename of the record into the trash,
    after what refuses it: the image open, a task on it, and for a snapshot
    check_removable. Call under the image's guard."""
    await repo.ensure_closed(record.id, "remove")
    await repo.ensure_no_task(record.id, "remove")
    if record.kind is ImageKind.SNAPSHOT:  # only snapshots are bases, and copied
        await check_removable(repo, record)
    await repo.trash_image(record.id)


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
    live_records = await repo.list_images()
    records = live_records + await repo.list_images(trashed=True)
    readers = [r for r in records if snapshot.top in r.chain[1:]]
    if not readers or (await repo.volumes_used_elsewhere()).get(snapshot.top.file_name):
        return None
    live = [r.id for r in live_records if r in readers]
    return await repo.run(merge_fix, repo, snapshot, readers, live), live


async def drop_from_chain(repo: Repository, user: ImageRecord, volume: Volume,
                          snapshot: ImageRecord) -> None:  # fmt: skip
    """The last step of a merge for one record (live or trashed) that read
    through removed snapshot `snapshot`: its chain drops `volume` (whose data
    the merge moved), and if it was based on the snapshot it takes the
    snapshot's base. A base that thereby lies in another repository makes an
    optimized image degraded (ImageRecord.usable_state)."""

    def drop(record: ImageRecord) -> ImageRecord:
        chain = tuple(v for v in record.chain if v != volume)
        base = snapshot.base if record.base == snapshot.id else record.base
        record = record.evolve(chain=chain, base=base)
        if record.state is ImageState.OPTIMIZED and record.base_repository:
            record = record.evolve(state=ImageState.DEGRADED)
        return record

    await repo.change_image(user.id, drop, trashed=not await repo.has_image(user.id))
