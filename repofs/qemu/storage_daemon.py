"""The mount's one qemu-storage-daemon: qcow2 chains opened as block nodes and
exported over NBD on a unix socket, supervised and restarted if it dies.

Each open image with a qcow2 top is one block node (QEMU opens the backing chain
from the qcow2 headers, whose backing formats repofs always records) and one NBD
export of the same name. If the daemon dies, `run` starts a new one and adds every
node again (after `qemu-img check -r leaks` on the writable ones); NBD clients see
their connection fail and reconnect through `connect`, which waits for that.

`_nodes` is the truth about what should be open. If QEMU refuses a step of a
change midway, its nodes no longer match it (an export gone, a node holding its
image's write lock with nobody to close it): the daemon is then restarted, which
adds every node again from `_nodes`, instead of being left so until unmount.
"""

import ctypes
import errno
import itertools
import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from repofs import errors
from repofs.model import VolumeFormat
from repofs.qemu import img
from repofs.qemu.nbd import NbdConnection
from repofs.qemu.qmp import QmpConnection
from repofs.qemu.tools import require

log = logging.getLogger(__name__)

START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 10
RESTART_DELAY_S = 0.5
JOB_POLL_S = 0.25
SETTLE_POLL_S = 0.002  # while a job ends in a pause of the chain's requests
PR_SET_PDEATHSIG = 1
# What a block job tells as it goes: (bytes done, bytes in all).
Report = Callable[[int, int], Awaitable[None]]


@dataclass
class Node:
    name: str  # of its NBD export, and of its first block node
    path: Path  # the top volume
    read_only: bool
    users: int = 1
    # The block nodes added for it, top first: live snapshots add overlays.
    layers: list[str] = field(default_factory=list)
    # Block jobs running in its graph (stream): cancelled before it is closed.
    jobs: set[str] = field(default_factory=set)

    @property
    def top(self) -> str:
        """The block node that its export reads and writes: the newest layer."""
        return self.layers[0]


