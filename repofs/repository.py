"""One connected repository: the only way above drivers/ to its storage.

Its methods are async, and each runs the blocking driver on the repository's own
threads (`run`): a repository whose storage hangs (a Gluster brick that stopped
answering) uses up only its own, while every other repository of the mount goes
on. It also holds what this process knows of the repository: the images open in
it, the guards that order changes of one image (`guard`), the cache of its live
records and the publication of their changes on `events`.
"""

import logging
import math
import os
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from repofs import errors
from repofs.drivers import glusterfs, localfs, posix, reflink
from repofs.drivers.glusterfs import GlusterRepository
from repofs.drivers.localfs import LocalRepository
from repofs.drivers.posix import SharedRepository
from repofs.drivers.reflink import Change as ExtentChange
from repofs.drivers.volume_io import RawVolumeFile
from repofs.events import EventBus, Subscription
from repofs.leases import HostWatch
from repofs.model import (
    HostBeat,
    ImageRecord,
    Pending,
    RepositoryOptions,
    Strategy,
    Task,
    Volume,
    VolumeFormat,
)
from repofs.qemu import headers, img

log = logging.getLogger(__name__)

RELEASE_GRACE_S = 1.0
CLAIM_POLL_S = 0.1
RECORDS_REUSE_S = 1.0
LOCAL_FORMAT = localfs.FORMAT
# Extents past which a volume's clone may hold its writers longer than a live
# snapshot may (clones_quickly).
QUICK_CLONE_EXTENTS = reflink.QUICK_CLONE_EXTENTS
# Each format, and the parameters (key=value) a connection to it takes.
FORMAT_PARAMETERS = {localfs.FORMAT: ("path",), posix.FORMAT: ("path",),
                     glusterfs.FORMAT: ("server", "volume")}  # fmt: skip
_DIRECTORY_DRIVERS = {localfs.FORMAT: LocalRepository, posix.FORMAT: SharedRepository}
# Threads for one repository's blocking calls: enough for its metadata work to
# overlap, few enough that a hung storage holds only these (the data path has
# its own, drivers/io_threads.py).
THREADS_PER_REPOSITORY = 8
# How long a repository waits for another's records (records_elsewhere).
PEER_ANSWER_S = 2.0
_UNLIMITED = trio.CapacityLimiter(math.inf)


