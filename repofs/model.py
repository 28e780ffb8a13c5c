"""Typed records of the API: images, their kind, state and progress.

The image record stored by a driver is the truth about an image; everything the
FUSE layer shows is rendered from it. An image's ID is not stored inside its
record: it is the record's name, so that renaming or trashing an image is one
atomic rename on storage.
"""

import enum
from dataclasses import asdict, dataclass, field, replace

RECORD_VERSION = 1
# The last_error of a snapshot whose creation was interrupted (ops/create_snapshot.py);
# a mend fix finishes it.
UNFINISHED_SNAPSHOT = "snapshot not finished: its disk may still write to its top volume"
# The last_error of an image whose data is still being copied in (ops/copy_image.py).
COPY_UNFINISHED = "copy not finished"


class ImageKind(enum.StrEnum):
    VIRTUAL_DISK = "virtual-disk"
    SNAPSHOT = "snapshot"


class ImageState(enum.StrEnum):
    OPTIMIZED = "optimized"
    DEGRADED = "degraded"
    BROKEN = "broken"


class Pending(enum.StrEnum):
    """What a broken image waits for, kept apart from last_error (which says it
    to people, and which a stop overwrites)."""

    COPY = "copy"  # its data is still being copied in
    SNAPSHOT = "snapshot"  # its creation as a snapshot was interrupted


class VolumeFormat(enum.StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


@dataclass(frozen=True)
class Volume:
    """One file of an image's chain, named `NAME.FORMAT` on storage, in the
    image's own repository or, for a base in another repository, in `repo`."""

    name: str
    format: VolumeFormat
    repo: str | None = None

    @property
    def file_name(self) -> str:
        return f"{self.name}.{self.format}"

    @property
    def ref(self) -> str:
        """How a record names it: `NAME.FORMAT`, or `REPO/NAME.FORMAT` when foreign."""
        return self.file_name if self.repo is None else f"{self.repo}/{self.file_name}"

    @classmethod
    def from_file_name(cls, file_name: str) -> "Volume":
        name, _, fmt = file_name.rpartition(".")
        return cls(name, VolumeFormat(fmt))

    @classmethod
    def from_ref(cls, ref: str) -> "Volume":
        repo, _, file_name = ref.rpartition("/")
        return replace(cls.from_file_name(file_name), repo=repo or None)

    def seen_from(self, owner: str, viewer: str) -> "Volume":
        """This volume of a record of repository `owner`, as a record of
        repository `viewer` names it."""
        repo = self.repo or owner
        return replace(self, repo=None if repo == viewer else repo)


@dataclass(frozen=True)
class Owner:
    """File ownership and mode, kept so that chown/chmod (libvirt) persist."""

    uid: int = 0
    gid: int = 0
    mode: int = 0o644

    # The permission bits an image keeps: no set-user-ID, set-group-ID or
    # sticky bit (an image is no program), so a write has none to clear, as the
    # mount promises the kernel (FUSE_CAP_HANDLE_KILLPRIV_V2, fs/operations.py).
    PERMISSIONS = 0o777


@dataclass(frozen=True)
class ImageRecord:
    id: str
    kind: ImageKind
    size: int
    # Top volume first; every lower volume is the backing file of the one above.
    chain: tuple[Volume, ...]
    base: str | None = None
    # On reflink storage, the snapshot this image's raw volume was last cloned
    # from or into (ops/create_snapshot.py): the two share the extents that did
    # not change since, so a copy over that snapshot moves only the others
    # (fixes/copy.py). Only a hint: nothing builds on it, and it may name an
    # image that is gone.
    lineage: str | None = None
    state: ImageState = ImageState.OPTIMIZED
    host: str | None = None
    stage: str | None = None
    percent_complete: int = -1
    last_error: str | None = None
    pending: Pending | None = None
    user_data: dict[str, str] = field(default_factory=dict)
    owner: Owner = Owner()
    # The host that has the image open for writing, in a repository several
    # hosts share (ops/write_claims.py); None in a one-host repository.
    writer: str | None = None
    # A snapshot taken by a backup (`ln disks/D r2/snapshots/B`): the repository
    # it was copied into. Once a newer one for that repository is whole there,
    # this one leaves D's chain (fixes/copy.py release_older_backups).
    backup_for: str | None = None
    generation: int = 0

    @property
    def top(self) -> Volume:
        return self.chain[0]

    @property
    def base_repository(self) -> str | None:
        """The other repository holding this image's base, if its base is not here."""
        return self.chain[1].repo if len(self.chain) > 1 else None

    @property
    def is_usable_snapshot(self) -> bool:
        """A snapshot whose data can be read, as a copy's source or base."""
        return self.kind is ImageKind.SNAPSHOT and self.state is not ImageState.BROKEN

    @property
    def usable_state(self) -> ImageState:
        """The state of this image once it is usable: degraded while its base is a
        snapshot of another repository, else optimized."""
        return ImageState.DEGRADED if self.base_repository else ImageState.OPTIMIZED

    @property
    def is_raw(self) -> bool:
        """A single raw volume: the data path reads and writes it directly."""
        return len(self.chain) == 1 and self.top.format is VolumeFormat.RAW

    def evolve(self, **changes) -> "ImageRecord":
        return replace(self, **changes)

    def progress(self) -> dict:
        """The progress of the task working on the image, as the users' views of
        the image name it (`cat status/ID`, user.repofs.*, `events`): the host
        running it, its stage X/Y and percent, and why it stopped or failed."""
        return {name: getattr(self, name) for name in (
            "host", "stage", "percent_complete", "last_error")}  # fmt: skip

    def left_by_task(self, reason: str) -> "ImageRecord":
        """The record once the task working on it stopped or failed: no host runs
        it, and `reason` says why."""
        return self.evolve(host=None, last_error=reason)

    def to_json(self) -> dict:
        data = asdict(self)
        del data["id"]
        data["version"] = RECORD_VERSION
        data["chain"] = [v.ref for v in self.chain]
        return data

    @classmethod
    def from_json(cls, image_id: str, data: dict) -> "ImageRecord":
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"image record {image_id}: unknown version {data.get('version')}")
        return cls(
            id=image_id,
            kind=ImageKind(data["kind"]),
            size=int(data["size"]),
            chain=tuple(Volume.from_ref(f) for f in data["chain"]),
            base=data.get("base"),
            lineage=data.get("lineage"),
            state=ImageState(data["state"]),
            host=data.get("host"),
            stage=data.get("stage"),
            percent_complete=int(data.get("percent_complete", -1)),
            last_error=data.get("last_error"),
            pending=Pending(data["pending"]) if data.get("pending") else None,
            user_data=dict(data.get("user_data", {})),
            owner=Owner(**data.get("owner", {})),
            writer=data.get("writer"),
            backup_for=data.get("backup_for"),
            generation=int(data["generation"]),
        )


