"""copyImage: `ln r1/snapshots/S r2/snapshots/S`, a copy of snapshot S into r2
under the same ID (snapshot IDs name the same immutable data everywhere);
`ln r1/disks/D r2/snapshots/B`, a backup of disk D as snapshot B; and
`ln r1/disks/D r2/disks/D2`, an independent clone of D.

A snapshot copy only commits the new image, `broken` until its data is in; the
copy itself is the mend fix of that image, queued at once unless autofix is off.
A clone is usable at once: a disk of r2 over a snapshot of D in r1, `degraded`
until its queued optimize has flattened it into a raw volume of its own.
Between two repositories on one reflink file system, both are clones of the
volume (drivers/reflink.py): whole, raw and `optimized` at once, with no task.
"""

from repofs.fix_daemon import FixDaemon
from repofs.fixes.backups import release_older_backups
from repofs.fixes.check import mend_fix
from repofs.fixes.copy import start_snapshot_copy
from repofs.model import ImageRecord, Owner, Pending
from repofs.names import check_name
from repofs.ops.create_snapshot import create_snapshot
from repofs.ops.create_virtual_disk import create_virtual_disk_from_snapshot
from repofs.ops.fix_repository import queue_fix
from repofs.ops.logged import logged
from repofs.repository import Repository, guarded


@logged(image="snapshot_id", repo="target_repo")
async def copy_snapshot(fixes: FixDaemon, source_repo: Repository, snapshot_id: str,
                        target_repo: Repository) -> ImageRecord:  # fmt: skip
    """Durable steps: those of fixes/copy.py's start_snapshot_copy (volume, then
    the record, broken and pending its copy, or whole if it is a clone), then
    the queueing of its mend (or, a clone being whole at once, those of
    fixes/backups.py). A crash before the queueing leaves a broken image whose
    mend the check offers."""
    source = await source_repo.read_image(snapshot_id)
    async with guarded((source_repo, snapshot_id), (target_repo, snapshot_id)):
        record = await start_snapshot_copy(source_repo, source, target_repo)
    if record.pending is not Pending.COPY:  # a clone: whole already
        await release_older_backups(source_repo, snapshot_id, target_repo)
    elif (await target_repo.read_options()).autofix:
        await queue_fix(fixes, target_repo, mend_fix(record))
    return record


@logged(image="backup_id", repo="target_repo")
async def back_up_disk(
    fixes: FixDaemon,
    source_repo: Repository,
    disk_id: str,
    backup_id: str,
    target_repo: Repository,
) -> ImageRecord:
    """`ln r1/disks/D r2/snapshots/B`: snapshot D as B in r1 (point in time, O(1)),
    then copy B into r2. B stays in r1 as the base of D's next backup, which then
    copies only what changed since (B is its ancestor in r2); once that one is
    whole in r2, B leaves D's chain (fixes/backups.py).

    Durable steps: those of createSnapshot, then those of copy_snapshot. A crash
    between leaves snapshot B in r1 only: repeat the ln as a copy of B."""
    await target_repo.check_free(backup_id)
    await create_snapshot(source_repo, disk_id, backup_id, backup_for=target_repo.name)
    return await copy_snapshot(fixes, source_repo, backup_id, target_repo)


@logged(image="clone_id", repo="target_repo")
async def clone_disk(fixes: FixDaemon, source_repo: Repository, disk_id: str,
                     clone_id: str, target_repo: Repository,
                     owner: Owner) -> ImageRecord:  # fmt: skip
    """`ln r1/disks/D r2/disks/D2`: snapshot D in r1 as `D.to-r2.D2` (the point in
    time of the clone; it stays, like a backup's), then a disk D2 of r2 over it,
    whose queued optimize flattens it into a raw volume of r2's own.

    Durable steps: those of createSnapshot, then those of createVirtualDisk. A
    crash between leaves the snapshot in r1 only, and a repeated ln is EEXIST on
    it (it may predate writes to D): `ln` it into r2/disks/D2 to finish, or
    remove it and clone again."""
    check_name(clone_id)
    await target_repo.check_free(clone_id)
    snapshot_id = f"{disk_id}.to-{target_repo.name}.{clone_id}"
    await create_snapshot(source_repo, disk_id, snapshot_id)
    return await create_virtual_disk_from_snapshot(
        fixes, target_repo, clone_id, snapshot_id, owner, base_repo=source_repo, clone=True
    )
