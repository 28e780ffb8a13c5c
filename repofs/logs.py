"""The log an operator reads: where it goes, and the one shape of its operation
and task lines.

Every operation (ops/logged.py) and every change of a task's state (the fix
daemon) is one line of `key=value` facts that grep and journalctl can pick
apart: `operation=create_snapshot repo=default image=s1 disk_id=vm1 outcome=ok
duration=0.004s`, `task=mend-gold repo=r2 image=gold state=failed
duration=0.3s reason="no usable snapshot gold in r9"`.

Run by systemd with no log file, lines go to stderr as the journal wants them:
no time stamp (the journal keeps its own), and each line's priority as a
`<N>` prefix (sd-daemon(3)), so `journalctl -p warning` works.
"""

import json
import logging
import os
import sys

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# syslog priorities of the logging levels, for the journal.
PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
              logging.CRITICAL: 2}  # fmt: skip


def setup(log_file: str | None, level: str) -> int:
    """Logs to `log_file`, or to stderr (the journal's way when stderr is the
    journal). Returns the file descriptor that child processes write to."""
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler()
    handler.setFormatter(JournalFormatter() if _stderr_is_journal() else logging.Formatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("qemu.qmp").setLevel(max(logging.WARNING, logging.root.level))
    return handler.stream.fileno()


def _stderr_is_journal() -> bool:
    """systemd says so in $JOURNAL_STREAM: the device and inode of the stream it
    connected stderr to (checked, as a child may have inherited the variable)."""
    expected = os.environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class JournalFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return f"<{PRIORITIES.get(record.levelno, 6)}>" + super().format(record)


def facts(**pairs) -> str:
    """`key=value ...`, with values quoted (JSON) where they hold a space, a
    quote or an equals sign; None values left out."""
    words = []
    for key, value in pairs.items():
        if value is None:
            continue
        text = str(value)
        if not text or any(c in text for c in ' "=\n'):
            text = json.dumps(text)
        words.append(f"{key}={text}")
    return " ".join(words)


def task_line(repo: str, task_id: str, image: str | None, state: str,
              duration_s: float | None = None, **more) -> str:  # fmt: skip
    """A task's change of state: `task=T repo=R image=I state=S [duration=] ...`."""
    duration = None if duration_s is None else f"{duration_s:.1f}s"
    return facts(task=task_id, repo=repo, image=image, state=state, duration=duration, **more)
