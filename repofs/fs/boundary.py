"""The one errno boundary around every FUSE handler.

pyfuse3 lets only FUSEError out of a handler: anything else kills the mount.
RepofsError becomes its errno, and its reason is logged (unless the operation
that refused logged it: ops/logged.py); a full storage is
ENOSPC (EDQUOT); any other storage error is EIO; anything unexpected becomes
EIO with its traceback in the log, and the mount stays up. What is logged here
at WARNING or above is also kept among the mount's latest refusals (refusals.py,
`repofs why`).
"""

import errno
import functools
import logging

import pyfuse3

from repofs import refusals
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
            if not exc.logged:  # else the operation that refused said it (ops/logged.py)
                if exc.errno in quiet:
                    log.debug("%s refused: %s", handler.__name__, exc)
                else:
                    _refused(handler.__name__, exc.errno, exc.reason)
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            logged = getattr(exc, "logged", False)  # ops/logged.py said it
            if exc.errno in STORAGE_FULL:
                if not logged:
                    _refused(handler.__name__, exc.errno,
                             f"the repository's storage is full: {exc}")  # fmt: skip
                raise pyfuse3.FUSEError(exc.errno) from None
            # Storage failed under us (a repository directory vanished, a disk
            # error): EIO, with what failed; no traceback, it is not a bug.
            log.error("%s failed: storage error: %s", handler.__name__, exc)
            if not logged:
                refusals.record(handler.__name__, None, errno.EIO, f"storage error: {exc}")
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception as exc:
            log.exception("%s failed unexpectedly", handler.__name__)
            reason = f"failed unexpectedly ({exc!r}): a bug, its traceback is in the log"
            refusals.record(handler.__name__, None, errno.EIO, reason)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _refused(handler: str, code: int, reason: str) -> None:
    log.warning("%s refused: %s: %s", handler, errno.errorcode.get(code, code), reason)
    refusals.record(handler, None, code, reason)


def boundary(handler):
    """For handlers that act: every refusal is logged with its reason."""
    return _wrap(handler, frozenset())


def probe_boundary(handler):
    """For handlers that look (lookup, getattr, getxattr, listxattr), and open,
    whose ENOENT is a race with a removal (a task file read as its task ended)."""
    return _wrap(handler, ROUTINE)
