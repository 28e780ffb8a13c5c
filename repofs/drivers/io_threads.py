"""Blocking calls on volume files, run by a few long-lived threads per file system.

The FUSE handlers' reads and writes that may wait for storage run here, not in
the trio loop, so that many are in flight at once and a stalled file system (a
Gluster brick that stopped answering) stalls only its own threads: the loop
keeps serving every other repository. Cheaper per call than trio.to_thread,
which matters at tens of thousands of calls a second: no limiter, thread naming
or context copy per call, and the threads' results reach the loop in batches
(one wakeup for all the calls that finished since the loop last looked).
"""

import collections
import os
import queue
import threading

import outcome
import trio

# Per file system: enough for a queue depth of 16 to reach the storage whole,
# and a bound on what one stalled file system holds.
THREADS_PER_FILE_SYSTEM = 16


class IoThreads:
    def __init__(self, name: str):
        self._name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    async def run(self, fn, *args):
        """fn(*args) in one of the threads. Not cancellable once submitted, like a
        system call: the handler waits for its outcome."""
        finished = _finished.get(None)
        if finished is None:
            finished = _Finished(trio.lowlevel.current_trio_token())
            _finished.set(finished)
        with self._lock:
            if not self._idle and self._threads < THREADS_PER_FILE_SYSTEM:
                self._threads += 1
                name = f"repofs I/O {self._name} {self._threads}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
        self._jobs.put((fn, args, trio.lowlevel.current_task(), finished))
        return await trio.lowlevel.wait_task_rescheduled(_uncancellable)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            fn, args, task, finished = self._jobs.get()
            with self._lock:
                self._idle -= 1
            finished.add(task, outcome.capture(fn, *args))
            del fn, args, task, finished  # no reference kept while idle


class _Finished:
    """The outcomes of one trio run's calls, handed to the loop in batches."""

    def __init__(self, token: trio.lowlevel.TrioToken):
        self._token = token
        self._lock = threading.Lock()
        self._done: collections.deque = collections.deque()

    def add(self, task, result: outcome.Outcome) -> None:
        with self._lock:
            first = not self._done
            self._done.append((task, result))
        if first:  # else a wakeup is already on its way
            self._token.run_sync_soon(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            done, self._done = self._done, collections.deque()
        for task, result in done:
            trio.lowlevel.reschedule(task, result)


def _uncancellable(_raise_cancel):
    return trio.lowlevel.Abort.FAILED


_finished: trio.lowlevel.RunVar = trio.lowlevel.RunVar("repofs_io_finished")
_by_device: dict[int, IoThreads] = {}
_by_device_lock = threading.Lock()


def for_file(fd: int) -> IoThreads:
    """The threads of the file system that holds the open file `fd`."""
    device = os.fstat(fd).st_dev
    with _by_device_lock:
        threads = _by_device.get(device)
        if threads is None:
            threads = _by_device[device] = IoThreads(f"{os.major(device)}:{os.minor(device)}")
        return threads
