"""Two reports of one remote path applied at once, below the mount.

A remote's version that differs from the mount's is compared with it by content
before it is kept apart, and the comparison awaits the remote. Meanwhile another
report of the same path may be applied (a read that found the remote's copy
changed, beside a listing; two listings' events). Here the core's side of the Plug
(RemoteChanges) runs on its own index and tree, with a remote whose reads wait
until the test lets each go, so that the two comparisons overlap in a chosen order:
something no run through the kernel can order at will.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing

from onitufs.blockcache import BlockCache
from onitufs.index import ROOT_INO, Index, Inode
from onitufs.plug import Metadata
from onitufs.remote_changes import RemoteChanges
from onitufs.remotes import Remote
from onitufs.replicator import Replicator
from onitufs.tree import NewNode, Tree

from .conftest import MiB

SIZE = 100  # every version is this long: only their content tells them apart
MTIME_NS = 1_700_000_000_000_000_000


@dataclass
class Core:
    index: Index
    tree: Tree
    remote: Remote
    changes: RemoteChanges


@pytest.fixture
def core(one_remote: tuple[Index, Remote, Replicator]) -> Core:
    """RemoteChanges with one readable and writable remote, a, trusted, served by no driver."""
    index, remote, replicator = one_remote
    cache = BlockCache(index, MiB, 2**28, 2**24, replicator.fetch, replicator.replicated)
    replicator.cache = cache
    tree = Tree(index, cache, replicator.schedule, 0.0)
    return Core(index, tree, remote, RemoteChanges(tree, replicator, [remote]))


class HeldReads:
    """The remote's get_chunk: each version's content, served once the test lets it go."""

    def __init__(self) -> None:
        self.content: dict[str, bytes] = {}
        self.go: dict[str, trio.Event] = {}
        self.asked: dict[str, trio.Event] = {}

    def version(self, token: str, content: bytes) -> Metadata:
        self.content[token] = content
        self.go[token], self.asked[token] = trio.Event(), trio.Event()
        return Metadata(path="s0", size=len(content), mtime_ns=MTIME_NS, revision=token)

    async def call(self, handler: str, *args: Any) -> bytes:
        assert handler == "get_chunk", handler
        md, offset, size = args
        self.asked[md.revision].set()
        await self.go[md.revision].wait()
        return self.content[md.revision][offset:offset + size]


def names(core: Core) -> dict[str, Inode]:
    with core.index.begin() as txn:
        return {os.fsdecode(name): core.tree.inode(ino, txn)
                for name, ino in core.index.children(ROOT_INO, txn)}


def test_a_second_report_compared_meanwhile_never_moves_aside_the_version_the_first_took_in(
        core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mount's s0 (never on a) and a's s0 differ: a's later version takes the name, the
    mount's is kept aside. A second report of a's s0, a newer version compared with the
    mount's file while the first was, must not move aside what the first took in: that
    version's only copy was a's s0, just replaced, so it would be a name no read serves."""
    reads = HeldReads()
    monkeypatch.setattr(core.remote, "call", reads.call)
    ours_content = b"m" * SIZE
    with core.index.write() as txn:
        ours = core.tree.create(txn, ROOT_INO, b"s0", NewNode(
            stat.S_IFREG | 0o644, os.getuid(), os.getgid(), size=SIZE, mtime_ns=MTIME_NS - 10**9))
        ours.sha256 = hashlib.sha256(ours_content).digest()
        core.index.put_inode(txn, ours)
    first = reads.version("t1", b"1" * SIZE)
    second = reads.version("t2", b"2" * SIZE)

    async def main() -> None:
        core.remote.trusted.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(core.changes.update_file, "a", first)
            await reads.asked["t1"].wait()
            nursery.start_soon(core.changes.update_file, "a", second)
            await reads.asked["t2"].wait()
            reads.go["t1"].set()  # the first is kept apart while the second is compared
            await trio.testing.wait_all_tasks_blocked()
            reads.go["t2"].set()
        # The second was left for the next listing, which reports it again.
        await core.changes.update_file("a", second)

    trio.run(main)
    found = names(core)
    aside = [name for name in found if name.startswith("s0 (conflict from ")]
    assert aside and [found[name].ino for name in aside] == [ours.ino], \
        f"only the mount's version is kept aside: {sorted(found)}"
    with core.index.begin() as txn:
        held = core.index.mirror(core.remote.rid, found["s0"].ino, txn)
    assert found["s0"].ino != ours.ino and held["s0"].token == "t2", \
        "a's latest version has the name, held by a"


