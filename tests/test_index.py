"""The index on its own: what an index made by an earlier version becomes when opened,
what it finds of a remote's files below a folder, and which inode objects it hands out."""

from __future__ import annotations

import hashlib
import os
import weakref
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from onitufs.index import SCHEMA_VERSION, Index, Inode, MirrorEntry, q

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


def test_an_index_of_schema_4_reads_its_records_and_older_onitufs_cannot_open_it(
        tmp_path: Path) -> None:
    """Schema 4 kept no checksum in what a remote holds: its records read as unknown
    ones. Those written since carry it, which schema 4's onitufs could not read: the
    schema number says so."""
    index = Index(tmp_path, 1 << 24, BLOCK)
    rid = index.remote_id("r")
    digest = hashlib.sha256(b"content").hexdigest()
    with index.write() as txn:
        txn.put(rid.to_bytes(4, "big") + q(10), b'{"a": {"rev": 3, "token": "t", "fid": null, '
                b'"kind": "file", "attrs": null, "changed": 7, "racy": false}}',
                db=index.db["mirror"])
        index.set_mirror(txn, rid, 11, "b", MirrorEntry(4, "u", None, "file", sha256=digest))
        txn.put(b"schema", q(4), db=index.db["meta"])
    index.close()

    index = Index(tmp_path, 1 << 24, BLOCK)
    try:
        with index.begin() as txn:
            assert txn.get(b"schema", db=index.db["meta"]) == q(SCHEMA_VERSION) != q(4)
            assert index.mirror(rid, 10, txn) == {"a": MirrorEntry(3, "t", None, "file",
                                                                   changed=7)}
            assert index.mirror(rid, 11, txn)["b"].sha256 == digest
    finally:
        index.close()


# Names that sort right beside "a/..." without being below "a": "a" itself, "a b", "a-b",
# "a.txt" (before "/"), "a0", "aé" (after it), and "b/a/x", whose folder has a folder "a".
HELD = ["a", "a/x", "a/y", "a/sub", "a/sub/z", "a b", "a b/x", "a-b", "a.txt", "a0", "a0/x",
        "aé", "aé/x", "b", "b/a", "b/a/x"]


def hold(index: Index, paths: list[str]) -> int:
    """The index's remote "r" (its id returned) holds `paths`, inodes from 10 on, each at
    revision ino; a path with others below it is a folder."""
    rid = index.remote_id("r")
    with index.write() as txn:
        for ino, path in enumerate(paths, start=10):
            folder = any(other.startswith(path + "/") for other in paths)
            index.set_mirror(txn, rid, ino, path,
                             MirrorEntry(ino, "t", None, "dir" if folder else "file"))
    return rid


@pytest.fixture
def holding(tmp_path: Path) -> Iterator[tuple[Index, int]]:
    """An index whose remote "r" holds HELD."""
    index = Index(tmp_path, 1 << 24, BLOCK)
    try:
        yield index, hold(index, HELD)
    finally:
        index.close()


def test_mirror_below_finds_exactly_what_is_below(holding: tuple[Index, int]) -> None:
    index, rid = holding

    def below(*folders: str) -> list[str]:
        with index.begin() as txn:
            return sorted(path for _, path, _ in index.mirror_below(rid, folders, txn))

    for decoded in (False, True):  # from LMDB's records, then as kept up to date in memory
        if decoded:
            with index.begin() as txn:
                index.mirror_entries(rid, txn)
        assert index.mirror_in_memory(rid) == decoded
        assert below("a") == ["a/sub", "a/sub/z", "a/x", "a/y"]
        assert below("a/sub") == ["a/sub/z"]
        assert below("a", "a/sub") == ["a/sub", "a/sub/z", "a/x", "a/y"]
        assert below("a b", "aé", "b/a") == ["a b/x", "aé/x", "b/a/x"]
        assert below("a/x", "nothing") == []
        assert below("a0") == ["a0/x"]
        if not decoded:
            with index.write() as txn:  # a folder moved: what was below it goes with it
                a0 = HELD.index("a0") + 10
                index.move_mirror(txn, rid, a0, "a0", "a0-moved",
                                  MirrorEntry(1, "t", None, "dir"))
                index.move_mirror(txn, rid, a0, "a0-moved", "a0",
                                  MirrorEntry(1, "t", None, "dir"))
    with index.write() as txn:
        index.move_mirror(txn, rid, 10, "a", "c", MirrorEntry(1, "t", None, "dir"))
    assert below("a") == []
    assert below("c") == ["c/sub", "c/sub/z", "c/x", "c/y"]
    with index.begin() as txn:
        assert sorted(index.mirror_entries(rid, txn)) == sorted(
            ["c", "c/sub", "c/sub/z", "c/x", "c/y", *HELD[5:]])


