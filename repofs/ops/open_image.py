"""Opening an image's raw view: the bytes the guest sees, whatever the layout.

A single raw volume is read and written directly (drivers/volume_io.py); a chain
with a qcow2 top goes through the storage daemon (qemu/chain_io.py). All handles
of one image share one OpenImage, which also holds the image's current size.

Where no promise needs repofs to see, pause or cut off an image's I/O, the
kernel reads and writes its volume itself (FUSE passthrough, registered by
fs/passthrough.py): `passthrough_allowed` says where.

Every request passes a gate, so that a live snapshot can pause the image: the
requests in flight finish, new ones wait, and the snapshot switches the top
volume under nobody's feet (ops/create_snapshot.py).
"""

import errno
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from repofs import errors
from repofs.fixes.check import Inventory
from repofs.logs import facts
from repofs.model import ImageKind, ImageRecord, Pending
from repofs.ops import write_claims
from repofs.qemu.chain_io import ImageIO, add_overlay, open_chain
from repofs.qemu.storage_daemon import StorageDaemon
from repofs.registry import Registry
from repofs.repository import QUICK_CLONE_EXTENTS, Repository

log = logging.getLogger(__name__)

# An open whose chain a task is rewriting waits this long for it, at most.
REWRITTEN_WAIT_S = 10
REWRITTEN_POLL_S = 0.1


class OpenImage:
    def __init__(
        self,
        repo: Repository,
        record: ImageRecord,
        io: ImageIO,
        writable: bool,
        daemon: StorageDaemon,
    ):
        self.repo = repo
        self.record = record
        self.io = io
        self.writable = writable
        # The kernel serves the reads and writes (fs/passthrough.py decides at the
        # first open, and keeps it until the last close: an inode cannot mix).
        self.passthrough = False
        self.size = record.size
        self.handles = 1  # its opener's
        self.opened = time.monotonic()
        self.closed = trio.Event()
        self._daemon = daemon
        self._resizing = trio.Lock()
        self._upgrading = trio.Lock()
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._paused: trio.Event | None = None  # set when the pause ends
        self._failure: errors.RepofsError | None = None

    async def _gated(self, fn, *args):
        """Runs one request through the gate: it waits while the image is paused,
        and a pause waits for it."""
        while self._paused is not None:
            await self._paused.wait()
        if self._failure is not None:
            raise self._failure
        if not self._in_flight:
            self._idle = trio.Event()
        self._in_flight += 1
        try:
            return await fn(*args)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    @asynccontextmanager
    async def paused(self):
        """No request runs inside: those in flight finish first, new ones wait
        until the block ends. Pauses do not nest (callers hold the image's guard,
        or its upgrade lock)."""
        resumed = self._paused = trio.Event()
        try:
            await self._idle.wait()
            yield
        finally:
            self._paused = None
            resumed.set()

    async def read(self, offset: int, length: int) -> bytes:
        return await self._gated(self._read, offset, length)

    async def _read(self, offset: int, length: int) -> bytes:
        # self.io only past the gate: a pause may replace it (a live snapshot of a
        # raw disk, a chain reopened by a fix).
        length = max(0, min(length, self.size - offset))
        return await self.io.read(offset, length) if length else b""

    async def write(self, offset: int, data: bytes) -> int:
        return await self._gated(self._write, offset, data)

    async def grow(self, size: int) -> None:
        await self._gated(self._grow, size)

    async def _write(self, offset: int, data: bytes) -> int:
        """Writes past the end grow the disk. A raw volume grows by itself, and the
        new size is persisted lazily (at flush, fsync and close) like a file's; a
        qcow2 top is resized by QEMU first, and the record follows at once."""
        end = offset + len(data)
        if end > self.size and not self.record.is_raw:
            await self._grow(end)
        written = await self.io.write(offset, data)
        self.size = max(self.size, offset + written)
        return written

    async def add_overlay(self, overlay: Path) -> None:
        """Inside a pause: the qcow2 volume `overlay`, made over the current top,
        becomes the top that requests read and write (the caller then updates the
        record)."""
        self.io = await add_overlay(self._daemon, self.io, overlay, self.size, self.repo.run)

    @asynccontextmanager
    async def kept(self):
        """One more handle inside, for a fix at work in the image's open chain:
        the image is not closed under it (its last close waits for the block)."""
        self.handles += 1
        try:
            yield self
        finally:
            with trio.CancelScope(shield=True):
                await release_image(self)

    async def hand_writes_to_daemon(self) -> None:
        """Every write goes through the storage daemon from now on, so that a
        block job in the chain sees it (qemu/chain_map.py stop_in_place)."""
        async with self.paused():
            self.io.stop_in_place()

    async def reopen(self, change: Callable[[], Awaitable[ImageRecord]]) -> None:
        """Inside a pause: closes the image's volumes, runs `change`, which makes
        them and then the record name another chain of the same bytes and returns
        that record, and opens that chain. If `change` fails, the old chain is
        opened again; if a chain cannot be opened, every request fails until the
        image is closed."""
        await self.io.close()
        try:
            self.record = await change()
        finally:
            try:
                self.io = await _open_io(self._daemon, self.repo, self.record, self.writable)
            except BaseException as exc:
                self.fail(f"its chain could not be opened again: {exc}")
                raise

    async def make_writable(self) -> None:
        """A write open of an image opened read-only (in a shared repository, where
        only write opens claim the image): claim it, then reopen its volumes for
        writing while no request is in flight."""
        async with self._upgrading:
            if self.writable:
                return
            self.record = await write_claims.claim(self.repo, self.record.id)
            try:
                async with self.paused():
                    await self.io.close()
                    self.io = await _open_io(self._daemon, self.repo, self.record, True)
                    self.writable = True
            except BaseException:
                with trio.CancelScope(shield=True):
                    await write_claims.release(self.repo, self.record.id)
                    if not self.writable:
                        self.fail("its volumes could not be opened for writing")
                raise

    def fail(self, reason: str) -> None:
        """Every request fails with EIO from now on, until the image is closed."""
        log.error("%s/%s fails all I/O: %s", self.repo.name, self.record.id, reason)
        self._failure = errors.io_error(f"{self.record.id}: {reason}")

    async def _grow(self, size: int) -> None:
        async with self._resizing:
            # Growing a raw volume cuts it to the size first (growth a crash left
            # unrecorded): never below what passthrough writes made it.
            if size <= await self.current_size():
                return
            if self.record.is_raw:
                preallocate = await self.repo.preallocates()
                await self.repo.grow_raw_volume(self.record.top, self.size, size, preallocate)
            else:
                await self.io.resize(size)
            self.size = size
            await self.persist_size()

    def backing_file(self) -> Path:
        """The one raw volume that a passthrough open hands to the kernel."""
        return self.repo.volume_path(self.record.top)

    def seen_size(self, file_size: int) -> int:
        """The size, given that of the volume file: passthrough writes past the
        end grow the file without repofs seeing them (persisted as ever, at
        flush, fsync and close)."""
        if self.passthrough and self.writable:
            self.size = max(self.size, file_size)
        return self.size

    async def current_size(self) -> int:
        """The size, with what passthrough writes grew the file by."""
        if self.passthrough and self.writable:
            self.seen_size((await trio.Path(self.backing_file()).stat()).st_size)
        return self.size

    async def persist_size(self) -> None:
        """Durable steps: fsync the volume (the data up to the new end), then write
        the record with the new size. A crash between leaves the old size."""
        await self.current_size()
        if self.size == self.record.size:
            return
        await self.io.fsync()
        size = self.size
        self.record = await self.repo.change_image(self.record.id, lambda r: r.evolve(size=size))

    async def flush(self) -> None:
        if self.writable:
            await self._gated(self.persist_size)

    async def fsync(self) -> None:
        await self._gated(self.sync)

    async def sync(self) -> None:
        """The data written so far, and the size, made durable."""
        await self.io.fsync()
        await self.persist_size()


