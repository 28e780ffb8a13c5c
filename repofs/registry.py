"""The connected repositories of one repofs process, by name, with what they
share: the host's identity, its watch on other hosts, and the mount's storage
daemon."""

from pathlib import Path

from repofs import errors
from repofs.leases import HostWatch
from repofs.qemu.storage_daemon import StorageDaemon
from repofs.repository import Repository


class Registry:
    def __init__(self, data_dir: Path, host_id: str, daemon: StorageDaemon):
        self.data_dir = data_dir
        self.host_id = host_id
        self.daemon = daemon
        self.repositories: dict[str, Repository] = {}
        self.host_watch = HostWatch()

    def get(self, name: str) -> Repository:
        try:
            return self.repositories[name]
        except KeyError:
            raise errors.not_found(f"no repository {name} is connected") from None
