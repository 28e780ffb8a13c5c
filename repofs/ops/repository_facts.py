"""What `cat MOUNT/REPO/repository` shows: the connection, space, options, and
the hosts that use the repository, each with its heartbeat and its tasks."""

import datetime

from repofs.ops import repository_options
from repofs.registry import Registry
from repofs.repository import Repository


async def repository_facts(registry: Registry, repo: Repository) -> dict:
    vfs = await repo.statvfs()
    return {
        "name": repo.name,
        "format": repo.format,
        "connection": repo.params,
        "transient": repo.transient,
        # Probed at connect: snapshots, disks on snapshots and copies are clones.
        "reflink": repo.reflink,
        "capacity": vfs.f_blocks * vfs.f_frsize,
        "free": vfs.f_bavail * vfs.f_frsize,
        "hosts": await list_hosts(registry, repo),
        "options": await repository_options.get_options(repo),
    }


async def list_hosts(registry: Registry, repo: Repository) -> list[dict]:
    """Every host with a heartbeat record here (this one first): its counter, when
    it last wrote it (by its own clock), how long this host has seen the counter
    stand still, whether its lease is alive, and the tasks it holds."""
    beats = await repo.read_heartbeats()
    tasks = await repo.list_tasks()
    watch = registry.host_watch
    watch.observe(repo.name, beats)
    hosts = []
    for host in sorted(beats, key=lambda h: (h != registry.host_id, h)):
        beat = beats[host]
        this_host = host == registry.host_id
        still = 0.0 if this_host else watch.still_for(repo.name, host)
        hosts.append({
            "host": host,
            "this_host": this_host,
            "heartbeat": beat.heartbeat,
            "last_heartbeat": datetime.datetime.fromtimestamp(beat.written).astimezone()
            .isoformat(timespec="seconds"),
            "still_for_s": round(still, 1),
            "alive": this_host or not watch.dead(repo.name, host),
            "tasks": [t.id for t in tasks if t.active and t.lease and t.lease.host == host],
        })  # fmt: skip
    return hosts
