"""qemu-img, run asynchronously. The format is always named: QEMU never probes."""

import errno
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import trio

from repofs import errors
from repofs.model import VolumeFormat
from repofs.qemu.tools import require

log = logging.getLogger(__name__)


# After a crash, a qemu-img that the dead repofs started may still be finishing
# its work on an image, holding QEMU's lock on it: wait for it that long.
LOCKED_RETRY_S = 60


async def _run(*args: str) -> bytes:
    cmd = [require("qemu-img"), *args]
    deadline = trio.current_time() + LOCKED_RETRY_S
    while True:
        result = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
        if result.returncode == 0:
            return result.stdout
        message = result.stderr.decode(errors="replace").strip()
        if "Failed to get" in message and "lock" in message and trio.current_time() < deadline:
            log.warning("qemu-img %s: %s; retrying", args[0], message)
            await trio.sleep(1)
            continue
        code = errno.ENOSPC if "No space left" in message else errno.EIO
        raise errors.RepofsError(code, f"qemu-img {args[0]} failed: {message}")


SECTOR = 512


def qcow2_size(size: int) -> int:
    """QEMU sizes qcow2 images in whole sectors; an image's own size (its record's)
    may be any byte count, and its raw view stops there."""
    return -(-size // SECTOR) * SECTOR


async def create_overlay(
    path: Path, size: int, backing: Path, backing_format: VolumeFormat
) -> None:
    """Creates a qcow2 volume at `path` over `backing`. The backing name stored in
    the header is relative to `path`'s directory (bare within a repository), so
    that a repository, or a data dir of repositories, can move as a whole. The
    backing chain is not opened (-u): the size is given, and opening a long chain
    would make a snapshot cost O(chain)."""
    options = ["-u", "-f", "qcow2", "-o", "cluster_size=65536", "-b", backing_name(path, backing)]
    options += ["-F", str(backing_format)]
    await _run("create", "-q", *options, str(path), str(qcow2_size(size)))


async def resize(path: Path, fmt: VolumeFormat, size: int) -> None:
    if fmt is VolumeFormat.QCOW2:
        size = qcow2_size(size)
    await _run("resize", "-q", "-f", str(fmt), str(path), str(size))


async def info(path: Path, fmt: VolumeFormat) -> dict:
    """`qemu-img info` of one volume; -U because the storage daemon may hold it open."""
    return json.loads(await _run("info", "-U", "--output=json", "-f", str(fmt), str(path)))


async def repair_leaks(path: Path) -> None:
    """Repairs refcount leaks of a qcow2 volume left open for writing by a crash.

    Leaks are harmless and repaired in place; any other corruption raises EIO so the
    volume is not used for writing (DESIGN.md, Data path)."""
    cmd = [require("qemu-img"), "check", "-q", "-r", "leaks", "-f", "qcow2", str(path)]
    result = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode not in (0, 3):
        message = (result.stdout + result.stderr).decode(errors="replace").strip()
        raise errors.io_error(f"{path.name} fails qemu-img check: {message}")


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    data: bool  # holds bytes that are not known to be zeros
    depth: int  # the layer it comes from, 0 for the top; the chain's length if none
    zero: bool  # reads as zeros
    # Where its bytes are in that layer's file (None if not stored plainly there:
    # compressed, or no data).
    host_offset: int | None = None


async def map_extents(path: Path, fmt: VolumeFormat) -> list[Extent]:
    """The guest-visible layout of the chain topped by `path` (`qemu-img map`)."""
    out = await _run("map", "-U", "--output=json", "-f", str(fmt), str(path))
    return [
        Extent(
            e["start"],
            e["length"],
            e["data"] and not e["zero"],
            e["depth"],
            e["zero"],
            e.get("offset") if e["data"] and not e.get("compressed") else None,
        )  # fmt: skip
        for e in json.loads(out)
    ]


def backing_name(path: Path, backing: Path) -> str:
    """`backing` relative to `path`'s directory, as QEMU resolves backing names."""
    return os.path.relpath(backing, path.parent)


async def rebase_unsafe(path: Path, backing: Path, backing_format: VolumeFormat) -> None:
    """Points a qcow2 volume at another backing file with the same contents (no
    data is compared or copied). Idempotent."""
    await _run("rebase", "-q", "-u", "-f", "qcow2", "-b", backing_name(path, backing),
               "-F", str(backing_format), str(path))  # fmt: skip


async def rebase_safe(
    path: Path, backing: Path | None, backing_format: VolumeFormat | None
) -> None:
    """Points a qcow2 volume at `backing` (None: no backing file), first copying
    into it whatever reads differently through the new backing; the header is
    rewritten last, so an interrupted rebase leaves the old backing with the same
    bytes. Redoing it is harmless."""
    if backing is None:
        await _run("rebase", "-q", "-f", "qcow2", "-b", "", str(path))
        return
    await _run("rebase", "-q", "-f", "qcow2", "-b", backing_name(path, backing),
               "-F", str(backing_format), str(path))  # fmt: skip


async def commit(path: Path) -> None:
    """Writes a qcow2 volume's data into its backing file. Idempotent: a commit
    redone after a crash writes the same data again."""
    await _run("commit", "-q", "-d", "-f", "qcow2", str(path))