class Strategy(enum.StrEnum):
    SPACE = "space"
    PERFORMANCE = "performance"


@dataclass(frozen=True)
class RepositoryOptions:
    """Default options for operations into a repository (its user.repofs.* xattrs)."""

    autofix: bool = True
    strategy: Strategy = Strategy.SPACE
    participating: tuple[str, ...] = ()
    image_hints: tuple[tuple[str, str], ...] = ()
    max_chain: int = 8  # longer chains are degraded: optimize flattens them

    def to_json(self) -> dict:
        return {
            "version": RECORD_VERSION,
            "max_chain": self.max_chain,
            "autofix": self.autofix,
            "strategy": str(self.strategy),
            "participating": list(self.participating),
            "image_hints": [list(h) for h in self.image_hints],
        }

    @classmethod
    def from_json(cls, data: dict) -> "RepositoryOptions":
        return cls(
            autofix=bool(data.get("autofix", True)),
            strategy=Strategy(data.get("strategy", "space")),
            participating=tuple(data.get("participating", ())),
            image_hints=tuple(tuple(h) for h in data.get("image_hints", ())),
            max_chain=int(data.get("max_chain", 8)),
        )


class FixKind(enum.StrEnum):
    CLEAN = "clean"
    OPTIMIZE = "optimize"
    MERGE = "merge"
    MEND = "mend"


class Plan(enum.StrEnum):
    """How an optimize makes a degraded image whole (fixes/optimize.py)."""

    FLATTEN = "flatten"  # copy its chain into one raw volume of its own
    LOCALIZE = "localize"  # copy its base from another repository here, and build on that


@dataclass(frozen=True)
class FixData:
    """What the check found that its fix's kind needs to know. Every field is
    optional: a fix sets those of its kind, and its JSON (`cat fixes/X`, a task
    record's fix) names only the fields set, None being absent, as fixes written
    before this type did."""

    # optimize: how.
    plan: Plan | None = None
    # mend of a broken image: a copy to go on, a snapshot to finish (both set,
    # either true or neither).
    copy: bool | None = None
    unfinished_snapshot: bool | None = None
    # mend: what a person must decide (the fix then only fails, saying so).
    decision: tuple[str, ...] | None = None
    # merge: the live images reading through the removed snapshot's top volume.
    images: tuple[str, ...] | None = None
    # clean-volumes: the volume files no record names.
    volumes: tuple[str, ...] | None = None

    def to_json(self) -> dict:
        data = {}
        for name, value in vars(self).items():
            if value is not None:
                data[name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_json(cls, data: dict) -> "FixData":
        def names(key: str) -> tuple[str, ...] | None:
            return tuple(data[key]) if data.get(key) is not None else None

        def flag(key: str) -> bool | None:
            return bool(data[key]) if data.get(key) is not None else None

        return cls(
            plan=Plan(data["plan"]) if data.get("plan") is not None else None,
            copy=flag("copy"),
            unfinished_snapshot=flag("unfinished_snapshot"),
            decision=names("decision"),
            images=names("images"),
            volumes=names("volumes"),
        )


@dataclass(frozen=True)
class Fix:
    """One finding of checkStorageRepository and the work that repairs it.

    Its ID is derived from what it repairs, so that a check run twice offers the
    same fix, and a task made from it keeps that ID (resuming a stopped task is
    queueing the same fix again)."""

    id: str
    kind: FixKind
    image: str | None
    description: str
    bytes_estimate: int
    data: FixData = FixData()

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "kind": str(self.kind),
            "image": self.image,
            "description": self.description,
            "bytes_estimate": self.bytes_estimate,
            "data": self.data.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict) -> "Fix":
        return cls(
            id=data["id"],
            kind=FixKind(data["kind"]),
            image=data.get("image"),
            description=data["description"],
            bytes_estimate=int(data.get("bytes_estimate", 0)),
            data=FixData.from_json(data.get("data", {})),
        )


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    STOPPED = "stopped"  # by the user; queueing its fix again resumes it
    FAILED = "failed"