@dataclass
class Repository:
    """One connected repository (see the module's docstring)."""

    name: str
    # Its storage, for this module alone: above it nothing reaches the driver
    # (tests/test_layers.py).
    driver: LocalRepository
    format: str
    params: dict[str, str]
    # Connected through `connect` or --connect: forgotten at unmount (DESIGN.md).
    transient: bool
    host_id: str  # this host's
    host_watch: HostWatch  # the registry's: which other hosts are alive
    # All connected repositories by name (the registry's), this one included: a
    # disk's base may be a snapshot of another repository.
    peers: dict[str, "Repository"] = field(default_factory=dict)
    # Image ID -> OpenImage (ops/open_image.py), while any handle has it open.
    open_images: dict = field(default_factory=dict)
    # Image ID -> the lock of `guard`, while anyone holds or waits for it.
    _guards: dict[str, "_Guard"] = field(default_factory=dict, init=False)
    # Orders changes of the repository's options (read, change, write).
    options_changing: trio.Lock = field(default_factory=trio.Lock)
    # Image ID -> ID of the task this process runs on it (kept by the fix daemon).
    running_tasks: dict[str, str] = field(default_factory=dict)
    events: EventBus = field(init=False)
    # The qcow2 headers of its chains as last looked at (qemu/headers.py).
    header_looks: headers.HeaderLooks = field(init=False)
    # Image ID -> (the stamps of its chain's files, why) when its last open on this
    # host failed for the storage or QEMU (EIO): ops/open_image.py keeps it, and
    # status and the check tell it while those files stay as they were.
    open_failures: dict[str, tuple[tuple, str]] = field(default_factory=dict)
    # IDs of raw disks whose volume had too many extents to clone within a live
    # snapshot's stall target when last counted (ops/open_image.py clones_quickly).
    slow_clones: set[str] = field(default_factory=set)
    # The last check's fixes and when it ran (time.monotonic()): `ls -l fixes/`
    # stats every entry right after listing them, and each stat must not run a check.
    last_check: tuple[float, list] = (0.0, [])

    # The live records, sorted by ID: read for RECORDS_REUSE_S (changes made
    # elsewhere), each change made here put in as it is made. `ls -l snapshots/`
    # asks for the dependents of every snapshot, and each snapshot's status for
    # its own: neither may read every record again.
    _records: list[ImageRecord] | None = field(default=None, init=False)
    _records_read: float = field(default=0.0, init=False)
    _records_generation: int = field(default=0, init=False)
    _records_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    # In a shared repository, while `events` has readers: the generation of each
    # live record as last published. A record that differs was changed by
    # another host (publish_shared_changes).
    _published: dict[str, int] | None = field(default=None, init=False)
    # Likewise for tasks, whichever host wrote them (in a repository of one host,
    # every task write is published as it is made).
    _published_tasks: dict[str, int] | None = field(default=None, init=False)
    _threads: trio.CapacityLimiter = field(
        default_factory=lambda: trio.CapacityLimiter(THREADS_PER_REPOSITORY), init=False
    )

    @classmethod
    async def open(cls, name: str, fmt: str, params: dict[str, str], transient: bool,
                   host_id: str, host_watch: HostWatch, peers: dict[str, "Repository"],
                   gluster_mountpoint: Path) -> "Repository":  # fmt: skip
        """Connects the repository of format `fmt` that `params` name (checked by
        the caller against FORMAT_PARAMETERS); a Gluster volume is mounted at
        `gluster_mountpoint`."""

        def attach() -> LocalRepository:
            if fmt == glusterfs.FORMAT:
                return GlusterRepository.attach(params["server"], params["volume"],
                                                gluster_mountpoint)  # fmt: skip
            return _DIRECTORY_DRIVERS[fmt].open(Path(params["path"]))

        driver = await trio.to_thread.run_sync(attach)
        return cls(name, driver, fmt, params, transient, host_id, host_watch, peers)

    def __post_init__(self):
        self.events = EventBus(self.name)
        self.header_looks = headers.HeaderLooks(self.run)
        token = trio.lowlevel.current_trio_token()

        def on_change(event: str, image_id: str, record: ImageRecord | None,
                      trashed: bool) -> None:  # fmt: skip
            if not trashed:
                self._record_changed(image_id, record)
                if record is not None:
                    # Before the changer's await returns (the loop runs these in
                    # order): no one acts on the open image's older record.
                    token.run_sync_soon(self._follow_open_image, record)
            token.run_sync_soon(self._publish, event, image_id, record)

        def on_task_change(task_id: str, task: Task | None) -> None:
            if not self.driver.shared:
                token.run_sync_soon(self._publish_task, task_id, task)

        self.driver.on_change = on_change
        self.driver.on_task_change = on_task_change

    def guard(self, *image_ids: str):
        """`async with repo.guard(A, B)`: holds images A and B (by ID, taken or
        not) against every other guarded change of them in this process, for
        check-then-change sequences ("nothing depends on S", then trash S). See
        `guarded`."""
        return guarded(*((self, i) for i in image_ids))

    async def run(self, fn, *args, abandon: bool = False):
        """fn(*args) on this repository's threads: every blocking call on its
        storage goes through here. `abandon`: a caller that gives up (a stall)
        leaves the call behind, which keeps its thread until the storage answers."""
        return await trio.to_thread.run_sync(
            fn, *args, limiter=self._threads, abandon_on_cancel=abandon
        )

    # What the storage can do (known since the connection: no call)

    @property
    def shared(self) -> bool:
        """Whether other hosts connect it too (posix-1.0, glusterfs-1.0)."""
        return self.driver.shared

    @property
    def reflink(self) -> bool:
        """Whether its raw volumes are cloned (drivers/reflink.py)."""
        return self.driver.reflink

    @property
    def clone_refusal(self) -> str | None:
        """Why its volumes are not cloned (probed at the connection)."""
        return self.driver.clone_refusal

    async def extent_changes(self, new: Volume, old: Volume, size: int) -> list[ExtentChange]:
        """Where two raw clones of this repository (`new` cloned from `old`, then
        written) do not share extents, over `size` bytes (FIEMAP)."""

        def compare() -> list[ExtentChange]:
            extents = [reflink.data_extents(self.volume_path(v)) for v in (new, old)]
            return reflink.changes(*extents, size)

        return await self.run(compare)

    async def clones_quickly(self, volume: Volume) -> bool:
        """Whether a raw volume has few enough extents (QUICK_CLONE_EXTENTS) for a
        clone to take no longer than a live snapshot may stall its writers."""
        return await self.run(reflink.clones_quickly, self.volume_path(volume))

    # Records

    async def read_image(self, image_id: str, trashed: bool = False) -> ImageRecord:
        return await self.run(self.driver.read_image, image_id, trashed)

    async def read_live_or_trashed(self, image_id: str) -> ImageRecord | None:
        """The image's record, live or else in the trash; None if it has neither."""
        for trashed in (False, True):
            try:
                return await self.read_image(image_id, trashed)
            except errors.NotFound:
                continue
        return None

    async def has_image(self, image_id: str, trashed: bool = False) -> bool:
        return await self.run(self.driver.has_image, image_id, trashed)

    async def list_images(self, trashed: bool = False, abandon: bool = False,
                          fresh: bool = False) -> list[ImageRecord]:  # fmt: skip
        """The live records (kept, see live_records), or the trashed ones."""
        if trashed:
            return await self.run(self.driver.list_images, True, abandon=abandon)
        return await self.run(self.live_records, fresh, abandon=abandon)

    async def list_image_ids(self, trashed: bool = False) -> list[str]:
        return await self.run(self.driver.list_image_ids, trashed)

    async def update_image(self, record: ImageRecord, trashed: bool = False) -> ImageRecord:
        """Compare-and-swap (ESTALE if the record changed since `record` was read)."""
        return await self.run(self.driver.update_image, record, trashed)

    async def change_image(self, image_id: str, change: Callable[[ImageRecord], ImageRecord],
                           trashed: bool = False) -> ImageRecord:  # fmt: skip
        """Reads, changes and writes a record in one step no other writer comes between."""
        return await self.run(self.driver.change_image, image_id, change, trashed)

    async def trash_image(self, image_id: str) -> None:
        await self.run(self.driver.trash_image, image_id)

    async def restore_image(self, image_id: str) -> None:
        await self.run(self.driver.restore_image, image_id)

    async def rename_image(self, old_id: str, new_id: str) -> None:
        await self.run(self.driver.rename_image, old_id, new_id)

    async def purge_trashed_image(self, image_id: str) -> None:
        await self.run(self.driver.purge_trashed_image, image_id)

    # Tasks

    async def read_task(self, task_id: str) -> Task:
        return await self.run(self.driver.read_task, task_id)

    async def list_tasks(self, abandon: bool = False) -> list[Task]:
        return await self.run(self.driver.list_tasks, abandon=abandon)

    async def write_task(self, task: Task) -> Task:
        """Compare-and-swap like update_image; generation 0 creates it."""
        return await self.run(self.driver.write_task, task)

    async def delete_task(self, task: Task) -> None:
        await self.run(self.driver.delete_task, task)

    # Options

    async def read_options(self) -> RepositoryOptions:
        return await self.run(self.driver.read_options)

    async def write_options(self, options: RepositoryOptions) -> None:
        await self.run(self.driver.write_options, options)

    # Volumes

    async def create_raw_volume(self, size: int, preallocate: bool) -> Volume:
        """Durable step: a raw volume named by no record yet (clean removes it)."""
        return await self.run(self.driver.create_raw_volume, size, preallocate)

    async def grow_raw_volume(self, volume: Volume, old_size: int, size: int,
                              preallocate: bool) -> None:  # fmt: skip
        await self.run(self.driver.grow_raw_volume, volume, old_size, size, preallocate)

    async def read_holdings(self) -> "Holdings":
        """Everything the repository holds, read in one go for a check or a clean."""

        def read() -> Holdings:
            # In this order (drivers/localfs.py unsettled_volumes): a volume listed
            # is either still being made, or named by what is read after.
            volumes = [v.file_name for v in self.driver.list_volumes()]
            unsettled = self.driver.unsettled_volumes(volumes)
            live, unreadable = self.driver.read_images()
            trashed, unreadable_trashed = self.driver.read_images(trashed=True)
            return Holdings(live, trashed, self.driver.list_tasks(), volumes, unsettled,
                            unreadable | unreadable_trashed)  # fmt: skip

        return await self.run(read)

    async def remove_temp_files(self) -> None:
        """Those of leftover_temp_files (none under way), every one."""
        await self.run(self.driver.remove_temp_files)

    async def leftover_temp_files(self) -> list[Path]:
        """Temp files that interrupted atomic writes left (none under way)."""
        return await self.run(self.driver.leftover_temp_files)

    def allocated_bytes(self, volume: Volume) -> int:
        """Space a volume takes here (none for another repository's). Blocking:
        in `run`, with the other facts of a status or a check."""
        return self.driver.allocated_bytes(volume)

    async def sync_volume(self, volume: Volume) -> None:
        """What was written into the volume so far, by QEMU too, is durable."""
        file = await self.run(RawVolumeFile, self.volume_path(volume), False)
        try:
            await file.fsync()
        finally:
            await file.close()

    async def remove_volume(self, volume: Volume) -> None:
        """Durable step: the volume is gone. The caller made sure nothing names it."""
        await self.run(self.driver.remove_volume, volume)

    # The storage

    async def statvfs(self) -> os.statvfs_result:
        return await self.run(self.driver.statvfs)

    async def keep_reserve(self) -> bool:
        """Allocates the reserve of free space again if bookkeeping used it;
        whether it is whole."""
        return await self.run(self.driver.keep_reserve)

    async def space_beyond_reserve(self) -> int:
        return await self.run(self.driver.space_beyond_reserve)

    async def close(self) -> None:
        """At disconnect or unmount: the driver lets go of the storage."""
        self.driver.on_change = self.driver.on_task_change = None
        await self.run(self.driver.close)

    # This host's lease (fix_daemon.py), on threads of their own: a heartbeat
    # must not wait behind the calls of a stall (it would be late through no
    # fault of its own write), and a fence waits for the very threads it is to
    # free. At most one heartbeat write is under way (the fix daemon's
    # Heartbeat.writing), so they need no limit.

    async def write_heartbeat(self, beat: HostBeat) -> None:
        await trio.to_thread.run_sync(self.driver.write_heartbeat, beat, limiter=_UNLIMITED)

    async def fence(self) -> bool:
        """Cuts this host off the storage where the driver can (whether it did):
        what is in flight there fails rather than land after another host took over."""
        return await trio.to_thread.run_sync(self.driver.fence, limiter=_UNLIMITED)

    async def rejoin(self) -> None:
        await trio.to_thread.run_sync(self.driver.rejoin, limiter=_UNLIMITED)

    async def read_heartbeats(self, abandon: bool = False) -> dict[str, HostBeat]:
        return await self.run(self.driver.read_heartbeats, abandon=abandon)

    def live_records(self, fresh: bool = False) -> list[ImageRecord]:
        """The repository's live image records. Blocking: call from a worker thread.
        `fresh`: as storage holds them now, for a decision in a shared repository
        (other hosts change its records; this process alone changes a local one's).
        A list read while a change happened is not kept (it may predate it)."""
        with self._records_lock:
            records, generation = self._records, self._records_generation
            kept = records is not None and not (fresh and self.driver.shared)
            if kept and time.monotonic() - self._records_read <= RECORDS_REUSE_S:
                return records
        read = time.monotonic()
        records = self.driver.list_images()
        with self._records_lock:
            if generation == self._records_generation:
                self._records, self._records_read = records, read
        return records

    def _record_changed(self, image_id: str, record: ImageRecord | None) -> None:
        """Puts a change made here (`record`, None for gone) into the kept live
        records. Called by the driver in the order of the changes."""
        with self._records_lock:
            self._records_generation += 1
            if self._records is not None:
                self._records = _with_record(self._records, image_id, record)

    def _follow_open_image(self, record: ImageRecord) -> None:
        """An open image holds its record for its own compare-and-swap writes (a
        live snapshot, a resize, a claim): a change made by someone else here (a
        live merge's) goes into it."""
        image = self.open_images.get(record.id)
        if image is not None:
            image.record = record

    def _publish(self, event: str, image_id: str, record: ImageRecord | None) -> None:
        if self._published is not None:
            if record is None:
                self._published.pop(image_id, None)
            else:
                self._published[image_id] = record.generation
        facts = {"event": event, "id": image_id}
        if record is not None:
            facts.update(kind=str(record.kind), state=str(record.state), **record.progress())
        facts["task"] = self.running_tasks.get(image_id)
        self.events.publish(facts)

    def _publish_task(self, task_id: str, task: Task | None) -> None:
        if task is None:
            self.events.publish({"event": "task-ended", "task": task_id})
        else:
            view = task.view()
            self.events.publish({"event": "task", "task": view.pop("id"), **view})

    async def subscribe_events(self) -> Subscription:
        """A new reader of `events`. In a shared repository, other hosts' changes
        are published from now on: what the records and tasks are now is the baseline."""
        subscription = self.events.subscribe()
        if self.driver.shared and self._published is None:
            try:
                records = await self.run(self.live_records)
                tasks = await self.run(self.driver.list_tasks)
            except BaseException:
                subscription.close()
                raise
            self._published = {r.id: r.generation for r in records}
            self._published_tasks = {t.id: t.generation for t in tasks}
        return subscription

    async def publish_shared_changes(self, tasks: list[Task]) -> None:
        """Publishes on `events` the changes other hosts made to the live records
        of a shared repository since the last call: `created`, `updated`,
        `removed` (a rename shows as both); and every task change, from the
        listing `tasks` the caller just read. Only while someone reads `events`."""
        if not self.driver.shared or not self.events.subscribers:
            self._published = self._published_tasks = None
            return
        # A read that hangs (a stall) is left behind when the caller gives up.
        records = await self.run(self.live_records, abandon=True)
        known = self._published
        self._published = {r.id: r.generation for r in records}
        known_tasks = self._published_tasks
        self._published_tasks = {t.id: t.generation for t in tasks}
        if known is None or known_tasks is None:
            return  # the first look, if the reader came before a baseline could be read
        for record in records:
            if known.get(record.id) != record.generation:
                self._publish("created" if record.id not in known else "updated", record.id,
                              record)  # fmt: skip
        for image_id in known.keys() - self._published.keys():
            self._publish("removed", image_id, None)
        for task in tasks:
            if known_tasks.get(task.id) != task.generation:
                self._publish_task(task.id, task)
        for task_id in known_tasks.keys() - self._published_tasks.keys():
            self._publish_task(task_id, None)

    def volume_path(self, volume: Volume) -> Path:
        """Where a volume of one of this repository's records is: here, or, for a
        base in another repository, there (which must be connected)."""
        holder = self if volume.repo is None else self.peers.get(volume.repo)
        if holder is None:
            raise errors.not_found(f"{volume.file_name} of {self.name} is in {volume.repo}, "
                                   "which is not connected")  # fmt: skip
        return holder.driver.volume_path(volume.seen_from(self.name, holder.name))

    def layers(self, chain: tuple[Volume, ...]) -> list[tuple[Path, VolumeFormat]]:
        """Each volume's path and format, top first."""
        return [(self.volume_path(v), v.format) for v in chain]

    async def verify_chain(self, chain: tuple[Volume, ...]) -> None:
        """EIO unless the qcow2 headers of a record's chain name exactly its
        volumes (headers.verify_chain): before QEMU opens the chain."""
        await headers.verify_chain(self.header_looks, self.layers(chain))

    def chain_stamps(self, chain: tuple[Volume, ...]) -> tuple:
        """headers.file_stamp of each volume of a chain. Blocking."""
        return tuple(headers.file_stamp(path) for path, _ in self.layers(chain))

    def unusable_here(self, record: ImageRecord) -> str | None:
        """Why this host cannot open an image: its last open here failed, and the
        chain's files are as they were then (a volume repaired, restored or put
        back is worth another open). Blocking."""
        if record.id not in self.open_failures:
            return None
        stamps, why = self.open_failures[record.id]
        try:
            if stamps != self.chain_stamps(record.chain):
                return None
        except errors.RepofsError:
            return None  # a base in a repository not connected: another question
        return (f"its last open on host {self.host_id} failed: {why}: repair what that "
                "names and open it again, or remove the image")  # fmt: skip

    async def check_headers(self, records: list[ImageRecord]) -> dict[str, str]:
        """The records whose chains' qcow2 headers disagree with them: image ID ->
        the question for a person. Each header as last looked at while its file
        is unchanged, else looked at now; missing volumes are not looked at (the
        check names them), nor chains through a repository not connected. The
        looks at volumes of other chains are forgotten: this is the whole check."""
        chains = await self.run(self._qcow2_chains, records)
        paths = {p for chain in chains.values() for p, fmt in chain if fmt is VolumeFormat.QCOW2}
        looked = await self.header_looks.look(paths)
        self.header_looks.keep_only(paths)

        def questions() -> dict[str, str]:
            found = {i: headers.disagreement(chain, looked) for i, chain in chains.items()}
            return {i: d.question() for i, d in found.items() if d is not None}

        return await self.run(questions)

    def _qcow2_chains(self, records: list[ImageRecord]) -> dict[str, list]:
        """The layers of the records whose chains hold a qcow2 volume. Blocking."""
        paths: dict[Volume, Path] = {}  # chains share their lower volumes

        def path(volume: Volume) -> Path:
            if volume not in paths:
                paths[volume] = self.volume_path(volume)
            return paths[volume]

        chains = {}
        for record in records:
            if any(v.format is VolumeFormat.QCOW2 for v in record.chain):
                try:
                    chains[record.id] = [(path(v), v.format) for v in record.chain]
                except errors.RepofsError:
                    continue  # a base in a repository not connected: not opened either
        return chains

    async def dependents(self, image_id: str, shown: bool = False) -> list[str]:
        """Live images based on snapshot `image_id`: `ID` here, `REPO/ID` in
        other connected repositories (`shown`: see records_elsewhere)."""
        return (await self.all_dependents(shown)).get(image_id, [])

    async def all_dependents(self, shown: bool = False) -> dict[str, list[str]]:
        """`dependents` of every snapshot at once (one pass over the records);
        `shown` as records_elsewhere."""
        found = defaultdict(list)
        for record in await self.list_images(fresh=not shown):
            if record.base is not None and record.base_repository is None:
                found[record.base].append(record.id)
        for other, record in await self.records_elsewhere(shown=shown):
            if record.base is not None and record.base_repository == self.name:
                found[record.base].append(f"{other}/{record.id}")
        return found

    async def dependents_elsewhere(self, volume: Volume | None = None) -> list[str]:
        """`REPO/ID` of the live images of other connected repositories that read
        through volumes of this one (`volume`: through that one)."""
        return [
            f"{other}/{r.id}" for other, r in await self.records_elsewhere()
            if any(v.repo == self.name and volume in (None, v.seen_from(other, self.name))
                   for v in r.chain)
        ]  # fmt: skip

    async def volumes_used_elsewhere(self) -> dict[str, list[str]]:
        """Volumes of this repository that records (live or trashed) of other
        connected repositories read through: file name -> their `REPO/ID`s, which
        keep them from being freed here."""
        used = defaultdict(list)
        records = [*await self.records_elsewhere(), *await self.records_elsewhere(trashed=True)]
        for other, record in records:
            for volume in record.chain:
                if volume.repo == self.name:
                    used[volume.file_name].append(f"{other}/{record.id}")
        return used

    async def trashed_dependents(self, image_id: str) -> list[str]:
        """Trashed images based on snapshot `image_id` (here, or `REPO/ID` in
        other connected repositories): restoring them needs it under its ID."""
        return [
            r.id for r in await self.list_images(trashed=True)
            if r.base == image_id and r.base_repository is None
        ] + [
            f"{other}/{r.id}" for other, r in await self.records_elsewhere(trashed=True)
            if r.base == image_id and r.base_repository == self.name
        ]  # fmt: skip

    async def copies_elsewhere(self, image_id: str) -> list[str]:
        """Other connected repositories whose copy of snapshot `image_id` still
        waits for its data (which this one may be the only source of)."""
        return [
            other for other, r in await self.records_elsewhere()
            if r.id == image_id and r.pending is Pending.COPY
        ]  # fmt: skip

    async def records_elsewhere(
        self, trashed: bool = False, shown: bool = False
    ) -> list[tuple[str, ImageRecord]]:
        """(repository name, live record, or trashed one) of every other connected
        repository, each read on that repository's own threads. One whose storage
        fails or does not answer within PEER_ANSWER_S is left out of what is only
        `shown` (a status, a listing: said in the log); else it refuses
        (EHOSTUNREACH), since what it may build on this one is unknown. What is
        not only shown is a decision: shared repositories' records are read fresh."""
        found = []
        for other in list(self.peers.values()):
            if other is self:
                continue
            try:
                with trio.fail_after(PEER_ANSWER_S):
                    records = await other.list_images(trashed, abandon=True, fresh=not shown)
            except (trio.TooSlowError, errors.RepofsError, OSError) as exc:
                why = "no answer" if isinstance(exc, trio.TooSlowError) else str(exc)
                reason = (f"cannot tell what {other.name} builds on {self.name}: its storage "
                          f"does not answer ({why})")  # fmt: skip
                if not shown:
                    raise errors.unreachable(reason) from None
                log.warning("%s; left out", reason)
                continue
            found += [(other.name, record) for record in records]
        return found

    async def new_overlay(
        self, base: ImageRecord, holder: "Repository | None" = None
    ) -> tuple[Volume, ...]:
        """Creates a qcow2 volume here over the top of `base`, an image of `holder`
        (by default this repository); returns the chain it tops, as this
        repository's records name it. Durable step: the volume (named by no record
        yet)."""
        holder = holder or self
        overlay = self.driver.new_volume(VolumeFormat.QCOW2)
        await img.create_overlay(self.driver.volume_path(overlay), base.size,
                                 holder.driver.volume_path(base.top), base.top.format)  # fmt: skip
        return (overlay, *(v.seen_from(holder.name, self.name) for v in base.chain))

    def clones_from(self, holder: "Repository") -> bool:
        """Whether raw volumes of `holder` (this repository or another) are cloned
        into this one (drivers/reflink.py): both on one file system that shares
        extents. Blocking."""
        if not (self.driver.reflink and holder.driver.reflink):
            return False
        return holder is self or holder.driver.storage_device() == self.driver.storage_device()

    async def clone_volume(self, holder: "Repository", volume: Volume,
                           size: int) -> Volume:  # fmt: skip
        """A new raw volume here sharing the extents of `volume`, a volume of a
        record of `holder`. Durable step: the volume (named by no record yet)."""
        source = holder.volume_path(volume)
        return await self.run(self.driver.clone_volume, source, size)

    async def commit_new_image(self, record: ImageRecord, new_volume: Volume) -> ImageRecord:
        """Writes a new image's record; if that fails, removes `new_volume`, made for
        it and named by no record yet."""
        try:
            return await self.run(self.driver.create_image, record)
        except BaseException:
            await self.run(self.driver.volume_path(new_volume).unlink)
            raise

    async def check_free(self, image_id: str) -> None:
        """EEXIST early, before volumes are made for an ID that is taken (by a
        live image, or one in the trash)."""
        await self.run(self.driver.check_unused, image_id)

    async def preallocates(self) -> bool:
        """New space of raw volumes is allocated at once under strategy performance."""
        return (await self.read_options()).strategy is Strategy.PERFORMANCE

    async def wait_for_release(self, image_id: str) -> bool:
        """Whether the image is closed, after waiting a moment if it is not: the
        kernel sends the last release of a file only after close(2) returned, so
        `cp x disks/a && ln disks/a snapshots/s` may find `a` open for a moment.
        In a shared repository, also closed for writing on every other host."""
        image = self.open_images.get(image_id)
        if image is not None:
            with trio.move_on_after(RELEASE_GRACE_S):
                await image.closed.wait()
        if image_id in self.open_images:
            return False
        if not self.driver.shared:
            return True
        # Another host's claim is cleared a moment after its close(2) returned.
        with trio.move_on_after(RELEASE_GRACE_S):
            while True:
                try:
                    record = await self.read_image(image_id)
                except errors.RepofsError:
                    return True  # gone: nobody has it open
                if self.writer_elsewhere(record) is None:
                    return True
                await trio.sleep(CLAIM_POLL_S)
        return False

    def writer_elsewhere(self, record: ImageRecord) -> str | None:
        """The other host that holds the image open for writing, unless its lease
        has run out (it died without closing)."""
        writer = record.writer
        if writer is None or writer == self.host_id:
            return None
        return None if self.host_watch.dead(self.name, writer) else writer

    async def ensure_no_task(self, image_id: str, doing: str) -> None:
        """EBUSY while a queued or running task works on the image: it relies on the
        image's chain staying as it found it."""
        tasks = await self.run(self.tasks_on, image_id)
        if tasks:
            raise errors.busy(f"cannot {doing} {image_id}: task {tasks[0].id} works on it")

    def tasks_on(self, image_id: str) -> list[Task]:
        """The active tasks working on an image. Blocking."""
        return self.all_tasks_on().get(image_id, [])

    def all_tasks_on(self) -> dict[str, list[Task]]:
        """`tasks_on` of every image at once. Blocking."""
        found = defaultdict(list)
        for task in self.driver.list_tasks():
            if task.active:
                found[task.image].append(task)
        return found

    async def ensure_closed(self, image_id: str, doing: str) -> None:
        if not await self.wait_for_release(image_id):
            raise errors.busy(f"cannot {doing} {image_id} in {self.name}: it is open")


