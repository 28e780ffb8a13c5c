"""Reads and writes of a raw volume file, without stalling the trio loop.

A read of a range in the page cache runs inline (RWF_NOWAIT: never waits for
storage); any other read runs in the I/O threads of the volume's file system
(io_threads.py), so that many are in flight at once. Such a read never blocks
inline, even when no other request has reached repofs: requests still queued
in the kernel do not show there, and blocking reads served a cold disk one
request at a time at queue depth 16, slower than at depth 1
(docs/performance.md). A write on a local file system runs inline when it is
the only request in flight (a buffered pwrite costs microseconds, and waking a
sleeping thread on this VM costs up to 200 us), else in the I/O threads. A file
system that cannot promise not to block (no RWF_NOWAIT: FUSE, so a Gluster
volume) is only ever touched from threads: a stall there must not stop the
trio loop, which serves every other repository.
Requests of any alignment are served, also for callers that opened the image with
O_DIRECT: the volume is opened buffered and fsync makes it durable. Every
SYNC_BYTES written, a sync of the volume's data starts behind the writes (the
writes go on; if the sync before is still running they wait for it, as they
would for the storage), so that what an fsync finds to write stays small: a
live snapshot syncs the disk during its `ln`, and every write through the
mount waits for the whole `ln` (the kernel holds the disk's inode lock through
a link), while the kernel on its own keeps up to 10% of memory dirty for 30 s.
Measured under 16 random 4 KiB writers (XFS on a loop file, docs/performance.md):
the first live snapshot's sync 2.5 s -> 67 ms with a sync every 4 MiB; only
starting writeback every 1 MiB (sync_file_range) left the journal to the
snapshot (326 ms). fio through the mount on ext4, against no sync at all (the
page cache): 1 MiB QD4 writes 1,085-1,600 MiB/s (2,262), 4 KiB QD16 12-12.8k
IOPS (12.2k), 4 KiB QD1 7.7k IOPS, as many as O_DIRECT on the file itself
(7.8k); a sync the write itself waited for made that 4k.
"""

import errno
import logging
import os
from pathlib import Path

import trio

from repofs import errors
from repofs.drivers import io_threads, reflink

log = logging.getLogger(__name__)

SYNC_BYTES = 4 << 20


class RawVolumeFile:
    """A lone raw volume, read and written by repofs itself (qemu/chain_io.py ImageIO)."""

    in_place = True
    _in_flight = 0  # across all open volumes: the trio loop is shared

    def __init__(self, path: Path, writable: bool):
        self.path = path
        self._fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        self._local = _never_blocks_unasked(self._fd)
        self._threads = io_threads.for_file(self._fd)
        self._in_kernel_copy = True  # until the file system refuses copy_file_range
        self._unsynced = 0  # bytes written since the last sync started
        self._sync_turn = trio.Lock()  # one writer starts the next sync
        self._synced = trio.Event()  # the sync behind the writes ended
        self._synced.set()
        self._sync_error: errors.RepofsError | None = None  # for the next fsync

    async def _submit(self, fn, *args, inline_if_alone: bool = True):
        RawVolumeFile._in_flight += 1
        try:
            if inline_if_alone and RawVolumeFile._in_flight == 1 and self._local:
                return fn(*args)
            return await self._threads.run(fn, *args)
        except OSError as exc:
            raise errors.from_os_error(exc, f"I/O on volume {self.path.name}") from None
        finally:
            RawVolumeFile._in_flight -= 1

    async def _in_thread(self, fn, *args):
        """Always in a worker thread, for calls too long to run inline: the trio
        loop serves every other request of the mount meanwhile."""
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except OSError as exc:
            raise errors.from_os_error(exc, f"I/O on volume {self.path.name}") from None

    async def read(self, offset: int, length: int) -> bytes:
        # A range the page cache holds is read inline whatever else is in flight
        # (EAGAIN instead of a wait for storage): a thread hop costs more than the
        # copy. A miss has started the read from storage; a thread waits for it.
        if self._local:
            buf = bytearray(length)
            try:
                if os.preadv(self._fd, [buf], offset, os.RWF_NOWAIT) == length:
                    return buf
            except BlockingIOError:
                pass
            except OSError as exc:
                raise errors.from_os_error(exc, f"I/O on volume {self.path.name}") from None
        data = await self._submit(os.pread, self._fd, length, offset, inline_if_alone=False)
        # The image record holds the size; a volume that a crash left shorter than
        # that reads as zeros beyond its end, like a hole.
        return data if len(data) == length else data.ljust(length, b"\0")

    async def write(self, offset: int, data: bytes) -> int:
        written = await self._submit(os.pwrite, self._fd, data, offset)
        self._unsynced += written
        if self._unsynced >= SYNC_BYTES:
            self._unsynced = 0
            async with self._sync_turn:
                await self._synced.wait()
                self._synced = trio.Event()
                trio.lowlevel.spawn_system_task(self._sync_behind, self._synced)
        return written

    async def _sync_behind(self, synced: trio.Event) -> None:
        """A sync of the data written so far, behind the writes. A failure is kept
        for the next fsync: the kernel reports a writeback error once per open
        file, and it belongs to whoever asked for durability."""
        try:
            await self._in_thread(os.fdatasync, self._fd)
        except errors.RepofsError as exc:
            log.warning("syncing volume %s behind its writes: %s", self.path.name, exc)
            self._sync_error = exc
        finally:
            synced.set()

    async def copy_to(self, target: "RawVolumeFile", offset: int, length: int) -> None:
        """Copies a range into the same range of `target` inside the kernel
        (copy_file_range: no trip through Python's memory; a reflink where the
        file system shares extents). Beyond this volume's end, `target` is left
        as it is (holes: zeros)."""

        def copy() -> None:
            done = 0
            while done < length:
                moved = self._copy_range(target, length - done, offset + done)
                if moved == 0:
                    return  # end of the source
                done += moved

        # Milliseconds each, and copies run several at once.
        await self._in_thread(copy)

    def _copy_range(self, target: "RawVolumeFile", length: int, offset: int) -> int:
        if self._in_kernel_copy:
            try:
                return os.copy_file_range(self._fd, target._fd, length, offset, offset)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS):
                    raise
                self._in_kernel_copy = False  # a FUSE server without it
        data = os.pread(self._fd, length, offset)
        return os.pwrite(target._fd, data, offset) if data else 0

    async def zero(self, offset: int, length: int) -> None:
        """The range reads as zeros, its space freed (a hole)."""
        await self._in_thread(reflink.punch_hole, self._fd, offset, length)

    async def fsync(self) -> None:
        # With a copy's data dirty it takes up to seconds.
        await self._in_thread(os.fsync, self._fd)
        error, self._sync_error = self._sync_error, None
        if error is not None:
            raise error

    async def truncate(self, size: int) -> None:
        await self._submit(os.ftruncate, self._fd, size)

    async def close(self) -> None:
        await self._synced.wait()
        if self._local:
            os.close(self._fd)
        else:  # FUSE sends a flush, which waits for the storage
            await trio.to_thread.run_sync(os.close, self._fd)


def _never_blocks_unasked(fd: int) -> bool:
    """Whether the file system takes RWF_NOWAIT (local ones do; FUSE does not)."""
    try:
        os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        pass
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            return False
        raise
    return True
