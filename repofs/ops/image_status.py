"""getImageStatus: `cat status/ID`, the user.repofs.* xattrs, and the facts
(size, allocation, dependents) that `ls -l` and the errno checks use."""

import os
from collections.abc import Callable
from dataclasses import dataclass

from repofs.model import ImageKind, ImageRecord, ImageState, Task
from repofs.repository import Repository


@dataclass(frozen=True)
class ImageStatus:
    id: str
    kind: ImageKind
    state: ImageState
    host: str | None
    stage: str | None
    percent_complete: int
    last_error: str | None
    base: str | None
    lineage: str | None  # reflink storage: the snapshot its volume was last cloned from or into
    chain: tuple[str, ...]
    size: int
    allocated: int
    generation: int
    dependents: tuple[str, ...]
    tasks: tuple[str, ...]  # queued or running on this image
    trashed: bool
    record: ImageRecord
    # The top volume's modification time: when the image's bytes last changed.
    modified_ns: int
    # Who serves its open files: "passthrough" (the kernel), "repofs"; None: closed.
    data_path: str | None

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "kind": str(self.kind),
            "state": str(self.state),
            "host": self.host,
            "stage": self.stage,
            "percent_complete": self.percent_complete,
            "last_error": self.last_error,
            "base": self.base,
            "lineage": self.lineage,
            "chain": list(self.chain),
            "size": self.size,
            "allocated": self.allocated,
            "generation": self.generation,
            "dependents": list(self.dependents),
            "tasks": list(self.tasks),
            "trashed": self.trashed,
            "writer": self.record.writer,  # shared repositories: who has it open for writing
            "data_path": self.data_path,
        }


def _status(
    repo: Repository,
    record: ImageRecord,
    trashed: bool,
    dependents: dict[str, list[str]],
    tasks_on: Callable[[str], list[Task]],
) -> ImageStatus:
    """`dependents` as Repository.all_dependents, `tasks_on` as
    Repository's: a listing passes a lookup in a map it gathered once for all
    images. Blocking."""
    image = None if trashed else repo.open_images.get(record.id)
    try:
        top = os.stat(repo.volume_path(record.top))
        modified_ns = top.st_mtime_ns
        # An open disk may have grown past its record (persisted at flush/close).
        size = record.size if image is None else image.seen_size(top.st_size)
    except FileNotFoundError:
        modified_ns = 0
        size = record.size if image is None else image.size
    layers = repo.layers(record.chain)
    # Why this host cannot use it though the record says nothing of it: a header
    # seen disagreeing with the record (QEMU is never given the chain), or its
    # last open here failed. Not written into the record: status only reads.
    unusable = None
    if not trashed:
        disagreement = repo.header_looks.known_disagreement(layers)
        unusable = disagreement.question() if disagreement else repo.unusable_here(record)
    # Bases are snapshots (a trashed disk may share a live snapshot's ID); not
    # asked for a disk, whose lookups must not read every record.
    is_base = record.kind is ImageKind.SNAPSHOT
    dependents_here = dependents.get(record.id, ()) if is_base else ()
    tasks = () if trashed else tasks_on(record.id)
    return ImageStatus(
        id=record.id,
        kind=record.kind,
        state=record.state if unusable is None else ImageState.BROKEN,
        **{**record.progress(), **({} if unusable is None else {"last_error": unusable})},
        base=record.base,
        lineage=record.lineage,
        chain=tuple(str(path) for path, _ in layers),
        size=size,
        allocated=sum(repo.allocated_bytes(v) for v in record.chain),
        generation=record.generation,
        dependents=tuple(dependents_here),
        tasks=tuple(t.id for t in tasks),
        trashed=trashed,
        record=record,
        modified_ns=modified_ns,
        data_path=None if image is None else "passthrough" if image.passthrough else "repofs",
    )


async def get_image_status(repo: Repository, image_id: str, trashed: bool = False) -> ImageStatus:
    record = await repo.read_image(image_id, trashed)
    dependents = await repo.all_dependents(shown=True) if record.kind is ImageKind.SNAPSHOT else {}
    return await repo.run(_status, repo, record, trashed, dependents, repo.tasks_on)


async def list_image_statuses(repo: Repository, trashed: bool = False) -> list[ImageStatus]:
    """The statuses of all live (or all trashed) images, in one pass: what `ls -l`
    of an area shows."""

    records = await repo.list_images(trashed)
    bases = any(r.kind is ImageKind.SNAPSHOT for r in records)
    dependents = await repo.all_dependents(shown=True) if bases else {}

    def statuses() -> list[ImageStatus]:
        tasks = repo.all_tasks_on()

        def tasks_on(image_id: str) -> list[Task]:
            return tasks.get(image_id, [])

        return [_status(repo, record, trashed, dependents, tasks_on) for record in records]

    return await repo.run(statuses)
