"""The fix daemon: runs the queued tasks of every connected repository.

One per `repofs mount`, as a trio task. It owns tasks through leases (DESIGN.md,
"Tasks, leases and hosts"; leases.py): this host writes a heartbeat counter into
every repository every HEARTBEAT_S; a task's lease names its host and that host's
counter when it took the task. Another host may take a task whose owner's counter
has not moved for LEASE_S on its own monotonic clock, and a host that could not
renew its heartbeat in a shared repository for LEASE_S / 2 stops its tasks there
before anyone may take them (in a local one, no one else can take them: they go
on). A task of this host that no run of this process holds (the process before it
died) is taken back at once.
"""

import errno
import logging
import time
from dataclasses import dataclass, field

import trio

from repofs import errors, leases
from repofs.fixes import KINDS
from repofs.fixes.context import LeaseLost, TaskContext
from repofs.logs import task_line
from repofs.model import HostBeat, Lease, Task, TaskState
from repofs.registry import Registry
from repofs.repository import Repository

log = logging.getLogger(__name__)

POLL_S = 1.0
# How often this host looks whether its own heartbeats stall: a stall is acted
# on at most this long after LEASE_S / 2.
STALL_CHECK_S = 0.5
MAX_RUNNING = 4
STOPPED_BY_USER = "stopped by the user"
NO_SPACE = "no space left: waiting for space"
NO_SPACE_RETRY_S = 5


@dataclass
class Heartbeat:
    """This host's heartbeat in one repository."""

    renewed: float  # time.monotonic() when a write of it last returned
    writing: bool = False  # a write is under way (it may hang: storage stalled)
    noticed: bool = False  # it is late, and that was acted on (tasks stopped, or said)
    fenced_at: float | None = None  # when the driver cut the host off the storage
    rejoining: bool = False

    @property
    def late(self) -> bool:
        return time.monotonic() - self.renewed > leases.LEASE_S / 2


@dataclass
class Run:
    repo: Repository
    task_id: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


