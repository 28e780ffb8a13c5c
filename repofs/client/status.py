"""`repofs status [MOUNT | MOUNT/REPO]`: every image and task at a glance.

It reads only the mount's files (`status/ID`, `tasks/T`), as any script would,
so it works on every host that has the mount. `--json` prints the same for
scripts: {"REPO": {"images": [status...], "tasks": [task...], "reflink": bool,
"passthrough": "on" | "off: REASON"}}. Its readers of those files and of
`events` serve `repofs wait` and `repofs watch` too.
"""

import json
import os
from collections.abc import Iterator
from pathlib import Path

from repofs.mounts import PASSTHROUGH_ATTRIBUTE

IMAGE_COLUMNS = ("ID", "KIND", "STATE", "SIZE", "ALLOCATED", "BASE", "HOST", "IO", "STAGE",
                 "%", "LAST ERROR")  # fmt: skip
# Who serves an open image's reads and writes (status/ID "data_path").
IO_BY = {"passthrough": "kernel", "repofs": "repofs", None: "-"}
TASK_COLUMNS = ("TASK", "IMAGE", "STATE", "HOST", "STAGE", "DONE", "TOTAL", "RATE", "ETA",
                "LAST ERROR")  # fmt: skip
READ_SIZE = 1 << 16


def gather(repos: list[Path]) -> dict[str, dict]:
    """The images and tasks of each repository (client/paths.py finds them),
    whether its storage clones (`reflink`, from its `repository` file), and
    whether its mount hands files to the kernel (the root's attribute)."""
    return {repo.name: {"images": read_all(repo / "status"), "tasks": read_all(repo / "tasks"),
                        "reflink": json.loads((repo / "repository").read_text())["reflink"],
                        "passthrough": os.getxattr(repo.parent, PASSTHROUGH_ATTRIBUTE).decode()}
            for repo in repos}  # fmt: skip


def read_all(directory: Path) -> list[dict]:
    """The JSON files of a mount directory (`status/`, `tasks/`), by name."""
    found = []
    for name in sorted(os.listdir(directory)):
        try:
            found.append(json.loads((directory / name).read_text()))
        except FileNotFoundError:
            pass  # removed, or ended, while we listed
    return found


def read_events(events) -> Iterator[list[dict]]:
    """The events of each read of an `events` file opened unbuffered: an empty
    list for the second in which nothing happened (docs/fixes.md, "Events")."""
    pending = b""
    while True:
        *lines, pending = (pending + events.read(READ_SIZE)).split(b"\n")
        yield [json.loads(line) for line in lines if line]


def render(repos: dict[str, dict]) -> str:
    """Plain-text tables, one pair per repository."""
    parts = []
    for name, seen in repos.items():
        storage = ", reflink storage (snapshots are clones)" if seen["reflink"] else ""
        parts.append(f"{name}: {_count(seen['images'], 'image')}, {_count(seen['tasks'], 'task')}"
                     f"{storage}; kernel passthrough {seen['passthrough']}")  # fmt: skip
        parts.append(_table(IMAGE_COLUMNS, [image_row(i) for i in seen["images"]]))
        if seen["tasks"]:
            parts.append(_table(TASK_COLUMNS, [task_row(t) for t in seen["tasks"]]))
    return "\n\n".join(parts) + "\n"


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}" + ("" if len(items) == 1 else "s")


def image_row(image: dict) -> tuple[str, ...]:
    percent = image["percent_complete"]
    return (image["id"], "disk" if image["kind"] == "virtual-disk" else image["kind"],
            image["state"], human(image["size"]), human(image["allocated"]),
            image["base"] or "-", image["host"] or "-", IO_BY[image["data_path"]],
            image["stage"] or "-",
            "-" if percent < 0 else str(percent), image["last_error"] or "-")  # fmt: skip


def task_row(task: dict) -> tuple[str, ...]:
    return (task["id"], task["image"] or "-", task["state"], task["host"] or "-",
            task["stage"] or "-", human(task["bytes_done"]), human(task["bytes_total"]),
            f"{human(task['rate'])}/s", eta(task) or "-", task["last_error"] or "-")  # fmt: skip


def eta(task: dict) -> str | None:
    """When the task should be done at its rate so far ("42s"), if it says."""
    remaining = task["bytes_total"] - task["bytes_done"]
    return f"{remaining / task['rate']:.0f}s" if task["rate"] > 0 and remaining > 0 else None


def human(n: float) -> str:
    """Bytes as `ls -lh` shows them."""
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [columns, *rows]
    )
