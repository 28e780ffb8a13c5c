"""checkStorageRepository: what is wrong in a repository, as a list of fixes.

Read-only: it reads records, tasks, the volume directory and the qcow2 headers
(Repository.check_headers), and never writes.
"""

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from repofs.model import (
    Fix,
    FixData,
    FixKind,
    ImageKind,
    ImageRecord,
    ImageState,
    Pending,
    Plan,
    RepositoryOptions,
    Strategy,
    Task,
    TaskState,
    Volume,
)
from repofs.repository import Holdings, Repository

ORPHANS = "volumes"


@dataclass(frozen=True)
class Inventory(Holdings):
    """What a repository holds (Holdings), as the check and clean judge it."""

    # This repository's volumes that records (live or trashed) of other connected
    # repositories read through: file name -> their `REPO/ID`s.
    used_elsewhere: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    async def read(cls, repo: Repository, elsewhere: bool = True) -> "Inventory":
        """What `repo` holds, and (`elsewhere`) which of its volumes the other
        connected repositories read through."""
        used = await repo.volumes_used_elsewhere() if elsewhere else {}
        held = await repo.read_holdings()
        return cls(**vars(held), used_elsewhere=used)

    def stale_tasks(self) -> list[Task]:
        """Stopped or failed tasks whose image is gone: they can never resume."""
        live = {r.id for r in self.live}
        return [
            t for t in self.tasks
            if t.state in (TaskState.STOPPED, TaskState.FAILED)
            and t.image is not None and t.image not in live
        ]  # fmt: skip

    def headers_to_judge(self) -> list[ImageRecord]:
        """The live images whose qcow2 headers must agree with their records."""
        rewritten = self.rewritten(self.tasks)
        return [r for r in self.live if r.id not in rewritten]

    def rewritten(self, tasks: list[Task]) -> set[str]:
        """The live images whose qcow2 headers one of `tasks` may have rewritten
        ahead of their records: the image an optimize works on, and for a merge
        every chain through the layer it folds (or, going down, the one above
        it). Those rewrite a header before the record (fixes/optimize.py,
        fixes/merge.py), and running the task again sets both right."""
        rewriting = set()
        folded = set()
        for task in tasks:
            if task.fix.kind is FixKind.OPTIMIZE:
                rewriting.add(task.image)
            elif task.fix.kind is FixKind.MERGE:
                rewriting.update(task.fix.data.images or ())
                folded |= {r.top for r in self.trashed if r.id == task.image}
                if task.checkpoint.target is not None:
                    folded.add(Volume.from_file_name(task.checkpoint.target))
        return {r.id for r in self.live if r.id in rewriting or folded & set(r.chain)}

    def named_volumes(self) -> set[str]:
        """Volumes that a record (live or trashed) or a task that may go on names,
        or that may be being made for one."""
        if self.unreadable:
            # What an unreadable record names is unknown: every volume may be its.
            return set(self.volumes)
        named = {v.file_name for r in self.live + self.trashed for v in r.chain if v.repo is None}
        named |= self.unsettled | set(self.used_elsewhere)
        stale = {t.id for t in self.stale_tasks()}
        for task in self.tasks:
            if task.id not in stale:
                named.update(task.checkpoint.volumes)
        return named

    def orphans(self) -> list[str]:
        """The volume files that nothing names and nothing is making: a clean's
        to free. Only those listed before the records were read (read): a volume
        made since may be named by a record written since."""
        named = self.named_volumes()
        return [v for v in self.volumes if v not in named]

    def references(self, image: ImageRecord) -> list[str]:
        """Images (live or trashed, here or in another connected repository) whose
        chain builds on `image`'s top volume (a base of the same ID in another
        repository is another image)."""
        return [
            r.id for r in self.live + self.trashed if r.id != image.id and (
                (r.base == image.id and r.base_repository is None) or image.top in r.chain[1:]
            )
        ] + self.used_elsewhere.get(image.top.file_name, [])  # fmt: skip


def fix_id(kind: FixKind, image: str | None) -> str:
    return f"{kind}-{image or ORPHANS}"


def mend_fix(record: ImageRecord) -> Fix:
    """The mend of a broken image: a copy to go on, a snapshot to finish, or why not."""
    if record.pending is Pending.COPY:
        description = f"copy the data of {record.id} in"
    elif record.pending is Pending.SNAPSHOT:
        description = f"finish snapshot {record.id}"
    else:
        description = f"{record.id} is broken: {record.last_error}"
    return Fix(
        fix_id(FixKind.MEND, record.id), FixKind.MEND, record.id, description,
        record.size if record.pending is Pending.COPY else 0,
        FixData(copy=record.pending is Pending.COPY,
                unfinished_snapshot=record.pending is Pending.SNAPSHOT),
    )  # fmt: skip