class FixDaemon:
    def __init__(self, registry: Registry, max_running: int = MAX_RUNNING):
        self.registry = registry
        self.host = registry.host_id
        self.max_running = max_running
        # The heartbeat counter the next beat writes (the first is 1; a repository
        # connected between beats gets the current one at once).
        self._counter = 1
        self._heartbeats: dict[str, Heartbeat] = {}  # by repository name
        self._runs: dict[tuple[str, str], Run] = {}
        # (repository, task) the user is stopping: not to be started meanwhile.
        self._stopping: set[tuple[str, str]] = set()
        # Why the tasks of a repository could not be read at the last look, by
        # repository name: said in the log once, not at every look (each second).
        self._tasks_unreadable: dict[str, str] = {}
        self._wakeup = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._heartbeat_loop)
            task_status.started()
            while True:
                await self._schedule()
                with trio.move_on_after(POLL_S):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()

    def wake(self) -> None:
        """Look for work now (a task was queued or one ended)."""
        self._wakeup.set()

    # Heartbeats and leases

    async def _beat(self) -> None:
        """One heartbeat into every repository. A repository whose last write has
        not returned (its storage stalls) gets none: the stall shows as its
        `renewed` growing old, and the other repositories go on."""
        for repo in list(self.registry.repositories.values()):
            self._beat_into(repo)
        self._counter += 1

    def _beat_into(self, repo: Repository) -> "Heartbeat":
        beat = self._heartbeats.get(repo.name)
        if beat is None:  # connected since the last beat
            beat = self._heartbeats[repo.name] = Heartbeat(time.monotonic())
            self._nursery.start_soon(self._first_look_at_headers, repo)
        if beat.fenced_at is not None:
            if not beat.rejoining and time.monotonic() - beat.fenced_at >= leases.LEASE_S:
                beat.rejoining = True
                self._nursery.start_soon(self._rejoin, repo, beat)
        elif not beat.writing:
            beat.writing = True
            self._nursery.start_soon(self._write_heartbeat, repo, beat, self._counter)
        return beat

    async def _first_look_at_headers(self, repo: Repository) -> None:
        """The check's first look at every qcow2 header of the repository's
        chains, begun once it is connected: the first `ls fixes/` then finds them
        looked at (or waits for the rest) rather than read them all itself, some
        35 s for 10,000 volumes (fixes.md, "Headers against records")."""
        try:
            records = await repo.list_images()
            await repo.check_headers(records)
        except (errors.RepofsError, OSError) as exc:  # disconnected meanwhile, say
            log.info("the first look at the headers of %s ended early: %s", repo.name, exc)

    async def _write_heartbeat(self, repo: Repository, beat: "Heartbeat",
                               counter: int) -> None:  # fmt: skip
        try:
            record = HostBeat(self.host, counter, time.time())
            await repo.write_heartbeat(record)
            beat.renewed = time.monotonic()
            beat.noticed = False
        except OSError as exc:
            log.error("cannot write the heartbeat of %s in %s: %s", self.host, repo.name, exc)
        finally:
            beat.writing = False

    async def _heartbeat_loop(self) -> None:
        next_beat = time.monotonic()
        while True:
            if time.monotonic() >= next_beat:
                next_beat = max(next_beat + leases.HEARTBEAT_S, time.monotonic())
                await self._beat()
            for name, beat in list(self._heartbeats.items()):
                repo = self.registry.repositories.get(name)
                if repo is None:
                    del self._heartbeats[name]  # disconnected
                    self._tasks_unreadable.pop(name, None)
                elif beat.late and not beat.noticed:
                    beat.noticed = True
                    if repo.shared:
                        await self._stop_stalled(repo, beat)
                    else:  # no other host can take its tasks: stopping them protects nothing
                        log.warning("heartbeat of %s in %s not renewed for %.0fs: its storage is "
                                    "slow (a local repository: its tasks go on)", self.host,
                                    repo.name, time.monotonic() - beat.renewed)  # fmt: skip
            await trio.sleep(STALL_CHECK_S)

    async def _stop_stalled(self, repo: Repository, beat: "Heartbeat") -> None:
        """Stops this host's tasks in a shared repository where it could not renew
        its heartbeat for LEASE_S / 2, before another host may take them, and fences
        the host off the storage where the driver can: what is still in flight
        must not land after someone else took over."""
        log.error("heartbeat of %s in %s not renewed for %.0fs: stopping this host's tasks there",
                  self.host, repo.name, time.monotonic() - beat.renewed)  # fmt: skip
        for (name, _), run in list(self._runs.items()):
            if name == repo.name:
                run.scope.cancel()
        if await repo.fence():
            beat.fenced_at = time.monotonic()
        else:
            log.error("%s cannot be fenced off: what this host has in flight there lands "
                      "when its storage comes back", repo.name)  # fmt: skip

    async def _rejoin(self, repo: Repository, beat: "Heartbeat") -> None:
        """Reconnects a fenced repository, LEASE_S after fencing: by then every
        other host has taken this one's leases there for dead, so coming back
        resumes only tasks that no one took."""
        try:
            await repo.rejoin()
        except (errors.RepofsError, OSError) as exc:
            log.error("%s: cannot rejoin yet: %s", repo.name, exc)
            beat.fenced_at, beat.rejoining = time.monotonic(), False
            return
        log.info("%s: rejoined after fencing", repo.name)
        self._heartbeats[repo.name] = Heartbeat(time.monotonic())

    def _runnable(self, repo: Repository, task: Task) -> bool:
        if (repo.name, task.id) in self._runs or (repo.name, task.id) in self._stopping:
            return False
        if task.state is TaskState.QUEUED:
            return True
        if task.state is not TaskState.RUNNING:
            return False
        if task.lease is None or task.lease.host == self.host:
            return True  # ours, from a run of this host that died
        return self.registry.host_watch.dead(repo.name, task.lease.host)

    # Scheduling

    async def _schedule(self) -> None:
        for repo in list(self.registry.repositories.values()):
            # A repository connected since the last beat gets its first one now:
            # a copy into a repository just made starts at once.
            beat = self._heartbeats.get(repo.name) or self._beat_into(repo)
            # Where even the heartbeat is late, a new task's first write would
            # hold up this loop for every repository.
            if beat.late or beat.fenced_at is not None:
                continue
            found = await self._read_tasks(repo)
            if found is None:
                continue
            tasks, beats = found
            # This loop visits every repository each second: the one place to
            # relay other hosts' changes to this host's `events` readers.
            with trio.move_on_after(leases.LEASE_S / 2):
                try:
                    await repo.publish_shared_changes(tasks)
                except (OSError, errors.RepofsError) as exc:
                    log.warning("cannot look for changes in %s: %s", repo.name, exc)
            self.registry.host_watch.observe(repo.name, beats)
            for task in tasks:
                if len(self._runs) >= self.max_running:
                    break
                if self._runnable(repo, task):
                    await self._start(repo, task)

    async def _read_tasks(self, repo: Repository):
        """The repository's tasks and heartbeats, or None if they cannot be read
        now. A read that hangs (the storage stalled) is left behind."""
        with trio.move_on_after(leases.LEASE_S / 2):
            try:
                tasks = await repo.list_tasks(abandon=True)
                beats = await repo.read_heartbeats(abandon=True)
            except OSError as exc:
                if self._tasks_unreadable.get(repo.name) != str(exc):
                    log.error("cannot read the tasks of %s (its tasks wait until they can "
                              "be read): %s", repo.name, exc)  # fmt: skip
                self._tasks_unreadable[repo.name] = str(exc)
            else:
                if self._tasks_unreadable.pop(repo.name, None) is not None:
                    log.info("the tasks of %s can be read again", repo.name)
                return tasks, beats
        return None

    async def _start(self, repo: Repository, task: Task) -> None:
        previous = task.lease.host if task.lease and task.lease.host != self.host else None
        taken = task.evolve(
            state=TaskState.RUNNING, lease=Lease(self.host, self._counter),
            started=time.time(), last_error=None,
        )  # fmt: skip
        try:
            task = await repo.write_task(taken)
        except errors.RepofsError:
            return  # another host took it first
        except OSError as exc:
            log.error("cannot take task %s/%s: %s", repo.name, task.id, exc)
            return
        run = self._runs[(repo.name, task.id)] = Run(repo, task.id)
        if task.image is not None:
            repo.running_tasks[task.image] = task.id
        log.info(task_line(repo.name, task.id, task.image, "running", taken_from=previous,
                           resumed_at=f"{task.percent_complete}%" if task.percent_complete > 0
                           else None, description=task.fix.description))  # fmt: skip
        self._nursery.start_soon(self._run, run, task)

    async def _run(self, run: Run, task: Task) -> None:
        repo = run.repo
        ctx = TaskContext(self.registry, repo, task, KINDS[task.fix.kind])
        started = time.monotonic()

        def say(level: int, state: str, reason: str | None = None) -> None:
            log.log(level, task_line(repo.name, task.id, task.image, state,
                                     time.monotonic() - started, reason=reason))  # fmt: skip

        try:
            with run.scope:
                await self._run_while_space_lacks(ctx)
                await repo.delete_task(ctx.task)
                say(logging.INFO, "done")
        except LeaseLost as exc:
            say(logging.WARNING, "lost", str(exc))
        except Exception as exc:
            if run.scope.cancel_called:
                # Stopped (a stall, a disconnect, the user) while a call was under
                # way, which then failed: the task stays as it is, for whoever resumes it.
                say(logging.WARNING, "stopped", str(exc))
            elif isinstance(exc, errors.RepofsError):
                say(logging.WARNING, "failed", exc.reason)
                await self._fail(ctx, exc.reason)
            else:
                log.exception("task %s/%s failed unexpectedly", repo.name, task.id)
                say(logging.ERROR, "failed", f"internal error: {exc!r}")
                await self._fail(ctx, f"internal error: {exc!r}")
        finally:
            del self._runs[(repo.name, task.id)]
            if repo.running_tasks.get(task.image) == task.id:
                del repo.running_tasks[task.image]
            run.done.set()
            self.wake()

    async def _run_while_space_lacks(self, ctx: TaskContext) -> None:
        """Runs the fix. When the storage is full it waits, saying so in the task
        and the image, and then goes on from its checkpoint: a clean, a removal or
        a bigger file system gives it the space (nothing is lost meanwhile)."""
        while True:
            try:
                return await ctx.kind.run(ctx)
            except errors.NoSpace as exc:
                log.warning(task_line(ctx.repo.name, ctx.task.id, ctx.task.image, "waiting",
                                      reason=f"{exc.reason}; trying again every "
                                      f"{NO_SPACE_RETRY_S}s"))  # fmt: skip
            free = await ctx.repo.space_beyond_reserve()
            # The image's own error (a copy's "copy not finished") comes back after.
            before = (await ctx.read_image()).last_error if ctx.live_image else None
            await self._say(ctx, NO_SPACE, NO_SPACE)
            # Saying so may take the repository's reserve. The task goes on once
            # more is free beyond the reserve than when it stopped (space someone
            # freed, not the reserve's own) and the reserve is whole again.
            await trio.sleep(NO_SPACE_RETRY_S)
            while not await self._space_came_back(ctx.repo, free):
                await trio.sleep(NO_SPACE_RETRY_S)
            await self._say(ctx, None, before)

    @staticmethod
    async def _space_came_back(repo: Repository, free: int) -> bool:
        return await repo.space_beyond_reserve() > free and await repo.keep_reserve()

    @staticmethod
    async def _say(ctx: TaskContext, task_error: str | None, image_error: str | None) -> None:
        """Best effort: a full file system may refuse even these few bytes."""
        try:
            await ctx.save(last_error=task_error)
            if ctx.live_image:
                await ctx.update_image(lambda r: r.evolve(last_error=image_error))
        except (errors.NoSpace, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno != errno.ENOSPC:
                raise
            log.warning("task %s/%s: cannot record that it waits: %s", ctx.repo.name,
                        ctx.task.id, exc)  # fmt: skip

    async def _fail(self, ctx: TaskContext, reason: str) -> None:
        with trio.CancelScope(shield=True):
            try:
                await ctx.save(state=TaskState.FAILED, lease=None, last_error=reason)
                if ctx.live_image:
                    await ctx.update_image(lambda r: r.left_by_task(reason))
            except (LeaseLost, errors.RepofsError, OSError) as exc:
                log.warning("cannot record the failure of %s: %s", ctx.task.id, exc)

    async def let_go(self, repo: Repository) -> None:
        """Ends this process's runs in a repository being disconnected. Their tasks
        stay running under this host's lease: whoever connects it next (this host,
        or another once the lease ran out) resumes them from their checkpoints."""
        runs = [run for (name, _), run in self._runs.items() if name == repo.name]
        for run in runs:
            run.scope.cancel()
        with trio.fail_after(leases.LEASE_S):
            for run in runs:
                await run.done.wait()

    # What users ask (ops/fix_repository.py)

    async def stop(self, repo: Repository, task_id: str) -> None:
        """Stops a task: its run ends, its checkpoint stays, the image keeps its state
        and says it was stopped. Queueing the same fix again resumes it."""
        run = self._runs.get((repo.name, task_id))
        # Until it says stopped, the task still says running under this host's
        # lease: the scheduler, woken by the run's end, must not take it back.
        self._stopping.add((repo.name, task_id))
        try:
            if run is not None:
                run.scope.cancel()
                with trio.fail_after(leases.LEASE_S):
                    await run.done.wait()
            task = await repo.read_task(task_id)
            task = await repo.write_task(
                task.evolve(state=TaskState.STOPPED, lease=None, last_error=STOPPED_BY_USER)
            )
        finally:
            self._stopping.discard((repo.name, task_id))
        if KINDS[task.fix.kind].progress_on_image:
            await repo.change_image(task.image, lambda r: r.left_by_task(STOPPED_BY_USER))
        log.info(task_line(repo.name, task_id, task.image, "stopped", reason=STOPPED_BY_USER))
