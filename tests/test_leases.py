"""Task leases between hosts (DESIGN.md, "Tasks, leases and hosts"), on a real
localfs repository in one process: a second host takes a task only once its
owner's heartbeat has stood still for LEASE_S on the second host's own clock."""

import time

import pytest
import trio
from conftest import check_of

from repofs import fix_daemon, leases
from repofs.drivers.localfs import LocalRepository
from repofs.fix_daemon import FixDaemon
from repofs.model import HostBeat, Lease, Task, TaskState
from repofs.registry import Registry
from repofs.repository import Repository

pytestmark = pytest.mark.unit

LEASE_S = 1.0


@pytest.fixture
def driver(tmp_path, monkeypatch):
    """A repository with one task (a clean of a garbage volume) that host "a" runs."""
    monkeypatch.setattr(leases, "LEASE_S", LEASE_S)
    monkeypatch.setattr(fix_daemon, "POLL_S", 0.05)
    driver = LocalRepository.open(tmp_path)
    (tmp_path / "volumes" / "0123.raw").write_bytes(b"garbage")
    [fix] = check_of(driver)
    driver.write_heartbeat(HostBeat("a", 1, time.time()))
    driver.write_task(Task(fix.id, fix, TaskState.RUNNING, Lease("a", 1)))
    yield driver
    driver.close()


def host_b(tmp_path, driver) -> Registry:
    registry = Registry(tmp_path, "b", daemon=None)
    registry.repositories["r"] = Repository(
        "r", driver, "localfs-1.0", {}, False, "b", registry.host_watch
    )
    return registry


def test_a_task_of_a_dead_host_is_taken_over_after_the_lease(tmp_path, driver):
    # Host "a" died: its heartbeat stays as it was.
    async def main() -> float:
        daemon = FixDaemon(host_b(tmp_path, driver))
        async with trio.open_nursery() as nursery:
            started = time.monotonic()
            await nursery.start(daemon.run)
            with trio.fail_after(10 * LEASE_S):
                while driver.list_tasks():
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
            return time.monotonic() - started

    took = trio.run(main)
    assert took >= LEASE_S  # not before the lease ran out
    assert not (tmp_path / "volumes" / "0123.raw").exists()  # and b ran it


def test_a_live_host_keeps_its_task(tmp_path, driver):
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(FixDaemon(host_b(tmp_path, driver)).run)
            for beat in range(2, 12):  # host a is alive: its counter moves
                driver.write_heartbeat(HostBeat("a", beat, time.time()))
                await trio.sleep(LEASE_S / 4)
            nursery.cancel_scope.cancel()

    trio.run(main)
    [task] = driver.list_tasks()
    assert task.lease.host == "a" and task.state is TaskState.RUNNING
