"""The block cache on its own, over an index: what it keeps of a block read from a remote
while the file moves on."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import lmdb
import pytest
import trio

from onitufs.blockcache import BlockCache
from onitufs.index import Index, Inode

BLOCK = 64 * 1024
CACHE_SIZE = 1 << 24
FILE = 10
REG = 0o100644


def test_a_block_fetched_for_a_revision_the_file_left_is_not_kept(tmp_path: Path) -> None:
    """While a block of revision 3 is read from a remote, a commit fails (a full disk), and
    a remote's revision 4 is taken in under the same inode number, on the object the read
    holds: what comes back is revision 3's, and the cache, which keeps blocks by inode
    and block number, must not keep it as revision 4's."""
    index = Index(tmp_path, 1 << 24, BLOCK)
    old_content = b"3" * BLOCK
    with index.write() as txn:
        index.put_inode(txn, Inode(FILE, REG, 0, 0, 1, size=BLOCK, rev=3, flags=0))
    reader = index.get_inode(FILE)
    assert reader is not None

    async def fetch(inode: Inode, offset: int, length: int,
                    expected: bytes | None) -> tuple[bytes, bytes]:
        with contextlib.suppress(lmdb.MapFullError), index.write() as txn:
            txn.put(b"filler", bytes(1 << 25), db=index.db["meta"])  # more than the map holds
        taken_in = index.get_inode(FILE)
        assert taken_in is reader  # the one object, set back to what LMDB holds
        taken_in.rev = 4
        with index.write() as txn:
            index.put_inode(txn, taken_in)
        await trio.sleep(0)
        return old_content, hashlib.sha256(old_content).digest()

    cache = BlockCache(index, BLOCK, CACHE_SIZE, CACHE_SIZE, fetch, lambda ino: True)
    try:
        assert trio.run(cache.read, reader, 0, BLOCK) == old_content  # as the read asked
        current = index.get_inode(FILE)
        assert current is not None and current.rev == 4
        assert cache.cached_block(current, 0, BLOCK) is None, "revision 3's block kept as 4's"
        assert index.block_hash(FILE, 0, 4) is None
    finally:
        index.close()


@pytest.mark.parametrize("change", ["truncate", "drop"])
def test_a_cut_whose_write_fails_leaves_the_content_as_it_was(tmp_path: Path,
                                                              change: str) -> None:
    """A truncate (or a delete) whose transaction fails: the blocks it took out of the
    buffers come back, the one it cut grows back, and the bookkeeping of those it
    deleted or stored is as before. Before, the file read as cut (or lost what was
    buffered), and that went to the remotes with the next revision."""
    index = Index(tmp_path, 1 << 24, BLOCK)
    content = hashlib.sha256(b"seed").digest() * (3 * BLOCK // 32)
    with index.write() as txn:
        index.put_inode(txn, Inode(FILE, REG, 0, 0, 1, size=len(content)))
    inode = index.get_inode(FILE)
    assert inode is not None

    async def fetch(inode: Inode, offset: int, length: int,
                    expected: bytes | None) -> tuple[bytes, bytes]:
        raise AssertionError("nothing is read from a remote")

    cache = BlockCache(index, BLOCK, CACHE_SIZE, CACHE_SIZE, fetch, lambda ino: True)
    try:
        cache.write(inode, 0, content[:2 * BLOCK])
        cache.commit()  # blocks 0 and 1 stored
        cache.write(inode, 2 * BLOCK, content[2 * BLOCK:])  # block 2 buffered only
        stored = cache.stored_bytes
        with pytest.raises(lmdb.MapFullError), index.write() as txn:
            if change == "truncate":
                cache.truncate(txn, inode, BLOCK + 100)
            else:
                cache.drop(txn, FILE)
            txn.put(b"filler", bytes(1 << 25), db=index.db["meta"])  # more than the map holds
        assert trio.run(cache.read, inode, 0, len(content)) == content
        assert cache.stored_bytes == stored
        cache.commit()
        assert cache.stored_bytes == stored + BLOCK and cache.dirty_bytes == 0
        assert trio.run(cache.read, inode, 0, len(content)) == content
        with index.write() as txn:  # and one that commits still cuts
            cache.truncate(txn, inode, BLOCK + 100)
            inode.size = BLOCK + 100
            index.put_inode(txn, inode)
        assert trio.run(cache.read, inode, 0, len(content)) == content[:BLOCK + 100]
    finally:
        index.close()
