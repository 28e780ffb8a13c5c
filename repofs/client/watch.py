"""`repofs watch [MOUNT | MOUNT/REPO]`: running tasks' progress, live.

Driven by the repositories' `events` (their `task` and `task-ended` lines), read
by one thread per repository; the task files are read once, after `events` is
opened, and again after a reader lost lines. On a terminal, one progress bar
per task (tqdm); otherwise one plain line per change, for logs and scripts. It
ends when no task is queued or running, with exit 1 if one failed or was
stopped meanwhile.
"""

import queue
import shutil
import threading
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from repofs.client.status import eta, human, read_all, read_events

ACTIVE = ("queued", "running")


def watch(repos: list[Path], out: TextIO) -> int:
    """Shows the tasks of `repos` until none is active; 1 if one ended badly."""
    lines: queue.Queue[tuple[Path, dict]] = queue.Queue()
    for repo in repos:
        events = open(repo / "events", "rb", buffering=0)  # its thread closes it
        threading.Thread(target=_relay, args=(repo, events, lines), daemon=True).start()
    view = Bars(out) if out.isatty() else Lines(out)
    tasks: dict[tuple[str, str], dict] = {}
    for repo in repos:
        _resync(repo, tasks, view)
    if not tasks:
        print("no task is queued or running", file=out)
    ended_badly = False
    while any(task["state"] in ACTIVE for task in tasks.values()):
        repo, event = lines.get()
        key = (repo.name, event.get("task"))
        if event["event"] == "task":
            task = tasks[key] = {**event, "id": event["task"]}
            view.show(repo.name, task)
            ended_badly |= task["state"] in ("failed", "stopped")
        elif event["event"] == "task-ended" and key in tasks:
            if tasks.pop(key)["state"] in ACTIVE:
                view.done(repo.name, key[1])
        elif event["event"] == "lost":
            _resync(repo, tasks, view)
    view.close()
    return 1 if ended_badly else 0


def _relay(repo: Path, events, lines: queue.Queue) -> None:
    """Puts every line of `events` on `lines` (an empty read is the stream's idle
    second: nothing to pass on)."""
    with events:
        for batch in read_events(events):
            for event in batch:
                lines.put((repo, event))


def _resync(repo: Path, tasks: dict, view) -> None:
    """Takes the repository's task files as they are now."""
    now = {(repo.name, t["id"]): t for t in read_all(repo / "tasks")}
    for key in [k for k in tasks if k[0] == repo.name and k not in now]:
        if tasks.pop(key)["state"] in ACTIVE:
            view.done(repo.name, key[1])
    for key, task in now.items():
        if task != tasks.get(key):
            tasks[key] = task
            view.show(repo.name, task)


def describe(task: dict) -> str:
    """A task's progress in one line: state, stage and step, bytes, rate."""
    parts = [task["state"]]
    if task["stage"]:
        parts.append(f"{task['stage']} {task['step']}")
    if task["bytes_total"]:
        parts.append(f"{task['percent_complete']}% {human(task['bytes_done'])}"
                     f"/{human(task['bytes_total'])} {human(task['rate'])}/s")  # fmt: skip
        if left := eta(task):
            parts.append(f"ETA {left}")
    if task["last_error"]:
        parts.append(task["last_error"])
    return " ".join(parts)


class Lines:
    """Not on a terminal: one line per change."""

    def __init__(self, out: TextIO):
        self.out = out
        self.last: dict[tuple[str, str], str] = {}

    def show(self, repo: str, task: dict) -> None:
        """A waiting task rewrites its record every second: only what changed is said."""
        line = f"{repo}/{task['id']} {describe(task)}"
        if self.last.get((repo, task["id"])) != line:
            self.last[(repo, task["id"])] = line
            print(line, file=self.out, flush=True)

    def done(self, repo: str, task_id: str) -> None:
        print(f"{repo}/{task_id} done", file=self.out, flush=True)

    def close(self) -> None:
        pass


class Bars:
    """On a terminal: a bar per task, left on screen when it ends."""

    def __init__(self, out: TextIO):
        self.out = out
        self.bars: dict[tuple[str, str], tqdm] = {}
        # The terminal's size when watch starts, as shutil says it: 80 x 24 for a
        # terminal that says 0 x 0 (a pty no one sized), where tqdm's own look
        # finds nothing and it draws no bar.
        columns, lines = shutil.get_terminal_size()
        self.size = {"ncols": columns, "nrows": lines}

    def show(self, repo: str, task: dict) -> None:
        bar = self.bars.get((repo, task["id"]))
        if bar is None:
            # The task's own figures, not tqdm's rate: a bar starts mid-task.
            bar = self.bars[(repo, task["id"])] = tqdm(
                bar_format="{desc} |{bar}|", file=self.out, position=len(self.bars),
                **self.size,
            )  # fmt: skip
        bar.total = task["bytes_total"] or None
        bar.n = task["bytes_done"]
        bar.set_description_str(f"{repo}/{task['id']} {describe(task)}")

    def done(self, repo: str, task_id: str) -> None:
        bar = self.bars.get((repo, task_id))
        if bar is not None:
            if bar.total:
                bar.n = bar.total
            bar.set_description_str(f"{repo}/{task_id} done")

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
