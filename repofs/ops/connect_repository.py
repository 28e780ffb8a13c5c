"""connectStorageRepository / disconnectStorageRepository, and the repositories
of the mount's data directory, which are connected again at every mount."""

import logging
import shlex

import trio

from repofs import errors
from repofs.fix_daemon import FixDaemon
from repofs.names import check_name
from repofs.ops import write_claims
from repofs.ops.logged import logged
from repofs.registry import Registry
from repofs.repository import FORMAT_PARAMETERS, LOCAL_FORMAT, Repository, storage_place

log = logging.getLogger(__name__)

DEFAULT_REPOSITORY = "default"
PLANNED_FORMATS = ("clvm-1.2",)
# Where repofs mounts the Gluster volumes it connects, under the data directory
# (a dot name: no repository is called that).
GLUSTER_MOUNTS = ".glusterfs"
# The mount root's own files: a repository of that name would be hidden.
RESERVED_NAMES = ("README", "connect")


def parse_connection(line: str) -> tuple[str, str, dict[str, str]]:
    """Parses "NAME FORMAT key=value ..." (the `connect` file, --connect)."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise errors.invalid(f"cannot parse connection {line!r}: {exc}") from None
    if len(words) < 2:
        raise errors.invalid(f"connection {line!r} is not 'NAME FORMAT key=value ...'")
    name, fmt, *pairs = words
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise errors.invalid(f"connection parameter {pair!r} is not key=value")
        params[key] = value
    return check_name(name, "repository name"), fmt, params


@logged(image=None, repo="name")
async def connect_repository(
    registry: Registry, name: str, fmt: str, params: dict[str, str], transient: bool = True
) -> Repository:
    check_name(name, "repository name")
    if name in RESERVED_NAMES or name in registry.repositories:
        raise errors.exists(f"a repository named {name} is already connected")
    if fmt in PLANNED_FORMATS:
        raise errors.not_supported(f"format {fmt} is planned, not built yet")
    if fmt not in FORMAT_PARAMETERS:
        raise errors.invalid(f"unknown repository format {fmt!r}")
    if sorted(params) != sorted(FORMAT_PARAMETERS[fmt]):
        wanted = " ".join(f"{key}=..." for key in FORMAT_PARAMETERS[fmt])
        raise errors.invalid(f"{fmt} takes {wanted}; got {' '.join(sorted(params)) or 'nothing'}")
    place = storage_place(fmt, params)
    for other in registry.repositories.values():
        if storage_place(other.format, other.params) == place:
            raise errors.busy(f"{place} is already connected as {other.name}")
    repo = await Repository.open(
        name, fmt, params, transient, registry.host_id, registry.host_watch,
        registry.repositories, registry.data_dir / GLUSTER_MOUNTS / name,
    )  # fmt: skip
    if repo.shared:
        try:
            await write_claims.drop_stale_claims(repo)
        except BaseException:
            await repo.close()
            raise
    registry.repositories[name] = repo
    if repo.reflink:
        log.info("%s is on reflink storage: snapshots of raw disks, disks on snapshots and "
                 "copies within its file system are clones", name)  # fmt: skip
    else:
        log.info("%s layers snapshots as qcow2 overlays: its storage does not clone (%s)",
                 name, repo.clone_refusal)  # fmt: skip
    return repo


async def create_local_repository(registry: Registry, name: str) -> Repository:
    """`mkdir MOUNT/NAME`: creates (or reopens) DATA_DIR/NAME and connects it."""
    check_name(name, "repository name")
    root = registry.data_dir / name
    await trio.to_thread.run_sync(lambda: root.mkdir(exist_ok=True))
    return await connect_repository(registry, name, LOCAL_FORMAT, {"path": str(root)}, False)


async def connect_data_dir(registry: Registry) -> None:
    """Connects every repository of the data directory, creating `default` first."""
    await trio.to_thread.run_sync(
        lambda: (registry.data_dir / DEFAULT_REPOSITORY).mkdir(parents=True, exist_ok=True)
    )
    for root in sorted(registry.data_dir.iterdir()):
        if root.is_dir() and (root.name == DEFAULT_REPOSITORY or (root / "repofs.json").exists()):
            try:
                await create_local_repository(registry, root.name)
            except errors.RepofsError as exc:
                log.error("cannot connect %s: %s", root, exc)


@logged(image=None, repo="name")
async def disconnect_repository(registry: Registry, fixes: FixDaemon, name: str) -> None:
    repo = registry.get(name)
    for image_id in list(repo.open_images):
        await repo.wait_for_release(image_id)
    if repo.open_images:
        raise errors.busy(f"cannot disconnect {name}: open images {sorted(repo.open_images)}")
    dependents = await repo.dependents_elsewhere()
    if dependents:
        raise errors.busy(f"cannot disconnect {name}: {', '.join(dependents)} read through "
                          "its snapshots until optimized")  # fmt: skip
    del registry.repositories[name]
    # Its running tasks stop where they are; a later connection resumes them.
    await fixes.let_go(repo)
    await repo.close()
