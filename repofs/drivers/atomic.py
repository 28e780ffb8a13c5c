"""Metadata file updates, durable ones and the heartbeats that need not be: the
only place repofs writes metadata files."""

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
    _replace(path, data, durable=True)
    fsync_dir(path.parent)


def replace_json(path: Path, data: dict) -> None:
    """Replaces `path` with `data` for readers on every host, atomically but not
    durably: write a temp file, rename it over `path`, no fsync (which would wait
    for the journal commit, and with it for the data other files wrote before).
    Another host sees the new file once the rename returned: NFS writes a file's
    data to the server at close, before the rename; Gluster may still hold it
    back (write-behind) for a moment, in which a reader finds the file empty. A
    crash may lose the change, or leave a temp file as atomic_write_json does."""
    _replace(path, data, durable=False)


def _replace(path: Path, data: dict, durable: bool) -> None:
    tmp = path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            os.write(fd, _encode(data))
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. ENOSPC: leave nothing half-written
        raise


def overwrite_json(path: Path, data: dict) -> None:
    """Writes `data` over `path` in place, for a record that only this process
    writes and reads back, and that no one needs after a crash (a local
    repository's heartbeat). No temp file, rename, truncation or fsync: on a
    file system busy writing back other files' data, each of those can wait
    behind it (fsync for the journal commit and the data it orders; rename for
    the writeback of the file it replaces; truncation for a page under
    writeback). The record is padded with spaces to the file's length, which
    JSON ignores, so nothing is ever cut off. Not atomic: a reader racing the
    write may find a torn record. Durable steps: none (a crash may leave the
    old record, the new one or a torn one)."""
    fd = open_or_create(path)
    try:
        payload = _encode(data)
        payload = payload.ljust(os.fstat(fd).st_size)
        done = 0
        while done < len(payload):
            done += os.pwrite(fd, payload[done:], done)
    finally:
        os.close(fd)


def _encode(data: dict) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"


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


def read_record(path: Path, shared: bool = True) -> tuple[bytes, os.stat_result]:
    """The bytes of a metadata file and its stat; on `shared` storage tried again
    on ESTALE and ENOENT. On Gluster, a read of a name another host has just
    replaced by rename fails with ENOENT or ESTALE for a few milliseconds
    although the name never stopped existing (the client found the old file,
    which is gone by the time it opens it). Writers hold the repository lock,
    under which no one else renames a record, so they never see that; a name
    that is really gone is reported after STALE_RETRIES tries, 30 ms later. A
    local file system's rename never hides the name, so there a missing record
    is reported at once: every new name's lookup (`truncate`, `ln`) meets one."""
    tries = STALE_RETRIES if shared else 1
    for attempt in range(1, tries + 1):
        try:
            with open(path, "rb") as f:
                return f.read(), os.fstat(f.fileno())
        except OSError as exc:
            if exc.errno not in (errno.ESTALE, errno.ENOENT) or attempt == tries:
                raise
        time.sleep(STALE_PAUSE_S * attempt)  # let the rename under way end


def read_json(path: Path) -> dict:
    return json.loads(read_record(path)[0])
