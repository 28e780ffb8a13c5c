"""Copies of snapshots between repositories, and the resumable copy of a chain's
guest-visible data they (and optimize) are made of.

Only extents that hold data are copied (`qemu-img map`): unallocated and zero
ranges stay holes of the target. A copy over an ancestor the target holds moves
only what differs from it: what the source's layers above the ancestor hold,
or, between two raw clones on reflink storage, the extents the two volumes do
not share (drivers/reflink.py). On one reflink file system a copy is a clone.
The checkpoint is the offset below which the target holds the source's bytes;
it is saved with each progress report (about once a second), only after the
target was fsynced, so a crash redoes at most about a second of work and the
persisted percent never goes back.
"""

import bisect
import itertools
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from repofs import errors
from repofs.crash import crash_point
from repofs.fixes.backups import release_older_backups
from repofs.fixes.context import TaskContext
from repofs.model import COPY_UNFINISHED, ImageKind, ImageRecord, ImageState, Pending, VolumeFormat
from repofs.qemu import img
from repofs.qemu.chain_io import open_chain
from repofs.registry import Registry
from repofs.repository import Repository

log = logging.getLogger(__name__)

CHUNK = 4 << 20
# Chunks in flight at once.
PARALLEL = 8


@dataclass(frozen=True)
class Ancestor:
    """The layers at the bottom of a copy's source that the target holds already
    (a copy of a snapshot of that chain): the target is an overlay over them."""

    depth: int  # how many of the source's layers lie above them
    size: int  # the size of that snapshot: past it, the overlay reads zeros


