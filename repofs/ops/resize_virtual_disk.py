"""Growing a virtual disk: `truncate -s BIGGER disks/D`. Shrinking is refused."""

from repofs import errors
from repofs.model import ImageKind
from repofs.ops.logged import logged
from repofs.qemu import img
from repofs.repository import Repository


@logged()
async def resize_virtual_disk(repo: Repository, image_id: str, size: int) -> None:
    """Durable steps: (1) grow the top volume (raw: extend the file, allocating
    the new range under strategy `performance`; qcow2: qemu-img resize), (2) write
    the record with the new size. A crash after (1) leaves a volume bigger than the
    record says: reads stop at the record's size, and the next growth of a raw
    disk drops the tail first (ops/open_image.py)."""
    image = repo.open_images.get(image_id)
    if image is not None:
        record = image.record
    else:
        record = await repo.read_image(image_id)
    if record.kind is not ImageKind.VIRTUAL_DISK:
        raise errors.read_only(f"{image_id} is a snapshot: snapshots are read-only")
    current = await image.current_size() if image else record.size
    if size < current:
        raise errors.invalid(f"cannot shrink {image_id} from {current} to {size} bytes")
    if size == current:
        return
    if image is not None:
        await image.grow(size)
    else:
        async with repo.guard(image_id):
            await _grow_closed(repo, image_id, size)


async def _grow_closed(repo: Repository, image_id: str, size: int) -> None:
    record = await repo.read_image(image_id)
    path = repo.volume_path(record.top)
    if record.is_raw:
        preallocate = await repo.preallocates()
        await repo.grow_raw_volume(record.top, record.size, size, preallocate)
    else:
        await img.resize(path, record.top.format, size)
    await repo.update_image(record.evolve(size=size))
