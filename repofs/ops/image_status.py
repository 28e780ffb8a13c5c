"""getImageStatus: `cat status/ID`, the user.repofs.* xattrs, and the facts
(size, allocation, dependents) that `ls -l` and the errno checks use."""

import os
from dataclasses import dataclass

import trio

from repofs.model import ImageKind, ImageRecord, ImageState
from repofs.registry import ConnectedRepository


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
            "chain": list(self.chain),
            "size": self.size,
            "allocated": self.allocated,
            "generation": self.generation,
            "dependents": list(self.dependents),
            "tasks": list(self.tasks),
            "trashed": self.trashed,
        }


def _status(repo: ConnectedRepository, record: ImageRecord, trashed: bool) -> ImageStatus:
    driver = repo.driver
    try:
        modified_ns = os.stat(driver.volume_path(record.top)).st_mtime_ns
    except FileNotFoundError:
        modified_ns = 0
    image = None if trashed else repo.open_images.get(record.id)
    dependents = () if record.kind is ImageKind.VIRTUAL_DISK else repo.dependents(record.id)
    return ImageStatus(
        id=record.id,
        kind=record.kind,
        state=record.state,
        host=record.host,
        stage=record.stage,
        percent_complete=record.percent_complete,
        last_error=record.last_error,
        base=record.base,
        chain=tuple(str(repo.volume_path(v)) for v in record.chain),
        # An open disk may have grown past its record (persisted at flush/close).
        size=image.size if image is not None else record.size,
        allocated=sum(driver.allocated_bytes(v) for v in record.chain),
        generation=record.generation,
        dependents=tuple(dependents),
        tasks=() if trashed else tuple(t.id for t in repo.tasks_on(record.id)),
        trashed=trashed,
        record=record,
        modified_ns=modified_ns,
    )


async def get_image_status(
    repo: ConnectedRepository, image_id: str, trashed: bool = False
) -> ImageStatus:
    def status() -> ImageStatus:
        return _status(repo, repo.driver.read_image(image_id, trashed), trashed)

    return await trio.to_thread.run_sync(status)
