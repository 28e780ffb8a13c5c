"""The one errno boundary around every FUSE handler.

pyfuse3 lets only FUSEError out of a handler: anything else kills the mount.
RepofsError becomes its errno, and its reason is logged (unless the operation
that refused logged it: ops/logged.py); a full storage is
ENOSPC (EDQUOT); any other storage error is EIO; anything unexpected becomes
EIO with its traceback in the log, and the mount stays up.
"""

import errno
import functools
import logging

import pyfuse3

from repofs.errors import RepofsError

log = logging.getLogger("repofs.fs")

# Answers that shells and tools provoke all the time while probing (`ls`,
# completion, security.* lookups): logged at debug level when a probe gets them.
ROUTINE = frozenset({errno.ENOENT, errno.ENODATA, errno.EOPNOTSUPP})

# Storage failures the caller can act on, passed through as they are: a full
# repository is ENOSPC (`cp` and QEMU say "No space left"), not an I/O error.
STORAGE_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def _wrap(handler, quiet: frozenset[int]):
    @functools.wraps(handler)
    async def wrapper(self, *args):
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except RepofsError as exc:
            if not exc.logged:
                level = logging.DEBUG if exc.errno in quiet else logging.WARNING
                log.log(level, "%s refused: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            if exc.errno in STORAGE_FULL:
                if not getattr(exc, "logged", False):  # ops/logged.py said it
                    log.warning("%s refused: the repository's storage is full: %s",
                                handler.__name__, exc)  # fmt: skip
                raise pyfuse3.FUSEError(exc.errno) from None
            # Storage failed under us (a repository directory vanished, a disk
            # error): EIO, with what failed; no traceback, it is not a bug.
            log.error("%s failed: storage error: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s failed unexpectedly", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def boundary(handler):
    """For handlers that act: every refusal is logged with its reason."""
    return _wrap(handler, frozenset())


def probe_boundary(handler):
    """For handlers that look (lookup, getattr, getxattr, listxattr), and open,
    whose ENOENT is a race with a removal (a task file read as its task ended)."""
    return _wrap(handler, ROUTINE)
