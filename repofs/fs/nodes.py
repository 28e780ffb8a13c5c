"""What each inode of the mount is, and the inode table (lookup counts, forget)."""

import enum
import itertools
from dataclasses import dataclass

import pyfuse3


class Area(enum.StrEnum):
    DISKS = "disks"
    SNAPSHOTS = "snapshots"
    STATUS = "status"
    TRASH = "trash"
    FIXES = "fixes"
    TASKS = "tasks"


class NodeKind(enum.Enum):
    ROOT = enum.auto()
    README = enum.auto()
    CONNECT = enum.auto()
    REPOSITORY = enum.auto()  # MOUNT/NAME/
    AREA = enum.auto()  # MOUNT/NAME/disks/ ...
    REPOSITORY_FILE = enum.auto()  # MOUNT/NAME/repository
    IMAGE = enum.auto()  # disks/ID, snapshots/ID, trash/ID
    STATUS = enum.auto()  # status/ID
    FIX = enum.auto()  # fixes/FIX
    TASK = enum.auto()  # tasks/TASK
    EVENTS = enum.auto()  # MOUNT/NAME/events


@dataclass(frozen=True)
class Node:
    kind: NodeKind
    repo: str | None = None
    area: Area | None = None
    name: str | None = None  # an image ID, or a fix or task ID

    def __str__(self) -> str:
        """The node's path below the mount, for log lines."""
        if self.kind is NodeKind.ROOT:
            return "/"
        if self.kind in (NodeKind.README, NodeKind.CONNECT):
            return self.kind.name.lower()
        if self.kind is NodeKind.REPOSITORY_FILE:
            return f"{self.repo}/repository"
        if self.kind is NodeKind.EVENTS:
            return f"{self.repo}/events"
        return "/".join(p for p in (self.repo, self.area, self.name) if p)

    @property
    def trashed(self) -> bool:
        return self.area is Area.TRASH

    def parent(self) -> "Node":
        if self.kind in (NodeKind.IMAGE, NodeKind.STATUS, NodeKind.FIX, NodeKind.TASK):
            return Node(NodeKind.AREA, self.repo, self.area)
        if self.kind in (NodeKind.AREA, NodeKind.REPOSITORY_FILE, NodeKind.EVENTS):
            return Node(NodeKind.REPOSITORY, self.repo)
        return ROOT


ROOT = Node(NodeKind.ROOT)


class InodeTable:
    """Node <-> inode number. A node keeps its number while the kernel holds a
    reference (lookup count); a name that went away (unlink, rename) is detached
    from its number at once, so that a new image of that name gets a new inode."""

    def __init__(self):
        self._numbers = itertools.count(pyfuse3.ROOT_INODE + 1)
        self._by_node: dict[Node, int] = {ROOT: pyfuse3.ROOT_INODE}
        self._by_inode: dict[int, Node] = {pyfuse3.ROOT_INODE: ROOT}
        self._lookups: dict[int, int] = {}

    def inode(self, node: Node) -> int:
        ino = self._by_node.get(node)
        if ino is None:
            ino = self._by_node[node] = next(self._numbers)
            self._by_inode[ino] = node
        return ino

    def node(self, ino: int) -> Node:
        return self._by_inode[ino]

    def looked_up(self, ino: int) -> None:
        self._lookups[ino] = self._lookups.get(ino, 0) + 1

    def forget(self, ino: int, count: int) -> None:
        left = self._lookups.get(ino, 0) - count
        if left > 0:
            self._lookups[ino] = left
            return
        self._lookups.pop(ino, None)
        node = self._by_inode.get(ino)
        if ino != pyfuse3.ROOT_INODE and node is not None and self._by_node.get(node) != ino:
            del self._by_inode[ino]

    def detach(self, node: Node) -> None:
        ino = self._by_node.pop(node, None)
        if ino is not None and ino not in self._lookups:
            del self._by_inode[ino]

    def move(self, old: Node, new: Node) -> None:
        """A rename: the inode now stands for `new`."""
        ino = self._by_node.pop(old, None)
        if ino is not None:
            self._by_node[new] = ino
            self._by_inode[ino] = new