def test_an_upload_s_conflict_found_after_a_listing_settled_it_changes_nothing(
        core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mount's s0 was on its way to a when a listing found a's own version there, took
    it in at s0 and moved the mount's file aside. The upload's end then finds a's s0 is not
    what it expected, and the replicator hands that conflict over: a's version is taken in
    already, so nothing is to be done. Moving a's s0 aside there would leave the version
    at the mount's s0 with no copy anywhere (and no listing would say, the move being
    onitufs's own)."""
    calls: list[str] = []

    async def call(handler: str, *args: Any) -> None:
        calls.append(handler)

    async def has(handler: str) -> bool:
        return True  # a driver with every handler (move_file too)
    monkeypatch.setattr(core.remote, "call", call)
    monkeypatch.setattr(core.remote, "has", has)
    theirs = Metadata(path="s0", size=SIZE, mtime_ns=MTIME_NS, revision="t1")
    with core.index.write() as txn:
        ours = core.tree.create(txn, ROOT_INO, b"s0 (conflict from here)", NewNode(
            stat.S_IFREG | 0o644, os.getuid(), os.getgid(), size=2 * SIZE,
            mtime_ns=MTIME_NS - 10**9))
        taken_in = core.tree.create(txn, ROOT_INO, b"s0", NewNode(
            stat.S_IFREG | 0o644, os.getuid(), os.getgid(), size=SIZE, mtime_ns=MTIME_NS))
        core.index.set_mirror(txn, core.remote.rid, taken_in.ino, "s0",
                              core.remote.entry_of(theirs, taken_in.rev))
    before = names(core)

    async def main() -> bool:
        core.remote.trusted.set()
        return await core.changes.keep_both(core.remote, theirs, ours)

    assert trio.run(main) is False
    assert calls == [], "nothing is asked of the remote"
    assert names(core) == before
    with core.index.begin() as txn:
        assert core.index.mirror_ino(core.remote.rid, "s0", txn) == taken_in.ino


def test_an_upload_s_conflict_taken_in_is_looked_at_again_by_the_next_report(
        core: Core) -> None:
    """An upload's end found a's own s0, later than the mount's: it takes the name. That
    answer is as old as the look the upload made, and a report of a applied meanwhile may
    have told of a later change there (s0 deleted: nothing then, s0 being unknown), which
    a's reports never tell again: s0 counts as touched, so that a listing begun before
    leaves it for the next, and the driver's next report looks at it again."""
    theirs = Metadata(path="s0", size=SIZE, mtime_ns=MTIME_NS, revision="t1")
    with core.index.write() as txn:
        ours = core.tree.create(txn, ROOT_INO, b"s0", NewNode(
            stat.S_IFREG | 0o644, os.getuid(), os.getgid(), size=2 * SIZE,
            mtime_ns=MTIME_NS - 10**9))
    began = time.monotonic()

    async def main() -> bool:
        core.remote.trusted.set()
        return await core.changes.keep_both(core.remote, theirs, ours)

    assert trio.run(main) is True
    found = names(core)
    assert found["s0"].ino != ours.ino and any(
        name.startswith("s0 (conflict from ") for name in found), sorted(found)
    assert core.remote.touched_since("s0", began)
