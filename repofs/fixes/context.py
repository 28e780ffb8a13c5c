"""What a running fix sees: its task record, checkpoints, progress reporting and
exclusive use of its image. The fix daemon makes one TaskContext per run."""

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from repofs import errors
from repofs.crash import crash_point
from repofs.model import Checkpoint, ImageRecord, Task
from repofs.registry import Registry
from repofs.repository import Repository

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0
WAIT_FOR_CLOSE_S = 1.0


class LeaseLost(Exception):
    """Someone else changed our task: we no longer own it and must stop."""


@dataclass(frozen=True)
class FixKindSpec:
    """One kind of fix (fixes/__init__.py KINDS): its stages in order, whether
    the record of its task's image shows its progress (not for a clean or a
    merge, which work on a trashed image), and `run`, which does it in a
    TaskContext and whose module's docstring lists its durable steps."""

    stages: tuple[str, ...]
    progress_on_image: bool
    run: Callable[["TaskContext"], Awaitable[None]]


class TaskContext:
    def __init__(self, registry: Registry, repo: Repository, task: Task, kind: FixKindSpec):
        self.registry = registry  # where copies find their sources
        self.repo = repo
        self.daemon = registry.daemon
        self.host = registry.host_id
        self.task = task
        self.kind = kind
        # Whether the task's image is a live one whose record shows the progress.
        self.live_image = kind.progress_on_image and task.image is not None
        self._last_report = 0.0
        self._run_started = time.monotonic()
        self._run_bytes_start = task.bytes_done

    def crash_point(self, step: str) -> None:
        crash_point(f"{self.task.fix.kind}:{step}")

    @property
    def checkpoint(self) -> Checkpoint:
        return self.task.checkpoint

    async def save(self, **changes) -> Task:
        """Writes the task record (compare-and-swap on its generation)."""
        try:
            self.task = await self.repo.write_task(self.task.evolve(**changes))
        except (errors.Stale, errors.NotFound) as exc:
            raise LeaseLost(f"task {self.task.id}: {exc.reason}") from None
        return self.task

    async def save_checkpoint(self, **changes) -> None:
        """Durable: call only once the work `changes` describe is itself durable."""
        await self.save(checkpoint=self.task.checkpoint.evolve(**changes))

    async def enter_stage(self, name: str) -> None:
        await self.report(name, self.task.bytes_done, self.task.bytes_total, force=True)

    def progress_due(self) -> bool:
        """Whether progress should be persisted now: about once a second (DESIGN.md:
        at least every second or every 1%). Not per 1%: a report of a copy comes
        with a checkpoint, so with an fsync of the data it covers, which stalls
        the copy (+40% for a 2 GiB copy reported at every 1%)."""
        return time.monotonic() - self._last_report >= PROGRESS_INTERVAL_S

    async def report(self, step: str, done: int, total: int, force: bool = False,
                     copied: int | None = None) -> None:  # fmt: skip
        """Persists progress in the task and the image record, when due (or forced).
        A checkpoint of a copy (`copied`: Checkpoint.copied) goes into the same task
        write, so the persisted percent never runs ahead of the work a resume can skip."""
        if not force and not self.progress_due():
            return
        percent = min(100, done * 100 // total) if total else -1
        now = time.monotonic()
        self._last_report = now
        elapsed = max(now - self._run_started, 1e-3)
        stage = self._stage(step)
        checkpoint = self.task.checkpoint
        if copied is not None:
            checkpoint = checkpoint.evolve(copied=copied)
        await self.save(
            stage=stage, step=step, percent_complete=percent, bytes_done=done,
            bytes_total=total, rate=round((done - self._run_bytes_start) / elapsed, 1),
            checkpoint=checkpoint,
        )  # fmt: skip
        if self.live_image:
            await self.update_image(
                lambda r: r.evolve(host=self.host, stage=stage, percent_complete=percent)
            )

    def _stage(self, step: str) -> str:
        """ "X/Y": the step's place among the fix's stages."""
        stages = self.kind.stages
        return f"{stages.index(step) + 1}/{len(stages)}"

    async def read_image(self) -> ImageRecord:
        return await self.repo.read_image(self.task.image)

    async def update_image(self, change: Callable[[ImageRecord], ImageRecord]) -> ImageRecord:
        """Read, change and write the image record in one step (Repository.change_image)."""
        return await self.repo.change_image(self.task.image, change)

    async def closed_meanwhile(self, image_id: str) -> bool:
        """After a block job in an image's open chain failed: whether the image
        was closed here (which cancels the job), once a close under way ended.
        The caller then goes on offline: the image's guard, which it holds,
        keeps it closed."""
        image = self.repo.open_images.get(image_id)
        if image is not None and not image.handles:
            await image.closed.wait()
        return image_id not in self.repo.open_images

    def exclusive(self, step: str, image_ids: list[str]):
        """Holds images closed: waits (saying so in the task's step) while one is
        open, then keeps their guards, so that no one opens, snapshots, removes,
        renames or resizes them until the block ends; the repository's other
        images go on meanwhile."""

        async def open_(image_id: str) -> bool:
            return not await self.repo.wait_for_release(image_id)

        return self._holding(step, image_ids, open_, "to be closed")

    def held(self, step: str, image_ids: list[str]):
        """Keeps the images' guards, open or not, so that no one snapshots,
        removes, renames or resizes them, or opens a closed one, until the block
        ends; waits first (saying so) while one is open for writing on another
        host, whose I/O only that host serves."""

        async def written_elsewhere(image_id: str) -> bool:
            try:
                record = await self.repo.read_image(image_id)
            except errors.NotFound:
                return False  # in the trash: nobody has it open
            return self.repo.writer_elsewhere(record) is not None

        return self._holding(step, image_ids, written_elsewhere,
                             "to be closed on the other host")  # fmt: skip

    @asynccontextmanager
    async def _holding(self, step: str, image_ids: list[str],
                       busy: Callable[[str], Awaitable[bool]], waited: str):  # fmt: skip
        while True:
            async with self.repo.guard(*image_ids):
                busy_ones = [i for i in image_ids if await busy(i)]
                if not busy_ones:
                    await self.enter_stage(step)
                    yield
                    return
            waiting = f"{step}: waiting for {', '.join(busy_ones)} {waited}"
            await self.save(stage=self._stage(step), step=waiting)
            await trio.sleep(WAIT_FOR_CLOSE_S)
