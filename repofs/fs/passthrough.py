"""Kernel FUSE passthrough: the kernel reads and writes an open image's volume
itself, and repofs sees only its opens, flushes, fsyncs, resizes and releases.

Which images may (ops/open_image.py `passthrough_allowed`) is the operations'
rule; this module holds what the kernel needs: a backing file registered at the
first open of an image, whose ID every open of it carries until the last one is
released (the kernel takes one backing file per inode, and refuses to mix
passthrough and normal opens of one inode). It needs Linux 6.9+, a pyfuse3 that
asks for it (scripts/build-pyfuse3) and CAP_SYS_ADMIN; without them, or when
the kernel refuses a backing file, repofs serves the open itself and says why:
once in the log, and in the root's attribute user.repofs.passthrough.
"""

import errno
import logging
import os

import pyfuse3
import trio

from repofs.ops.open_image import OpenImage

log = logging.getLogger(__name__)


class Passthrough:
    def __init__(self):
        # None while passthrough works; else why repofs serves every open itself.
        self.off_because: str | None = "the file system is not mounted yet"
        # The images open through the mount: backing ID (0: served by repofs),
        # number of opens.
        self._opens: dict[OpenImage, tuple[int, int]] = {}
        self._refused: set[str] = set()  # repositories whose storage the kernel refused
        self._deciding = trio.Lock()  # two first opens of one image register once

    def start(self) -> None:
        """At init, once the kernel said what it offers."""
        if not hasattr(pyfuse3, "passthrough_available"):
            self._off("this pyfuse3 cannot ask for it (scripts/build-pyfuse3 did not build "
                      "the patched one; see its output in make deps)")  # fmt: skip
        elif not pyfuse3.passthrough_available():
            self._off("the kernel does not offer it (Linux 6.9+ with CONFIG_FUSE_PASSTHROUGH)")
        else:
            self.off_because = None
            log.info("kernel passthrough is on: snapshots, and raw disks of local repositories "
                     "on reflink storage, are read and written by the kernel")  # fmt: skip

    def _off(self, reason: str) -> None:
        self.off_because = reason
        log.warning("kernel passthrough is off: %s; repofs serves every open itself", reason)

    def state(self) -> str:
        """What the root attribute says: `on`, or `off: REASON`."""
        return "on" if self.off_because is None else f"off: {self.off_because}"

    async def backing_id(self, image: OpenImage, allowed: bool) -> int:
        """The backing ID for one more open of `image` through the mount (0: repofs
        serves it). The first decides for all until the last is released."""
        async with self._deciding:
            backing_id, opens = self._opens.get(image, (None, 0))
            if backing_id is None:
                backing_id = await self._register(image) if allowed else 0
            self._opens[image] = (backing_id, opens + 1)
        return backing_id

    async def _register(self, image: OpenImage) -> int:
        if self.off_because is not None or image.repo.name in self._refused:
            return 0
        flags = os.O_RDWR if image.writable else os.O_RDONLY
        try:
            fd = await image.repo.run(os.open, image.backing_file(), flags)
            try:
                backing_id = pyfuse3.passthrough_open(fd)
            finally:
                os.close(fd)  # the kernel holds the file now
        except OSError as exc:
            self._refuse(image, exc)
            return 0
        image.passthrough = True
        return backing_id

    def _refuse(self, image: OpenImage, exc: OSError) -> None:
        if exc.errno == errno.EPERM:  # for every file: no CAP_SYS_ADMIN, or not granted
            self._off(f"the kernel refused a backing file: {exc.strerror}")
        else:  # that storage (ELOOP: stacked too deep)
            self._refused.add(image.repo.name)
            log.warning("kernel passthrough is off in %s: the kernel refused %s: %s; repofs "
                        "serves its images itself", image.repo.name, image.backing_file(),
                        exc.strerror)  # fmt: skip

    def released(self, image: OpenImage) -> None:
        """One open of `image` through the mount released; the last drops its
        backing file."""
        backing_id, opens = self._opens.pop(image)
        if opens > 1:
            self._opens[image] = (backing_id, opens - 1)
            return
        image.passthrough = False
        if not backing_id:
            return
        try:
            pyfuse3.passthrough_close(backing_id)
        except OSError as exc:  # the kernel keeps nothing of it that matters
            log.warning("closing backing file %d of %s: %s", backing_id, image.record.id,
                        exc.strerror)  # fmt: skip
