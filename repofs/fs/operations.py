"""The FUSE operations: each handler maps a path to an object, calls one operation
of repofs.ops, and renders the outcome. Errno mapping is in boundary.py."""

import errno
import logging
import os
import stat
from dataclasses import dataclass

import pyfuse3
import trio

from repofs import errors, refusals
from repofs.events import Subscription
from repofs.fix_daemon import FixDaemon
from repofs.fs import passthrough, render
from repofs.fs.boundary import boundary, probe_boundary
from repofs.fs.nodes import Area, InodeTable, Node, NodeKind
from repofs.model import ImageKind, Owner
from repofs.mounts import PASSTHROUGH_ATTRIBUTE, PID_ATTRIBUTE
from repofs.names import is_valid_name
from repofs.ops import fix_repository, image_attributes, repository_facts, repository_options
from repofs.ops.connect_repository import (
    connect_repository,
    create_local_repository,
    disconnect_repository,
    parse_connection,
)
from repofs.ops.copy_image import back_up_disk, clone_disk, copy_snapshot
from repofs.ops.create_snapshot import create_snapshot
from repofs.ops.create_virtual_disk import create_virtual_disk, create_virtual_disk_from_snapshot
from repofs.ops.image_status import ImageStatus, get_image_status, list_image_statuses
from repofs.ops.open_image import OpenImage, open_image, passthrough_allowed, release_image
from repofs.ops.remove_image import remove_image, restore_image
from repofs.ops.rename_image import rename_image
from repofs.ops.resize_virtual_disk import resize_virtual_disk
from repofs.registry import Registry

log = logging.getLogger(__name__)

AREA_KIND = {Area.DISKS: ImageKind.VIRTUAL_DISK, Area.SNAPSHOTS: ImageKind.SNAPSHOT}
IMAGE_AREAS = (*AREA_KIND, Area.TRASH)
REPOSITORY_ENTRIES = {
    **{area.value: NodeKind.AREA for area in Area},
    "repository": NodeKind.REPOSITORY_FILE,
    "events": NodeKind.EVENTS,
}
AREA_NODE_KIND = {
    Area.STATUS: NodeKind.STATUS,
    Area.FIXES: NodeKind.FIX,
    Area.TASKS: NodeKind.TASK,
}
ROOT_ENTRIES = {"README": NodeKind.README, "connect": NodeKind.CONNECT}
ROOT_ATTRIBUTES = (PID_ATTRIBUTE, "user.repofs.host", refusals.ATTRIBUTE, PASSTHROUGH_ATTRIBUTE)
ATTRIBUTE_CACHE_S = 1.0
STATVFS_FIELDS = "f_bsize f_frsize f_blocks f_bfree f_bavail f_files f_ffree f_favail".split()


@dataclass
class ImageHandle:
    image: OpenImage


@dataclass
class TextHandle:
    data: bytes


@dataclass
class ConnectHandle:
    pass


@dataclass
class DirHandle:
    """A directory as opendir found it: the kernel reads its entries in many
    readdir calls, each resuming at an index of `names`."""

    node: Node
    names: list[str]
    # The images of disks/, snapshots/ or trash/, gathered in one pass.
    statuses: dict[str, ImageStatus]


@dataclass
class EventsHandle:
    subscription: Subscription


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


