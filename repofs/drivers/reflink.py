"""Shared extents on storage that has them (XFS with reflink, btrfs): FICLONE
makes a file that shares every extent of another, in the time it takes to
copy the extent map; FIEMAP says where each extent of a file lies, so two
clones can be compared without reading their data.

A clone is a point-in-time barrier: the kernel takes the source's write lock
and flushes its dirty pages, so the clone holds every write that finished
before it (measured: 20 clones under 16 writers at queue depth 16, every one
consistent). Its writers wait meanwhile, for a time that grows with the
file's extent count (docs/performance.md).

Two files of one file system share an extent only if they hold the same bytes
there (the extent is copied on write), so the ranges where their extents
differ cover every difference between them: an incremental copy moves those.
"""

import ctypes
import ctypes.util
import fcntl
import itertools
import os
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FICLONE = 0x40049409  # _IOW(0x94, 9, int)
FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
FIEMAP_FLAG_SYNC = 0x1  # the file's dirty pages are written (and so mapped) first
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNWRITTEN = 0x800  # allocated, reads as zeros
# Extents whose physical address says nothing about their bytes (not yet
# allocated, compressed, inline in metadata, packed with others' tails): they
# are taken to differ from everything.
FIEMAP_EXTENT_OPAQUE = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400
# struct fiemap: fm_start, fm_length, fm_flags, fm_mapped_extents,
# fm_extent_count, fm_reserved; then struct fiemap_extent[fm_extent_count]:
# fe_logical, fe_physical, fe_length, fe_reserved64[2], fe_flags, fe_reserved[3].
_FIEMAP = struct.Struct("=QQIII4x")
_EXTENT = struct.Struct("=QQQ16xI12x")
_EXTENTS_PER_CALL = 1024
# A clone costs 20-40 us an extent on XFS (docs/performance.md, "Clones"): a
# file of this many clones in 80-160 ms, within the 250 ms that a live snapshot
# may stall the disk's writers.
QUICK_CLONE_EXTENTS = 4096

FALLOC_FL_KEEP_SIZE = 0x1
FALLOC_FL_PUNCH_HOLE = 0x2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


def clone(source: Path, target: Path, size: int) -> None:
    """Makes `target` (a new file) share `source`'s extents, cut or extended to
    `size` bytes. Durable steps: create `target`, FICLONE, truncate, fsync it.
    On failure `target` is removed; a crash may leave it (the caller names it
    nowhere before this returns)."""
    source_fd = os.open(source, os.O_RDONLY)
    try:
        target_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.ioctl(target_fd, FICLONE, source_fd)
            os.ftruncate(target_fd, size)
            os.fsync(target_fd)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        finally:
            os.close(target_fd)
    finally:
        os.close(source_fd)


def probe(directory: Path, prefix: str) -> str | None:
    """Whether files in `directory` can be cloned: None if so, else why not.
    Clones a one-block temp file named `prefix`... and removes both (a crash in
    between leaves temp files, which the caller's clean knows by `prefix`)."""
    name = f"{prefix}reflink-probe-{uuid.uuid4().hex}"
    source, target = directory / name, directory / f"{name}.clone"
    try:
        fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.pwrite(fd, b"\xa5" * 4096, 0)
        finally:
            os.close(fd)
        clone(source, target, 4096)
        return None
    except OSError as exc:
        # A full storage, or one that fails, is not known to clone: it layers.
        return f"FICLONE: {exc.strerror or exc}"
    finally:
        source.unlink(missing_ok=True)
        target.unlink(missing_ok=True)


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Frees a range of the file open for writing as `fd`, which then reads as
    zeros; the size stays."""
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    if _libc.fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@dataclass(frozen=True)
class Extent:
    """A range of a file that holds data: `physical` is where on the device,
    None where the address does not identify the bytes (FIEMAP_EXTENT_OPAQUE)."""

    logical: int
    length: int
    physical: int | None

    @property
    def end(self) -> int:
        return self.logical + self.length


def data_extents(path: Path) -> list[Extent]:
    """The extents of a file that hold data, in order (holes and unwritten
    extents, which read as zeros, are left out). The file's dirty pages are
    written first (FIEMAP_FLAG_SYNC)."""
    return list(_data_extents(path))


def clones_quickly(path: Path) -> bool:
    """Whether a file has at most QUICK_CLONE_EXTENTS data extents; counting
    stops past them (a clone's time, for which its writers wait, grows with
    the count)."""
    extents = _data_extents(path)
    try:
        return next(itertools.islice(extents, QUICK_CLONE_EXTENTS, None), None) is None
    finally:
        extents.close()  # its file descriptor


def _data_extents(path: Path) -> Iterator[Extent]:
    fd = os.open(path, os.O_RDONLY)
    try:
        start, last = 0, False
        while not last:
            request = bytearray(_FIEMAP.size + _EXTENT.size * _EXTENTS_PER_CALL)
            _FIEMAP.pack_into(request, 0, start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC, 0,
                              _EXTENTS_PER_CALL)  # fmt: skip
            fcntl.ioctl(fd, FS_IOC_FIEMAP, request)
            mapped = _FIEMAP.unpack_from(request, 0)[3]
            if mapped == 0:
                break
            for i in range(mapped):
                logical, physical, length, flags = _EXTENT.unpack_from(
                    request, _FIEMAP.size + i * _EXTENT.size
                )
                last = bool(flags & FIEMAP_EXTENT_LAST)
                start = logical + length
                if not flags & FIEMAP_EXTENT_UNWRITTEN:
                    opaque = flags & FIEMAP_EXTENT_OPAQUE
                    yield Extent(logical, length, None if opaque else physical)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Change:
    """A range where a file differs from its ancestor (or may): `data`, its
    bytes are to be copied; else it reads as zeros where the ancestor held data."""

    offset: int
    length: int
    data: bool


def changes(new: list[Extent], old: list[Extent], size: int) -> list[Change]:
    """Where a file of `size` bytes whose extents are `new` may differ from one
    whose extents are `old` (both data_extents of files of one file system): the
    ranges where they do not share an extent at the same place, merged. A range
    both leave a hole is no change; one only `new` leaves a hole reads zeros."""
    bounds = sorted({0, size} | {b for e in new + old for b in (e.logical, e.end) if b < size})
    found: list[Change] = []
    i = j = 0
    for start, end in zip(bounds, bounds[1:], strict=False):
        while i < len(new) and new[i].end <= start:
            i += 1
        while j < len(old) and old[j].end <= start:
            j += 1
        a = new[i] if i < len(new) and new[i].logical <= start else None
        b = old[j] if j < len(old) and old[j].logical <= start else None
        if a is None and b is None:
            continue
        if a is not None and b is not None and _same_place(a, b, start):
            continue
        data = a is not None
        if found and found[-1].data == data and found[-1].offset + found[-1].length == start:
            found[-1] = Change(found[-1].offset, end - found[-1].offset, data)
        else:
            found.append(Change(start, end - start, data))
    return found


def _same_place(a: Extent, b: Extent, offset: int) -> bool:
    """Whether both extents keep the byte at `offset` at the same physical place
    (then, both being linear, the whole range up to the next bound)."""
    if a.physical is None or b.physical is None:
        return False
    return a.physical + (offset - a.logical) == b.physical + (offset - b.logical)
