"""`repofs wait PATH`: blocks until an image reaches a state.

It reads the repository's `events` (opened before the image's status is first
looked at, so no change falls between) and looks at the status again only when
a line names the image: no polling. It gives up when the image is gone, when a
task working on it failed, when it becomes broken, or at the timeout.
"""

import errno
import json
import time
from pathlib import Path

from repofs import errors
from repofs.client.status import read_all, read_events

STATES = ("optimized", "degraded", "broken")


def wait_for_state(repo: Path, image_id: str, state: str, timeout_s: float | None) -> dict:
    """Returns the status of image `image_id` of the repository at `repo` once it
    is in `state`; raises RepofsError (ETIMEDOUT, or EIO saying what went wrong)
    otherwise."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with open(repo / "events", "rb", buffering=0) as events:
        status = _status(repo, image_id)
        first_state = status["state"]
        while status["state"] != state:
            _give_up_if_hopeless(repo, image_id, status, first_state)
            _next_line_about(events, image_id, deadline, f"{image_id} is {status['state']}")
            status = _status(repo, image_id)
        return status


def _status(repo: Path, image_id: str) -> dict:
    try:
        return json.loads((repo / "status" / image_id).read_text())
    except FileNotFoundError:
        raise errors.not_found(f"{image_id} is not in {repo.name} (removed?)") from None


def _give_up_if_hopeless(repo: Path, image_id: str, status: dict, first_state: str) -> None:
    for task in _failed_tasks(repo, image_id):
        raise errors.io_error(f"{image_id}: task {task['id']} failed: {task['last_error']}")
    if status["state"] == "broken" and first_state != "broken":
        raise errors.io_error(f"{image_id} became broken: {status['last_error']}")


def _failed_tasks(repo: Path, image_id: str) -> list[dict]:
    return [
        task for task in read_all(repo / "tasks")
        if task["image"] == image_id and task["state"] == "failed"
    ]  # fmt: skip


def _next_line_about(events, image_id: str, deadline: float | None, now: str) -> None:
    """Reads `events` until a line names the image (or says lines were lost).
    Reads end within a second when nothing happens (docs/fixes.md, "Events"),
    which is when the deadline is looked at."""
    for batch in read_events(events):
        if any(e.get("id") == image_id or e["event"] == "lost" for e in batch):
            return
        if deadline is not None and time.monotonic() >= deadline:
            break
    raise errors.RepofsError(errno.ETIMEDOUT, f"timed out: {now}")