class RepofsOperations(pyfuse3.Operations):
    enable_passthrough = True  # asked for at init (a patched pyfuse3, fs/passthrough.py)
    # Images never keep set-user-ID bits (model.Owner.PERMISSIONS), so the kernel
    # need not ask for security.capability at every passthrough write.
    enable_killpriv_v2 = True
    # An image's size and data change only through this mount, so the kernel need
    # not ask for its attributes before each read. With it asking, reads at queue
    # depth > 1 each waited for a getattr (the kernel drops a getattr's reply when
    # a read completes meanwhile, so its attribute cache never filled).
    enable_auto_inval_data = False

    def __init__(self, registry: Registry, fixes: FixDaemon):
        super().__init__()
        self.registry = registry
        self.fixes = fixes  # where tasks are queued, stopped, let go at a disconnect
        self.passthrough = passthrough.Passthrough()
        self.inodes = InodeTable()
        self._handles: dict[int, object] = {}
        self._next_handle = 1

    def init(self):
        self.passthrough.start()

    # Path <-> object

    def _node(self, ino: int) -> Node:
        try:
            return self.inodes.node(ino)
        except KeyError:
            raise errors.not_found(f"inode {ino} is gone") from None

    def _repo(self, node: Node):
        return self.registry.get(node.repo)

    def _child(self, parent: Node, name: str) -> Node:
        """The node for `name` in `parent`, if it exists (ENOENT otherwise)."""
        if name == "..":
            return parent.parent()
        if parent.kind is NodeKind.ROOT:
            if name in ROOT_ENTRIES:
                return Node(ROOT_ENTRIES[name])
            self.registry.get(name)
            return Node(NodeKind.REPOSITORY, name)
        if parent.kind is NodeKind.REPOSITORY:
            kind = REPOSITORY_ENTRIES.get(name)
            if kind is NodeKind.AREA:
                return Node(kind, parent.repo, Area(name))
            if kind in (NodeKind.REPOSITORY_FILE, NodeKind.EVENTS):
                return Node(kind, parent.repo)
        elif parent.kind is NodeKind.AREA and is_valid_name(name):
            # Whether the entry is there is checked by whoever renders the node.
            kind = AREA_NODE_KIND.get(parent.area, NodeKind.IMAGE)
            return Node(kind, parent.repo, parent.area, name)
        raise errors.not_found(f"no {name} in {parent}")

    async def _image_status(self, node: Node):
        repo = self._repo(node)
        status = await get_image_status(repo, node.name, node.trashed)
        wanted = AREA_KIND.get(node.area)
        if wanted is not None and status.kind is not wanted:
            raise errors.not_found(f"{node.name} is a {status.kind}, not in {node.area}/")
        return status

    async def _image_statuses(self, area: Node) -> dict[str, ImageStatus]:
        """The images of disks/, snapshots/ or trash/, by ID."""
        wanted = AREA_KIND.get(area.area)
        statuses = await list_image_statuses(self._repo(area), area.trashed)
        return {s.id: s for s in statuses if wanted is None or s.kind is wanted}

    async def _children(self, node: Node) -> list[str]:
        """The entries of a directory other than an image area (see opendir)."""
        if node.kind is NodeKind.ROOT:
            return [*ROOT_ENTRIES, *sorted(self.registry.repositories)]
        if node.kind is NodeKind.REPOSITORY:
            self._repo(node)
            return list(REPOSITORY_ENTRIES)
        if node.kind is NodeKind.AREA:
            repo = self._repo(node)
            if node.area is Area.STATUS:
                return await repo.list_image_ids()
            if node.area is Area.FIXES:
                return [f.id for f in await fix_repository.list_fixes(repo)]
            if node.area is Area.TASKS:
                return [t.id for t in await fix_repository.list_tasks(repo)]
        raise errors.RepofsError(errno.ENOTDIR, f"{node} is not a directory")

    async def _text(self, node: Node) -> bytes:
        if node.kind is NodeKind.README:
            return render.README.encode()
        if node.kind is NodeKind.CONNECT:
            return "".join(
                f"{r.name} {r.format} " + " ".join(f"{k}={v}" for k, v in r.params.items()) + "\n"
                for r in self.registry.repositories.values()
            ).encode()
        if node.kind is NodeKind.STATUS:
            return render.to_json((await self._image_status(node)).to_json())
        if node.kind is NodeKind.REPOSITORY_FILE:
            return render.to_json(
                await repository_facts.repository_facts(self.registry, self._repo(node))
            )
        if node.kind is NodeKind.FIX:
            return render.to_json(
                (await fix_repository.get_fix(self._repo(node), node.name)).to_json()
            )
        if node.kind is NodeKind.TASK:
            task = await fix_repository.get_task(self._repo(node), node.name)
            return render.to_json(task.view())
        if node.kind is NodeKind.EVENTS:
            return b""
        raise errors.invalid(f"{node} has no text")

    # Attributes

    async def _attributes(
        self, node: Node, status: ImageStatus | None = None
    ) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = self.inodes.inode(node)
        attr.entry_timeout = 0
        attr.attr_timeout = 0
        attr.st_blksize = 65536
        attr.st_nlink = 1
        if node.kind in (NodeKind.ROOT, NodeKind.REPOSITORY, NodeKind.AREA):
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_nlink = 2
            if node.kind is not NodeKind.ROOT:
                self._repo(node)
            # Fixed attributes, kept by the kernel: a path walk costs no requests
            # (`ls -l` of 10,000 images made 50,000).
            attr.attr_timeout = attr.entry_timeout = ATTRIBUTE_CACHE_S
        elif node.kind is NodeKind.IMAGE:
            self._image_attributes(node, status or await self._image_status(node), attr)
        else:
            attr.st_mode = stat.S_IFREG | (0o644 if node.kind is NodeKind.CONNECT else 0o444)
            attr.st_size = len(await self._text(node))
        return attr

    def _image_attributes(
        self, node: Node, status: ImageStatus, attr: pyfuse3.EntryAttributes
    ) -> None:
        owner = status.record.owner
        mode = owner.mode
        if status.kind is ImageKind.SNAPSHOT or node.trashed:
            mode &= ~0o222
        attr.st_mode = stat.S_IFREG | mode
        attr.st_uid = owner.uid
        attr.st_gid = owner.gid
        attr.st_size = status.size
        attr.st_blocks = (status.allocated + 511) // 512
        attr.st_mtime_ns = attr.st_ctime_ns = attr.st_atime_ns = status.modified_ns
        # The kernel may keep an image's attributes a moment: its size only changes
        # through this mount (which the kernel sees), and without the cache every
        # read(2) would cost a getattr round trip.
        attr.attr_timeout = attr.entry_timeout = ATTRIBUTE_CACHE_S

    async def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = await self._attributes(node)
        self.inodes.looked_up(attr.st_ino)
        return attr

    @probe_boundary
    async def lookup(self, parent_inode, name, ctx=None):
        return await self._entry(self._child(self._node(parent_inode), _name(name)))

    @probe_boundary
    async def getattr(self, inode, ctx=None):
        return await self._attributes(self._node(inode))

    async def forget(self, inode_list):
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    @boundary
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        if node.kind is NodeKind.IMAGE and not node.trashed:
            repo = self._repo(node)
            if fields.update_size:
                await resize_virtual_disk(repo, node.name, attr.st_size)
            if fields.update_mode or fields.update_uid or fields.update_gid:
                await image_attributes.set_owner(
                    repo,
                    node.name,
                    attr.st_uid if fields.update_uid else None,
                    attr.st_gid if fields.update_gid else None,
                    attr.st_mode if fields.update_mode else None,
                )
        elif fields.update_size and node.kind is not NodeKind.CONNECT:
            raise errors.RepofsError(errno.EACCES, f"{node} cannot be written")
        elif fields.update_mode or fields.update_uid or fields.update_gid:
            raise errors.RepofsError(errno.EPERM, f"{node} has fixed ownership and mode")
        # Times are accepted and not kept: an image's times are its volume's.
        return await self._attributes(node)

    @boundary
    async def statfs(self, ctx):
        vfs = await trio.to_thread.run_sync(os.statvfs, self.registry.data_dir)
        out = pyfuse3.StatvfsData()
        for field in STATVFS_FIELDS:
            setattr(out, field, getattr(vfs, field))
        out.f_namemax = 128
        return out

    # Directories

    @probe_boundary
    async def opendir(self, inode, ctx):
        node = self._node(inode)
        if node.kind is NodeKind.AREA and node.area in IMAGE_AREAS:
            statuses = await self._image_statuses(node)
            return self._add_handle(DirHandle(node, list(statuses), statuses))
        return self._add_handle(DirHandle(node, await self._children(node), {}))

    @probe_boundary
    async def readdir(self, fh, start_id, token):
        handle = self._handle(fh)
        for index in range(start_id, len(handle.names)):
            name = handle.names[index]
            try:
                child = self._child(handle.node, name)
                attr = await self._attributes(child, handle.statuses.get(name))
            except errors.RepofsError:
                continue  # gone while we listed
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, index + 1):
                break
            self.inodes.looked_up(attr.st_ino)  # an entry with attributes counts as a lookup

    async def releasedir(self, fh):
        self._handles.pop(fh, None)

    @boundary
    async def mkdir(self, parent_inode, name, mode, ctx):
        if self._node(parent_inode).kind is not NodeKind.ROOT:
            raise errors.RepofsError(errno.EPERM, "directories are made only at the mount root")
        repo = await create_local_repository(self.registry, _name(name))
        return await self._entry(Node(NodeKind.REPOSITORY, repo.name))

    @boundary
    async def rmdir(self, parent_inode, name, ctx):
        if self._node(parent_inode).kind is not NodeKind.ROOT:
            raise errors.RepofsError(errno.EPERM, f"{_name(name)} is part of its repository")
        await disconnect_repository(self.registry, self.fixes, _name(name))
        self.inodes.detach(Node(NodeKind.REPOSITORY, _name(name)))

    @boundary
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        kind = "file" if stat.S_ISREG(mode) else "device node, FIFO or socket"
        raise errors.RepofsError(errno.EPERM, f"{_name(name)}: only images live in repofs, "
                                 f"not a {kind} made by mknod")  # fmt: skip

    @boundary
    async def symlink(self, parent_inode, name, target, ctx):
        raise errors.RepofsError(errno.EPERM, f"{_name(name)}: only images live in repofs, "
                                 "not symbolic links")  # fmt: skip

    # Images: create, remove, rename, link

    @boundary
    async def create(self, parent_inode, name, mode, flags, ctx):
        parent = self._node(parent_inode)
        if parent.kind is not NodeKind.AREA or parent.area is not Area.DISKS:
            if parent.kind is NodeKind.AREA:
                raise errors.read_only(f"{parent.area}/ does not take new files; disks/ does")
            raise errors.RepofsError(errno.EPERM, "new files are virtual disks, made in disks/")
        repo = self._repo(parent)
        owner = Owner(ctx.uid, ctx.gid, mode & ~ctx.umask & Owner.PERMISSIONS)
        record = await create_virtual_disk(repo, _name(name), 0, owner)
        node = Node(NodeKind.IMAGE, parent.repo, Area.DISKS, record.id)
        info = await self._open_image(node, write=True)
        return info, await self._entry(node)

    @boundary
    async def unlink(self, parent_inode, name, ctx):
        parent = self._node(parent_inode)
        if parent.kind is NodeKind.AREA and parent.area is Area.TASKS:
            await fix_repository.stop_task(self.fixes, self._repo(parent), _name(name))
            self.inodes.detach(Node(NodeKind.TASK, parent.repo, parent.area, _name(name)))
            return
        if parent.kind is not NodeKind.AREA or parent.area not in AREA_KIND:
            raise errors.read_only(f"cannot remove {_name(name)} from {parent}")
        await remove_image(self.fixes, self._repo(parent), _name(name), AREA_KIND[parent.area])
        self.inodes.detach(Node(NodeKind.IMAGE, parent.repo, parent.area, _name(name)))

    @boundary
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old_parent, new_parent = self._node(parent_inode_old), self._node(parent_inode_new)
        old_name, new_name = _name(name_old), _name(name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise errors.invalid("rename with exchange is not supported")
        if old_parent.kind is not NodeKind.AREA or new_parent.kind is not NodeKind.AREA:
            raise errors.invalid(f"only images can be renamed, not {old_name}")
        if old_parent.repo != new_parent.repo:
            raise errors.cross_repository(
                f"{old_name} cannot move from {old_parent.repo} to {new_parent.repo} by "
                "rename; mv falls back to copy and remove"
            )
        repo = self._repo(old_parent)
        old_area, new_area = old_parent.area, new_parent.area
        if old_area is Area.FIXES and new_area is Area.TASKS and old_name == new_name:
            fix = await fix_repository.get_fix(repo, old_name, reuse_s=0)
            await fix_repository.queue_fix(self.fixes, repo, fix)
            self.inodes.detach(Node(NodeKind.FIX, repo.name, old_area, old_name))
            return
        if old_area is new_area and old_area in AREA_KIND:
            await rename_image(repo, old_name, new_name)
        elif old_area is Area.TRASH and new_area in AREA_KIND and old_name == new_name:
            await restore_image(repo, old_name, AREA_KIND[new_area])
        elif new_area is Area.TRASH and old_area in AREA_KIND and old_name == new_name:
            await remove_image(self.fixes, repo, old_name, AREA_KIND[old_area])
        else:
            raise errors.invalid(
                f"mv {old_area}/{old_name} {new_area}/{new_name} maps to no operation"
            )
        self.inodes.move(
            Node(NodeKind.IMAGE, repo.name, old_area, old_name),
            Node(NodeKind.IMAGE, repo.name, new_area, new_name),
        )

    @boundary
    async def link(self, inode, new_parent_inode, new_name, ctx):
        source, target = self._node(inode), self._node(new_parent_inode)
        name = _name(new_name)
        if (
            source.kind is not NodeKind.IMAGE
            or target.kind is not NodeKind.AREA
            or source.trashed
            or target.area not in AREA_KIND
        ):
            raise errors.invalid(f"ln {source} {target}/{name} maps to no operation")
        source_repo, repo = self._repo(source), self._repo(target)
        if source.area is Area.SNAPSHOTS and target.area is Area.DISKS:
            record = await source_repo.read_image(source.name)
            owner = Owner(ctx.uid, ctx.gid, record.owner.mode | 0o200)
            await create_virtual_disk_from_snapshot(
                self.fixes, repo, name, source.name, owner, base_repo=source_repo
            )
        elif source_repo is repo and source.area is Area.DISKS and target.area is Area.SNAPSHOTS:
            await create_snapshot(repo, source.name, name)
        elif source_repo is repo:
            raise errors.invalid(
                f"ln {source.area}/{source.name} {target.area}/{name} maps to no operation"
            )
        elif target.area is Area.DISKS:
            record = await source_repo.read_image(source.name)
            owner = Owner(ctx.uid, ctx.gid, record.owner.mode)
            await clone_disk(self.fixes, source_repo, source.name, name, repo, owner)
        elif source.area is Area.DISKS:
            await back_up_disk(self.fixes, source_repo, source.name, name, repo)
        elif name != source.name:
            raise errors.invalid(f"a copied snapshot keeps its ID {source.name}, not {name}")
        else:
            await copy_snapshot(self.fixes, source_repo, name, repo)
        return await self._entry(Node(NodeKind.IMAGE, repo.name, target.area, name))

    # Files

    def _add_handle(self, handle) -> int:
        fh = self._next_handle
        self._next_handle += 1
        self._handles[fh] = handle
        return fh

    def _handle(self, fh: int):
        try:
            return self._handles[fh]
        except KeyError:
            raise errors.RepofsError(errno.EBADF, f"no open file {fh}") from None

    async def _open_image(self, node: Node, write: bool) -> pyfuse3.FileInfo:
        repo = self._repo(node)
        image = await open_image(self.registry, repo, node.name, write)
        try:
            allowed = passthrough_allowed(repo, image.record)
            backing_id = await self.passthrough.backing_id(image, allowed)
        except BaseException:
            with trio.CancelScope(shield=True):
                await release_image(image)
            raise
        info = pyfuse3.FileInfo(fh=self._add_handle(ImageHandle(image)), keep_cache=False)
        if backing_id:
            info.backing_id = backing_id
        return info

    @probe_boundary
    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        write = (flags & os.O_ACCMODE) != os.O_RDONLY
        if node.kind is NodeKind.IMAGE:
            if node.trashed:
                raise errors.RepofsError(
                    errno.EACCES, f"{node.name} is in the trash: restore it to open it"
                )
            if flags & os.O_TRUNC and write:
                status = await self._image_status(node)
                # A snapshot's open is EROFS, as any write to it.
                if status.size and status.kind is ImageKind.VIRTUAL_DISK:
                    raise errors.invalid(f"cannot truncate {node.name}: shrinking is refused")
            return await self._open_image(node, write)
        if node.kind is NodeKind.CONNECT:
            handle = ConnectHandle() if write else TextHandle(await self._text(node))
            return pyfuse3.FileInfo(fh=self._add_handle(handle), direct_io=True)
        if node.kind is NodeKind.EVENTS and not write:
            handle = EventsHandle(await self._repo(node).subscribe_events())
            return pyfuse3.FileInfo(fh=self._add_handle(handle), direct_io=True, nonseekable=True)
        if write:
            raise errors.RepofsError(errno.EACCES, f"{node} is read-only")
        text = await self._text(node)
        return pyfuse3.FileInfo(fh=self._add_handle(TextHandle(text)), direct_io=True)

    @boundary
    async def read(self, fh, off, size):
        handle = self._handle(fh)
        if isinstance(handle, ImageHandle):
            return await handle.image.read(off, size)
        if isinstance(handle, TextHandle):
            return handle.data[off : off + size]
        if isinstance(handle, EventsHandle):
            return await handle.subscription.read(size)
        raise errors.RepofsError(errno.EBADF, "connect was opened for writing")

    @boundary
    async def write(self, fh, off, buf):
        handle = self._handle(fh)
        if isinstance(handle, ImageHandle):
            return await handle.image.write(off, bytes(buf))
        if isinstance(handle, ConnectHandle):
            for line in bytes(buf).decode(errors="replace").splitlines():
                if line.strip():
                    await connect_repository(self.registry, *parse_connection(line))
            return len(buf)
        raise errors.RepofsError(errno.EBADF, "file is not open for writing")

    @boundary
    async def flush(self, fh):
        handle = self._handle(fh)
        if isinstance(handle, ImageHandle):
            await handle.image.flush()

    @boundary
    async def fsync(self, fh, datasync):
        handle = self._handle(fh)
        if isinstance(handle, ImageHandle):
            await handle.image.fsync()

    @boundary
    async def release(self, fh):
        handle = self._handles.pop(fh, None)
        if isinstance(handle, ImageHandle):
            self.passthrough.released(handle.image)
            await release_image(handle.image)
        elif isinstance(handle, EventsHandle):
            handle.subscription.close()

    # Extended attributes

    @probe_boundary
    async def getxattr(self, inode, name, ctx):
        node, attr = self._node(inode), _name(name)
        if node.kind is NodeKind.IMAGE:
            return await image_attributes.get_attribute(
                self._repo(node), node.name, attr, node.trashed
            )
        if node.kind is NodeKind.REPOSITORY and attr.startswith("user."):
            values = await repository_options.get_options(self._repo(node))
            if attr in values:
                return values[attr].encode()
        if node.kind is NodeKind.ROOT and attr in ROOT_ATTRIBUTES:
            return self._root_attribute(attr)
        raise errors.no_attribute(f"{node} has no attribute {attr}")

    def _root_attribute(self, attr: str) -> bytes:
        if attr == PID_ATTRIBUTE:
            return str(os.getpid()).encode()
        if attr == refusals.ATTRIBUTE:
            return refusals.encoded()
        if attr == PASSTHROUGH_ATTRIBUTE:
            return self.passthrough.state().encode()
        return self.registry.host_id.encode()

    @probe_boundary
    async def listxattr(self, inode, ctx):
        node = self._node(inode)
        if node.kind is NodeKind.IMAGE:
            names = await image_attributes.list_attributes(
                self._repo(node), node.name, node.trashed
            )
        elif node.kind is NodeKind.REPOSITORY:
            names = list(repository_options.NAMES)
        elif node.kind is NodeKind.ROOT:
            names = list(ROOT_ATTRIBUTES)
        else:
            names = []
        return [os.fsencode(n) for n in names]

    @boundary
    async def setxattr(self, inode, name, value, ctx):
        node, attr = self._node(inode), _name(name)
        if node.kind is NodeKind.IMAGE and not node.trashed:
            await image_attributes.set_user_data(self._repo(node), node.name, attr, value)
        elif node.kind is NodeKind.REPOSITORY:
            await repository_options.set_option(self._repo(node), attr, value)
        else:
            raise errors.not_supported(f"{node} takes no attributes")

    @boundary
    async def removexattr(self, inode, name, ctx):
        node, attr = self._node(inode), _name(name)
        if node.kind is NodeKind.IMAGE and not node.trashed:
            await image_attributes.remove_user_data(self._repo(node), node.name, attr)
        elif node.kind is NodeKind.REPOSITORY:
            await repository_options.reset_option(self._repo(node), attr)
        else:
            raise errors.not_supported(f"{node} takes no attributes")
