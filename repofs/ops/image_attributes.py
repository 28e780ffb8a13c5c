"""Image attributes: the read-only user.repofs.* status attributes, userData (every
other user.* attribute, persisted in the record) and ownership (chown/chmod)."""

from repofs import errors
from repofs.model import ImageRecord, Owner
from repofs.ops.image_status import ImageStatus, get_image_status
from repofs.ops.logged import logged
from repofs.repository import Repository

PREFIX = "user.repofs."
MAX_VALUE = 4096
MAX_USER_DATA = 64 * 1024


def _status_attributes(status: ImageStatus) -> dict[str, str | None]:
    return {
        "kind": str(status.kind),
        "status": str(status.state),
        "stage": status.stage,
        "percent_complete": str(status.percent_complete),
        "host": status.host,
        "last_error": status.last_error,
        "base": status.base,
        "lineage": status.lineage,
        "chain": ",".join(status.chain),
        "dependents": ",".join(status.dependents) or None,
        "tasks": ",".join(status.tasks) or None,
        "data_path": status.data_path,
    }


def _encode(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _check_namespace(name: str) -> None:
    if not name.startswith("user."):
        raise errors.not_supported(f"attribute {name}: only user.* attributes are supported")


async def list_attributes(repo: Repository, image_id: str, trashed: bool) -> list[str]:
    status = await get_image_status(repo, image_id, trashed)
    names = [PREFIX + k for k, v in _status_attributes(status).items() if v is not None]
    return names + sorted(status.record.user_data)


async def get_attribute(repo: Repository, image_id: str, name: str, trashed: bool) -> bytes:
    _check_namespace(name)
    if name.startswith(PREFIX):
        value = _status_attributes(await get_image_status(repo, image_id, trashed)).get(
            name[len(PREFIX) :]
        )
    else:
        record = await repo.read_image(image_id, trashed)
        value = record.user_data.get(name)
    if value is None:
        raise errors.no_attribute(f"{image_id} has no attribute {name}")
    return _encode(value)


def _check_writable(name: str) -> None:
    """ENOTSUP rather than EPERM: `cp -a` and `mv` across repositories copy an
    image's attributes, and skip unsupported ones silently (they report others)."""
    if name.startswith(PREFIX):
        raise errors.not_supported(f"{name} is maintained by repofs (read-only)")


@logged()
async def set_user_data(repo: Repository, image_id: str, name: str, value: bytes) -> None:
    _check_namespace(name)
    _check_writable(name)
    if len(value) > MAX_VALUE:
        raise errors.too_long(f"value of {name} is {len(value)} bytes; the limit is {MAX_VALUE}")

    def change(record: ImageRecord) -> ImageRecord:
        user_data = {**record.user_data, name: _decode(value)}
        total = sum(len(k) + len(_encode(v)) for k, v in user_data.items())
        if total > MAX_USER_DATA:
            raise errors.no_space(
                f"userData of {image_id} would be {total} bytes; the limit is {MAX_USER_DATA}"
            )
        return record.evolve(user_data=user_data)

    await _update(repo, image_id, change)


@logged()
async def remove_user_data(repo: Repository, image_id: str, name: str) -> None:
    _check_namespace(name)
    _check_writable(name)

    def change(record: ImageRecord) -> ImageRecord:
        if name not in record.user_data:
            raise errors.no_attribute(f"{image_id} has no attribute {name}")
        return record.evolve(user_data={k: v for k, v in record.user_data.items() if k != name})

    await _update(repo, image_id, change)


@logged()
async def set_owner(
    repo: Repository,
    image_id: str,
    uid: int | None = None,
    gid: int | None = None,
    mode: int | None = None,
) -> None:
    """chown/chmod, persisted so that libvirt's dynamic_ownership survives remounts."""

    def change(record: ImageRecord) -> ImageRecord:
        owner = record.owner
        return record.evolve(
            owner=Owner(
                owner.uid if uid is None else uid,
                owner.gid if gid is None else gid,
                owner.mode if mode is None else mode & Owner.PERMISSIONS,
            )
        )

    await _update(repo, image_id, change)


async def _update(repo: Repository, image_id: str, change) -> None:
    """Durable in one atomic record write (driver.change_image)."""
    record = await repo.change_image(image_id, change)
    image = repo.open_images.get(image_id)
    if image is not None:
        image.record = record
