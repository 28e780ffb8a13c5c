"""The one error type of repofs: an errno a shell user recognises, and the reason.

Every refusal below the FUSE layer raises RepofsError; the FUSE boundary turns it
into the errno and logs the reason. The constructors below are where each errno
choice of DESIGN.md is made, so that the same situation always gets the same errno.
"""

import errno


class RepofsError(Exception):
    """Made with an errno that a caller may mean alone (ENOENT, EBUSY, ESTALE,
    ENOSPC, EIO), it is of that errno's narrow class below, which the caller
    catches instead of branching on `errno`."""

    def __new__(cls, errno_: int, reason: str):
        if cls is RepofsError:
            cls = _NARROW.get(errno_, RepofsError)
        return super().__new__(cls)

    def __init__(self, errno_: int, reason: str):
        super().__init__(reason)
        self.errno = errno_
        self.reason = reason
        # Said in the log already, with the operation it refused (ops/logged.py).
        self.logged = False

    def __str__(self) -> str:
        return f"{errno.errorcode.get(self.errno, self.errno)}: {self.reason}"


class NotFound(RepofsError):
    """ENOENT: no such image, task, record or file."""


class Busy(RepofsError):
    """EBUSY: in use (open, claimed by another host, depended on)."""


class Stale(RepofsError):
    """ESTALE: a record changed under us (generation compare-and-swap failed)."""


class NoSpace(RepofsError):
    """ENOSPC: the storage is full."""


class IOFailure(RepofsError):
    """EIO: the storage or QEMU failed."""


class ChainRefused(IOFailure):
    """EIO: a chain's qcow2 headers disagree with its record; it was not opened."""


_NARROW = {errno.ENOENT: NotFound, errno.EBUSY: Busy, errno.ESTALE: Stale,
           errno.ENOSPC: NoSpace, errno.EIO: IOFailure}  # fmt: skip


def not_found(reason: str) -> RepofsError:
    return RepofsError(errno.ENOENT, reason)


def exists(reason: str) -> RepofsError:
    return RepofsError(errno.EEXIST, reason)


def invalid(reason: str) -> RepofsError:
    return RepofsError(errno.EINVAL, reason)


def busy(reason: str) -> RepofsError:
    return RepofsError(errno.EBUSY, reason)


def read_only(reason: str) -> RepofsError:
    return RepofsError(errno.EROFS, reason)


def cross_repository(reason: str) -> RepofsError:
    return RepofsError(errno.EXDEV, reason)


def not_supported(reason: str) -> RepofsError:
    return RepofsError(errno.EOPNOTSUPP, reason)


def no_attribute(reason: str) -> RepofsError:
    return RepofsError(errno.ENODATA, reason)


def too_long(reason: str) -> RepofsError:
    return RepofsError(errno.ERANGE, reason)


def no_space(reason: str) -> RepofsError:
    return RepofsError(errno.ENOSPC, reason)


def io_error(reason: str) -> RepofsError:
    return RepofsError(errno.EIO, reason)


def chain_refused(reason: str) -> RepofsError:
    return ChainRefused(errno.EIO, reason)


def unreachable(reason: str) -> RepofsError:
    """Storage behind a connection cannot be reached (a Gluster server down)."""
    return RepofsError(errno.EHOSTUNREACH, reason)


def conflict(reason: str) -> RepofsError:
    """A record changed under us (generation compare-and-swap failed)."""
    return RepofsError(errno.ESTALE, reason)


def from_os_error(exc: OSError, what: str) -> RepofsError:
    """A storage syscall failed: keep its errno (ENOSPC stays ENOSPC), say where."""
    return RepofsError(exc.errno or errno.EIO, f"{what}: {exc.strerror or exc}")
