"""One log line per operation: what was asked, of which repository and image,
the outcome (`ok` or the errno) and how long it took (logs.py has the shape).

A refusal is logged here, with its reason, at warning level, and kept among the
mount's latest refusals (`repofs why`); the FUSE boundary then does not say it
again (the exception's `logged`).
"""

import enum
import errno
import functools
import inspect
import logging
import time

from repofs import errors, refusals
from repofs.logs import facts
from repofs.repository import Repository

log = logging.getLogger("repofs.operations")

# An argument longer than this (a userData value) is cut in the log line.
MAX_VALUE_CHARS = 80


def logged(image: str | None = "image_id", repo: str = "repo"):
    """Logs each call of the decorated operation. `repo` and `image` name its
    parameters holding the repository and the image ID; its other plain
    arguments follow under their own names."""

    def decorate(operation):
        signature = inspect.signature(operation)

        @functools.wraps(operation)
        async def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            where = bound.arguments[repo]  # a repository, or the name of one
            asked = {"repo": where.name if isinstance(where, Repository) else where,
                     "image": bound.arguments[image] if image else None,
                     **_plain(bound.arguments, (repo, image))}  # fmt: skip
            started = time.monotonic()
            try:
                result = await operation(*args, **kwargs)
            except errors.RepofsError as exc:
                _log(logging.WARNING, operation, asked, started, exc.errno, exc.reason)
                exc.logged = True
                raise
            except OSError as exc:
                _log(logging.WARNING, operation, asked, started, exc.errno, str(exc))
                exc.logged = True  # a full storage: the boundary passes it on unsaid
                raise
            except Exception as exc:
                _log(logging.ERROR, operation, asked, started, None, repr(exc))
                raise
            _log(logging.INFO, operation, asked, started, 0, None)
            return result

        return wrapper

    return decorate


def _plain(arguments: dict, named: tuple[str | None, ...]) -> dict:
    """The arguments a line can show: repositories by name, text and numbers."""
    shown = {}
    for name, value in arguments.items():
        if name in named:
            continue
        if isinstance(value, Repository):
            value = value.name
        elif isinstance(value, bytes):
            value = value.decode(errors="replace")
        elif isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, dict):  # a connection's parameters
            value = " ".join(f"{k}={v}" for k, v in value.items())
        if isinstance(value, str | int | float):
            text = str(value)
            shown[name] = text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "..."
    return shown


def _log(level: int, operation, asked: dict, started: float, code: int | None,
         reason: str | None) -> None:  # fmt: skip
    if code == 0:
        outcome = "ok"
    elif code is None:
        outcome = "error"
    else:
        outcome = errno.errorcode.get(code, str(code))
    duration = f"{time.monotonic() - started:.3f}s"
    if code:
        where = "/".join(asked[key] for key in ("repo", "image") if asked[key])
        refusals.record(operation.__name__, where, code, reason)
    log.log(level, facts(operation=operation.__name__, **asked, outcome=outcome,
                         duration=duration, reason=reason))  # fmt: skip