def optimize_fix(repo: Repository, record: ImageRecord, options: RepositoryOptions,
                 flatten: bool = False) -> Fix:  # fmt: skip
    """The optimize of a degraded image. Its plan (fixes/optimize.py): `localize`
    a base that is in another repository, under strategy space (or for a snapshot)
    by copying that snapshot here under its own ID; else (or when asked to:
    `flatten`, a clone's independence) `flatten` a disk into one raw volume.
    Blocking (the sizes of volumes)."""
    elsewhere = record.base_repository
    if (
        elsewhere
        and not flatten
        and (options.strategy is Strategy.SPACE or record.kind is ImageKind.SNAPSHOT)
    ):
        return Fix(
            fix_id(FixKind.OPTIMIZE, record.id), FixKind.OPTIMIZE, record.id,
            f"copy {record.id}'s base {record.base} from {elsewhere} into this repository "
            f"as snapshot {record.base}, and base {record.id} on it",
            record.size, FixData(plan=Plan.LOCALIZE),
        )  # fmt: skip
    if elsewhere:
        why = f"its base {record.base} is in {elsewhere}"
    elif len(record.chain) > options.max_chain:
        why = f"its chain of {len(record.chain)} volumes is longer than {options.max_chain}"
    else:
        why = "strategy performance, and it is an overlay over its base"
    return Fix(
        fix_id(FixKind.OPTIMIZE, record.id), FixKind.OPTIMIZE, record.id,
        f"make {record.id} one raw volume of its own: {why}",
        record.size if elsewhere else sum(repo.allocated_bytes(v) for v in record.chain[1:]),
        FixData(plan=Plan.FLATTEN),
    )  # fmt: skip


def check_repository(
    repo: Repository,
    inventory: Inventory,
    options: RepositoryOptions,
    temp_files: list[Path],
    unusable: dict[str, str],
) -> list[Fix]:
    """checkStorageRepository of one repository. `unusable`: the live images this
    host found it cannot use, with the question for a person: those whose qcow2
    headers disagree with their records (Repository.check_headers, of
    `inventory.headers_to_judge()`) and those whose last open failed here
    (Repository.unusable_here); `temp_files`: Repository.leftover_temp_files.
    Blocking (the sizes of volumes)."""
    fixes = [
        *_unreadable_fixes(inventory),
        *_live_image_fixes(repo, inventory, options, unusable),
        *_merge_fixes(repo, inventory),
        *_clean_fixes(repo, inventory, temp_files),
    ]
    active = {t.id for t in inventory.tasks if t.active}
    return [f for f in fixes if f.id not in active]


def _unreadable_fixes(inventory: Inventory) -> list[Fix]:
    """A record that cannot be read: a person must repair or remove the file. Until
    then nothing is freed (its volumes are unknown) and the rest works."""
    return [
        Fix(
            fix_id(FixKind.MEND, image_id), FixKind.MEND, image_id,
            f"{image_id} needs a decision: {reason}; no volume is freed until it is "
            "repaired or removed", 0, FixData(decision=(reason,)),
        )
        for image_id, reason in sorted(inventory.unreadable.items())
    ]  # fmt: skip


def _live_image_fixes(repo: Repository, inventory: Inventory, options: RepositoryOptions,
                      unusable: dict[str, str]) -> list[Fix]:  # fmt: skip
    fixes = []
    known_bases = {r.id for r in inventory.live + inventory.trashed} | {None}
    # An unfinished snapshot shares its top with its disk until mend finishes it.
    tops = Counter(r.top.file_name for r in inventory.live if r.pending is not Pending.SNAPSHOT)
    present = set(inventory.volumes)
    for record in inventory.live:
        problems = []
        # Volumes of another repository are that one's to check.
        local = [v.file_name for v in record.chain if v.repo is None]
        missing = [f for f in local if f not in present]
        if missing:
            problems.append(f"volumes missing from storage: {', '.join(missing)}")
        if len(set(record.chain)) != len(record.chain):
            problems.append("its volume chain loops")
        if record.base not in known_bases and not record.base_repository:
            problems.append(f"its base {record.base} is unknown")
        if tops[record.top.file_name] > 1 and record.pending is not Pending.SNAPSHOT:
            others = [
                r.id for r in inventory.live
                if r.top == record.top and r.id != record.id
                and r.pending is not Pending.SNAPSHOT
            ]  # fmt: skip
            problems.append(f"its top volume is also claimed by {', '.join(others)}")
        if record.id in unusable:
            problems.append(unusable[record.id])
        if problems:
            fixes.append(Fix(
                fix_id(FixKind.MEND, record.id), FixKind.MEND, record.id,
                f"{record.id} needs a decision: " + "; ".join(problems), 0,
                FixData(decision=tuple(problems)),
            ))  # fmt: skip
        elif record.state is ImageState.BROKEN:
            fixes.append(mend_fix(record))
        elif record.base_repository or (record.kind is ImageKind.VIRTUAL_DISK and (
            record.state is ImageState.DEGRADED or len(record.chain) > options.max_chain
        )):  # fmt: skip
            fixes.append(optimize_fix(repo, record, options))
    return fixes


