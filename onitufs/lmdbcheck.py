"""A structural check of an LMDB data file, made with plain reads before LMDB maps it.

LMDB maps data.mdb into memory and follows the page numbers it finds there
as they are: a file cut short (a full disk, a copy that stopped half way)
kills the process with SIGBUS at the first page past its end, and a page
overwritten with other bytes aborts it inside liblmdb (a failed assertion)
or sends it reading anywhere in the map. Neither can be caught in Python.
So before the environment is opened, `check` reads what LMDB would follow,
with os.pread, and says what is wrong in a few words:

- the two meta pages, as LMDB reads them (magic, data version, page size),
  and the newer of the two, the one LMDB uses: its last page number;
- every page of the free-page tree, of the main tree and of each named
  database's tree: the page number it stores, its kind (a branch above the
  depth the database records, a leaf at it), the bounds of its free space,
  of every node and of every key and value, and that it lies within the
  file and belongs to one tree only;
- the first page of every overflow run (a large value: the cached blocks),
  and that the whole run lies within the file; the content of a run is
  the business of the SHA-256 every block carries;
- the page lists the free-page tree holds: LMDB hands those pages out
  again, so each must be one of its page numbers.

Key order and the values are not checked: damage there gives wrong answers,
not a crash, and the index's own checks (fsck, the blocks' checksums) see to
those. The layout is that of LMDB 0.9 on a 64-bit little-endian machine, as
py-lmdb bundles it; a file of LMDB 1.0's layout is left to LMDB.

It reads every page of the trees once, and the first page of every overflow
run: for an index of 100,000 files (1.1 million entries, 90,000 cached
blocks in runs) about 0.4 s of CPU time; tests/test_damaged_index.py
prints the figure. A file nothing has written to since a clean stop is
not checked again (see cleanstop.py).
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1  # LMDB 0.9's MDB_DATA_VERSION
HEADER = 16  # PAGEHDRSZ: the page header, and where a meta page's record starts
P_BRANCH, P_LEAF, P_OVERFLOW, P_META, P_LEAF2 = 0x01, 0x02, 0x04, 0x08, 0x20
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
MDB_DUPSORT = 0x04
NO_ROOT = (1 << 64) - 1  # P_INVALID: an empty database
MAX_DEPTH = 32  # CURSOR_STACK: deeper trees cannot be walked by LMDB either
NODE = 8  # a node's header, before its key

_PAGE = struct.Struct("<QHHHH")  # page number, key size (LEAF2), flags, lower, upper
_OVERFLOW = struct.Struct("<Q2xHI")  # page number, flags, pages in the run
_META = struct.Struct("<II16x")  # magic, version (address and map size skipped)
_DB = struct.Struct("<IHHQQQQQ")  # pad (page size in the free DB's), flags, depth, three
#                                   page counts, entries, root
_TAIL = struct.Struct("<QQ")  # last page number, transaction id
_NODE = struct.Struct("<IHH")  # value size (a branch: child page, low 32 bits), flags (a
#                                branch: the child's high bits), key size
_PGNO = struct.Struct("<Q")
META_SIZE = HEADER + _META.size + 2 * _DB.size + _TAIL.size


class Damage(Exception):
    """What is wrong with the file, in a few words."""


def check(path: Path) -> None:
    """Raise Damage if the LMDB data file `path` is damaged in a way that would make LMDB
    crash or read outside its pages; nothing if it is sound, empty or missing (LMDB makes
    a new one then)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    except OSError as error:
        raise Damage(f"{path.name} cannot be read: {error.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size:
            _Walk(fd, size).run()
    except OSError as error:
        raise Damage(f"{path.name} cannot be read: {error.strerror}") from None
    finally:
        os.close(fd)


def read_metas(fd: int) -> tuple[int, list[bytes]] | None:
    """The page size of the LMDB data file open at `fd` and its two meta pages' records
    (META_SIZE bytes each, the page header first), as they are; None for a file of LMDB
    1.0's layout."""
    first = os.pread(fd, META_SIZE, 0)
    if len(first) < META_SIZE:
        raise Damage("data.mdb is shorter than its first page")
    if _META.unpack_from(first, HEADER)[0] != MAGIC:
        if struct.unpack_from("<I", first, HEADER + 8)[0] == MAGIC:
            return None  # LMDB 1.0: a 24-byte page header
        raise Damage("data.mdb does not start with an LMDB meta page")
    psize = page_size(first)
    if psize < 512 or psize > 0x8000 or psize & (psize - 1):
        raise Damage(f"meta page 0 is damaged: page size {psize}")
    second = os.pread(fd, META_SIZE, psize)
    if len(second) < META_SIZE:
        raise Damage("data.mdb is shorter than its meta pages")
    return psize, [first, second]


def page_size(record: bytes) -> int:
    """The page size a meta page's record (see read_metas) gives: its free-page database's
    record keeps it where other databases keep a pad."""
    return int(_DB.unpack_from(record, HEADER + _META.size)[0])


def meta_txnid(record: bytes) -> int:
    """The transaction a meta page's record (see read_metas) was written by."""
    return int(_TAIL.unpack_from(record, META_SIZE - _TAIL.size)[1])


def as_meta_page(record: bytes, number: int) -> bytes:
    """A meta page's record made the record of meta page `number` (0 or 1)."""
    return _PGNO.pack(number) + record[_PGNO.size:]


class _Walk:
    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.psize = 0
        self.last = 0  # the last page number the newer meta page records
        self.limit = 0  # page numbers below it are pages of the index and of the file
        self.used = bytearray()  # 1 for every page of a tree met so far
        self.runs: list[tuple[int, int, bool]] = []  # overflow runs: page, value size, keep
        self.free_lists: list[bytes] = []

    def run(self) -> None:
        if sys.byteorder != "little" or struct.calcsize("P") != 8:
            return  # another layout than the one this reads
        meta = self.metas()
        if meta is None:
            return
        free, main = meta
        self.limit = min(self.last + 1, self.size // self.psize)
        self.used = bytearray(self.limit)
        self.tree("the free-page list", free, free_list=True)
        named: list[tuple[str, tuple[int, ...]]] = []
        self.tree("the main database", main, named=named)
        for name, db in named:
            self.tree(f"database {name}", db)
        self.overflow()
        for pages in self.free_lists:
            self.free_list(pages)

    # meta pages

    def metas(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """The free and main databases' records of the newer meta page; None for a file of
        LMDB 1.0's layout."""
        read = read_metas(self.fd)
        if read is None:
            return None
        self.psize, pages = read
        records = []
        for number, page in enumerate(pages):
            stored, _, flags, _, _ = _PAGE.unpack_from(page)
            magic, version = _META.unpack_from(page, HEADER)
            at = HEADER + _META.size
            free, main = _DB.unpack_from(page, at), _DB.unpack_from(page, at + _DB.size)
            last, txnid = _TAIL.unpack_from(page, at + 2 * _DB.size)
            if stored != number or not flags & P_META or magic != MAGIC or free[0] != self.psize:
                raise Damage(f"meta page {number} is damaged")
            if version != DATA_VERSION:
                raise Damage(f"meta page {number} is damaged: LMDB data version {version}")
            records.append((txnid, last, free, main))
        _, last, free, main = records[1] if records[0][0] < records[1][0] else records[0]
        if last < 1:
            raise Damage("the newer meta page is damaged: last page number")
        self.last = last
        return free, main

    # trees

    def outside(self, pgno: int, count: int = 1) -> Damage:
        """What is wrong with pages pgno .. pgno+count-1, some of which are not below
        `limit`."""
        if pgno < 2 or pgno + count > self.last + 1:
            return Damage(f"a page number is damaged: {pgno}, past the last page, {self.last}")
        return Damage(f"data.mdb is shorter than the pages it uses: it ends at page "
                      f"{self.size // self.psize}, page {pgno + count - 1} is in use")

    def tree(self, what: str, db: tuple[int, ...], free_list: bool = False,
             named: list[tuple[str, tuple[int, ...]]] | None = None) -> None:
        """Every page of one B-tree, from the root down (its overflow runs are checked
        once every tree has been walked)."""
        _, db_flags, depth, _, _, _, _, root = db
        if root == NO_ROOT:
            return
        if not 1 <= depth <= MAX_DEPTH:
            raise Damage(f"{what} is damaged: depth {depth}")
        fd, psize, limit, used = self.fd, self.psize, self.limit, self.used
        last_node = psize - NODE
        unpack_node = _NODE.unpack_from
        stack = [(root, 1)]
        while stack:
            pgno, level = stack.pop()
            if not 2 <= pgno < limit:
                raise self.outside(pgno)
            if used[pgno]:
                raise Damage(f"page {pgno} is used twice")
            used[pgno] = 1
            page = os.pread(fd, psize, pgno * psize)
            if len(page) < psize:
                raise self.outside(self.size // psize)  # cut while being read
            stored, key_size, flags, lower, upper = _PAGE.unpack_from(page)
            if stored != pgno:
                raise Damage(f"page {pgno} is damaged: it says it is page {stored}")
            if not HEADER <= lower <= upper <= psize or lower & 1:
                raise Damage(f"page {pgno} is damaged: bounds {lower}-{upper}")
            count = (lower - HEADER) >> 1
            if flags == P_LEAF | P_LEAF2:  # fixed-size keys, no nodes (dupfixed)
                if level != depth or key_size * count > psize - HEADER:
                    raise Damage(f"page {pgno} is damaged: a leaf of fixed keys")
                continue
            pointers = struct.unpack_from(f"<{count}H", page, HEADER)
            if count and (min(pointers) < upper or max(pointers) > last_node):
                raise Damage(f"page {pgno} is damaged: a node out of bounds")
            if flags == P_BRANCH:
                if level >= depth or not count:
                    raise Damage(f"page {pgno} is damaged: a branch at depth {level} of {depth}")
                for at in pointers:
                    low, high, key = unpack_node(page, at)
                    if at + key > last_node:
                        raise Damage(f"page {pgno} is damaged: a key out of bounds")
                    stack.append((low | high << 32, level + 1))
                continue
            if flags != P_LEAF:
                raise Damage(f"page {pgno} is damaged: not a tree page, flags {flags:#x}")
            if level != depth:
                raise Damage(f"page {pgno} is damaged: a leaf at depth {level} of {depth}")
            for at in pointers:
                value, node_flags, key = unpack_node(page, at)
                if not node_flags and not free_list:  # a plain value: most of them
                    if at + key + value > last_node:
                        raise Damage(f"page {pgno} is damaged: a value out of bounds")
                    continue
                start = at + NODE + key
                if node_flags == F_BIGDATA:
                    if start + 8 > psize:
                        raise Damage(f"page {pgno} is damaged: a value out of bounds")
                    self.runs.append((_PGNO.unpack_from(page, start)[0], value, free_list))
                elif start + value > psize:
                    raise Damage(f"page {pgno} is damaged: a value out of bounds")
                elif free_list:
                    if node_flags or key != 8:
                        raise Damage(f"page {pgno} is damaged: a node of the free-page list")
                    self.free_lists.append(page[start:start + value])
                elif node_flags & F_SUBDATA and not node_flags & ~(F_SUBDATA | F_DUPDATA) \
                        and value == _DB.size and (node_flags & F_DUPDATA or named is not None):
                    db_record = _DB.unpack_from(page, start)
                    if node_flags & F_DUPDATA:
                        self.tree(what, db_record)  # one key's values, as a tree of their own
                    else:
                        assert named is not None
                        named.append((page[at + NODE:start].decode(errors="replace"), db_record))
                elif node_flags == F_DUPDATA and db_flags & MDB_DUPSORT and value >= HEADER:
                    pass  # one key's values, as a page inside the node: within bounds
                else:
                    raise Damage(f"page {pgno} is damaged: node flags {node_flags:#x}")

    def overflow(self) -> None:
        """The runs of overflow pages the trees' values are in, in the order of the file:
        each starts with the header of such a run, is long enough for its value, lies in
        the file, and shares no page with a tree or another run. The values of the free
        list (lists of pages) are kept."""
        fd, psize, limit, used = self.fd, self.psize, self.limit, self.used
        unpack = _OVERFLOW.unpack
        free = 2  # the first page no run before has used
        for pgno, length, keep in sorted(self.runs):
            need = (HEADER - 1 + length) // psize + 1
            if pgno < free:
                raise Damage(f"page {pgno} is used twice") if pgno >= 2 else self.outside(pgno)
            if pgno + need > limit:
                raise self.outside(pgno, need)
            stored, flags, count = unpack(os.pread(fd, _OVERFLOW.size, pgno * psize))
            # A run may be longer than its value needs: LMDB writes a smaller value into
            # the run it already has in the same transaction.
            if stored != pgno or flags != P_OVERFLOW or count < need:
                raise Damage(f"page {pgno} is damaged: not the overflow page a value needs")
            free = pgno + count
            if free > limit:
                raise self.outside(pgno, count)
            if used.find(1, pgno, free) >= 0:
                raise Damage(f"page {used.find(1, pgno, free)} is used twice")
            if keep:
                self.free_lists.append(os.pread(fd, length, pgno * psize + HEADER))

    def free_list(self, pages: bytes) -> None:
        """A list of free pages: a count, then as many page numbers, each a page of the
        index (it may lie past the end of the file: LMDB writes it before it uses it)."""
        if len(pages) < 8 or len(pages) % 8 or _PGNO.unpack_from(pages)[0] != len(pages) // 8 - 1:
            raise Damage("the free-page list is damaged: the length of a list")
        numbers = struct.unpack_from(f"<{len(pages) // 8 - 1}Q", pages, 8)
        if numbers and (min(numbers) < 2 or max(numbers) > self.last):
            raise Damage("the free-page list is damaged: a page number past the last page")