def test_a_path_is_one_inodes_in_the_records_by_path_and_by_inode(
        holding: tuple[Index, int]) -> None:
    """A remote that moves a folder where it held another one (deleted, and the deletion
    not heard of yet: a folder made again many times a second) holds the moved folder's
    files at those paths; the inodes it held there before no longer read as held there,
    or reads would ask the remote for paths no listing can take back."""
    index, rid = holding
    b, b_a, b_a_x = (HELD.index(path) + 10 for path in ("b", "b/a", "b/a/x"))
    a, a_x = HELD.index("a") + 10, HELD.index("a/x") + 10
    for decoded in (False, True):
        with index.write() as txn:
            if decoded:
                index.mirror_entries(rid, txn)
            index.move_mirror(txn, rid, a, "a", "b/a", MirrorEntry(1, "t", None, "dir"))
        with index.begin() as txn:
            assert index.mirror_ino(rid, "b/a", txn) == a
            assert index.mirror_ino(rid, "b/a/x", txn) == a_x
            assert "b/a" not in index.mirror(rid, b_a, txn)
            assert "b/a/x" not in index.mirror(rid, b_a_x, txn)
            assert index.mirror(rid, b, txn) == {"b": MirrorEntry(b, "t", None, "dir")}
            by_path = index.mirror_entries(rid, txn)
        for ino in range(10, 10 + len(HELD)):
            with index.begin() as txn:
                for path in index.mirror(rid, ino, txn):
                    assert index.mirror_ino(rid, path, txn) == ino and path in by_path
        with index.write() as txn:  # back, for the same with the mirror in memory
            index.move_mirror(txn, rid, a, "b/a", "a", MirrorEntry(1, "t", None, "dir"))
            for ino, path in ((b_a, "b/a"), (b_a_x, "b/a/x")):
                index.set_mirror(txn, rid, ino, path,
                                 MirrorEntry(ino, "t", None, "dir" if ino == b_a else "file"))


# A folder whose path is longer than the part of it its records' keys begin with: its
# own key, a sibling's and what is below it all begin alike.
LONG = "d" * 200 + "/" + "e" * 200
LONG_HELD = ["d" * 200, LONG, LONG + "/x", LONG + "/sub", LONG + "/sub/" + "y" * 250,
             LONG + "2", LONG + "2/x", LONG[:-1] + "f"]


def test_mirror_below_finds_what_is_below_a_long_path(tmp_path: Path) -> None:
    index = Index(tmp_path, 1 << 24, BLOCK)
    try:
        rid = hold(index, LONG_HELD)
        answers = []
        for _ in ("from the records", "decoded"):
            with index.begin() as txn:
                answers.append([path for _, path, _ in index.mirror_below(rid, [LONG], txn)])
                index.mirror_entries(rid, txn)
        assert answers[0] == answers[1] == [LONG + "/sub", LONG + "/sub/" + "y" * 250,
                                            LONG + "/x"]
    finally:
        index.close()


def test_an_index_of_schema_3_finds_what_is_below_a_folder_in_its_records(
        tmp_path: Path) -> None:
    """Schema 3 keyed the records of paths by a hash of the path: opened, they are keyed
    anew, and found by path and below a folder as before."""
    index = Index(tmp_path, 1 << 24, BLOCK)
    rid = hold(index, HELD)
    with index.write() as txn:
        txn.drop(index.db["rpaths"], delete=False)
        for ino, path in enumerate(HELD, start=10):
            old_key = rid.to_bytes(4, "big") + hashlib.blake2b(
                os.fsencode(path), digest_size=16).digest()
            txn.put(old_key, q(ino) + os.fsencode(path), db=index.db["rpaths"])
        txn.put(b"schema", q(3), db=index.db["meta"])
    index.close()

    index = Index(tmp_path, 1 << 24, BLOCK)
    try:
        with index.begin() as txn:
            assert txn.get(b"schema", db=index.db["meta"]) == q(SCHEMA_VERSION)
            assert txn.stat(index.db["rpaths"])["entries"] == len(HELD)
            assert [index.mirror_ino(rid, path, txn) for path in HELD] == list(
                range(10, 10 + len(HELD)))
            assert [path for _, path, _ in index.mirror_below(rid, ["a"], txn)] == [
                "a/sub", "a/sub/z", "a/x", "a/y"]
        assert not index.mirror_in_memory(rid)
    finally:
        index.close()


