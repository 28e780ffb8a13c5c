"""The `events` file of a repository: one JSON line per change of an image.

Every reader has its own bounded queue. A reader that falls behind loses the
oldest lines (and is told how many), so nobody reads stale data for long and no
reader can hold the mount up. A read waits at most READ_WAIT_S and then returns
an empty line: pyfuse3 cannot be interrupted, and the kernel keeps a killed
reader (`timeout 600 grep ...`) waiting until its read request is answered.
"""

import collections
import json
import time

import trio

from repofs import errors

MAX_READERS = 32
QUEUE_LINES = 1000
READ_WAIT_S = 1.0


class Subscription:
    def __init__(self, bus: "EventBus"):
        self._bus = bus
        self._lines: collections.deque[bytes] = collections.deque()
        self._pending = b""
        self._lost = 0
        self._wakeup = trio.Event()

    def push(self, line: bytes) -> None:
        if len(self._lines) >= QUEUE_LINES:
            self._lines.popleft()
            self._lost += 1
        self._lines.append(line)
        self._wakeup.set()

    async def read(self, size: int) -> bytes:
        if not self._pending:
            if not self._lines and not self._lost:
                with trio.move_on_after(READ_WAIT_S):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
            if self._lost:
                self._pending = _line({"event": "lost", "lines": self._lost})
                self._lost = 0
            self._pending += b"".join(self._lines) or b"\n"
            self._lines.clear()
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def close(self) -> None:
        self._bus.subscribers.discard(self)


class EventBus:
    def __init__(self, repo: str):
        self.repo = repo
        self.subscribers: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        if len(self.subscribers) >= MAX_READERS:
            raise errors.busy(f"{self.repo}/events already has {MAX_READERS} readers")
        subscription = Subscription(self)
        self.subscribers.add(subscription)
        return subscription

    def publish(self, event: dict) -> None:
        line = _line({"time": round(time.time(), 3), "repo": self.repo, **event})
        for subscription in self.subscribers:
            subscription.push(line)


def _line(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"
