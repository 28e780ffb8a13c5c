"""localfs-1.0: a repository in one directory, used by one host.

Layout (DESIGN.md, "On-disk: localfs-1.0"; docs/on-disk.md adds trash/ and options):

    ROOT/repofs.json          format marker and format version
    ROOT/options.json         the repository's default options (user.repofs.* xattrs)
    ROOT/images/ID.json       image record
    ROOT/trash/ID.json        record of a removed image, restorable until cleaned
    ROOT/volumes/VOL.FORMAT   raw or qcow2 volume
    ROOT/tasks/TASK.json      queued/running work (fix engine)
    ROOT/locks/               repository.lock (metadata changes), connection.lock
    ROOT/hosts/HOST.json      host heartbeats (fix engine)

Every metadata change happens under the repository lock and is an atomic write
(drivers/atomic.py); heartbeats are neither (write_heartbeat). Volumes are
created before the record that names them and removed only after no record
names them.
"""

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from repofs import errors
from repofs.drivers import reflink
from repofs.drivers.atomic import (
    TEMP_PREFIX,
    atomic_write_json,
    durable_rename,
    fsync_dir,
    open_or_create,
    overwrite_json,
    read_json,
    read_record,
)
from repofs.drivers.blocking import off_the_loop
from repofs.model import HostBeat, ImageRecord, RepositoryOptions, Task, Volume, VolumeFormat

log = logging.getLogger(__name__)

FORMAT = "localfs-1.0"
FORMAT_VERSION = 1
HEARTBEAT_TEMP_AGE_S = 3600
_DIRS = ("images", "trash", "volumes", "tasks", "locks", "hosts")
# Space kept allocated for the repository's bookkeeping (task records,
# heartbeats) on a full storage: about 250 such writes.
RESERVE_BYTES = 1 << 20


