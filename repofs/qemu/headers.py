"""What the header of each qcow2 volume names as its backing file, against the
record's chain.

A header is read with `qemu-img info` of the one volume, which opens no backing
file. It changes only when its file is written (repofs creating or rebasing
the volume, QEMU resizing an open disk, someone tampering with storage), so a
look is remembered with the file's stamp and reused while the stamp is the
same: a check of 10,000 images stats their volumes rather than run 10,000
qemu-img processes.
"""

import os
import shlex
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

from repofs import errors
from repofs.model import VolumeFormat
from repofs.qemu import img

# qemu-img processes at once when many volumes are looked at (a check after a
# mount). Measured with 200 volumes on 2 cores: 5.9 ms a volume one at a time,
# 3.3 ms at 8 at once, no better at 16.
LOOKS_AT_ONCE = 8
# A file written less than this before a look may be written again within the
# same tick of the file system's clock, which leaves its stamp as it was: such
# a look tells the image's status, but a check looks again.
RECENT_S = 1.0


@dataclass(frozen=True)
class Header:
    backing: str | None  # the file it names, resolved as QEMU resolves it
    backing_format: str | None
    unreadable: str | None = None  # why qemu-img could not read it


@dataclass(frozen=True)
class _Look:
    # What changes when the file is written or replaced; the ctime because a
    # mtime can be set back (touch -d) and a ctime cannot.
    stamp: tuple[int, ...]
    header: Header
    reusable: bool  # see RECENT_S


@dataclass(frozen=True)
class Disagreement:
    """A qcow2 layer whose header does not name what the record's chain says
    lies below it."""

    path: Path
    header: Header
    below: tuple[Path, VolumeFormat] | None  # the record's next layer; None: the bottom

    def __str__(self) -> str:
        if self.header.unreadable:
            return f"the header of volume {self.path.name} cannot be read: {self.header.unreadable}"
        wanted = f"{self.below[0]} ({self.below[1]})" if self.below else "none"
        return (f"volume {self.path.name} names backing file {self.header.backing!r} "
                f"({self.header.backing_format}), not its record's {wanted}")  # fmt: skip

    def question(self) -> str:
        """What a person decides: repofs cannot tell whether the header or the
        volume's data is what was damaged."""
        if self.header.unreadable:
            return f"{self}: restore the volume from a backup, or remove the image"
        backing = ["-b", ""]
        if self.below is not None:
            backing = ["-b", os.path.relpath(self.below[0], self.path.parent),
                       "-F", str(self.below[1])]  # fmt: skip
        restore = shlex.join(["qemu-img", "rebase", "-u", "-f", "qcow2", *backing, str(self.path)])
        return (
            f"{self}: restore its header if the volume's data is the image's "
            f"({restore}), or remove the image"
        )


def disagreement(
    layers: list[tuple[Path, VolumeFormat]], headers: Mapping[Path, Header]
) -> Disagreement | None:
    """The first qcow2 layer of a record's chain (top first) whose header does not
    name the next layer (same file, same format), or names one below the last.
    Layers without a header in `headers` are not judged."""
    for (path, fmt), below in zip(layers, [*layers[1:], None], strict=True):
        header = headers.get(path) if fmt is VolumeFormat.QCOW2 else None
        if header is None:
            continue  # raw: no header (a raw layer is the bottom of its chain)
        if header.unreadable is None and (
            (below is None and header.backing is None)
            or (below is not None and header.backing is not None
                and _same_file(header.backing, below[0])
                and header.backing_format == str(below[1]))
        ):  # fmt: skip
            continue
        return Disagreement(path, header, below)
    return None


def _same_file(named: str, path: Path) -> bool:
    # The same string is the same file; realpath (a lstat per component) only
    # for the others, e.g. `../` toward another repository.
    return named == str(path) or os.path.realpath(named) == os.path.realpath(path)


def _stamp(path: Path) -> tuple[tuple[int, ...], bool]:
    """The file's stamp, and whether it was written RECENT_S ago or more."""
    now = time.time_ns()
    st = os.stat(path)
    return _stamp_of(st), now - st.st_ctime_ns >= RECENT_S * 1e9


def file_stamp(path: Path) -> tuple[int, ...] | None:
    """What changes when the file at `path` is written, replaced, removed or put
    back (None while there is none). Blocking."""
    try:
        return _stamp_of(os.stat(path))
    except FileNotFoundError:
        return None


