"""Durable file updates: the only place repofs writes metadata files."""

import errno
import json
import os
import time
import uuid
from pathlib import Path

TEMP_PREFIX = ".tmp-"
STALE_RETRIES = 4
STALE_PAUSE_S = 0.005


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, data: dict) -> None:
    """Replaces `path` with `data` so that a crash leaves the old or the new file.

    Durable steps: write a temp file beside it, fsync it, rename it over `path`,
    fsync the directory. A crash before the rename leaves only a temp file (named
    TEMP_PREFIX..., which no listing shows and a clean removes).
    """
    tmp = path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    payload = json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. ENOSPC: leave nothing half-written
        raise
    fsync_dir(path.parent)


def durable_rename(src: Path, dst: Path) -> None:
    """Moves a file in one atomic step; the caller holds the lock that makes
    "`dst` does not exist" still true at the rename.

    Durable steps: rename, fsync the destination directory, fsync the source
    directory. A crash before the first fsync leaves the old name or the new one,
    never both and never neither.
    """
    os.rename(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def open_or_create(path: Path) -> int:
    """A read-write descriptor of `path`, created if missing. Two Gluster
    clients creating the same file at once may see EEXIST from O_CREAT without
    O_EXCL (which POSIX never gives): then the file is there, open it."""
    while True:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileExistsError:
            pass
        try:
            return os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue  # removed in between: create it again


def read_record(path: Path) -> tuple[bytes, os.stat_result]:
    """The bytes of a metadata file and its stat, tried again on ESTALE and
    ENOENT. On Gluster, a read of a name another host has just replaced by
    rename fails with ENOENT or ESTALE for a few milliseconds although the name
    never stopped existing (the client found the old file, which is gone by
    the time it opens it). Writers hold the repository lock, under which no one
    else renames a record, so they never see that; a name that is really gone
    is reported after STALE_RETRIES tries."""
    for attempt in range(1, STALE_RETRIES + 1):
        try:
            with open(path, "rb") as f:
                return f.read(), os.fstat(f.fileno())
        except OSError as exc:
            if exc.errno not in (errno.ESTALE, errno.ENOENT) or attempt == STALE_RETRIES:
                raise
        time.sleep(STALE_PAUSE_S * attempt)  # let the rename under way end


def read_json(path: Path) -> dict:
    return json.loads(read_record(path)[0])
