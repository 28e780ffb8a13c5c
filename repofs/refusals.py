"""The latest refusals of this mount, with their reasons: what `repofs why` shows.

A file system answers a refusal with an errno alone, and the reason goes to the
log, which the user may not be able to read (the journal, a file of root's). So
the process also keeps its last refusals, and the mount root serves them as the
read-only attribute ATTRIBUTE (fs/operations.py) to whoever can read the mount.
They are recorded where each is logged once, at WARNING or above: by the
operation that refused (ops/logged.py), or else by the FUSE boundary
(fs/boundary.py). One mount per process, so one list per process.
"""

import errno as errnos
import json
import time
from collections import deque
from dataclasses import asdict, dataclass

from repofs import errors

ATTRIBUTE = "user.repofs.refusals"
VERSION = 1
KEPT = 50
# A long reason (a list of names, a hostile connect line) is cut, so that one
# refusal cannot push out the others...
MAX_TEXT_CHARS = 300
# ...and the oldest go first when the value would still exceed this, well under
# the 64 KiB the kernel allows an attribute's value.
MAX_VALUE_BYTES = 32 << 10


@dataclass(frozen=True)
class Refusal:
    time: float  # seconds since the epoch
    operation: str  # the API operation (create_snapshot), or the system call (link)
    where: str | None  # REPO or REPO/IMAGE, when the operation names them
    errno: str  # EINVAL
    reason: str

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Refusal":
        return cls(**data)


_latest: deque[Refusal] = deque(maxlen=KEPT)


def record(operation: str, where: str | None, code: int, reason: str) -> None:
    _latest.append(Refusal(time.time(), operation, where and _cut(where),
                           errnos.errorcode.get(code, str(code)), _cut(reason)))  # fmt: skip


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "..."


def encoded() -> bytes:
    """The attribute's value: the latest refusals, oldest first, as JSON."""
    kept = [r.to_json() for r in _latest]
    while True:
        value = json.dumps({"version": VERSION, "refusals": kept}).encode()
        if len(value) <= MAX_VALUE_BYTES:
            return value
        kept.pop(0)


def decoded(value: bytes) -> list[Refusal]:
    data = json.loads(value)
    if data["version"] != VERSION:
        raise errors.invalid(
            f"the mount keeps its refusals in version {data['version']}; "
            f"this repofs reads version {VERSION}"
        )
    return [Refusal.from_json(r) for r in data["refusals"]]
