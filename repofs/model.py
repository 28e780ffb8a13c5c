"""Typed records of the API: images, their kind, state and progress.

The image record stored by a driver is the truth about an image; everything the
FUSE layer shows is rendered from it. An image's ID is not stored inside its
record: it is the record's name, so that renaming or trashing an image is one
atomic rename on storage.
"""

import enum
from dataclasses import asdict, dataclass, field, replace

RECORD_VERSION = 1


class ImageKind(enum.StrEnum):
    VIRTUAL_DISK = "virtual-disk"
    SNAPSHOT = "snapshot"


class ImageState(enum.StrEnum):
    OPTIMIZED = "optimized"
    DEGRADED = "degraded"
    BROKEN = "broken"


class VolumeFormat(enum.StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


@dataclass(frozen=True)
class Volume:
    """One file of an image's chain, named `NAME.FORMAT` on storage."""

    name: str
    format: VolumeFormat

    @property
    def file_name(self) -> str:
        return f"{self.name}.{self.format}"

    @classmethod
    def from_file_name(cls, file_name: str) -> "Volume":
        name, _, fmt = file_name.rpartition(".")
        return cls(name, VolumeFormat(fmt))


@dataclass(frozen=True)
class Owner:
    """File ownership and mode, kept so that chown/chmod (libvirt) persist."""

    uid: int = 0
    gid: int = 0
    mode: int = 0o644


@dataclass(frozen=True)
class ImageRecord:
    id: str
    kind: ImageKind
    size: int
    # Top volume first; every lower volume is the backing file of the one above.
    chain: tuple[Volume, ...]
    base: str | None = None
    state: ImageState = ImageState.OPTIMIZED
    host: str | None = None
    stage: str | None = None
    percent_complete: int = -1
    last_error: str | None = None
    user_data: dict[str, str] = field(default_factory=dict)
    owner: Owner = Owner()
    generation: int = 0

    @property
    def top(self) -> Volume:
        return self.chain[0]

    @property
    def is_raw(self) -> bool:
        """A single raw volume: the data path reads and writes it directly."""
        return len(self.chain) == 1 and self.top.format is VolumeFormat.RAW

    def evolve(self, **changes) -> "ImageRecord":
        return replace(self, **changes)

    def to_json(self) -> dict:
        data = asdict(self)
        del data["id"]
        data["version"] = RECORD_VERSION
        data["chain"] = [v.file_name for v in self.chain]
        return data

    @classmethod
    def from_json(cls, image_id: str, data: dict) -> "ImageRecord":
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"image record {image_id}: unknown version {data.get('version')}")
        return cls(
            id=image_id,
            kind=ImageKind(data["kind"]),
            size=int(data["size"]),
            chain=tuple(Volume.from_file_name(f) for f in data["chain"]),
            base=data.get("base"),
            state=ImageState(data["state"]),
            host=data.get("host"),
            stage=data.get("stage"),
            percent_complete=int(data.get("percent_complete", -1)),
            last_error=data.get("last_error"),
            user_data=dict(data.get("user_data", {})),
            owner=Owner(**data.get("owner", {})),
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

    def to_json(self) -> dict:
        return {
            "version": RECORD_VERSION,
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
        )
