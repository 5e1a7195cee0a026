"""The block cache: file content in fixed-size blocks, in front of the remotes.

Writes land in in-memory block buffers and reach LMDB with the next commit
(on flush, fsync, release, a timer, or when the buffers pass their limit),
in the same transaction as the inode sizes they go with. Blocks of a file
whose content is not complete locally (it came from a remote, or blocks
were evicted) are fetched on demand through the Fetcher; a file is made
complete before its first change, so the content of every revision that
still has to be uploaded is always local.

Every block is stored behind its own SHA-256, and the first read of a block
in the life of the daemon checks it: a damaged block is never served or
uploaded, but read again from a remote that holds the revision it belongs
to (checked against that revision's checksum); content that no remote
holds yet is reported lost (EIO), never replaced by something else. The
SHA-256 of each full block (found by a worker thread, beside the mount)
also becomes the checksum of that block of the next revision; files written
in order get their whole checksum the same way (inorder.py). Uploads then
need not hash what they send.

A cut of content (truncate, O_TRUNC) is written in the caller's
transaction, with the inode's new size, so that a crash leaves the old
content or the new, never the old size over missing blocks.

The cache keeps to its size by evicting clean blocks least recently used:
blocks of files whose current revision every writable remote holds, and
blocks fetched from a remote for a file not complete here (fetched again if
needed), as soon as storing one takes the cache past its size. Blocks of
zeros take no space: one is stored empty (it reads as zeros to its length),
a hole, never counted nor evicted.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import struct
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator

import lmdb
import trio

from .index import (
    FLAG_COMPLETE,
    NO_HASH,
    SEAL,
    UNREVISED,
    Index,
    Inode,
    Value,
    delete_range,
    q,
    seal,
    unq,
    unseal,
)
from .inorder import InOrderHashes
from .space import CacheSpace

log = logging.getLogger(__name__)
BlockKey = tuple[int, int]
Buffer = bytes | bytearray  # a block written: a whole one may be the bytes a write brought
_KEY = struct.Struct(">QQ")  # a block's key in LMDB: inode, block number
BATCH_TRANSACTION = 8 * 1024**2  # bytes of blocks the worker thread writes in one transaction
_HASHING = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="onitufs-block-hash")
# The in-order hash of a file takes its blocks one after the other, on a thread of its
# own: beside the blocks' own SHA-256 (hashlib lets go of the GIL), not after it.
_FEEDING = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="onitufs-in-order")
# fetch(inode, offset, size, expected SHA-256 or None): the bytes from a remote holding
# the current revision, checked against the digest where one is known, and their SHA-256
Fetcher = Callable[[Inode, int, int, bytes | None], Awaitable[tuple[bytes, bytes]]]


@functools.lru_cache(maxsize=4)  # a whole block's, a tail's, a read's
def zero_bytes(length: int) -> bytes:
    """`length` zero bytes, made once (untouched pages: they take no memory): what a hole
    reads as."""
    return bytes(length)


def all_zero(data: bytes | bytearray) -> bool:
    """Whether every byte is zero (a hole, or written zeros)."""
    return not data or (data[0] == 0 and data == zero_bytes(len(data)))


@functools.lru_cache(maxsize=8)
def zeros_sha256(length: int) -> bytes:
    """The SHA-256 of `length` zero bytes (the checksum of a block that is a hole)."""
    return hashlib.sha256(bytes(length)).digest()


def sealed(data: bytes | bytearray, digest: bytes | None) -> tuple[bytes, int]:
    """What is stored for a block and how many bytes of content it keeps: nothing for
    zeros (read() gives them back), or the content behind its SHA-256."""
    if all_zero(data):
        return seal(b""), 0
    return seal(data, digest), len(data)


class BlockLost(Exception):
    """A cached block is damaged and no remote holds the content it stood for."""


class NoRoom(Exception):
    """The disk of the cache has no room to keep a block that a change needs here."""


class BlockCache:
    def __init__(self, index: Index, block_size: int, size_limit: int, write_buffer: int,
                 fetch: Fetcher, evictable: Callable[[int], bool]) -> None:
        self.index = index
        self.block_size = block_size
        self.size_limit = size_limit
        # pages freed and held for the index's sync point: a sixteenth of the cache
        index.held_limit = size_limit // 16
        self.write_buffer = write_buffer
        self._fetch = fetch
        self._evictable = evictable
        self._db = index.db["blocks"]
        self.space = CacheSpace(index, str(index.path))
        self._dirty: dict[int, dict[int, Buffer]] = {}  # ino -> block number -> content
        # Full blocks a worker thread is writing to LMDB while the mount goes on; a block
        # changed or cut meanwhile is superseded, and the worker leaves it out.
        self._flying: dict[BlockKey, Buffer] = {}
        self._superseded: set[BlockKey] = set()
        self._flight = trio.Lock()
        self._in_order = InOrderHashes()
        self._dirty_bytes = 0
        self._lru: collections.OrderedDict[BlockKey, int] = collections.OrderedDict()
        self.stored_bytes = 0
        self._held: collections.Counter[int] = collections.Counter()  # stored bytes by inode
        self._fetching: dict[BlockKey, trio.Event] = {}
        # Blocks checked against their checksum (or stored) since the daemon started, and
        # blocks found damaged, which stay stored until a good copy replaces them.
        self._sound: set[BlockKey] = set()
        self._damaged: set[BlockKey] = set()
        self._take_stock()
        # Inodes being made complete or changed (by how many callers, see kept): none of
        # their blocks may go meanwhile.
        self._kept: collections.Counter[int] = collections.Counter()
        self._over_size = False  # and nothing could be evicted: said once in the log
        self._unkept = False  # a fetched block found no room on the disk: said once too

    def _take_stock(self) -> None:
        """Account for the blocks stored when the daemon starts, none of them checked yet.

        In bulk rather than through _account: it runs before the mount is served and
        sees every block of the cache (100,000 in an index of as many small files)."""
        with self.index.env.begin(buffers=True) as txn:  # lengths only: no block is read
            stored = [(_KEY.unpack(key), len(value) - SEAL) for key, value
                      in txn.cursor(db=self._db).iternext()
                      if len(value) > SEAL]  # zeros, stored empty, take no room and stay
        self._lru.update(stored)
        self.stored_bytes = sum(length for _, length in stored)
        held = self._held
        for (ino, _), length in stored:
            held[ino] += length

    @property
    def dirty_bytes(self) -> int:
        return self._dirty_bytes

    @property
    def unstored_bytes(self) -> int:
        """Written and not in LMDB yet: buffered, or on their way from the worker thread."""
        return self._dirty_bytes + sum(len(buffer) for buffer in self._flying.values())

    # reading

    async def read(self, inode: Inode, offset: int, size: int) -> bytes:
        size = max(0, min(size, inode.size - offset))
        if size == 0:
            return b""
        bs = self.block_size
        parts = []
        first, last = offset // bs, (offset + size - 1) // bs
        for blockno in range(first, last + 1):
            start = offset - blockno * bs if blockno == first else 0
            end = offset + size - blockno * bs if blockno == last else bs
            piece = self._cached_piece(inode, blockno, start, end)
            if piece is None:
                piece = (await self._fetch_block(inode, blockno))[start:end]
            if len(piece) < end - start:  # a hole, or a block stored short of its end
                piece = piece + bytes(end - start - len(piece)) if piece else zero_bytes(end - start)
            parts.append(piece)
        return b"".join(parts)

    def _cached_piece(self, inode: Inode, blockno: int, start: int, end: int) -> bytes | None:
        """Bytes start:end of a block if the cache can answer without a remote."""
        key = (inode.ino, blockno)
        dirty = self._dirty.get(inode.ino, {}).get(blockno)
        if dirty is None:
            dirty = self._flying.get(key)
        if dirty is not None:
            return bytes(dirty[start:end])
        with self.index.env.begin(buffers=True) as txn:
            stored = self._stored(txn, key)
            if stored is not None:
                if key in self._lru:
                    self._lru.move_to_end(key)
                return bytes(stored[start:end])
        return b"" if inode.complete and key not in self._damaged else None

    def _stored(self, txn: lmdb.Transaction, key: BlockKey) -> Value | None:
        """The content of a stored block, checked on its first read since the start; None
        if it is not stored or is damaged (then it is noted, and logged once)."""
        if key in self._damaged:
            return None
        raw = txn.get(q(key[0]) + q(key[1]), db=self._db)
        if raw is None:
            return None
        if key in self._sound:
            return raw[SEAL:]
        content, sound = unseal(raw)
        if sound:
            self._sound.add(key)
            return content
        self._damaged.add(key)
        offset = key[1] * self.block_size
        log.error("inode %d: the cached block at bytes %d-%d is damaged (it does not match its "
                  "checksum); it is read again from a remote", key[0], offset,
                  offset + len(content) - 1)
        return None

    def damaged(self, ino: int, blockno: int) -> bool:
        return (ino, blockno) in self._damaged

    def _holds(self, inode: Inode, blockno: int) -> bool:
        """Whether the block can be read without a remote (stored sound, written, a hole)."""
        return self._cached_piece(inode, blockno, 0, 0) is not None

    def holds_whole(self, inode: Inode) -> bool:
        """Whether every block of the file's current content can be read without a remote."""
        blocks = range((inode.size + self.block_size - 1) // self.block_size)
        return all(self._holds(inode, blockno) for blockno in blocks)

    def cached_block(self, inode: Inode, blockno: int, length: int) -> bytes | None:
        """The block as the cache has it (holes as zeros), or None if it is not cached."""
        piece = self._cached_piece(inode, blockno, 0, length)
        return None if piece is None else piece + bytes(length - len(piece))

    async def _fetch_block(self, inode: Inode, blockno: int, keep: bool = False) -> bytes:
        """The block from a remote, kept where there is room (NoRoom with `keep` where
        there is none)."""
        key = (inode.ino, blockno)
        while key in self._fetching:
            await self._fetching[key].wait()
            with self.index.begin() as txn:
                stored = self._stored(txn, key)
                if stored is not None:
                    return bytes(stored)
        if key in self._damaged and inode.dirty:
            # What was stored there is newer than any revision a remote may hold.
            raise BlockLost(f"the cached block at byte {blockno * self.block_size} is damaged, "
                            "and it held changes no remote has yet")
        self._fetching[key] = done = trio.Event()
        rev = inode.rev
        try:
            offset = blockno * self.block_size
            length = max(0, min(self.block_size, inode.size - offset))
            if not length:
                return b""
            expected = self.index.block_hash(inode.ino, blockno, rev)
            data, digest = await self._fetch(inode, offset, length, expected)
            if not self.take_fetched(inode.ino, blockno, rev, data, digest, expected is None) \
                    and keep:
                raise NoRoom(f"no room on the disk of the cache for the block at byte {offset}")
            return data
        finally:
            del self._fetching[key]
            done.set()

    def take_fetched(self, ino: int, blockno: int, rev: int, data: bytes, digest: bytes,
                     new_checksum: bool) -> bool:
        """Keep a block of revision `rev` read from a remote, where the cache lacks it or
        holds it damaged, if the file is still at that revision; with `new_checksum`,
        `digest` becomes the block's checksum (the first copy seen: later ones are checked
        against it). False where it was wanted but the disk had no room for it."""
        key = (ino, blockno)
        # Blocks are kept by inode and block number, not by revision: the file, as the
        # index has it now, must still be at the revision the read began with.
        inode = self.index.get_inode(ino)
        if inode is None or inode.rev != rev or inode.dirty \
                or not (key in self._damaged or not inode.complete) or self.has_dirty(ino):
            return True
        if not self._keep(key, rev, data, digest, new_checksum):
            if not self._unkept:  # once, not at every block until there is room again
                log.warning("the disk of the cache is full: what is read from the remotes is "
                            "served but not kept")
            self._unkept = True
            if new_checksum:  # later copies are still checked against this one
                with contextlib.suppress(lmdb.Error), self.index.write() as txn:
                    self.index.set_block_hash(txn, ino, blockno, rev, digest)
            return False  # read again from a remote the next time
        self._unkept = False
        if self.stored_bytes > self.size_limit:
            # A file streaming through (read, or uploaded to another remote) stays
            # within the size: what it fetched before goes as it goes on.
            self.evict()
        return True

    def _keep(self, key: BlockKey, rev: int, data: bytes, digest: bytes,
              new_checksum: bool) -> bool:
        """Store a fetched block where the disk has room, or can be given some; whether it
        was stored."""
        if not self.space.room_for(len(data), self.unstored_bytes):
            self.make_room(len(data))
            if not self.space.room_for(len(data), self.unstored_bytes):
                return False
        try:
            with self.index.write() as txn:
                self._store(txn, key, data, digest)
                if new_checksum:
                    self.index.set_block_hash(txn, key[0], key[1], rev, digest)
        except lmdb.Error as error:
            # LMDB reuses the pages a drop freed only after a later commit (see space.py):
            # the room measured may not be there yet
            if not self.space.explains(error):
                raise
            return False
        return True

    @contextlib.contextmanager
    def kept(self, ino: int) -> Iterator[None]:
        """Evict none of the file's blocks meanwhile: a file being made complete would
        be taken for complete without them, and a change made complete may wait (for room,
        for a fetch) before it writes into the file, which must still be complete then."""
        self._kept[ino] += 1
        try:
            yield
        finally:
            self._kept[ino] -= 1
            if not self._kept[ino]:
                del self._kept[ino]

    async def make_complete(self, inode: Inode) -> None:
        """Fetch every block not cached, so the file can be changed locally."""
        if inode.complete:
            return
        with self.kept(inode.ino):
            await self.make_sound(inode, 0, inode.size)
        if not inode.complete:
            inode.flags |= FLAG_COMPLETE
            self.index.defer_inode(inode)

    async def make_sound(self, inode: Inode, offset: int, length: int) -> None:
        """Make the stored blocks from `offset` over `length` bytes fit to change: fetched
        if missing or damaged (BlockLost where no remote can give them back, NoRoom where the
        disk of the cache has no room to keep them)."""
        if length <= 0:
            return
        for blockno in range(offset // self.block_size, (offset + length - 1) // self.block_size + 1):
            if blockno * self.block_size >= inode.size:
                break
            key = (inode.ino, blockno)
            if key in self._sound and key not in self._damaged:
                continue
            if not self._holds(inode, blockno):
                await self._fetch_block(inode, blockno, keep=True)

    # writing (callers bump the inode's version and size)

    def write(self, inode: Inode, offset: int, data: bytes) -> None:
        """Write into a complete inode's buffers (make_sound() the blocks first)."""
        assert inode.complete, "make_complete() before changing content"
        bs = self.block_size
        view = memoryview(data)
        buffers = self._dirty.setdefault(inode.ino, {})
        if offset // bs > inode.size // bs and inode.size % bs:
            # The last block grows by zeros, unwritten: stored again, it loses the
            # checksum of its shorter self (see truncate).
            self._changeable(inode.ino, inode.size // bs, buffers)
        if offset % bs == 0 and len(data) == bs:
            # A whole block (cp, dd and the kernel's writeback write 1 MiB at a time): kept
            # as the kernel's request brought it, and copied only if written into again.
            blockno = offset // bs
            if (inode.ino, blockno) in self._flying:
                self._superseded.add((inode.ino, blockno))
            replaced = buffers.get(blockno)
            self._dirty_bytes += bs - (len(replaced) if replaced is not None else 0)
            buffers[blockno] = data
            return
        pos = 0
        while pos < len(data):
            blockno, start = divmod(offset + pos, bs)
            take = min(bs - start, len(data) - pos)
            buffer = self._changeable(inode.ino, blockno, buffers)
            before = len(buffer)  # the zeros of a hole before `start` count, as they are held
            if len(buffer) < start:
                buffer.extend(bytes(start - len(buffer)))
            buffer[start:start + take] = view[pos:pos + take]
            self._dirty_bytes += len(buffer) - before
            pos += take

    def _changeable(self, ino: int, blockno: int, buffers: dict[int, Buffer]) -> bytearray:
        """The block's buffer, to be changed in place."""
        buffer = buffers.get(blockno)
        if buffer is None:
            return self._load(ino, blockno, buffers)
        if not isinstance(buffer, bytearray):  # a whole block as a write brought it
            buffer = buffers[blockno] = bytearray(buffer)
        return buffer

    def _load(self, ino: int, blockno: int, buffers: dict[int, Buffer]) -> bytearray:
        """A buffer for changing a block, holding what the cache has of it."""
        flying = self._flying.get((ino, blockno))
        if flying is not None:
            self._superseded.add((ino, blockno))
            buffer = bytearray(flying)
        else:
            with self.index.begin() as txn:
                stored = self._stored(txn, (ino, blockno))
            if (ino, blockno) in self._damaged:
                raise BlockLost(f"inode {ino}: the cached block at byte "
                                f"{blockno * self.block_size} is damaged")
            buffer = bytearray(stored) if stored is not None else bytearray()
        buffers[blockno] = buffer
        self._dirty_bytes += len(buffer)
        return buffer

    def truncate(self, txn: lmdb.Transaction, inode: Inode, new_size: int) -> None:
        """Cut the content of a complete inode at new_size (growing needs nothing: holes),
        in `txn`, which must also write the inode's new size. The block the cut goes
        through must be sound (make_sound)."""
        assert inode.complete, "make_complete() before changing content"
        bs = self.block_size
        if new_size >= inode.size:
            if new_size > inode.size and inode.size % bs:
                # The last block grows by zeros: a checksum learnt of it (an upload's, a
                # fetch's) is of the shorter block, and would be carried to the next
                # revision, where the block read back would look damaged.
                self.index.set_block_hash(txn, inode.ino, inode.size // bs, UNREVISED, None)
            return
        keep_blocks = (new_size + bs - 1) // bs
        self._take_buffers(inode.ino, keep_blocks)
        buffers = self._dirty.setdefault(inode.ino, {})
        self._delete_blocks(txn, inode.ino, keep_blocks)
        if new_size % bs:
            # The stored block is cut too, not only its buffer: bytes past the end must not
            # come back if a crash comes before the buffer is stored and the file regrows.
            blockno = new_size // bs
            buffer = self._changeable(inode.ino, blockno, buffers)
            cut = new_size % bs
            if len(buffer) > cut:
                tail = bytes(buffer[cut:])
                self._dirty_bytes -= len(tail)
                del buffer[cut:]
                self.index.on_failure(functools.partial(self._grow_back, buffer, tail))
                self._store(txn, (inode.ino, blockno), buffer)
                self.index.set_block_hash(txn, inode.ino, blockno, UNREVISED, None)
        self._in_order.cut(inode.ino, new_size // bs)

    def _grow_back(self, buffer: bytearray, tail: bytes) -> None:
        """A cut that did not commit: the buffer holds its tail again."""
        buffer += tail
        self._dirty_bytes += len(tail)

    def _take_buffers(self, ino: int, from_block: int) -> None:
        """Blocks of `ino` from `from_block` on leave the buffers, and the worker thread's
        hands (a cut, a delete). If the write fails they come back: the file is still
        there, and they may be all there is of its latest content."""
        buffers = self._dirty.get(ino, {})
        taken = {blockno: buffers.pop(blockno) for blockno in list(buffers)
                 if blockno >= from_block}
        self._dirty_bytes -= sum(len(buffer) for buffer in taken.values())
        # a block buffered is newer than the same block in flight
        self.index.on_failure(functools.partial(
            self._rebuffer, ino, self._ground(ino, from_block) | taken))

    def _rebuffer(self, ino: int, taken: dict[int, Buffer]) -> None:
        buffers = self._dirty.setdefault(ino, {})
        for blockno, buffer in taken.items():
            if blockno not in buffers:
                buffers[blockno] = buffer
                self._dirty_bytes += len(buffer)

    def trim(self, txn: lmdb.Transaction, inode: Inode) -> None:
        """Drop what is stored past the inode's size: after a crash, blocks stored for
        content whose new size never committed."""
        bs = self.block_size
        self._delete_blocks(txn, inode.ino, (inode.size + bs - 1) // bs)
        key, tail = (inode.ino, inode.size // bs), inode.size % bs
        stored = self._stored(txn, key) if tail else None
        if stored is not None and len(stored) > tail:
            self._store(txn, key, bytes(stored[:tail]))
            self.index.set_block_hash(txn, inode.ino, key[1], UNREVISED, None)

    def drop(self, txn: lmdb.Transaction, ino: int) -> None:
        """Forget every block of an inode (deleted, or replaced by a remote's revision)."""
        self._take_buffers(ino, 0)
        self._delete_blocks(txn, ino, 0)
        self._in_order.cut(ino, 0)

    def _ground(self, ino: int, from_block: int) -> dict[int, Buffer]:
        """Blocks of `ino` from `from_block` on are cut: none still flying may land.
        Returns them by block number."""
        grounded = {}
        for key in [k for k in self._flying if k[0] == ino and k[1] >= from_block]:
            grounded[key[1]] = self._flying.pop(key)
            self._superseded.add(key)
        return grounded

    def _delete_blocks(self, txn: lmdb.Transaction, ino: int, from_block: int) -> None:
        """Cut content (not eviction): the blocks go, and their checksums with them."""
        for blockno in delete_range(txn, self._db, q(ino), q(from_block)):
            key = (ino, unq(blockno))
            self.index.on_failure(self._restorer(key))
            self._unaccount(key)
            self._sound.discard(key)
            self._damaged.discard(key)
        self.index.cut_block_hashes(txn, ino, from_block)

    def _store(self, txn: lmdb.Transaction, key: BlockKey, data: bytes | bytearray,
               digest: bytes | None = None) -> None:
        value, length = sealed(data, digest)
        txn.put(q(key[0]) + q(key[1]), value, db=self._db)
        self.index.on_failure(self._restorer(key))
        self._account(key, length)

    def _restorer(self, key: BlockKey) -> Callable[[], None]:
        """What puts a block's bookkeeping back as it is now, if the write changing it
        fails: a damaged block taken for sound would be served."""
        length, sound, damaged = self._lru.get(key), key in self._sound, key in self._damaged

        def restore() -> None:
            self._unaccount(key)
            if length is not None:
                self._account(key, length, sound=False)
            (self._sound.add if sound else self._sound.discard)(key)
            (self._damaged.add if damaged else self._damaged.discard)(key)
        return restore

    def _account(self, key: BlockKey, length: int, sound: bool = True) -> None:
        """A block of `length` bytes is now stored under `key`, as it was written (0: a
        hole, which takes no room and is never evicted); `sound` unless found at startup,
        unchecked."""
        self._unaccount(key)
        if length:
            self._lru[key] = length
            self.stored_bytes += length
            self._held[key[0]] += length
        if sound:
            self._sound.add(key)
            self._damaged.discard(key)

    def _unaccount(self, key: BlockKey) -> None:
        length = self._lru.pop(key, 0)
        if length:
            self.stored_bytes -= length
            self._held[key[0]] -= length
            if not self._held[key[0]]:
                del self._held[key[0]]

    # committing and evicting

    def commit(self) -> None:
        """Write every buffered block and deferred inode in one transaction."""
        with self.index.write() as txn:
            self.commit_in(txn)

    def commit_in(self, txn: lmdb.Transaction) -> None:
        """Store every buffered block here (settle() first sends the full ones to the
        worker thread, so these are mostly the last pieces of files). The buffers go once
        the transaction has committed: if it fails (a full disk), they are kept."""
        for ino, buffers in self._dirty.items():
            part = [((ino, blockno), buffer) for blockno, buffer in sorted(buffers.items())]
            self._feed_in_order(part)
            for (key, buffer), digest in zip(part, self._checksums(part), strict=True):
                self._store(txn, key, buffer, digest)
                self.index.set_block_hash(txn, ino, key[1], UNREVISED,
                                          digest if self._whole(buffer) else None)
        self.index.after_commit(self._stored_all)
        self.index.write_deferred(txn)

    def _stored_all(self) -> None:
        self._dirty.clear()
        self._dirty_bytes = 0

    def excess(self, writing: Iterable[int]) -> int:
        """By how many bytes the cache is past its size (0 or less: it is not), not counting
        the files being written (`writing`): a file larger than the cache can still be
        written, to be uploaded once closed, but closed files waiting for uploads cannot
        pile up past it."""
        total = self.stored_bytes + self.unstored_bytes
        if total <= self.size_limit:
            return 0
        for ino in set(writing):
            total -= self._held[ino] + sum(len(b) for b in self._dirty.get(ino, {}).values()) \
                + sum(len(b) for key, b in self._flying.items() if key[0] == ino)
        return total - self.size_limit

    def _whole(self, buffer: Buffer) -> bool:
        """Whether a buffer holds a full block (settled beside the mount, its checksum that
        of the revision's block), not a piece of one."""
        return len(buffer) == self.block_size

    def over_dirty_limit(self) -> bool:
        """Whether the buffers are to go to LMDB (relieve): past half the write buffer, so
        that the half on its way there and the half filled meanwhile make the write buffer
        between them, not twice it."""
        return self._dirty_bytes > self.write_buffer // 2

    async def relieve(self) -> None:
        """Bring the buffers back under half the write buffer (over_dirty_limit). The
        full blocks go to the worker thread (settle); while it writes a batch, writes
        go on filling the other half without waiting for it, as long as the two halves
        stay within the write buffer. Pieces of blocks too many to wait go here."""
        if self._flight.locked() and self.unstored_bytes <= self.write_buffer:
            return
        await self.settle()
        if self.over_dirty_limit() and not any(
                self._whole(buffer)
                for buffers in self._dirty.values() for buffer in buffers.values()):
            self.commit()

    async def settle(self) -> None:
        """Hand every full buffered block to a worker thread that hashes it and writes
        it to LMDB, so that this runs beside the mount instead of holding it up; return
        once every block in flight has landed. Called before anything is committed or
        made durable."""
        async with self._flight:
            batch = []
            for ino, buffers in self._dirty.items():
                for blockno in [b for b, buffer in buffers.items() if self._whole(buffer)]:
                    buffer = buffers.pop(blockno)
                    self._dirty_bytes -= len(buffer)
                    self._flying[(ino, blockno)] = buffer
                    batch.append(((ino, blockno), buffer))
            if not batch:
                return
            log.debug("writing %d full blocks from a worker thread", len(batch))
            try:
                written = await trio.to_thread.run_sync(self._write_batch, sorted(batch))
            except BaseException:
                self._reclaim(batch)
                raise
            for key, length in written:
                if key not in self._superseded:  # a cut block was deleted after it landed
                    self._account(key, length)
            for key, buffer in batch:
                if self._flying.get(key) is buffer:
                    del self._flying[key]
                self._superseded.discard(key)

    def _reclaim(self, batch: list[tuple[BlockKey, Buffer]]) -> None:
        """A batch that did not land (a full disk) goes back to the buffers, where nothing
        newer took its place."""
        for key, buffer in batch:
            if self._flying.get(key) is buffer:
                del self._flying[key]
                if key not in self._superseded:
                    buffers = self._dirty.setdefault(key[0], {})
                    if key[1] not in buffers:
                        buffers[key[1]] = buffer
                        self._dirty_bytes += len(buffer)
            self._superseded.discard(key)

    def _write_batch(self, batch: list[tuple[BlockKey, Buffer]]) -> list[tuple[BlockKey, int]]:
        """On a worker thread, the blocks in order. Holding LMDB's writer lock, it skips
        what was superseded: the newer content is written after it, or was already.

        A few blocks to a transaction: LMDB holds what a transaction writes in memory of
        its own until the commit, a copy of the whole batch (the write buffer, 64 MiB)
        if it were one. Each block lands with its checksum, so a crash between two
        leaves blocks stored that recovery makes a revision of, as any crash does."""
        written = []
        step = max(1, BATCH_TRANSACTION // self.block_size)
        parts = [batch[first:first + step] for first in range(0, len(batch), step)]
        # Hashing a block takes about as long as LMDB's copies of it: the next part is
        # hashed on a thread of its own while this one is written.
        hashing = _HASHING.submit(self._checksums, parts[0])
        feeding = [_FEEDING.submit(self._feed_in_order, part) for part in parts]
        try:
            for number, part in enumerate(parts):
                digests = hashing.result()
                if number + 1 < len(parts):
                    hashing = _HASHING.submit(self._checksums, parts[number + 1])
                with self.index.env.begin(write=True) as txn:
                    for (key, buffer), digest in zip(part, digests, strict=True):
                        if key not in self._superseded:
                            value, length = sealed(buffer, digest)
                            txn.put(q(key[0]) + q(key[1]), value, db=self._db)
                            self.index.set_block_hash(txn, key[0], key[1], UNREVISED, digest)
                            written.append((key, length))
                self.index.sync_if_held_grew()
        finally:
            # a batch that failed goes back to the buffers, where writes may change it:
            # not while it is being hashed
            concurrent.futures.wait([hashing])
            concurrent.futures.wait(feeding)
        for fed in feeding:
            fed.result()
        return written

    def _checksums(self, part: list[tuple[BlockKey, Buffer]]) -> list[bytes]:
        """The SHA-256 of each block about to be stored. Only a full block's is also the
        checksum of that block of the revision (a piece may still grow, or end in a hole)."""
        return [zeros_sha256(len(buffer)) if all_zero(buffer) else hashlib.sha256(buffer).digest()
                for _, buffer in part]

    def _feed_in_order(self, part: list[tuple[BlockKey, Buffer]]) -> None:
        """The in-order hashes of the files learn of blocks about to be stored."""
        for key, buffer in part:
            with self._in_order.lock:
                if key not in self._superseded:
                    self._in_order.stored(key[0], key[1], buffer, full=self._whole(buffer))

    def revision_made(self, txn: lmdb.Transaction, inode: Inode, old_rev: int) -> None:
        """The stored content became revision inode.rev (after commit_in): the checksums
        of its blocks carry over, and the whole one is known if it was written in order."""
        self.index.carry_block_hashes(txn, inode.ino, old_rev, inode.rev)
        tail_length = inode.size % self.block_size
        tail = b""
        key = (inode.ino, inode.size // self.block_size)
        if tail_length:
            stored = self._stored(txn, key) or b""
            tail = bytes(stored[:tail_length]).ljust(tail_length, b"\0")  # a hole reads as zeros
        digest = self._in_order.finish(inode.ino, inode.size, self.block_size, tail)
        if tail_length and key in self._damaged:
            digest = None
        inode.sha256 = NO_HASH if digest is None else digest

    def discard(self, txn: lmdb.Transaction, key: BlockKey) -> None:
        """Forget one stored block, keeping its checksum (eviction, or damage a remote
        repairs): the caller marks its inode incomplete."""
        txn.delete(q(key[0]) + q(key[1]), db=self._db)
        self.index.on_failure(self._restorer(key))
        self._unaccount(key)
        self._sound.discard(key)
        self._damaged.discard(key)

    def has_dirty(self, ino: int) -> bool:
        return bool(self._dirty.get(ino)) or any(key[0] == ino for key in self._flying)

    def _fetched_only(self, ino: int) -> bool:
        """Whether the cache holds of this file only what it fetched from a remote: its
        content is not complete here (a file is made complete before it changes), so
        what goes can be fetched again, even before every remote holds it."""
        inode = self.index.get_inode(ino)
        return inode is not None and inode.nlink > 0 and not inode.complete

    def make_room(self, size: int) -> None:
        """Drop clean blocks until `size` more bytes and a write buffer's worth fit on the
        cache's disk: a cache whose size is past what its disk can take shrinks before
        the disk is called full. A disk too full to record even a drop has no room."""
        with contextlib.suppress(lmdb.Error):
            self.evict()
            missing = self.space.missing(size + self.write_buffer, self.unstored_bytes)
            if missing > 0:
                self._drop(2 * missing)  # LMDB reuses about half of what it frees (space.py)
        self.space.forget()

    def evict(self, excess: int | None = None, sparing: Collection[int] = ()) -> int:
        """Drop clean blocks, least recently used first, until the cache fits (or `excess`
        bytes went, none of them of the files `sparing`, which excess() did not count);
        returns bytes freed."""
        if excess is None:
            excess = self.stored_bytes - self.size_limit
        if excess <= 0:
            self._over_size = False
            return 0
        freed = self._drop(excess, sparing)
        if not freed:
            if not self._over_size:  # once, not at every write until the uploads are done
                log.warning("cache over its size (%d bytes) by %d bytes and nothing can be "
                            "evicted yet: waiting for uploads", self.size_limit, excess)
            self._over_size = True
            return 0
        self._over_size = False
        return freed

    def _drop(self, excess: int, sparing: Collection[int] = ()) -> int:
        """Drop clean blocks every remote holds (or that came from one), least recently
        used first, until `excess` bytes went, none of the files `sparing`; returns bytes
        freed."""
        freed = 0
        verdicts: dict[int, bool] = {}
        victims = []
        for key, length in self._lru.items():
            if freed >= excess:
                break
            ino = key[0]
            if ino not in verdicts:
                verdicts[ino] = ino not in self._kept and ino not in sparing \
                    and not self.has_dirty(ino) \
                    and (self._fetched_only(ino) or self._evictable(ino))
            if verdicts[ino]:
                victims.append(key)
                freed += length
        if not victims:
            return 0
        with self.index.write() as txn:
            for key in victims:
                self.discard(txn, key)
            for ino in {key[0] for key in victims}:
                inode = self.index.get_inode(ino, txn)
                if inode is not None and inode.complete:
                    inode.flags &= ~FLAG_COMPLETE
                    self.index.put_inode(txn, inode)
        return freed