def _with_record(records: list[ImageRecord], image_id: str,
                 record: ImageRecord | None) -> list[ImageRecord]:  # fmt: skip
    """A new list (callers may hold the old one): `records`, sorted by ID, with
    `image_id`'s record put in, replaced or (None) taken out."""
    at = bisect_left(records, image_id, key=lambda r: r.id)
    present = at < len(records) and records[at].id == image_id
    return [*records[:at], *([record] if record is not None else []), *records[at + present :]]


def storage_place(fmt: str, params: dict[str, str]) -> Path | str:
    """Where a connection's repository is stored, which no two connections may
    share: a directory (whatever its format), or a Gluster volume."""
    if fmt == glusterfs.FORMAT:
        return f"{params['server']}:{params['volume']}"
    root = Path(params["path"])
    if not root.is_absolute():
        raise errors.invalid(f"{fmt} path={root} is not an absolute path")
    return root


@dataclass(frozen=True)
class Holdings:
    """What a repository holds at one moment (Repository.read_holdings)."""

    live: list[ImageRecord]
    trashed: list[ImageRecord]
    tasks: list[Task]
    volumes: list[str]  # file names in volumes/
    unsettled: set[str]  # of those, the ones that may be being made (drivers/localfs.py)
    unreadable: dict[str, str]  # records (live or trashed) that cannot be read: why


@dataclass
class _Guard:
    lock: trio.Lock = field(default_factory=trio.Lock)
    users: int = 0  # holding or waiting


@asynccontextmanager
async def guarded(*images: tuple[Repository, str]):
    """Holds each (repository, image ID) against every other guarded change of it
    in this process: a first open, a snapshot, a create, a removal, a rename, a
    resize, a fix's step on the image. Locks are taken sorted, so two guards of
    overlapping images cannot deadlock, and only for the images named: a long
    step under one image's guard (a commit, the sync of a large disk) delays
    nobody else. Other processes and hosts are ordered by the driver's
    compare-and-swap writes, not by this."""
    waiting, held = [], []
    try:
        named = {(repo.name, image_id): repo for repo, image_id in images}
        for (_, image_id), repo in sorted(named.items()):
            guard = repo._guards.setdefault(image_id, _Guard())
            guard.users += 1
            waiting.append((repo, image_id, guard))
            await guard.lock.acquire()
            held.append(guard)
        yield
    finally:
        for guard in held:
            guard.lock.release()
        for repo, image_id, guard in waiting:
            guard.users -= 1
            if not guard.users:
                del repo._guards[image_id]
