"""The index on its own: what an index made by an earlier version becomes when opened."""

from __future__ import annotations

from pathlib import Path

from onitufs.index import SCHEMA_VERSION, Index, Inode, q

BLOCK = 64 * 1024


def test_an_index_of_schema_1_drops_checksums_that_may_be_stale(tmp_path: Path) -> None:
    index = Index(tmp_path, 1 << 24, BLOCK)
    clean = Inode(10, 0o100644, 0, 0, 1, rev=3, rev_version=1, version=1)
    changed = Inode(11, 0o100644, 0, 0, 1, rev=4, rev_version=1, version=2)  # since rev 4
    with index.write() as txn:
        for inode in (clean, changed):
            index.put_inode(txn, inode)
            index.set_block_hash(txn, inode.ino, 0, inode.rev, b"h" * 32)
        txn.put(b"schema", q(1), db=index.db["meta"])
    index.close()

    index = Index(tmp_path, 1 << 24, BLOCK)
    try:
        assert index.block_hash(10, 0, 3) == b"h" * 32
        # schema 1 kept it beside changed content, which the next revision would adopt
        assert index.block_hash(11, 0, 4) is None
        with index.begin() as txn:
            assert txn.get(b"schema", db=index.db["meta"]) == q(SCHEMA_VERSION)
    finally:
        index.close()
