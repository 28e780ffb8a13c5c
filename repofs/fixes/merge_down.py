"""A merge the other way (fixes/merge.py): the one layer U above a removed
snapshot S's layer L is folded down into L, when U holds less than L.

That is the case of a disk's previous backup points, and of old snapshots of a
disk that keeps being written: L holds the disk as it was long ago, U only what
changed until the next snapshot B (whose top U is). Moving U into L moves the
change, not the disk. L then holds what B reads, B's record takes L as its top,
and U goes; S's record goes too, its layer no longer holding S's bytes.

Taken when U is B's top (a live snapshot), at most one layer T sits on U, at
most one image reading through U is open here (its chain is where the daemon
folds U, live), B itself is not open, and U takes less space than L. Decided
once: the checkpoint's `target` names U from then on.

Durable steps, and what a crash after each leaves:
1. plan: the checkpoint names U (and keeps it from a clean).
2. S's record (in the trash) says it is being merged away: broken, so it can no
   longer be restored, since L is about to change.
3. commit data + rebase: QEMU's block-commit in the open chain (live), or
   `qemu-img commit` of U and `qemu-img rebase -u` of T onto L: L takes U's
   data, then T's header names L. Until T's header changes, reads go through U,
   which masks L where it has data: the same bytes; the step is redone.
4. record: every record whose chain holds U drops it (B's top becomes L), and
   those based on S take S's base. A crash between records leaves some still
   naming U, whose header skips it: the step is redone.
5. S's record goes.
6. U is unlinked (named by nothing but this task since step 4); a crash just
   before leaves it to a clean.
"""

import logging
from functools import partial

from repofs import errors
from repofs.fixes.check import fold_down_owner
from repofs.fixes.context import TaskContext
from repofs.fixes.removal import drop_from_chain
from repofs.model import ImageRecord, ImageState, Volume
from repofs.qemu import img

log = logging.getLogger(__name__)


async def plan(ctx: TaskContext, snapshot: ImageRecord, users: list[ImageRecord]) -> Volume | None:
    """U, if this merge goes down (see the module's docstring); else None."""
    if ctx.checkpoint.target is not None:
        return Volume.from_file_name(ctx.checkpoint.target)
    layer = snapshot.top
    owner = fold_down_owner(layer, users)
    if owner is None or owner.id in ctx.repo.open_images:
        return None
    upper = owner.top
    if len([r for r in users if upper in r.chain[1:] and r.id in ctx.repo.open_images]) > 1:
        return None

    def smaller() -> bool:
        return ctx.repo.allocated_bytes(upper) < ctx.repo.allocated_bytes(layer)

    if not await ctx.repo.run(smaller):
        return None
    await ctx.save_checkpoint(target=upper.file_name, volumes=(upper.file_name,))
    return upper


async def fold_down(ctx: TaskContext, snapshot: ImageRecord, users: list[ImageRecord],
                    upper: Volume) -> None:  # fmt: skip
    """Steps 2-6. `users`: the records that read through `snapshot`'s layer."""
    layer = snapshot.top
    owner = next((r for r in users if r.top == upper), None)  # None: step 4 done
    if snapshot.state is not ImageState.BROKEN:
        await ctx.repo.change_image(snapshot.id, lambda r: r.evolve(
            state=ImageState.BROKEN, last_error="being merged away into the snapshot above it",
        ), trashed=True)  # fmt: skip
    ctx.crash_point("commit")
    if owner is not None:
        await _commit(ctx, upper, layer, [r for r in users if upper in r.chain[1:]])
    ctx.crash_point("record")
    await ctx.enter_stage("record")
    for user in users:
        if upper in user.chain:
            await drop_from_chain(ctx.repo, user, upper, snapshot)
    await finish(ctx, snapshot.id)


async def finish(ctx: TaskContext, snapshot_id: str) -> None:
    """Steps 5 and 6."""
    await ctx.repo.purge_trashed_image(snapshot_id)
    ctx.crash_point("unlink")
    await ctx.repo.remove_volume(Volume.from_file_name(ctx.checkpoint.target))


async def _commit(ctx: TaskContext, upper: Volume, layer: Volume,
                  above: list[ImageRecord]) -> None:  # fmt: skip
    layer_path = ctx.repo.volume_path(layer)
    served = [r for r in above if r.id in ctx.repo.open_images]
    if served:
        user = served[0]
        top = user.chain[user.chain.index(upper) - 1]
        log.info("merge: folding %s down into %s live, in the open chain of %s",
                 upper.file_name, layer.file_name, user.id)  # fmt: skip

        backing = img.backing_name(ctx.repo.volume_path(top), layer_path)
        try:
            await ctx.daemon.commit(ctx.repo.volume_path(user.top), user.chain.index(upper),
                                    backing, partial(ctx.report, "commit"))  # fmt: skip
            return
        except (errors.NotFound, errors.IOFailure):
            if not await ctx.closed_meanwhile(user.id):
                raise
    log.info("merge: folding %s down into %s offline", upper.file_name, layer.file_name)
    await img.commit(ctx.repo.volume_path(upper))
    for top in {r.chain[r.chain.index(upper) - 1] for r in above}:
        await img.rebase_unsafe(ctx.repo.volume_path(top), layer_path, layer.format)
