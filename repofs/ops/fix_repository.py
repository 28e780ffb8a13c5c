"""checkStorageRepository and fixStorageRepository: `ls fixes/`, `cat fixes/F`,
`mv fixes/F tasks/` (queue, or resume a stopped task), `rm tasks/T` (stop)."""

import logging
import time

from repofs import errors
from repofs.fix_daemon import FixDaemon
from repofs.fixes.check import Inventory, check_repository
from repofs.logs import task_line
from repofs.model import Fix, Task, TaskState
from repofs.repository import Repository

log = logging.getLogger(__name__)

CHECK_REUSE_S = 2.0
VISIBLE_TASK_STATES = (TaskState.QUEUED, TaskState.RUNNING, TaskState.FAILED)


async def list_fixes(repo: Repository) -> list[Fix]:
    """Runs checkStorageRepository. Read-only: never changes storage."""

    inventory = await Inventory.read(repo)
    questions = await repo.run(
        lambda: {r.id: why for r in inventory.live if (why := repo.unusable_here(r))}
    )
    questions |= await repo.check_headers(inventory.headers_to_judge())
    options, temp_files = await repo.read_options(), await repo.leftover_temp_files()
    fixes = await repo.run(check_repository, repo, inventory, options, temp_files, questions)
    repo.last_check = (time.monotonic(), fixes)
    return fixes


async def get_fix(repo: Repository, fix_id: str, reuse_s: float = CHECK_REUSE_S) -> Fix:
    """A fix of a check at most `reuse_s` old; one the reused check lacks is
    looked for in a new check (`rm disks/X && mv fixes/clean-X tasks/` right
    after an `ls fixes/`)."""
    checked, fixes = repo.last_check
    fresh = time.monotonic() - checked > reuse_s
    if fresh:
        fixes = await list_fixes(repo)
    for fix in fixes:
        if fix.id == fix_id:
            return fix
    if not fresh:
        return await get_fix(repo, fix_id, reuse_s=0)
    raise errors.not_found(f"no fix {fix_id} in {repo.name}")


async def queue_fix(fixes: FixDaemon, repo: Repository, fix: Fix) -> Task:
    """fixStorageRepository. A stopped or failed task of the same fix is queued
    again with its checkpoint: it resumes. Durable step: one task record write."""

    try:
        task = await repo.read_task(fix.id)
    except errors.NotFound:
        task = await repo.write_task(Task(fix.id, fix))
    else:
        if not task.active:
            task = await repo.write_task(
                task.evolve(fix=fix, state=TaskState.QUEUED, lease=None, last_error=None)
            )
    log.info(task_line(repo.name, task.id, task.image, str(task.state),
                       description=fix.description))  # fmt: skip
    fixes.wake()
    return task


async def list_tasks(repo: Repository) -> list[Task]:
    tasks = await repo.list_tasks()
    return [t for t in tasks if t.state in VISIBLE_TASK_STATES]


async def get_task(repo: Repository, task_id: str) -> Task:
    task = await repo.read_task(task_id)
    if task.state not in VISIBLE_TASK_STATES:
        raise errors.not_found(f"task {task_id} in {repo.name} is {task.state}")
    return task


async def stop_task(fixes: FixDaemon, repo: Repository, task_id: str) -> None:
    await get_task(repo, task_id)
    await fixes.stop(repo, task_id)