@dataclass(frozen=True)
class Lease:
    """Who runs a task: a host, proven alive by its heartbeat counter."""

    host: str
    heartbeat: int


@dataclass(frozen=True)
class HostBeat:
    """A host's heartbeat record in a repository (ROOT/hosts/HOST.json)."""

    host: str
    heartbeat: int  # the counter: other hosts judge it by whether it moves
    written: float  # wall-clock time of the write, by the host's clock: for people

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "HostBeat":
        return cls(str(data["host"]), int(data["heartbeat"]), float(data.get("written", 0)))


@dataclass(frozen=True)
class Checkpoint:
    """What a task's fix has durably done, so that a resume skips it. Every field
    is optional: a fix sets those it uses, and the task record's JSON names only
    the fields set (an absent key is the default), as records written before
    this type did."""

    # The fix's own work: the volume an optimize copies into (a file name), the
    # refs of the base chain it copies, and how far a copy got (an offset below
    # which the target holds the source's bytes).
    target: str | None = None
    base: tuple[str, ...] = ()
    copied: int = 0
    # The volumes the task made and still owns (file names): a clean must not
    # take them for garbage.
    volumes: tuple[str, ...] = ()

    def evolve(self, **changes) -> "Checkpoint":
        return replace(self, **changes)

    def to_json(self) -> dict:
        data = {}
        if self.target is not None:
            data["target"] = self.target
        if self.volumes:
            data["volumes"] = list(self.volumes)
        if self.copied:
            data["copied"] = self.copied
        if self.base:
            data["base"] = list(self.base)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Checkpoint":
        return cls(
            target=data.get("target"),
            base=tuple(data.get("base", ())),
            copied=int(data.get("copied", 0)),
            volumes=tuple(data.get("volumes", ())),
        )


@dataclass(frozen=True)
class Task:
    id: str
    fix: Fix
    state: TaskState = TaskState.QUEUED
    lease: Lease | None = None
    stage: str | None = None  # "X/Y"
    step: str | None = None  # what stage X does, in a word
    percent_complete: int = -1
    bytes_done: int = 0
    bytes_total: int = 0
    rate: float = 0.0  # bytes per second, over the current run
    started: float | None = None  # wall-clock time of the current run, for people
    last_error: str | None = None
    checkpoint: Checkpoint = Checkpoint()
    generation: int = 0

    @property
    def image(self) -> str | None:
        return self.fix.image

    @property
    def active(self) -> bool:
        """Queued or running: someone means to work on it."""
        return self.state in (TaskState.QUEUED, TaskState.RUNNING)

    def evolve(self, **changes) -> "Task":
        return replace(self, **changes)

    def progress(self) -> dict:
        """Its persisted progress, as the record and users' views name it."""
        return {name: getattr(self, name) for name in (
            "stage", "step", "percent_complete", "bytes_done", "bytes_total", "rate",
            "started", "last_error")}  # fmt: skip

    def view(self) -> dict:
        """What users see of the task: `cat tasks/T`, and its lines on `events`."""
        return {
            "id": self.id,
            "image": self.image,
            "kind": str(self.fix.kind),
            "description": self.fix.description,
            "state": str(self.state),
            "host": self.lease.host if self.lease else None,
            **self.progress(),
        }

    def to_json(self) -> dict:
        return {
            "version": RECORD_VERSION,
            "id": self.id,
            "fix": self.fix.to_json(),
            "state": str(self.state),
            "lease": asdict(self.lease) if self.lease else None,
            **self.progress(),
            "checkpoint": self.checkpoint.to_json(),
            "generation": self.generation,
        }

    @classmethod
    def from_json(cls, data: dict) -> "Task":
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"task {data.get('id')}: unknown version {data.get('version')}")
        lease = data.get("lease")
        return cls(
            id=data["id"],
            fix=Fix.from_json(data["fix"]),
            state=TaskState(data["state"]),
            lease=Lease(**lease) if lease else None,
            stage=data.get("stage"),
            step=data.get("step"),
            percent_complete=int(data.get("percent_complete", -1)),
            bytes_done=int(data.get("bytes_done", 0)),
            bytes_total=int(data.get("bytes_total", 0)),
            rate=float(data.get("rate", 0.0)),
            started=data.get("started"),
            last_error=data.get("last_error"),
            checkpoint=Checkpoint.from_json(data.get("checkpoint", {})),
            generation=int(data["generation"]),
        )
