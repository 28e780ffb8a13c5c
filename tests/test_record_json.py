"""Task and image records on storage (docs/on-disk.md, "Task record"): what a fix has done
is typed in memory and written with the keys records always had, so that a
task written before resumes, and one written now reads as before."""

from repofs.model import (
    Checkpoint,
    Fix,
    FixKind,
    ImageKind,
    ImageRecord,
    Task,
    TaskState,
    Volume,
    VolumeFormat,
)


def optimize_task(checkpoint: dict) -> dict:
    fix = Fix("optimize-vm2", FixKind.OPTIMIZE, "vm2", "make vm2 one raw volume", 1 << 30)
    data = Task("optimize-vm2", fix, TaskState.STOPPED, generation=3).to_json()
    return {**data, "checkpoint": checkpoint}


def test_a_checkpoint_written_before_it_was_typed_resumes():
    written = {"target": "5e0c.raw", "volumes": ["5e0c.raw"], "copied": 4 << 20,
               "base": ["9a1e.qcow2", "r1/77aa.raw"]}  # fmt: skip
    task = Task.from_json(optimize_task(written))
    assert task.checkpoint == Checkpoint(
        target="5e0c.raw", base=("9a1e.qcow2", "r1/77aa.raw"), copied=4 << 20,
        volumes=("5e0c.raw",),
    )  # fmt: skip
    assert task.to_json()["checkpoint"] == written


def test_absent_keys_are_the_defaults_and_are_not_written():
    assert Task.from_json(optimize_task({})).checkpoint == Checkpoint()
    assert Task.from_json(optimize_task({"copied": 7})).checkpoint == Checkpoint(copied=7)
    assert Checkpoint().to_json() == {}
    assert Checkpoint(copied=7).to_json() == {"copied": 7}


def test_a_task_record_reads_back_as_it_was_written():
    task = Task.from_json(optimize_task({"target": "5e0c.raw", "volumes": ["5e0c.raw"]}))
    assert Task.from_json(task.to_json()) == task


def test_the_progress_of_a_task_shows_on_its_image_record_and_goes_with_the_task():
    record = ImageRecord("vm2", ImageKind.VIRTUAL_DISK, 1 << 30,
                         (Volume("5e0c", VolumeFormat.QCOW2),))  # fmt: skip
    running = record.evolve(host="host1", stage="1/4", percent_complete=40)
    assert running.progress() == {"host": "host1", "stage": "1/4", "percent_complete": 40,
                                  "last_error": None}  # fmt: skip
    stopped = running.left_by_task("stopped by the user")
    assert stopped.progress() == {"host": None, "stage": "1/4", "percent_complete": 40,
                                  "last_error": "stopped by the user"}  # fmt: skip
