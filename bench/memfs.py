"""The benchmark's baseline: a minimal in-memory pyfuse3 filesystem.

It answers from plain dicts and does nothing else, so it shows what pyfuse3
on trio costs by itself; onitufs is measured against it. A file's content is
a dict of bytearray blocks of up to 1 MiB (block number -> block), not one
bytearray: one that grows to 1 GiB is reallocated and copied over and over
as it grows, which would make the baseline slower than pyfuse3 is.

Like onitufs it mounts with the kernel's writeback cache and default_permissions,
and lets the kernel keep names, missing names and attributes for 60 s, so the
kernel sends both the same requests.

Run as ``python -m bench.memfs MOUNTPOINT``; it serves until unmounted
(``fusermount3 -u MOUNTPOINT``) and then exits. With ``--state FILE`` it starts
from what FILE holds and writes everything there as it exits, so that the
programs suite can unmount and mount it again before its `find -ls`, as it
does the others.
"""

from __future__ import annotations

import argparse
import errno
import os
import pickle
import stat
import time
from dataclasses import dataclass, field

import pyfuse3
import trio

ATTR_TIMEOUT = 60.0  # as onitufs (fs.ATTR_TIMEOUT)
BLOCK = 1024 * 1024


@dataclass
class Node:
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int = 1
    atime_ns: int = field(default_factory=time.time_ns)
    mtime_ns: int = field(default_factory=time.time_ns)
    ctime_ns: int = field(default_factory=time.time_ns)
    size: int = 0
    blocks: dict[int, bytearray] = field(default_factory=dict)  # absent: a hole, zeros
    children: dict[bytes, int] = field(default_factory=dict)
    parent: int = pyfuse3.ROOT_INODE
    target: bytes = b""  # a symbolic link's

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        parts = []
        while offset < end:
            number, start = divmod(offset, BLOCK)
            take = min(BLOCK - start, end - offset)
            piece = memoryview(self.blocks.get(number, b""))[start:start + take]
            parts.append(bytes(piece) + bytes(take - len(piece)) if len(piece) < take else bytes(piece))
            offset += take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        done = 0
        while done < len(data):
            number, start = divmod(offset + done, BLOCK)
            take = min(BLOCK - start, len(data) - done)
            block = self.blocks.get(number)
            if block is None:  # blocks grow as written, up to BLOCK: a small file stays small
                block = self.blocks[number] = bytearray(start)
            elif len(block) < start:
                block.extend(bytes(start - len(block)))
            block[start:start + take] = view[done:done + take]
            done += take
        self.size = max(self.size, offset + len(data))

    def truncate(self, size: int) -> None:
        if size < self.size:
            for number in [n for n in self.blocks if n * BLOCK >= size]:
                del self.blocks[number]
            number, start = divmod(size, BLOCK)
            if number in self.blocks:
                del self.blocks[number][start:]  # what a later growth shows must be zeros
        self.size = size


