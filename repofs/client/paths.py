"""What a path given to `repofs status`, `watch`, `wait` or `why` names in a
mount, or a one-line reason why it names nothing the command takes.

A mount root is a mount point whose root answers the attribute naming its repofs
process; a repository is a directory in a mount root; an image is a file in a
repository's `disks/` or `snapshots/`. Paths are taken as the shell gives them
(`.` and `..` included) and said back that way.
"""

import os
from pathlib import Path

from repofs import errors
from repofs.mounts import repofs_pid

IMAGE_AREAS = ("disks", "snapshots")


def repositories(path: str) -> list[Path]:
    """The repository at `path`, or every repository of the mount at `path`."""
    where = _existing(path)
    if _is_mount_root(where):
        return sorted(entry for entry in where.iterdir() if entry.is_dir())
    if where.is_dir() and _is_mount_root(where.parent):
        return [where]
    if _mount_of(where) is None:
        raise errors.invalid(f"{path} is not a repofs mount")
    raise errors.invalid(f"{path} is not a mount or a repository of a mount")


def image(path: str) -> tuple[Path, str]:
    """The repository and the ID of the image at `path`."""
    where = _existing(path)
    repo = where.parent.parent
    if where.parent.name in IMAGE_AREAS and where.is_file() and _is_mount_root(repo.parent):
        return repo, where.name
    what = f"{path} is not an image (MOUNT/REPO/disks/ID or MOUNT/REPO/snapshots/ID)"
    if _mount_of(where) is None:
        raise errors.invalid(f"{what} of a repofs mount")
    raise errors.invalid(what)


def mount(path: str) -> Path:
    """The mount root of the mount that `path` is in."""
    root = _mount_of(_existing(path))
    if root is None:
        raise errors.invalid(f"{path} is not in a repofs mount")
    return root


def _existing(path: str) -> Path:
    where = Path(path).resolve()
    try:
        os.stat(where)
    except OSError as exc:
        raise errors.from_os_error(exc, path) from None
    return where


def _mount_of(where: Path) -> Path | None:
    return next((p for p in (where, *where.parents) if _is_mount_root(p)), None)


def _is_mount_root(where: Path) -> bool:
    return os.path.ismount(where) and repofs_pid(where) is not None
