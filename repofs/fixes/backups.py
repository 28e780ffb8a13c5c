"""Backups keep their disk's chain short: once backup B of disk D (`ln
r1/disks/D r2/snapshots/B`, ops/copy_image.py) is whole in r2, D's older
backup points for r2 are no longer needed under D. Each is removed, as `rm`
would, and its merge task written, which folds its layer away (fixes/merge.py:
usually B's smaller layer goes down into it, fixes/merge_down.py). B stays, the
base of D's next backup to r2, which then copies only what changed since B; r2
keeps every backup whole."""

import logging

from repofs import errors
from repofs.fixes.removal import merge_of_removed, trash
from repofs.model import ImageRecord, Task
from repofs.repository import Repository

log = logging.getLogger(__name__)


async def release_older_backups(source_repo: Repository, backup_id: str,
                                target_repo: Repository) -> None:  # fmt: skip
    """Call once backup `backup_id` of `source_repo` is whole in `target_repo`.

    Durable steps, for each older backup point P for the target (below B in B's
    bases): (1) P's record into the trash; (2) the task of P's merge, unless one
    exists. A crash between leaves the merge offered by the check. A point that
    cannot go now (open, worked on by a task, read from another repository, its
    copy elsewhere unfinished) stays for the next backup to try again."""
    try:
        record = await source_repo.read_image(backup_id)
    except errors.NotFound:
        return  # removed meanwhile
    if record.backup_for != target_repo.name:
        return
    while record.base is not None and record.base_repository is None:
        below = await source_repo.read_live_or_trashed(record.base)
        if below is None:
            return
        if below.backup_for == target_repo.name and await source_repo.has_image(below.id):
            await _retire(source_repo, below, backup_id)
        record = below


async def _retire(repo: Repository, point: ImageRecord, newer: str) -> None:
    async with repo.guard(point.id):
        try:
            current = await repo.read_image(point.id)
            await trash(repo, current)
        except errors.RepofsError as exc:
            log.warning("backup point %s of %s stays for now: %s", point.id, repo.name,
                        exc.reason)  # fmt: skip
            return
    log.info("backup point %s of %s removed: backup %s is whole in %s", point.id, repo.name,
             newer, point.backup_for)  # fmt: skip
    merge = await merge_of_removed(repo, current)
    if merge is None:
        return
    fix = merge[0]
    try:
        await repo.read_task(fix.id)
    except errors.NotFound:
        await repo.write_task(Task(fix.id, fix))