def passthrough_allowed(repo: Repository, record: ImageRecord) -> bool:
    """Whether the kernel may serve an image's I/O itself (FUSE passthrough): then
    repofs cannot see, pause or cut it off, so only where no promise needs that
    (docs/performance.md, "Kernel passthrough"): a snapshot whose data is one raw
    file (immutable), in any repository; a raw disk in a repository that only
    this host writes, on storage where its live snapshot is a clone (a
    point-in-time barrier that needs no pause, ops/create_snapshot.py).
    qcow2 chains, disks of shared repositories and raw disks on other storage
    keep repofs's own path, as do disks whose clone would stall their writers
    too long (clones_quickly)."""
    if not record.is_raw:
        return False
    if record.kind is ImageKind.SNAPSHOT:
        return True
    return _clones_live(repo, record) and record.id not in repo.slow_clones


def _clones_live(repo: Repository, record: ImageRecord) -> bool:
    """Whether a disk's live snapshot is a clone of its volume, which then has
    no other barrier for the kernel's writes (ops/create_snapshot.py)."""
    return record.is_raw and not repo.shared and repo.reflink


async def clones_quickly(repo: Repository, record: ImageRecord) -> bool:
    """Whether a raw image's volume has few enough extents for a clone to take
    no longer than a live snapshot may stall the disk's writers (drivers/reflink.py,
    QUICK_CLONE_EXTENTS). Counted at each first open of a disk whose live
    snapshots are clones, and before each clone of a snapshot or disk: past it,
    a snapshot of the disk or a disk on the snapshot is a qcow2 overlay, O(1),
    and a disk is served by repofs from its next first open
    (passthrough_allowed), where a live snapshot can pause it; said once in the
    log."""
    if await repo.clones_quickly(record.top):
        repo.slow_clones.discard(record.id)
        return True
    if record.id not in repo.slow_clones:
        repo.slow_clones.add(record.id)
        log.info("%s/%s has more than %d extents, too many to clone within a live snapshot's "
                 "stall target: its snapshots and disks on it are qcow2 overlays, and a disk "
                 "is served by repofs from its next open (while the kernel serves it, its "
                 "snapshots are still clones: nothing else holds its writes)", repo.name,
                 record.id, QUICK_CLONE_EXTENTS)  # fmt: skip
    return False


