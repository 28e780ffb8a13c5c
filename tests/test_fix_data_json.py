"""The JSON of a fix (`cat fixes/X`, a task record's "fix") as the check makes
each kind: its data is typed in memory (model.py FixData) and written with the
keys fixes always had, so that a task written before reads back the same."""

import json

from repofs.fixes.check import (
    Inventory,
    _clean_fixes,
    _live_image_fixes,
    _merge_fixes,
    _unreadable_fixes,
    mend_fix,
    optimize_fix,
)
from repofs.model import (
    Fix,
    FixData,
    ImageKind,
    ImageRecord,
    ImageState,
    Pending,
    Plan,
    RepositoryOptions,
    Task,
    TaskState,
    Volume,
    VolumeFormat,
)

GiB = 1 << 30


class Sizes:
    """The one thing the check asks a repository while it builds fixes."""

    def allocated_bytes(self, volume: Volume) -> int:
        return 4096


def disk(image_id: str, *chain: Volume, **fields) -> ImageRecord:
    return ImageRecord(image_id, fields.pop("kind", ImageKind.VIRTUAL_DISK), GiB, chain, **fields)


def inventory(live=(), trashed=(), volumes=(), unreadable=None) -> Inventory:
    return Inventory(list(live), list(trashed), [], list(volumes), set(), unreadable or {})


def rendered(fix: Fix) -> dict:
    return fix.to_json()["data"]


def test_a_mend_says_copy_and_unfinished_snapshot_even_when_false():
    top = Volume("aa", VolumeFormat.RAW)
    copy = disk("gold", top, kind=ImageKind.SNAPSHOT, state=ImageState.BROKEN,
                pending=Pending.COPY)  # fmt: skip
    snapshot = copy.evolve(pending=Pending.SNAPSHOT)
    broken = copy.evolve(pending=None, last_error="it fell")
    assert rendered(mend_fix(copy)) == {"copy": True, "unfinished_snapshot": False}
    assert json.dumps(rendered(mend_fix(copy))) == '{"copy": true, "unfinished_snapshot": false}'
    assert rendered(mend_fix(snapshot)) == {"copy": False, "unfinished_snapshot": True}
    assert rendered(mend_fix(broken)) == {"copy": False, "unfinished_snapshot": False}


def test_a_mend_that_needs_a_decision_says_only_the_problems():
    [unreadable] = _unreadable_fixes(inventory(unreadable={"bad": "not JSON"}))
    assert rendered(unreadable) == {"decision": ["not JSON"]}
    lost = disk("vm1", Volume("bb", VolumeFormat.RAW))
    [missing] = _live_image_fixes(Sizes(), inventory(live=[lost]), RepositoryOptions(), {})
    assert rendered(missing) == {"decision": ["volumes missing from storage: bb.raw"]}


def test_an_optimize_says_its_plan():
    elsewhere = disk("vm2", Volume("cc", VolumeFormat.QCOW2), Volume("dd", VolumeFormat.RAW, "r1"),
                     base="gold", state=ImageState.DEGRADED)  # fmt: skip
    options = RepositoryOptions()
    assert rendered(optimize_fix(Sizes(), elsewhere, options)) == {"plan": "localize"}
    assert rendered(optimize_fix(Sizes(), elsewhere, options, flatten=True)) == {"plan": "flatten"}


def test_a_merge_names_the_images_and_a_clean_the_orphans():
    layer = Volume("ee", VolumeFormat.QCOW2)
    snapshot = disk("s1", layer, kind=ImageKind.SNAPSHOT)
    user = disk("vm1", Volume("ff", VolumeFormat.QCOW2), layer, base="s1")
    [merge] = _merge_fixes(Sizes(), inventory(live=[user], trashed=[snapshot]))
    assert rendered(merge) == {"images": ["vm1"]}
    gone = disk("vm3", Volume("11", VolumeFormat.RAW))
    held = inventory(trashed=[gone], volumes=["11.raw", "22.raw"])
    assert [f.to_json() for f in _clean_fixes(Sizes(), held, [])] == [
        {"id": "clean-vm3", "kind": "clean", "image": "vm3",
         "description": "purge removed virtual-disk vm3 and free 1 volumes",
         "bytes_estimate": 4096, "data": {}},
        {"id": "clean-volumes", "kind": "clean", "image": None,
         "description": "free 1 volumes no record names, 0 temp files and 0 tasks of "
                        "removed images",
         "bytes_estimate": 4096, "data": {"volumes": ["22.raw"]}},
    ]  # fmt: skip
    [temp_only] = _clean_fixes(Sizes(), inventory(), ["/r/images/.tmp-x"])
    assert rendered(temp_only) == {"volumes": []}


def test_a_task_written_before_fix_data_was_typed_reads_back_the_same():
    written = {
        "version": 1, "id": "mend-gold",
        "fix": {"id": "mend-gold", "kind": "mend", "image": "gold",
                "description": "copy the data of gold in", "bytes_estimate": GiB,
                "data": {"copy": True, "unfinished_snapshot": False}},
        "state": "stopped", "lease": None, "stage": "1/3", "percent_complete": 40,
        "last_error": "stopped by the user", "step": "copy", "bytes_done": 4 << 20,
        "bytes_total": GiB, "rate": 0.0, "started": None,
        "checkpoint": {"copied": 4 << 20}, "generation": 5,
    }  # fmt: skip
    task = Task.from_json(written)
    assert task.state is TaskState.STOPPED
    assert task.fix.data == FixData(copy=True, unfinished_snapshot=False)
    assert task.to_json() == written
    for stored, typed in [
        ({"plan": "localize"}, FixData(plan=Plan.LOCALIZE)),
        ({"decision": ["why"]}, FixData(decision=("why",))),
        ({"images": ["vm1", "vm2"]}, FixData(images=("vm1", "vm2"))),
        ({"volumes": []}, FixData(volumes=())),
        ({}, FixData()),
    ]:
        fix = Fix.from_json({**written["fix"], "data": stored})
        assert fix.data == typed and fix.to_json()["data"] == stored