def test_a_mirror_not_decoded_is_answered_path_by_path(holding: tuple[Index, int]) -> None:
    """A remote's few changes after a start are compared with what the index says it holds
    at their paths, read from LMDB: the same answer as the decoded mirror gives, without
    decoding all it holds."""
    index, rid = holding
    asked = ["a/x", "a b", "aé/x", "nothing", "a/x/nothing", ""]
    with index.begin() as txn:
        from_records = index.mirror_at(rid, asked, txn)
    assert not index.mirror_in_memory(rid)
    assert from_records == {"a/x": MirrorEntry(11, "t", None, "file"),
                            "a b": MirrorEntry(15, "t", None, "dir"),
                            "aé/x": MirrorEntry(22, "t", None, "file")}
    with index.begin() as txn:
        index.mirror_entries(rid, txn)  # decodes it
        assert index.mirror_in_memory(rid)
        assert index.mirror_at(rid, asked, txn) == from_records


@pytest.mark.parametrize("decoded", ["before the changes", "after the changes"])
def test_a_mirror_decoded_aside_takes_in_what_changed_meanwhile(holding: tuple[Index, int],
                                                                 decoded: str) -> None:
    """A mirror is decoded on a worker thread while the mount goes on changing it, and on
    a busy mount it always is: what changed meanwhile (added, changed, deleted, or in a
    write that failed) is in the mirror kept, whether the decode's read came before the
    changes or after them. Two decodes of one mirror at once each take in their own."""
    index, rid = holding
    first, second = index.watch_mirror(rid), index.watch_mirror(rid)
    known = index.decode_mirror(rid) if decoded == "before the changes" else None
    with index.write() as txn:
        index.set_mirror(txn, rid, 11, "a/x", None)
        index.set_mirror(txn, rid, 99, "new", MirrorEntry(2, "u", None, "file"))
        index.set_mirror(txn, rid, 12, "a/y", MirrorEntry(5, "v", "f", "file"))
    with pytest.raises(lmdb.MapFullError), index.write() as txn:
        index.set_mirror(txn, rid, 13, "a/sub", None)
        index.set_mirror(txn, rid, 98, "never", MirrorEntry(3, "w", None, "file"))
        raise lmdb.MapFullError("the commit fails")
    if known is None:
        known = index.decode_mirror(rid)
    assert first == second == {"a/x", "new", "a/y", "a/sub", "never"}
    index.keep_mirror(rid, None, second)  # the other decode failed: nothing kept
    assert not index.mirror_in_memory(rid)
    index.keep_mirror(rid, known, first)
    assert index.mirror_in_memory(rid)
    with index.begin() as txn:
        kept = {path: (ino, entry) for ino, path, entry in index.mirror_all(rid, txn)}
    assert kept == dict(index.decode_mirror(rid))  # as LMDB holds it now
    assert "a/x" not in kept and kept["new"][0] == 99 and kept["a/y"][1].rev == 5
    assert "a/sub" in kept and "never" not in kept