async def open_image(registry: Registry, repo: Repository, image_id: str, write: bool) -> OpenImage:
    """Opens an image for one more handle. Snapshots are read-only (EROFS).

    A first open holds the image's guard, so that it cannot open the top
    volume that a snapshot, removal or rename of the image is changing. One
    whose headers a task rewrote ahead of its record (a merge or optimize that
    a crash interrupted between the two) waits a moment for that task, which
    takes the guard to set the record right, and opens then.
    """
    image = await hold_open_image(repo, image_id)
    deadline = trio.current_time() + REWRITTEN_WAIT_S
    while image is None:
        try:
            async with repo.guard(image_id):
                image = await hold_open_image(repo, image_id)
                if image is None:
                    record = await repo.read_image(image_id)
                    _check_writable(record.kind, image_id, write)
                    if record.pending is Pending.COPY:
                        raise errors.RepofsError(
                            errno.EAGAIN, f"{image_id} is not usable yet: {record.last_error}"
                        )
                    return await _first_open(registry, repo, record, write)
        except errors.ChainRefused:
            if trio.current_time() > deadline or not await _being_rewritten(repo, image_id):
                raise
            await trio.sleep(REWRITTEN_POLL_S)
    try:
        _check_writable(image.record.kind, image_id, write)
        if write:
            await image.make_writable()
    except errors.RepofsError:
        await release_image(image)
        raise
    return image


async def _being_rewritten(repo: Repository, image_id: str) -> bool:
    """Whether a queued or running task may have rewritten the image's headers
    ahead of its record (fixes/check.py Inventory.rewritten)."""
    inventory = await Inventory.read(repo, elsewhere=False)
    return image_id in inventory.rewritten([t for t in inventory.tasks if t.active])


async def hold_open_image(repo: Repository, image_id: str) -> OpenImage | None:
    """The image's OpenImage with one more handle (give it back with release_image)
    if the image is open; None if it is closed. An image whose last handle is being
    released is waited for, not revived: its close is under way."""
    while (image := repo.open_images.get(image_id)) is not None:
        if image.handles:
            image.handles += 1
            return image
        await image.closed.wait()
    return None


def _check_writable(kind: ImageKind, image_id: str, write: bool) -> None:
    if write and kind is ImageKind.SNAPSHOT:
        raise errors.read_only(f"{image_id} is a snapshot: snapshots are read-only")


async def _first_open(
    registry: Registry, repo: Repository, record: ImageRecord, write: bool
) -> OpenImage:
    """A disk is opened for writing whatever the handle asks, except in a shared
    repository, where writing needs a claim (ops/write_claims.py)."""
    writable = record.kind is ImageKind.VIRTUAL_DISK and (write or not repo.shared)
    if writable and _clones_live(repo, record):
        await clones_quickly(repo, record)  # before passthrough_allowed asks
    claimed = writable and repo.shared
    if claimed:
        record = await write_claims.claim(repo, record.id)
    try:
        io = await _open_io(registry.daemon, repo, record, writable)
    except BaseException as exc:
        if isinstance(exc, errors.IOFailure):
            # The storage or QEMU refused it: its status says so until it opens.
            stamps = await repo.run(repo.chain_stamps, record.chain)
            repo.open_failures[record.id] = (stamps, exc.reason)
        if claimed:
            with trio.CancelScope(shield=True):
                await write_claims.release(repo, record.id)
        raise
    repo.open_failures.pop(record.id, None)
    image = OpenImage(repo, record, io, writable, registry.daemon)
    repo.open_images[record.id] = image
    # Opens and closes of an image's handles: a line at the first and the last.
    log.info(facts(operation="open", repo=repo.name, image=record.id,
                   writable=str(writable).lower()))  # fmt: skip
    return image


async def _open_io(
    daemon: StorageDaemon, repo: Repository, record: ImageRecord, writable: bool
) -> ImageIO:
    await repo.verify_chain(record.chain)
    chain = [repo.volume_path(v) for v in record.chain]
    io = await open_chain(daemon, chain, record.top.format, record.size, writable, repo.run)
    if writable and record.is_raw:
        # Growth written but never persisted before a crash is dropped, so that a
        # later grow reads zeros there, not stale bytes.
        await io.truncate(record.size)
    return io


async def release_image(image: OpenImage) -> None:
    image.handles -= 1
    if image.handles:
        return
    # The image stays in open_images until its volumes are closed: an open
    # meanwhile waits for that (hold_open_image) rather than read a top whose
    # metadata the daemon has not flushed yet.
    repo = image.repo
    try:
        if image.writable:
            await image.persist_size()
    finally:
        try:
            await image.io.close()
            if image.writable and repo.shared:
                await write_claims.release(repo, image.record.id)
        finally:
            del repo.open_images[image.record.id]
            image.closed.set()
            log.info(facts(operation="close", repo=repo.name, image=image.record.id,
                           open_for=f"{time.monotonic() - image.opened:.1f}s"))  # fmt: skip