class MemFS(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self, nodes: dict[int, Node] | None = None) -> None:
        super().__init__()
        root = Node(pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o755, os.getuid(), os.getgid(), nlink=2)
        self.nodes: dict[int, Node] = nodes or {root.ino: root}
        self.handles: dict[int, int] = {}  # fh -> ino, for files and folders alike
        self.open_counts: dict[int, int] = {}
        self.next_ino = max(self.nodes) + 1
        self.next_fh = 1

    def node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def child(self, parent: Node, name: bytes) -> tuple[int, Node]:
        ino = parent.children.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return ino, self.node(ino)

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.ino
        attrs.generation = 0
        attrs.entry_timeout = ATTR_TIMEOUT
        attrs.attr_timeout = ATTR_TIMEOUT
        attrs.st_mode = node.mode
        attrs.st_nlink = node.nlink
        attrs.st_uid = node.uid
        attrs.st_gid = node.gid
        attrs.st_rdev = 0
        attrs.st_size = node.size
        attrs.st_blksize = 128 * 1024
        attrs.st_blocks = (node.size + 511) // 512
        attrs.st_atime_ns = node.atime_ns
        attrs.st_mtime_ns = node.mtime_ns
        attrs.st_ctime_ns = node.ctime_ns
        return attrs

    def new_fh(self, ino: int) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = ino
        return fh

    def add(self, parent_ino: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> Node:
        parent = self.node(parent_ino)
        if not parent.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name in parent.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        node = Node(self.next_ino, mode, ctx.uid, ctx.gid, nlink=2 if stat.S_ISDIR(mode) else 1,
                    parent=parent_ino)
        self.next_ino += 1
        self.nodes[node.ino] = node
        parent.children[name] = node.ino
        if node.is_dir:
            parent.nlink += 1
        parent.mtime_ns = parent.ctime_ns = time.time_ns()
        return node

    # names and attributes

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        parent = self.node(parent_inode)
        if name == b".":
            return self.attributes(parent)
        if name == b"..":
            return self.attributes(self.node(parent.parent))
        ino = parent.children.get(name)
        if ino is None:  # kept by the kernel as missing (inode 0), as onitufs answers
            attrs = pyfuse3.EntryAttributes()
            attrs.st_ino = 0
            attrs.entry_timeout = ATTR_TIMEOUT
            return attrs
        return self.attributes(self.node(ino))

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        return self.attributes(self.node(inode))

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.node(inode)
        if fields.update_size:
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            node.truncate(attr.st_size)
            node.mtime_ns = time.time_ns()
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | (attr.st_mode & 0o7777)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_atime:
            node.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        node.ctime_ns = attr.st_ctime_ns if fields.update_ctime else time.time_ns()
        return self.attributes(node)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attributes(self.add(parent_inode, name, stat.S_IFDIR | (mode & 0o7777), ctx))

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self.node(parent_inode)
        ino, node = self.child(parent, name)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        del parent.children[name]
        parent.mtime_ns = parent.ctime_ns = node.ctime_ns = time.time_ns()
        node.nlink -= 1
        if not node.nlink and not self.open_counts.get(ino):
            del self.nodes[ino]

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self.node(parent_inode)
        ino, node = self.child(parent, name)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if node.children:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        del parent.children[name]
        parent.nlink -= 1
        parent.mtime_ns = parent.ctime_ns = time.time_ns()
        del self.nodes[ino]

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.add(parent_inode, name, stat.S_IFLNK | 0o777, ctx)
        node.target, node.size = target, len(target)
        return self.attributes(node)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.node(inode).target

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node, parent = self.node(inode), self.node(new_parent_inode)
        if new_name in parent.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        parent.children[new_name] = inode
        parent.mtime_ns = parent.ctime_ns = node.ctime_ns = time.time_ns()
        node.nlink += 1
        return self.attributes(node)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # (RENAME_EXCHANGE: not needed here)
        old, new = self.node(parent_inode_old), self.node(parent_inode_new)
        ino, node = self.child(old, name_old)
        replaced = new.children.get(name_new)
        if replaced == ino:
            return
        if replaced is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if self.node(replaced).is_dir != node.is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR if node.is_dir else errno.EISDIR)
            if node.is_dir:
                await self.rmdir(parent_inode_new, name_new, ctx)
            else:
                await self.unlink(parent_inode_new, name_new, ctx)
        del old.children[name_old]
        new.children[name_new] = ino
        if node.is_dir:
            old.nlink -= 1
            new.nlink += 1
            node.parent = parent_inode_new
        now = time.time_ns()
        old.mtime_ns = old.ctime_ns = new.mtime_ns = new.ctime_ns = node.ctime_ns = now

    # folders

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not self.node(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return self.new_fh(inode)

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        folder = self.node(self.handles[fh])
        entries = sorted(folder.children.items())  # a stable order for start_id to index
        for position in range(start_id, len(entries)):
            name, ino = entries[position]
            if not pyfuse3.readdir_reply(token, name, self.attributes(self.node(ino)), position + 1):
                break

    async def releasedir(self, fh: int) -> None:
        self.handles.pop(fh, None)

    # files

    def opened(self, ino: int) -> pyfuse3.FileInfo:
        self.open_counts[ino] = self.open_counts.get(ino, 0) + 1
        return pyfuse3.FileInfo(fh=self.new_fh(ino), keep_cache=True)  # as onitufs

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if self.node(inode).is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return self.opened(inode)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node = self.add(parent_inode, name, stat.S_IFREG | (mode & 0o7777), ctx)
        return self.opened(node.ino), self.attributes(node)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self.node(self.handles[fh]).read(off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        node = self.node(self.handles[fh])
        node.write(off, buf)
        node.mtime_ns = node.ctime_ns = time.time_ns()
        return len(buf)

    async def flush(self, fh: int) -> None:
        pass

    async def fsync(self, fh: int, datasync: bool) -> None:
        pass

    async def release(self, fh: int) -> None:
        ino = self.handles.pop(fh)
        left = self.open_counts[ino] - 1
        if left:
            self.open_counts[ino] = left
            return
        del self.open_counts[ino]
        node = self.nodes.get(ino)
        if node is not None and node.nlink == 0:
            del self.nodes[ino]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memfs",
                                     description="A minimal in-memory FUSE filesystem.")
    parser.add_argument("mountpoint")
    parser.add_argument("--state", default=None, metavar="FILE",
                        help="start from what FILE holds, and write everything there at exit")
    args = parser.parse_args(argv)
    nodes = None
    if args.state is not None and os.path.exists(args.state):
        with open(args.state, "rb") as saved:
            nodes = pickle.load(saved)  # (the bench's own file, written below)
    memfs = MemFS(nodes)
    pyfuse3.init(memfs, args.mountpoint, {"fsname=memfs", "subtype=memfs", "default_permissions"})
    try:
        trio.run(pyfuse3.main)
    except BaseException:
        pyfuse3.close(unmount=True)
        raise
    pyfuse3.close(unmount=False)  # unmounted from outside: nothing left to unmount
    if args.state is not None:
        with open(args.state, "wb") as state:
            pickle.dump(memfs.nodes, state, protocol=pickle.HIGHEST_PROTOCOL)


if __name__ == "__main__":
    main()