async def copy_chain(
    ctx: TaskContext,
    step: str,
    source_repo: Repository,
    source: Path,
    source_format: VolumeFormat,
    target: Path,
    target_format: VolumeFormat,
    size: int,
    over: Ancestor | list[img.Extent] | None = None,
) -> None:
    """Copies the data of the chain topped by volume `source` (of `source_repo`)
    into `target` (of the task's repository), from the task's checkpoint `copied`
    (an offset) on; saves `copied` as it goes.

    `over`: the target holds an ancestor's data already (an overlay over it, or
    a clone of it). Only what the source's layers above that ancestor hold is
    copied, zeros included where they hide the ancestor's data; past the
    ancestor's end (the disk grew since) zeros hide nothing and are not written.
    Or `over` lists the extents to copy (data) and to zero (_changes_since).
    A raw target takes zeros as holes (punched); a qcow2 one as written zeros.
    """
    if isinstance(over, list):
        wanted = over
    else:
        mapped = await img.map_extents(source, source_format)
        if over is None:
            wanted = [e for e in mapped if e.data]
        else:
            wanted = [
                e if e.data else replace(e, length=min(e.length, over.size - e.offset))
                for e in mapped
                if e.depth < over.depth and (e.data or (e.zero and e.offset < over.size))
            ]  # fmt: skip
    # Within the image's size (a volume may be longer than the size it serves).
    extents = [replace(e, length=min(e.length, size - e.offset)) for e in wanted if e.offset < size]
    total = sum(e.length for e in extents)
    copied = ctx.checkpoint.copied
    bytes_below = _bytes_below(extents)
    done = bytes_below(copied)
    chain = await open_chain(ctx.daemon, [source], source_format, size, False, source_repo.run)
    out = await open_chain(ctx.daemon, [target], target_format, size, True, ctx.repo.run)
    # Raw into raw (a full copy of a raw snapshot, a flatten of one): in the kernel.
    direct = chain.in_place and out.in_place

    async def move(offset: int, length: int, zero: bool) -> None:
        if zero:
            await out.zero(offset, length)
        elif direct:
            await chain.copy_to(out, offset, length)
        else:
            await out.write(offset, await chain.read(offset, length))

    if done:
        log.info("%s resumes its copy into %s at %d%% (%d of %d bytes)",
                 ctx.task.id, target.name, done * 100 // total, done, total)  # fmt: skip
    try:
        await ctx.report(step, done, total, force=True)
        await _move_chunks(ctx, step, move, out, extents, copied, bytes_below, total)
        await out.fsync()
        await ctx.report(step, total, total, force=True, copied=size)
    except errors.NoSpace:
        if out.in_place and over is None:
            # What lies past the checkpoint is redone anyway: give its space back,
            # so that the records saying the copy waits for space can be written.
            # (Not over an ancestor: past the checkpoint lie its bytes, not redone.)
            await out.truncate(ctx.checkpoint.copied)
            await out.truncate(size)
        raise
    finally:
        with trio.CancelScope(shield=True):  # a stopped task still closes its nodes
            await out.close()
            await chain.close()


async def _move_chunks(ctx: TaskContext, step: str, move, out, extents, copied: int,
                       bytes_below, total: int) -> None:  # fmt: skip
    """Moves the chunks in order, PARALLEL of them in flight (a cold disk and the
    storage daemon both serve several requests at once faster than one by one).
    The checkpoint is the lowest offset still in flight: everything below it is
    in place, and the fsync before the checkpoint makes it durable. The progress
    reported is what lies below it, so a resume never shows less."""
    slots = trio.Semaphore(PARALLEL)
    in_flight: set[int] = set()

    async def mover(offset: int, length: int, zero: bool) -> None:
        await move(offset, length, zero)
        in_flight.discard(offset)
        slots.release()

    try:
        async with trio.open_nursery() as nursery:
            for offset, length, zero in _chunks(extents, copied):
                await slots.acquire()
                if ctx.progress_due():
                    below = min(in_flight, default=offset)
                    await out.fsync()  # the checkpoint promises this data
                    await ctx.report(step, bytes_below(below), total, copied=below)
                in_flight.add(offset)
                nursery.start_soon(mover, offset, length, zero)
    except* errors.RepofsError as group:
        # The first refusal (ENOSPC, EIO) stands for the copy, as if it ran alone.
        raise group.exceptions[0] from None


def _bytes_below(extents):
    """A function of an offset: how many bytes of the (sorted) extents lie below
    it. O(log extents) a call."""
    starts = [e.offset for e in extents]
    before = list(itertools.accumulate((e.length for e in extents), initial=0))

    def below(offset: int) -> int:
        i = bisect.bisect_left(starts, offset)  # extents [0, i) start below offset
        if i == 0:
            return 0
        last = extents[i - 1]
        return before[i - 1] + min(last.length, offset - last.offset)

    return below


def _chunks(extents, copied: int):
    """(offset, length, zero) of the extents' bytes from offset `copied` on, in
    pieces of at most CHUNK."""
    for extent in extents:
        offset = max(extent.offset, copied)
        end = extent.offset + extent.length
        while offset < end:
            length = min(CHUNK, end - offset)
            yield offset, length, extent.zero
            offset += length


async def start_snapshot_copy(source_repo: Repository, source: ImageRecord,
                              target_repo: Repository) -> ImageRecord:  # fmt: skip
    """Commits the image of snapshot `source`'s copy in the target, `broken` and
    pending its copy (copy_snapshot_in does it), or, when the target can clone
    the source's raw volume (one reflink file system), whole and `optimized` at
    once. Call under the guards of its ID in both repositories.

    Durable steps: (1) create the target's volume: a clone of the source's; or
    over the nearest ancestor of the snapshot that the target or a repository it
    names `participating` holds, a clone of the ancestor's raw volume (on
    reflink storage) or a qcow2 overlay over it; or an empty raw one (allocated
    under strategy performance), (2) write the image's record. A crash after
    (1) leaves a volume no record names (clean)."""
    if source.kind is not ImageKind.SNAPSHOT:
        raise errors.invalid(f"{source.id} is a {source.kind}; this copies snapshots")
    if source.state is ImageState.BROKEN:
        raise errors.invalid(f"snapshot {source.id} is broken: {source.last_error}")
    await target_repo.check_free(source.id)
    if source.is_raw and await target_repo.run(target_repo.clones_from, source_repo):
        volume = await target_repo.clone_volume(source_repo, source.top, source.size)
        crash_point("copy:clone")
        record = ImageRecord(source.id, ImageKind.SNAPSHOT, source.size, (volume,),
                             lineage=source.lineage, owner=source.owner)  # fmt: skip
        record = await target_repo.commit_new_image(record, volume)
        log.info("cloned %s from %s to %s", source.id, source_repo.name, target_repo.name)
        return record
    holder, ancestor = await nearest_ancestor(source_repo, source, target_repo)
    base = lineage = None
    if ancestor is None:
        preallocate = await target_repo.preallocates()
        volume = await target_repo.create_raw_volume(source.size, preallocate)
        chain = (volume,)
    elif ancestor.is_raw and await target_repo.run(target_repo.clones_from, holder):
        # The snapshot's size, not the ancestor's: its disk may have grown since.
        volume = await target_repo.clone_volume(holder, ancestor.top, source.size)
        chain, lineage = (volume,), ancestor.id
    else:
        chain = await target_repo.new_overlay(ancestor.evolve(size=source.size), holder)
        volume, base = chain[0], ancestor.id
    record = ImageRecord(
        source.id, ImageKind.SNAPSHOT, source.size, chain, base=base, lineage=lineage,
        state=ImageState.BROKEN, last_error=COPY_UNFINISHED, pending=Pending.COPY,
        owner=source.owner,
    )  # fmt: skip
    record = await target_repo.commit_new_image(record, volume)
    log.info("copying %s from %s to %s%s", source.id, source_repo.name, target_repo.name,
             f" over its ancestor {ancestor.id} in {holder.name}" if ancestor else "")  # fmt: skip
    return record


async def copy_snapshot_in(ctx: TaskContext, image_id: str) -> ImageRecord:
    """The data of `image_id`, a copy started by start_snapshot_copy, from a
    repository holding that snapshot: all of it into a raw volume, or, over an
    ancestor (its base, or the lineage its volume was cloned from), only what
    differs from it. Then the image is usable: `optimized`, or `degraded` when
    that ancestor is in another repository; a backup's older backup points then
    leave their disk's chain (fixes/backups.py)."""
    image = await ctx.repo.read_image(image_id)
    source_repo, source = await find_source(ctx.registry, ctx.repo, image.id)
    ancestor_id = image.base if image.base is not None else image.lineage
    over = None
    # Under the source's guard: a merge rewrites a chain's headers, then records.
    async with source_repo.guard(source.id):
        source = await source_repo.read_image(source.id)
        if ancestor_id is not None:
            over = await _changes_since(source_repo, source, ancestor_id)
        await source_repo.verify_chain(source.chain)
    await copy_chain(
        ctx, "copy", source_repo, source_repo.volume_path(source.top), source.top.format,
        ctx.repo.volume_path(image.top), image.top.format, image.size, over,
    )  # fmt: skip
    record = await settle(ctx, image_id)
    await release_older_backups(source_repo, image_id, ctx.repo)
    return record


async def settle(ctx: TaskContext, image_id: str) -> ImageRecord:
    """The last step of a copy or of a snapshot: the image becomes usable,
    `optimized`, or `degraded` while its base is in another repository."""
    ctx.crash_point("finish")

    def usable(record: ImageRecord) -> ImageRecord:
        return record.evolve(state=record.usable_state, last_error=None, stage=None,
                             pending=None)  # fmt: skip

    return await ctx.repo.change_image(image_id, usable)


async def nearest_ancestor(source_repo: Repository, snapshot: ImageRecord,
                           target_repo: Repository):  # fmt: skip
    """(holder, record) of the nearest snapshot that `snapshot` descends from,
    by its chain's bases or its volume's lineage, that the target, or else a
    repository the target names `participating`, holds in full, and that a
    copy can tell `snapshot`'s changes since (_changes_since): the copy then
    builds on it and moves only what differs; (None, None) if there is none."""
    holders = [target_repo] + [
        target_repo.peers[name]
        for name in (await target_repo.read_options()).participating
        if name in target_repo.peers and name != target_repo.name
    ]
    record = snapshot
    # A base in yet another repository ends the walk: the copy is then whole.
    while record.base_repository is None and (parent := record.base or record.lineage):
        found = await source_repo.read_live_or_trashed(parent)
        if found is None:
            break
        record = found
        if _tells_changes(source_repo, snapshot, record):
            for holder in holders:
                held = await usable_snapshot(holder, parent)
                if held is not None:
                    return holder, held
    return None, None


async def usable_snapshot(repo: Repository, image_id: str) -> ImageRecord | None:
    """The repository's live record of that ID if it is a usable snapshot."""
    if not await repo.has_image(image_id):
        return None
    record = await repo.read_image(image_id)
    return record if record.is_usable_snapshot else None


def _tells_changes(source_repo: Repository, source: ImageRecord,
                   ancestor: ImageRecord) -> bool:  # fmt: skip
    """Whether what `source` changed since `ancestor` (both of `source_repo`)
    can be told without reading their data: the ancestor's top is a layer of
    the source's chain, or both are raw volumes of reflink storage."""
    if ancestor.top in source.chain:
        return True
    return source.is_raw and ancestor.is_raw and source_repo.reflink


async def _changes_since(source_repo: Repository, source: ImageRecord,
                         ancestor_id: str) -> Ancestor | list[img.Extent]:  # fmt: skip
    """What a copy of `source` over its ancestor `ancestor_id` must write
    (copy_chain's `over`): the ancestor's place in the source's chain; or the
    ranges where the two raw clones do not share extents (FIEMAP); or, if the
    source's repository no longer holds the ancestor to compare with, every
    range (its data, and zeros elsewhere): more work, the same bytes."""

    async def compare() -> Ancestor | list[img.Extent] | None:
        ancestor = await source_repo.read_live_or_trashed(ancestor_id)
        if ancestor is None:
            return None
        if ancestor.top in source.chain:
            return Ancestor(source.chain.index(ancestor.top), ancestor.size)
        if not _tells_changes(source_repo, source, ancestor):
            return None
        try:
            changes = await source_repo.extent_changes(source.top, ancestor.top, source.size)
        except FileNotFoundError:
            return None  # cleaned meanwhile
        return [_as_extent(c.offset, c.length, c.data) for c in changes]

    found = await compare()
    if found is not None:
        return found
    log.warning("%s is no longer in %s to compare %s with: every range of it is copied",
                ancestor_id, source_repo.name, source.id)  # fmt: skip
    mapped = await img.map_extents(source_repo.volume_path(source.top), source.top.format)
    return _fill_zeros([e for e in mapped if e.data], source.size)


def _as_extent(offset: int, length: int, data: bool) -> img.Extent:
    return img.Extent(offset, length, data, 0, not data)


def _fill_zeros(data: list[img.Extent], size: int) -> list[img.Extent]:
    """The data extents, and zero extents for every range between them."""
    filled, at = [], 0
    for extent in data:
        if extent.offset > at:
            filled.append(_as_extent(at, extent.offset - at, False))
        filled.append(extent)
        at = extent.offset + extent.length
    if at < size:
        filled.append(_as_extent(at, size - at, False))
    return filled


async def find_source(registry: Registry, target: Repository, image_id: str):
    """A connected repository other than `target` holding a usable snapshot
    `image_id` (snapshot IDs name the same immutable data everywhere), looked for
    where the target's options say: a hint `ID=repo` names the only place; else
    the repositories the target names `participating` come first, then the
    others (the one an `ln` named as the source is among them)."""
    options = await target.read_options()
    hinted = dict(options.image_hints).get(image_id)
    if hinted is not None:
        names = [hinted]
    else:
        names = [*options.participating,
                 *(n for n in registry.repositories if n not in options.participating)]  # fmt: skip
    for name in names:
        repo = registry.repositories.get(name)
        if repo is None or repo is target:
            continue
        record = await usable_snapshot(repo, image_id)
        if record is not None:
            return repo, record
    where = f"{hinted} (user.repofs.image_hints)" if hinted else "any connected repository"
    raise errors.not_found(f"no usable snapshot {image_id} in {where}")