def test_an_inode_held_while_the_index_lets_go_of_it_stays_the_one_handed_out(
        tmp_path: Path) -> None:
    """A write holds its file's inode while it waits for a remote; meanwhile a walk of
    65,536 other files pushes it out of the decoded inodes, and another write changes the
    file. Both must change the same object, or the first, written back, undoes the
    second. An inode nothing holds is let go of."""
    index = Index(tmp_path, 1 << 30, BLOCK)
    try:
        with index.write() as txn:
            index.put_inode(txn, Inode(9, 0o100644, 0, 0, 1, size=3))
            index.put_inode(txn, Inode(10, 0o100644, 0, 0, 1, size=5))
        unheld = weakref.ref(index.get_inode(9))
        held = index.get_inode(10)
        assert held is not None and unheld() is not None
        with index.write() as txn:
            for ino in range(11, 11 + 65_536):
                index.put_inode(txn, Inode(ino, 0o100644, 0, 0, 1))
        assert unheld() is None
        other = index.get_inode(10)
        assert other is held
        other.size = 7
        with index.write() as txn:
            index.put_inode(txn, held)
        assert index.get_inode(10) is held and held.size == 7
        with index.begin() as txn:
            raw = txn.get(q(10), db=index.db["inodes"])
            assert raw is not None and Inode.unpack(10, raw).size == 7
    finally:
        index.close()


def test_an_inode_held_across_a_failed_write_stays_the_one_handed_out(tmp_path: Path) -> None:
    """An upload or a write waiting for a fetch holds its file's inode; meanwhile a commit
    fails (a full disk). The inodes that write had changed go back to what LMDB holds, in
    place: a second object for the file would take the next write's changes, and the
    first, written back after the upload, would undo them. One that write made is gone,
    one it deleted is back."""
    index = Index(tmp_path, 1 << 30, BLOCK)
    try:
        with index.write() as txn:
            for ino in (9, 10, 12):
                index.put_inode(txn, Inode(ino, 0o100644, 0, 0, 1, size=3))
        uploading, renamed, unlinked = (index.get_inode(ino) for ino in (9, 10, 12))
        assert uploading is not None and renamed is not None and unlinked is not None
        with pytest.raises(lmdb.MapFullError), index.write() as txn:
            renamed.ctime_ns, renamed.nlink = 5, 2
            index.put_inode(txn, renamed)
            index.put_inode(txn, Inode(11, 0o100644, 0, 0, 1))
            unlinked.nlink = 0
            index.delete_inode(txn, 12)
            raise lmdb.MapFullError("the commit fails")
        writing = index.get_inode(9)
        assert writing is uploading
        writing.size = 7
        index.defer_inode(writing)
        assert index.get_inode(10) is renamed and (renamed.ctime_ns, renamed.nlink) == (0, 1)
        assert index.get_inode(11) is None
        assert index.get_inode(12) is unlinked and unlinked.nlink == 1
        with index.write() as txn:
            index.write_deferred(txn)
        with index.write() as txn:  # the upload's end, writing back what it holds
            index.put_inode(txn, uploading)
        with index.begin() as txn:
            raw = txn.get(q(9), db=index.db["inodes"])
            assert raw is not None and Inode.unpack(9, raw).size == 7
        index.defer_inode(unlinked)
        with index.write() as txn:  # a deferred inode deleted is gone for good
            index.delete_inode(txn, 12)
        assert index.get_inode(12) is None
    finally:
        index.close()


def test_a_failed_write_takes_back_its_changes_to_a_deferred_inode(tmp_path: Path) -> None:
    """A file read (its atime deferred) that a remote's newer version replaces while the
    disk is full: the replacement's commit fails. The file keeps its name and its atime,
    not the name it lost in the failed write: written with the next commit, that would
    leave it named with no link (and a second try took nlink below 0, failing every
    listing of that remote)."""
    index = Index(tmp_path, 1 << 30, BLOCK)
    try:
        with index.write() as txn:
            index.put_inode(txn, Inode(9, 0o100644, 0, 0, 1, size=3))
        read = index.get_inode(9)
        assert read is not None
        read.atime_ns = 5
        index.defer_inode(read)
        for _ in range(2):
            with pytest.raises(lmdb.MapFullError), index.write() as txn:
                read.nlink -= 1
                read.ctime_ns = 6
                index.put_inode(txn, read)
                raise lmdb.MapFullError("the commit fails")
            assert index.get_inode(9) is read
            assert (read.nlink, read.ctime_ns, read.atime_ns) == (1, 0, 5)
        with index.write() as txn:
            index.write_deferred(txn)
        with index.begin() as txn:
            raw = txn.get(q(9), db=index.db["inodes"])
        assert raw is not None
        stored = Inode.unpack(9, raw)
        assert (stored.nlink, stored.ctime_ns, stored.atime_ns) == (1, 0, 5)
    finally:
        index.close()