def _stamp_of(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _stamps(paths: list[Path]) -> dict[Path, tuple[tuple[int, ...], bool]]:
    """Of the files that exist. Blocking."""
    stamps = {}
    for path in paths:
        try:
            stamps[path] = _stamp(path)
        except FileNotFoundError:
            pass
    return stamps


async def _read(path: Path) -> Header:
    try:
        info = await img.info(path, VolumeFormat.QCOW2)
    except errors.RepofsError as exc:
        return Header(None, None, exc.reason)
    # QEMU leaves out the full name where it cannot make one (a json: name), and
    # would still follow the name as written.
    named = info.get("full-backing-filename") or info.get("backing-filename")
    return Header(named, info.get("backing-filename-format"))


class HeaderLooks:
    """The headers of qcow2 volumes as last looked at, by path (one repository's)."""

    def __init__(self, run: Callable[..., Awaitable]):
        # Runs the stats on the threads of the repository whose volumes these are.
        self._run = run
        self._looks: dict[Path, _Look] = {}
        # Files being read now, and when that read ends: a look that needs one of
        # them waits for it rather than read it twice (a check during the first
        # look after a connect, fixes/ listed twice at once).
        self._reading: dict[Path, trio.Event] = {}

    async def look(self, paths: Iterable[Path], again: bool = False) -> dict[Path, Header]:
        """The header of each of `paths` that exists (a missing file has none):
        as last looked at while the file is unchanged since, unless `again`; else
        looked at now, LOOKS_AT_ONCE at a time. The stat comes before the read, so
        a write between them changes the stamp remembered with it."""
        stamps = await self._run(_stamps, list(dict.fromkeys(paths)))
        found, todo = {}, []
        for path, (stamp, settled) in stamps.items():
            known = self._looks.get(path)
            if not again and known is not None and known.reusable and known.stamp == stamp:
                found[path] = known.header
            else:
                todo.append((path, stamp, settled, known))
        pending = iter(todo)

        async def looker() -> None:
            for path, stamp, settled, before in pending:
                if not again:
                    # Another look may have read it since (the first look after a
                    # connect), or be reading it now: that read came after this
                    # look's stat, and does as well while the stamp is the same.
                    if path in self._reading:
                        await self._reading[path].wait()
                    look = self._looks.get(path)
                    if look is not None and look is not before and look.stamp == stamp:
                        found[path] = look.header
                        continue
                read = self._reading[path] = trio.Event()
                try:
                    header = await _read(path)
                finally:
                    if self._reading.get(path) is read:
                        del self._reading[path]
                    read.set()
                # An unreadable header is not remembered: the storage may only
                # have failed for a moment.
                self._looks[path] = _Look(stamp, header, settled and not header.unreadable)
                found[path] = header

        async with trio.open_nursery() as nursery:
            for _ in range(min(LOOKS_AT_ONCE, len(todo))):
                nursery.start_soon(looker)
        return found

    def known(self, path: Path) -> Header | None:
        """The last look at the file, if it is unchanged since. Blocking (a stat)."""
        look = self._looks.get(path)
        if look is None:
            return None
        try:
            stamp, _ = _stamp(path)
        except FileNotFoundError:
            return None
        return look.header if look.stamp == stamp else None

    def known_disagreement(self, layers: list[tuple[Path, VolumeFormat]]) -> Disagreement | None:
        """`disagreement` of a record's chain by the looks at its qcow2 volumes
        whose files are unchanged since; no new look. Blocking (a stat a look)."""
        known = {}
        for path, fmt in layers:
            header = self.known(path) if fmt is VolumeFormat.QCOW2 else None
            if header is not None:
                known[path] = header
        return disagreement(layers, known)

    def keep_only(self, paths: set[Path]) -> None:
        """Forgets the looks at other files (volumes since freed, or no longer judged)."""
        self._looks = {p: look for p, look in self._looks.items() if p in paths}


async def verify_chain(looks: HeaderLooks, layers: list[tuple[Path, VolumeFormat]]) -> None:
    """EIO unless every qcow2 layer's header names the next layer (same file, same
    format) and the last layer's names none. QEMU follows those names when it
    opens a chain (the storage daemon, `qemu-img map`, `check`, `commit`), so a
    header naming anything else (a host file, a path out of the repository, a
    volume the record does not list) must never reach it. Every header is read
    anew: a stamp is no proof against a write in the same clock tick."""
    qcow2 = [path for path, fmt in layers if fmt is VolumeFormat.QCOW2]
    headers = await looks.look(qcow2, again=True)
    for path in qcow2:
        if path not in headers:
            raise errors.io_error(f"volume {path.name} is missing: refused, never opened")
    found = disagreement(layers, headers)
    if found is not None:
        raise errors.chain_refused(f"{found}: refused, never opened")
