"""`repofs why MOUNT`: the mount's latest refusals, with their reasons.

A file system answers a refusal with an errno alone (`Invalid argument`); the
mount keeps its last refusals with the reasons its log gives (refusals.py) and
serves them as an attribute of its root, so that they can be read by whoever can
read the mount, wherever its log goes.
"""

import errno
import os
import time
from pathlib import Path

from repofs import errors, refusals
from repofs.refusals import Refusal


def latest_refusals(mount: Path) -> list[Refusal]:
    """The refusals the mount at `mount` keeps, oldest first."""
    try:
        return refusals.decoded(os.getxattr(mount, refusals.ATTRIBUTE))
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            older = f"the repofs serving {mount} is older than this command: see its log"
            raise errors.not_supported(older) from None
        raise errors.from_os_error(exc, f"the refusals of {mount}") from None


def render(found: list[Refusal]) -> str:
    """One line per refusal, newest last: when, what refused where, the errno
    as the shell said it, the reason."""
    if not found:
        return "no refusal since the mount started\n"
    return "".join(f"{_when(r.time)} {_what(r)}: {_errno(r.errno)}: {r.reason}\n" for r in found)


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _what(refusal: Refusal) -> str:
    return f"{refusal.operation} {refusal.where}" if refusal.where else refusal.operation


def _errno(name: str) -> str:
    """EINVAL (Invalid argument)."""
    code = getattr(errno, name, None)
    return f"{name} ({os.strerror(code)})" if isinstance(code, int) else name