@off_the_loop
class LocalRepository:
    """One localfs-1.0 directory. Methods are blocking: call them from a worker
    thread (drivers/blocking.py says in the log when one is not)."""

    format = FORMAT
    shared = False  # several hosts connect it (drivers/posix.py)
    # Methods that compute without storage: callable anywhere.
    _PURE = ("volume_path", "new_volume")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        off_the_loop(cls)

    def __init__(self, root: Path):
        self.root = root
        self._images = root / "images"
        self._trash = root / "trash"
        self._volumes = root / "volumes"
        self._locks = root / "locks"
        self._tasks = root / "tasks"
        self._hosts = root / "hosts"
        self._reserve = root / "reserve"
        self._thread_lock = threading.Lock()
        self._connection_fd: int | None = None
        # Told of every durable change of an image record: (event, image ID, record
        # or None, whether the record is in the trash). Called from the thread that
        # made the change, under the repository lock: in the order of the changes.
        self.on_change: Callable[[str, str, ImageRecord | None, bool], None] | None = None
        # Told of every task record written (the task) or deleted (None), likewise.
        self.on_task_change: Callable[[str, Task | None], None] | None = None
        # Parsed records by path, with the identity of the file they were parsed
        # from (see _file_identity): a listing stats every record but parses only
        # those that changed. The records this driver writes are put here as
        # written, so a reused inode cannot pass an older parse for them.
        self._parsed: dict[Path, tuple[tuple[int, ...], ImageRecord]] = {}
        # Why volumes cannot be cloned here (drivers/reflink.py), or None if they
        # can: probed at open.
        self.clone_refusal: str | None = "not probed"
        # Volumes this process named and no record or task names yet: being made
        # for one (unsettled_volumes). Forgotten at a crash, with the creates.
        self._unsettled: set[str] = set()
        # Task records list_tasks skipped, by file name, with why: each said once
        # in the log (the fix daemon lists the tasks every second).
        self._unreadable_tasks: dict[str, str] = {}

    def _notify(self, event: str, image_id: str, record: ImageRecord | None,
                trashed: bool = False) -> None:  # fmt: skip
        if self.on_change is not None:
            self.on_change(event, image_id, record, trashed)

    # Connection

    @classmethod
    def open(cls, root: Path) -> "LocalRepository":
        """Opens the repository at `root`, formatting it when `root` is an empty directory.

        Durable steps of formatting: create the subdirectories, then write the
        marker. A crash before the marker leaves a directory holding only empty
        subdirectories, which the next open formats again.
        """
        root = root.absolute()
        marker = root / "repofs.json"
        if not root.is_dir():
            raise errors.not_found(f"{root} is not a directory")
        if marker.exists():
            data = read_json(marker)
            if data.get("format") != cls.format or data.get("version") != FORMAT_VERSION:
                raise errors.invalid(
                    f"{root} holds format {data.get('format')!r}, not {cls.format}"
                )
        elif any(p.name not in _DIRS or any(p.iterdir()) for p in root.iterdir()):
            raise errors.invalid(f"{root} is not empty and is not a repofs repository")
        else:
            for name in _DIRS:
                (root / name).mkdir(exist_ok=True)
            fsync_dir(root)
            atomic_write_json(marker, {"format": cls.format, "version": FORMAT_VERSION})
            log.info("formatted %s as %s", root, cls.format)
        repo = cls(root)
        repo._take_connection_lock()
        repo.keep_reserve()
        # In the root, named as a temp file: a crash during the probe leaves
        # what a clean removes.
        repo.clone_refusal = reflink.probe(root, TEMP_PREFIX)
        return repo

    @property
    def reflink(self) -> bool:
        """Whether volumes are cloned (FICLONE) rather than layered."""
        return self.clone_refusal is None

    def storage_device(self) -> int:
        """The file system of the volumes: clones reach no further."""
        return os.stat(self._volumes).st_dev

    def _take_connection_lock(self) -> None:
        """localfs-1.0 is for one host: a second process connecting it is refused."""
        fd = open_or_create(self._locks / "connection.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise errors.busy(f"{self.root} is connected by another repofs process") from None
        self._connection_fd = fd

    def keep_reserve(self) -> bool:
        """Allocates ROOT/reserve again if it is missing or short; whether it is
        whole (a full storage may not have the room yet). Durable step:
        posix_fallocate of the reserve file."""
        if self._reserve_held() >= RESERVE_BYTES:
            return True
        fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
            os.fsync(fd)
            return True
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            return False
        finally:
            os.close(fd)

    def space_beyond_reserve(self) -> int:
        """Free bytes of the storage, less what the reserve lacks of its size."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize - max(0, RESERVE_BYTES - self._reserve_held())

    def _reserve_held(self) -> int:
        try:
            return self._reserve.stat().st_blocks * 512
        except FileNotFoundError:
            return 0

    def _write_bookkeeping(self, path: Path, data: dict, write=atomic_write_json) -> None:
        """Writes a task record or a heartbeat (with `write`), on a full storage in
        the space of the reserve: queueing the clean that frees space, saying that
        a task waits for space, and staying alive must not fail for want of it."""
        try:
            write(path, data)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            try:
                self._reserve.unlink()
            except FileNotFoundError:
                raise exc from None
            log.warning("%s is full: released its reserve of free space", self.root)
            write(path, data)

    def close(self) -> None:
        if self._connection_fd is not None:
            os.close(self._connection_fd)
            self._connection_fd = None

    def fence(self) -> bool:
        """Cuts this host's access to the storage after its heartbeat stalled, so
        that nothing still in flight lands after another host took over. False:
        a directory the admin mounted cannot be cut from here (its stalled
        writes land when the storage comes back; docs/multi-host.md)."""
        return False

    def rejoin(self) -> None:
        """Restores the access fence() cut (nothing to restore here)."""

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The repository lock: serialises metadata changes among threads, processes
        and hosts.

        An fcntl (POSIX) lock, the kind shared file systems carry between hosts
        (NFSv4, GlusterFS, CephFS). It is the process's: the thread lock orders
        this process's threads, and only this method opens the lock file (closing
        any descriptor of it would drop the lock).
        """
        with self._thread_lock:
            fd = open_or_create(self._locks / "repository.lock")
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    # Facts

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.root)

    def read_options(self) -> RepositoryOptions:
        path = self.root / "options.json"
        return (
            RepositoryOptions.from_json(read_json(path)) if path.exists() else RepositoryOptions()
        )

    def write_options(self, options: RepositoryOptions) -> None:
        with self.lock():
            atomic_write_json(self.root / "options.json", options.to_json())

    # Image records

    def _record_path(self, image_id: str, trashed: bool = False) -> Path:
        return (self._trash if trashed else self._images) / f"{image_id}.json"

    def read_image(self, image_id: str, trashed: bool = False) -> ImageRecord:
        path = self._record_path(image_id, trashed)
        try:
            data, st = read_record(path, self.shared)
            identity = _file_identity(st)
            parsed = self._parsed.get(path)
            if parsed is not None and parsed[0] == identity:
                return parsed[1]
            record = ImageRecord.from_json(image_id, json.loads(data))
        except FileNotFoundError:
            where = "trash" if trashed else "repository"
            raise errors.not_found(f"no image {image_id} in {where} {self.root}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.io_error(f"record {path} is unreadable: {exc!r}") from None
        self._parsed[path] = (identity, record)
        return record

    def _write_record(self, path: Path, record: ImageRecord) -> None:
        atomic_write_json(path, record.to_json())
        self._parsed[path] = (_file_identity(path.stat()), record)

    def has_image(self, image_id: str, trashed: bool = False) -> bool:
        return self._record_path(image_id, trashed).exists()

    def list_image_ids(self, trashed: bool = False) -> list[str]:
        directory = self._trash if trashed else self._images
        return sorted(
            p.name[: -len(".json")]
            for p in directory.iterdir()
            if p.name.endswith(".json") and not p.name.startswith(".")
        )

    def list_images(self, trashed: bool = False) -> list[ImageRecord]:
        return self.read_images(trashed)[0]

    def read_images(self, trashed: bool = False) -> tuple[list[ImageRecord], dict[str, str]]:
        """The readable records, and why each unreadable one is not (by ID)."""
        records, unreadable = [], {}
        ids = self.list_image_ids(trashed)
        for image_id in ids:
            try:
                records.append(self.read_image(image_id, trashed))
            except errors.RepofsError as exc:
                if exc.errno != errno.ENOENT:  # else removed while we listed
                    log.error("skipping %s: %s", image_id, exc.reason)
                    unreadable[image_id] = exc.reason
        # Forget the parses of records gone from this directory (over a copy of
        # the keys: other threads may add entries meanwhile).
        listed = {self._record_path(image_id, trashed) for image_id in ids}
        directory = self._trash if trashed else self._images
        for path in [p for p in list(self._parsed) if p.parent == directory and p not in listed]:
            self._parsed.pop(path, None)
        return records, unreadable

    def create_image(self, record: ImageRecord) -> ImageRecord:
        """Writes the record of a new image (generation 1); EEXIST if the ID is
        taken, by a live image or one in the trash."""
        with self.lock():
            path = self._record_path(record.id)
            self.check_unused(record.id)
            record = record.evolve(generation=1)
            self._write_record(path, record)
            self._notify("created", record.id, record)
        self._settle(v.file_name for v in record.chain)
        return record

    def update_image(self, record: ImageRecord, trashed: bool = False) -> ImageRecord:
        """Compare-and-swap: writes `record` as generation + 1 if storage still holds
        `record.generation`, else ESTALE (someone else changed the image meanwhile)."""
        return self.change_image(record.id, lambda current: record, trashed)

    def change_image(self, image_id: str, change: Callable[[ImageRecord], ImageRecord],
                     trashed: bool = False) -> ImageRecord:  # fmt: skip
        """Reads the record, applies `change` and writes the result as generation + 1,
        all under the repository lock: a read-modify-write no other writer can come
        between. `change` may refuse by raising. ESTALE if the record it returns is
        of another generation than the one it was given (a stale record)."""
        with self.lock():
            current = self.read_image(image_id, trashed)
            record = change(current)
            _check_generation(f"image {image_id}", current.generation, record.generation)
            record = record.evolve(generation=record.generation + 1)
            self._write_record(self._record_path(image_id, trashed), record)
            self._notify("updated", image_id, record, trashed)
        self._settle(v.file_name for v in record.chain)
        return record

    def purge_trashed_image(self, image_id: str) -> None:
        """Forgets a trashed image for good (its volumes stay until nothing names
        them). Durable step: unlink the record, fsync the trash directory."""
        with self.lock():
            self._record_path(image_id, trashed=True).unlink(missing_ok=True)
            fsync_dir(self._trash)
            self._notify("purged", image_id, None, trashed=True)

    def trash_image(self, image_id: str) -> None:
        """removeImage on storage: one rename of the record into trash/."""
        with self.lock():
            if not self._record_path(image_id).exists():  # removed meanwhile, perhaps elsewhere
                raise errors.not_found(f"{image_id} does not exist")
            if self._record_path(image_id, trashed=True).exists():
                raise errors.exists(
                    f"trash already holds an image {image_id}: restore or clean it first"
                )
            self._rename(self._record_path(image_id), self._record_path(image_id, trashed=True))
            self._notify("removed", image_id, None)

    def restore_image(self, image_id: str) -> None:
        with self.lock():
            if self._record_path(image_id).exists():
                raise errors.exists(f"image {image_id} already exists")
            self._rename(self._record_path(image_id, trashed=True), self._record_path(image_id))
            self._notify("restored", image_id, self.read_image(image_id))

    def rename_image(self, old_id: str, new_id: str) -> None:
        with self.lock():
            self.check_unused(new_id)
            self._rename(self._record_path(old_id), self._record_path(new_id))
            self._notify("removed", old_id, None)
            self._notify("renamed", new_id, self.read_image(new_id))

    def check_unused(self, image_id: str) -> None:
        """EEXIST if a live or trashed image has this ID: an ID names one image
        (what builds on it names it by ID, and restoring it needs it free)."""
        if self._record_path(image_id).exists():
            raise errors.exists(f"image {image_id} already exists")
        if self._record_path(image_id, trashed=True).exists():
            raise errors.exists(f"{image_id} is in the trash: restore or clean it first")

    @staticmethod
    def _rename(src: Path, dst: Path) -> None:
        try:
            durable_rename(src, dst)
        except FileNotFoundError:
            raise errors.not_found(f"{src.name[:-5]} does not exist") from None

    # Volumes

    # Tasks and host heartbeats

    def _task_path(self, task_id: str) -> Path:
        return self._tasks / f"{task_id}.json"

    def read_task(self, task_id: str) -> Task:
        path = self._task_path(task_id)
        try:
            return Task.from_json(read_json(path))
        except FileNotFoundError:
            raise errors.not_found(f"no task {task_id} in {self.root}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.io_error(f"task record {path} is unreadable: {exc!r}") from None

    def list_tasks(self) -> list[Task]:
        """The task records that can be read. One that cannot be parsed is skipped,
        and said in the log once, until it reads again or goes (or its reason
        changes). An OSError ends the listing: a record the storage cannot read
        now may name volumes (a clean must not free them)."""
        tasks, unreadable = [], {}
        for path in sorted(self._tasks.glob("[!.]*.json")):
            try:
                tasks.append(self.read_task(path.name[: -len(".json")]))
            except errors.NotFound:
                pass  # removed while listed
            except errors.RepofsError as exc:
                unreadable[path.name] = exc.reason
        # Unlocked: two listings at once may say a record twice, no worse.
        said, self._unreadable_tasks = self._unreadable_tasks, unreadable
        for name, reason in unreadable.items():
            if said.get(name) != reason:
                log.error("skipping task %s until it can be read: %s", name, reason)
        for name in said.keys() - unreadable.keys():
            log.info("task record %s is readable again, or gone", name)
        return tasks

    def write_task(self, task: Task) -> Task:
        """Compare-and-swap like update_image; generation 0 creates the task (EEXIST
        if it exists)."""
        with self.lock():
            path = self._task_path(task.id)
            if task.generation == 0:
                if path.exists():
                    raise errors.exists(f"task {task.id} already exists")
            else:
                current = self.read_task(task.id)
                _check_generation(f"task {task.id}", current.generation, task.generation)
            task = task.evolve(generation=task.generation + 1)
            self._write_bookkeeping(path, task.to_json())
        self._settle(task.checkpoint.volumes)
        if self.on_task_change is not None:
            self.on_task_change(task.id, task)
        return task

    def delete_task(self, task: Task) -> None:
        """Durable step: unlink the task record (if still at `task.generation`)."""
        with self.lock():
            current = self.read_task(task.id)
            _check_generation(f"task {task.id}", current.generation, task.generation)
            self._task_path(task.id).unlink()
            fsync_dir(self._tasks)
        if self.on_task_change is not None:
            self.on_task_change(task.id, None)

    def _host_path(self, host: str) -> Path:
        return self._hosts / f"{urllib.parse.quote(host, safe='')}.json"

    def write_heartbeat(self, beat: HostBeat) -> None:
        """Not under the repository lock: only this host writes its record, and a
        host that stalls holding the lock must not stop the others' heartbeats.

        In place and not durable (drivers/atomic.py, overwrite_json): no other
        host reads it, and a counter lost in a crash is harmless (it only has to
        move), but a heartbeat must not wait behind the data a copy writes back."""
        self._write_bookkeeping(self._host_path(beat.host), beat.to_json(), overwrite_json)

    def read_heartbeats(self) -> dict[str, HostBeat]:
        beats = {}
        for path in self._hosts.glob("[!.]*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                beat = HostBeat.from_json(read_json(path))
                beats[beat.host] = beat
        return beats

    # Volumes

    def volume_path(self, volume: Volume) -> Path:
        """Of a volume of this repository (Repository.volume_path finds
        the volumes of bases in other repositories)."""
        if volume.repo is not None:
            raise ValueError(f"{volume.ref} is not a volume of {self.root}")
        return self._volumes / volume.file_name

    def new_volume(self, fmt: VolumeFormat) -> Volume:
        """A name for a volume to make: unsettled until a record or a task names it."""
        volume = Volume(uuid.uuid4().hex, fmt)
        self._unsettled.add(volume.file_name)
        return volume

    def _settle(self, names) -> None:
        """Volumes a record or task written now names: no longer being made."""
        self._unsettled.difference_update(names)

    def create_raw_volume(self, size: int, preallocate: bool) -> Volume:
        """Creates a raw volume of `size` bytes, allocated on storage if `preallocate`.

        Durable steps: create + size (+ allocate) the file, fsync it, fsync the
        directory. A crash leaves a volume no record names, which a clean removes.
        """
        volume = self.new_volume(VolumeFormat.RAW)
        path = self.volume_path(volume)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.ftruncate(fd, size)
            if preallocate and size:
                os.posix_fallocate(fd, 0, size)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            fd = -1
            path.unlink()
            if exc.errno == errno.ENOSPC:
                raise errors.no_space(f"no space for a {size}-byte volume in {self.root}") from None
            raise errors.from_os_error(exc, f"creating volume {path}") from None
        finally:
            if fd >= 0:
                os.close(fd)
        fsync_dir(self._volumes)
        return volume

    def clone_volume(self, source: Path, size: int) -> Volume:
        """A new raw volume sharing the extents of `source` (a volume of this
        repository or of another on the same file system), cut or extended to
        `size` bytes.

        Durable steps: create, clone and fsync the file, fsync the directory. A
        crash leaves a volume no record names, which a clean removes.
        """
        volume = self.new_volume(VolumeFormat.RAW)
        try:
            reflink.clone(source, self.volume_path(volume), size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise errors.no_space(f"no space to clone {source.name} in {self.root}") from None
            raise errors.from_os_error(exc, f"cloning {source} into {self.root}") from None
        fsync_dir(self._volumes)
        return volume

    def grow_raw_volume(self, volume: Volume, old_size: int, size: int, preallocate: bool) -> None:
        """Extends a raw volume from `old_size` (the record's) to `size` bytes.

        Durable steps: cut the file back to `old_size` (dropping growth a crash
        left unrecorded, so the new range reads as zeros), extend it, allocate the
        new range if asked, fsync.
        """
        fd = os.open(self.volume_path(volume), os.O_WRONLY)
        try:
            os.ftruncate(fd, old_size)
            os.ftruncate(fd, size)
            if preallocate:
                os.posix_fallocate(fd, old_size, size - old_size)
            os.fsync(fd)
        except OSError as exc:
            os.ftruncate(fd, old_size)  # e.g. ENOSPC: the volume stays as it was
            raise errors.from_os_error(exc, f"growing volume {volume.file_name}") from None
        finally:
            os.close(fd)

    def unsettled_volumes(self, names: list[str]) -> set[str]:
        """Of the volume file names `names`, those that may be being made for a
        record or task to come, so not garbage even if nothing names them yet:
        here, those this process named and has not written a record or task
        naming (a repository of one host has no other creates). Ask after
        listing the volumes and before reading the records: a volume listed is
        then either still unsettled here or named by a record read after."""
        return self._unsettled.intersection(names)

    def list_volumes(self) -> list[Volume]:
        volumes = []
        for path in sorted(self._volumes.iterdir()):
            with contextlib.suppress(ValueError):
                volumes.append(Volume.from_file_name(path.name))
        return volumes

    def remove_volume(self, volume: Volume) -> None:
        """Durable step: unlink the volume, fsync the directory. The caller has made
        sure that no record and no task names it."""
        self.volume_path(volume).unlink(missing_ok=True)
        fsync_dir(self._volumes)
        self._settle([volume.file_name])

    def remove_temp_files(self) -> None:
        """Under the repository lock, which every atomic write holds: no temp file
        of a write in progress is taken for a leftover."""
        with self.lock():
            for path in self.temp_files():
                path.unlink(missing_ok=True)

    def leftover_temp_files(self) -> list[Path]:
        """temp_files as the check reports them: seen under the repository lock,
        so that a record or task write under way (this process's own fix daemon)
        is not offered for cleaning."""
        with self.lock():
            return self.temp_files()

    def temp_files(self) -> list[Path]:
        """Leftovers of atomic writes that a crash interrupted. Heartbeats are
        written without the repository lock, so a temp file of one is a leftover
        only once it is older than any write takes (by this host's clock: an
        hour leaves room for clocks that disagree)."""
        found = [
            p for d in (self.root, self._images, self._trash, self._tasks)
            for p in d.glob(f"{TEMP_PREFIX}*")
        ]  # fmt: skip
        for path in self._hosts.glob(f"{TEMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.stat().st_mtime > HEARTBEAT_TEMP_AGE_S:
                    found.append(path)
        return found

    def allocated_bytes(self, volume: Volume) -> int:
        """Space the volume takes here: none for a volume of another repository."""
        if volume.repo is not None:
            return 0
        try:
            return os.stat(self.volume_path(volume)).st_blocks * 512
        except FileNotFoundError:
            return 0


def _file_identity(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever a record file is replaced or edited in place."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _check_generation(what: str, stored: int, expected: int) -> None:
    if stored != expected:
        raise errors.conflict(
            f"{what} changed meanwhile (generation {stored}, expected {expected})"
        )