def _die_with_parent() -> None:
    # Our process runs this in the child between fork and exec; a repofs killed
    # with -9 must not leave a daemon holding image locks behind.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class StorageDaemon:
    def __init__(self, run_dir: Path, log_fd: int | None):
        self._run_dir = run_dir
        self._log_fd = log_fd
        self.qmp_socket = str(run_dir / "qsd-qmp.sock")
        self.nbd_socket = str(run_dir / "qsd-nbd.sock")
        self._names = itertools.count(1)
        self._nodes: dict[Path, Node] = {}
        self._process: subprocess.Popen | None = None
        self._qmp: QmpConnection | None = None
        # Requests wait while anything holds them (_hold): the start, a restart,
        # a resize. `_ready` is replaced only once set, so nobody waits on an
        # event that is never set.
        self._ready = trio.Event()
        self._holds = 1  # the start
        self._restarting = False
        self._nursery: trio.Nursery | None = None
        self._node_lock = trio.Lock()

    # Lifetime

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Runs the daemon until cancelled, restarting it whenever it dies."""
        require("qemu-storage-daemon")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._start()
                self._release()
                task_status.started()
                while True:
                    await self._wait_for_exit()
                    self._hold_for_restart()
                    log.error(
                        "qemu-storage-daemon exited with %s; restarting", self._process.returncode
                    )
                    await self._qmp.close()
                    await trio.sleep(RESTART_DELAY_S)
                    await self._start()
                    await self._add_all_nodes()
                    self._restarting = False
                    self._release()
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop()
                nursery.cancel_scope.cancel()

    async def _start(self) -> None:
        for sock in (self.qmp_socket, self.nbd_socket):
            if os.path.exists(sock):
                os.unlink(sock)
        cmd = [
            require("qemu-storage-daemon"),
            "--chardev",
            f"socket,id=qmp,path={self.qmp_socket},server=on,wait=off",
            "--monitor",
            "chardev=qmp",
            "--nbd-server",
            f"addr.type=unix,addr.path={self.nbd_socket}",
        ]
        # Popen from this thread (not a worker thread): PDEATHSIG follows the
        # thread that forked, and trio's worker threads come and go.
        self._process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_fd,
            stderr=self._log_fd,
            preexec_fn=_die_with_parent,
        )
        self._pidfd = os.pidfd_open(self._process.pid)
        with trio.move_on_after(START_TIMEOUT_S) as scope:
            while not (os.path.exists(self.qmp_socket) and os.path.exists(self.nbd_socket)):
                if self._process.poll() is not None:
                    raise errors.io_error(
                        f"qemu-storage-daemon exited at start with {self._process.returncode}"
                    )
                await trio.sleep(0.02)
        if scope.cancelled_caught:
            self._process.kill()
            raise errors.io_error("qemu-storage-daemon did not start in time")
        self._qmp = QmpConnection("repofs")
        await self._qmp.connect(self.qmp_socket)
        log.info("qemu-storage-daemon started, pid %d", self._process.pid)

    def _hold(self) -> None:
        """Requests wait from now on, until every hold is released."""
        if self._ready.is_set():
            self._ready = trio.Event()
        self._holds += 1

    def _release(self) -> None:
        self._holds -= 1
        if not self._holds:
            self._ready.set()

    def _hold_for_restart(self) -> None:
        """One hold for a restart, from the moment it is decided (or the daemon
        is found dead) until `run` has added every node again: a hold of
        another change (a resize) that ends meanwhile must not let requests in."""
        if not self._restarting:
            self._restarting = True
            self._hold()

    async def _wait_ready(self) -> None:
        """Returns once the daemon serves: `_ready` is replaced while it does not
        (a restart, a resize), so the current one is waited for until it is set."""
        while not self._ready.is_set():
            await self._ready.wait()

    @asynccontextmanager
    async def _restarted_on_failure(self, what: str):
        """Runs a change of the daemon's nodes; if QEMU refuses a step of it, the
        daemon is restarted (see the module's docstring) and the error goes on."""
        try:
            yield
        except errors.RepofsError as exc:
            with trio.CancelScope(shield=True):
                await self._restart(f"{what}: {exc.reason}")
            raise

    async def _restart(self, reason: str) -> None:
        """Ends the daemon (quit, so that QEMU flushes what it caches; killed if it
        ignores that); `run` then starts a new one and adds every node again.
        Requests wait meanwhile."""
        log.error("qemu-storage-daemon no longer matches the open images (%s): restarting it",
                  reason)  # fmt: skip
        self._hold_for_restart()
        process = self._process
        with trio.move_on_after(STOP_TIMEOUT_S):
            try:
                await self._qmp.execute("quit", timeout=STOP_TIMEOUT_S)
            except errors.RepofsError:
                pass  # it is being ended either way
            while process.poll() is None:
                await trio.sleep(0.05)
        if process.poll() is None:
            process.kill()

    async def _wait_for_exit(self) -> None:
        await trio.lowlevel.wait_readable(self._pidfd)
        self._process.wait()
        os.close(self._pidfd)

    async def _stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        try:
            await self._qmp.execute("quit", timeout=STOP_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - it is being stopped either way
            pass
        with trio.move_on_after(STOP_TIMEOUT_S):
            while self._process.poll() is None:
                await trio.sleep(0.05)
        if self._process.poll() is None:
            log.warning("qemu-storage-daemon ignored quit; killing pid %d", self._process.pid)
            self._process.kill()
            self._process.wait()
        await self._qmp.close()
        os.close(self._pidfd)
        log.info("qemu-storage-daemon stopped")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    # Nodes and exports

    async def open_node(self, top: Path, read_only: bool) -> str:
        """Opens the qcow2 chain whose top volume is `top` and exports it over NBD.
        Opening the same top again shares its node."""
        await self._wait_ready()
        async with self._node_lock:
            node = self._nodes.get(top)
            if node is not None:
                node.users += 1
                return node.name
            node = Node(f"img{next(self._names)}", top, read_only)
            await self._add_node(node)
            self._nodes[top] = node
            return node.name

    async def close_node(self, top: Path) -> None:
        await self._wait_ready()
        async with self._node_lock:
            node = self._nodes[top]
            node.users -= 1
            if node.users:
                return
            del self._nodes[top]
            for job in list(node.jobs):  # QEMU deletes no node a job works in
                await self._cancel_job(job)
            async with self._restarted_on_failure(f"closing {top.name}"):
                await self._remove_export(node)
                for layer in node.layers:
                    await self._qmp.execute("blockdev-del", {"node-name": layer})

    async def add_overlay(self, top: Path, overlay: Path) -> None:
        """Puts the qcow2 volume `overlay` (made over `top`, not yet in use) above
        the open chain topped by `top`: the node's export reads and writes through
        it from then on (blockdev-snapshot). The caller holds the chain's requests."""
        await self._wait_ready()
        async with self._node_lock:
            node = self._nodes[top]
            name = f"img{next(self._names)}"
            overlay_node = _qcow2_node(name, overlay, read_only=False, alone=True)
            async with self._restarted_on_failure(f"a live snapshot of {top.name}"):
                await self._qmp.execute("blockdev-add", overlay_node)
                try:
                    await self._qmp.execute(
                        "blockdev-snapshot", {"node": node.top, "overlay": name}
                    )
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await self._qmp.execute("blockdev-del", {"node-name": name})
                    raise
            node.layers.insert(0, name)
            node.path = overlay
            self._nodes[overlay] = self._nodes.pop(top)

    async def stream(self, top: Path, depth: int, backing_name: str | None, report: Report) -> None:
        """Folds the layer below depth `depth` (0: the top) of the open chain topped
        by `top` into the layer at `depth`, while the chain is in use: QEMU's
        block-stream copies into that layer what it lacks of the one below, then
        writes `backing_name` (of the layer below that; None: it is the last) into
        its header, and the chain skips the folded layer. See `_job`."""

        def args(layers: list[str]) -> dict:
            found = {"device": layers[depth]}
            if depth + 2 < len(layers):
                found |= {"base-node": layers[depth + 2], "backing-file": backing_name}
            return found

        await self._job("block-stream", top, args, depth, report)

    async def commit(self, top: Path, depth: int, backing_name: str, report: Report) -> None:
        """Folds the layer at depth `depth` (1 or more: below the top) of the open
        chain topped by `top` down into the layer below it, while the chain is in
        use: QEMU's block-commit copies its data there, then writes `backing_name`
        (of the layer below) into the header of the layer above it, and the chain
        skips the folded layer. See `_job`."""

        def args(layers: list[str]) -> dict:
            return {"device": layers[0], "top-node": layers[depth],
                    "base-node": layers[depth + 1], "backing-file": backing_name}  # fmt: skip

        await self._job("block-commit", top, args, depth - 1, report)

    async def _job(self, command: str, top: Path, args: Callable[[list[str]], dict],
                   written: int, report: Report) -> None:  # fmt: skip
        """Runs a block job `command` in the open chain topped by `top`, given
        `args(its layer nodes, top first)`, reporting `(done, total)`. Returns once
        the layers it wrote are flushed: QEMU flushes one below the top when it
        makes it read-only again; `written` (the depth of the highest one) being 0,
        the top is flushed through its export. A cancelled call cancels the job;
        what it wrote reads the same either way (the chain changes at its end).
        ENOENT if the chain is not open, EIO if it is closed meanwhile (its close
        cancels the job).
        """
        node, job = await self._start_job(command, top, args)
        async with self._running(node, job):
            await self._wait_for_job(job, report, "concluded")
        async with self._node_lock:
            # A layer a live snapshot added is the monitor's node: out of the
            # chain it stays open (holding its image lock) until deleted.
            chain = await self._layer_nodes(node.top)
            for name in [n for n in node.layers if n not in chain]:
                await self._qmp.execute("blockdev-del", {"node-name": name})
                node.layers.remove(name)
        if written == 0:
            conn = await self.connect(node.name)
            try:
                await conn.flush()
            finally:
                await conn.close()

    @asynccontextmanager
    async def synced_copy(self, top: Path, target: Path, report: Report):
        """Makes the raw volume `target` read as the open chain topped by `top`
        does, while the chain is in use, and keeps it so. `target` must already
        hold what the layers below the top read, or be the layer below it: then
        QEMU's active block-commit copies the top's data into it, else its
        blockdev-mirror (sync top) does. Enters once the target is in sync
        (progress `report`ed), with `settle`: called while no request is in
        flight, it ends the job, the target then reading what the chain reads,
        the chain itself unchanged (the job ends without a pivot: the caller
        moves the image), and QEMU lets go of the target. Leaving without
        `settle` cancels the job. ENOENT, EIO as `_job`."""
        mirrored: str | None = None  # the target's node, if it is added for a mirror
        await self._wait_ready()
        try:
            async with self._node_lock:  # no resize in between (resize: EBUSY once it runs)
                node = self._open(top)
                layers = await self._layer_nodes(node.top)
                info = next(n["image"] for n in await self._qmp.execute("query-named-block-nodes")
                            if n["node-name"] == node.top)  # fmt: skip
                if Path(info.get("full-backing-filename", "")) == target:
                    command = "block-commit"
                    arguments = {"device": node.top, "base-node": layers[1]}
                else:
                    # A mirror wants its target as long as the top: the disk may have
                    # grown since the target was made, and qcow2 rounds sizes up.
                    await trio.to_thread.run_sync(_grow_file, target, info["virtual-size"])
                    mirrored = f"img{next(self._names)}"
                    await self._qmp.execute("blockdev-add", _raw_node(mirrored, target))
                    command = "blockdev-mirror"
                    arguments = {"device": node.top, "target": mirrored, "sync": "top"}
                log.info("%s from the top %s into %s, kept in sync", command, top.name,
                         target.name)  # fmt: skip
                job = await self._start_job_locked(node, command, arguments)
            async with self._running(node, job):
                await self._wait_for_job(job, report, "ready")

                async def settle() -> None:
                    # Cancelled once in sync, the job copies what is left and ends
                    # without replacing the chain (QMP block-job-cancel).
                    await self._qmp.execute("block-job-cancel", {"device": job})
                    await self._wait_for_job(job, report, "concluded", SETTLE_POLL_S)
                    node.jobs.discard(job)
                    if mirrored is not None:  # deleted, QEMU flushes it
                        await self._qmp.execute("blockdev-del", {"node-name": mirrored})

                yield settle
        finally:
            if mirrored is not None:
                with trio.CancelScope(shield=True):
                    try:
                        await self._qmp.execute("blockdev-del", {"node-name": mirrored})
                    except errors.RepofsError:
                        pass  # deleted by settle, or gone with a restarted daemon

    def _open(self, top: Path) -> Node:
        node = self._nodes.get(top)
        if node is None:
            raise errors.not_found(f"{top.name} is no longer open")
        return node

    async def _start_job(self, command: str, top: Path,
                         args: Callable[[list[str]], dict]) -> tuple[Node, str]:  # fmt: skip
        """Starts block job `command` in the open chain topped by `top`, given
        `args(its layer nodes, top first)`; ENOENT if the chain is not open."""
        await self._wait_ready()
        async with self._node_lock:
            node = self._open(top)
            arguments = args(await self._layer_nodes(node.top))
            return node, await self._start_job_locked(node, command, arguments)

    async def _start_job_locked(self, node: Node, command: str, arguments: dict) -> str:
        job = f"job{next(self._names)}"
        await self._qmp.execute(command, {"job-id": job, "auto-dismiss": False} | arguments)
        node.jobs.add(job)
        return job

    @asynccontextmanager
    async def _running(self, node: Node, job: str):
        """A job of `node`'s chain is waited for inside: a failure or a
        cancellation cancels it."""
        try:
            yield
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._cancel_job(job)
            raise
        finally:
            node.jobs.discard(job)

    async def _layer_nodes(self, top_node: str) -> list[str]:
        """The format nodes of the chain under `top_node`, top first (its backing
        links in QEMU's block graph)."""
        graph = await self._qmp.execute("x-debug-query-block-graph")
        names = {n["id"]: n["name"] for n in graph["nodes"]}
        backing = {names[e["parent"]]: names[e["child"]] for e in graph["edges"]
                   if e["name"] == "backing"}  # fmt: skip
        layers = [top_node]
        while layers[-1] in backing:
            layers.append(backing[layers[-1]])
        return layers

    async def _wait_for_job(self, job: str, report: Report, until: str,
                            poll_s: float = JOB_POLL_S) -> None:  # fmt: skip
        """Reports a job's progress until its status is `until` ("ready": in sync,
        waiting to be completed; "concluded": ended, then dismissed)."""
        while True:
            found = [j for j in await self._qmp.execute("query-jobs") if j["id"] == job]
            if not found:
                raise errors.io_error(f"block job {job} ended unseen (its chain was closed, "
                                      "or the storage daemon restarted)")  # fmt: skip
            state = found[0]
            await report(state["current-progress"], state["total-progress"])
            if state["status"] == "concluded":
                await self._qmp.execute("job-dismiss", {"id": job})
                if "error" in state:
                    raise errors.io_error(f"block job {job} failed: {state['error']}")
            if state["status"] in (until, "concluded"):
                return
            await trio.sleep(poll_s)

    async def _cancel_job(self, job: str) -> None:
        """Cancels a block job and waits until QEMU let go of its nodes."""
        try:
            await self._qmp.execute("job-cancel", {"id": job})
        except errors.RepofsError:
            pass  # ended meanwhile
        with trio.move_on_after(STOP_TIMEOUT_S):
            while True:
                found = [j for j in await self._qmp.execute("query-jobs") if j["id"] == job]
                if not found:
                    return
                if found[0]["status"] == "concluded":
                    await self._qmp.execute("job-dismiss", {"id": job})
                    return
                await trio.sleep(JOB_POLL_S)

    async def _remove_export(self, node: Node) -> None:
        """Drops the export and its clients; returns once it let go of the node."""
        await self._qmp.execute("block-export-del", {"id": node.name, "mode": "hard"})
        with trio.fail_after(STOP_TIMEOUT_S):
            while any(e["id"] == node.name for e in await self._qmp.execute("query-block-exports")):
                await trio.sleep(0.01)

    async def _add_export(self, node: Node) -> None:
        """Exports the node's top layer under the node's name: live snapshots put
        layers above the first, whose name the clients know."""
        await self._qmp.execute(
            "block-export-add",
            {
                "type": "nbd",
                "id": node.name,
                "node-name": node.top,
                "name": node.name,
                "writable": not node.read_only,
            },
        )

    async def _add_node(self, node: Node) -> None:
        if not node.read_only:
            await img.repair_leaks(node.path)
        await self._qmp.execute("blockdev-add", _qcow2_node(node.name, node.path, node.read_only))
        node.layers = [node.name]
        try:
            await self._add_export(node)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._qmp.execute("blockdev-del", {"node-name": node.name})
            raise

    async def _add_all_nodes(self) -> None:
        async with self._node_lock:
            for node in list(self._nodes.values()):
                try:
                    await self._add_node(node)
                except errors.RepofsError as exc:
                    log.error("cannot reopen %s after the restart: %s", node.path.name, exc)

    async def resize(self, top: Path, size: int) -> None:
        """Grows an open chain. An NBD export holds its node's size fixed, so the
        export is dropped around the resize; its clients reconnect (see `connect`)
        and then see the new size. EBUSY while a block job works in the chain:
        QEMU holds the size of the nodes a job copies (and refusing it midway
        would restart the daemon)."""
        await self._wait_ready()
        async with self._node_lock:
            node = self._nodes[top]
            if node.jobs:
                raise errors.busy(f"{top.name} cannot grow while a block job works in its chain")
            self._hold()
            try:
                async with self._restarted_on_failure(f"resizing {top.name}"):
                    await self._remove_export(node)
                    try:
                        await self._qmp.execute(
                            "block_resize", {"node-name": node.top, "size": img.qcow2_size(size)}
                        )
                    finally:
                        await self._add_export(node)
            finally:
                self._release()

    async def connect(self, node_name: str) -> NbdConnection:
        """An NBD connection to a node's export, waiting for a restart in progress."""
        with trio.fail_after(START_TIMEOUT_S * 2):
            while True:
                await self._wait_ready()
                try:
                    return await NbdConnection.connect(self._nursery, self.nbd_socket, node_name)
                except OSError as exc:
                    if exc.errno == errno.ENOENT and self._ready.is_set():
                        raise errors.io_error(f"no NBD export {node_name}: {exc}") from None
                    await trio.sleep(RESTART_DELAY_S)


def _grow_file(path: Path, size: int) -> None:
    if os.stat(path).st_size < size:
        os.truncate(path, size)


def _raw_node(name: str, path: Path) -> dict:
    """blockdev-add arguments of a raw volume that a job writes."""
    return {
        "driver": str(VolumeFormat.RAW),
        "node-name": name,
        "read-only": False,
        "file": {"driver": "file", "filename": str(path), "aio": "threads"},
    }


def _qcow2_node(name: str, path: Path, read_only: bool, alone: bool = False) -> dict:
    """blockdev-add arguments of a qcow2 volume. QEMU opens its backing chain from
    the header, unless `alone` (an overlay to put above an open chain)."""
    args = {
        "driver": str(VolumeFormat.QCOW2),
        "node-name": name,
        "read-only": read_only,
        "discard": "unmap",
        "file": {"driver": "file", "filename": str(path), "aio": "threads"},
    }
    if alone:
        args["backing"] = None
    if read_only:
        # Without it QEMU's image locks refuse a reader while a writer has the
        # file: another host's daemon writing the disk (a reader there sees it
        # as of that writer's last flush), or a copy's source in use.
        args["force-share"] = True
    return args