def _merge_fixes(repo: Repository, inventory: Inventory) -> list[Fix]:
    """A trashed snapshot whose top volume live images still read through. Not
    while images of other repositories read through it too: the merge rewrites
    only this repository's records (theirs would then name a layer their
    headers skip); they are optimized there first."""
    fixes = []
    for snapshot in inventory.trashed:
        read_elsewhere = snapshot.top.file_name in inventory.used_elsewhere
        if snapshot.kind is not ImageKind.SNAPSHOT or read_elsewhere:
            continue
        readers = [r for r in inventory.live + inventory.trashed if snapshot.top in r.chain[1:]]
        if any(r in inventory.live for r in readers):
            live = [r.id for r in inventory.live if r in readers]
            fixes.append(merge_fix(repo, snapshot, readers, live))
    return fixes


def merge_fix(repo: Repository, snapshot: ImageRecord, readers: list[ImageRecord],
              live: list[str]) -> Fix:  # fmt: skip
    """The merge of removed snapshot `snapshot`'s layer L (fixes/merge.py) into
    `readers`, the records that read through it, of which `live` are live. Its
    cost: each volume directly above L takes in at most all of L's data, and the
    clean then frees L's space; or, one snapshot's top U holding less than L
    being the only layer above it, U goes down into L and its space is freed
    (fixes/merge_down.py). Blocking (the sizes of volumes)."""
    layer = snapshot.top
    uppers = {r.chain[r.chain.index(layer) - 1] for r in readers}
    size = repo.allocated_bytes(layer)
    into = ", ".join(live)
    owner = fold_down_owner(layer, readers)
    if owner is not None:
        upper_size = repo.allocated_bytes(owner.top)
        if upper_size < size:
            return Fix(
                fix_id(FixKind.MERGE, snapshot.id), FixKind.MERGE, snapshot.id,
                f"merge the layer of removed snapshot {snapshot.id} with {owner.id}'s "
                f"above it, for {into}: moves {_mib(upper_size)} of {owner.id} down "
                f"into it and frees that much",
                upper_size, FixData(images=tuple(live)),
            )  # fmt: skip
    into_layers = f"{len(uppers)} layers" if len(uppers) > 1 else "the layer"
    return Fix(
        fix_id(FixKind.MERGE, snapshot.id), FixKind.MERGE, snapshot.id,
        f"merge the layer of removed snapshot {snapshot.id} into {into}: "
        f"moves up to {_mib(size * len(uppers))} into {into_layers} above it; its clean "
        f"then frees {_mib(size)}",
        size * len(uppers), FixData(images=tuple(live)),
    )  # fmt: skip


def fold_down_owner(layer: Volume, readers: list[ImageRecord]) -> ImageRecord | None:
    """The snapshot B whose top U is the one layer above `layer` in the chains of
    `readers` (the records reading through it), with at most one layer above U:
    a merge of `layer` may then fold U down into it instead, when U holds less
    (fixes/merge_down.py); else None."""
    uppers = {r.chain[r.chain.index(layer) - 1] for r in readers}
    if len(uppers) != 1:
        return None
    (upper,) = uppers
    owners = [r for r in readers if r.top == upper]
    above = {r.chain[r.chain.index(upper) - 1] for r in readers if upper in r.chain[1:]}
    if len(owners) != 1 or owners[0].kind is not ImageKind.SNAPSHOT or len(above) > 1:
        return None
    return owners[0]


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _clean_fixes(repo: Repository, inventory: Inventory, temp_files: list[Path]) -> list[Fix]:
    fixes = []
    for record in inventory.trashed:
        if inventory.references(record):
            continue  # clean refuses it; it is freed once nothing builds on it
        others = {v for r in inventory.live + inventory.trashed if r.id != record.id
                  for v in r.chain}  # fmt: skip
        freed = [v for v in record.chain if v.repo is None and v not in others]
        fixes.append(Fix(
            fix_id(FixKind.CLEAN, record.id), FixKind.CLEAN, record.id,
            f"purge removed {record.kind} {record.id} and free {len(freed)} volumes",
            sum(repo.allocated_bytes(v) for v in freed),
        ))  # fmt: skip
    orphans = inventory.orphans()
    stale = inventory.stale_tasks()
    if orphans or temp_files or stale:
        fixes.append(Fix(
            fix_id(FixKind.CLEAN, None), FixKind.CLEAN, None,
            f"free {len(orphans)} volumes no record names, {len(temp_files)} temp files "
            f"and {len(stale)} tasks of removed images",
            sum(repo.allocated_bytes(Volume.from_file_name(v)) for v in orphans),
            FixData(volumes=tuple(orphans)),
        ))  # fmt: skip
    return fixes
