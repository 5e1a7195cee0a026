"""The SSH driver's poll: cheap when nothing changed, quick after a change, and blind to none.

A walk of the server decodes nothing when every folder answered as at the
last walk (a hash of the raw READDIR answers tells), and names the paths
that changed, an edit in place that leaves its folder's time alone and a
link given another target of the same length among them. Mounted, the poll lists every 2 s after a change and
backs off to poll_interval while nothing changes, as its debug log says, and
lists at once when a read finds a file gone.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from onitufs_ssh import listing
from onitufs_ssh.pool import Pool
from onitufs_ssh.settings import Settings
from onitufs_ssh.sftp import Attrs, Session

from onitufs.plug import Metadata

from .conftest import wait_for
from .sshd import MakeSshCloud, Sshd, SshRemote

pytest_plugins = ["tests.sshd"]


@pytest.fixture
def session(sshd: Sshd, tmp_path: Path) -> Iterator[Session]:
    """An SFTP session on the test's server, as the driver opens one."""
    settings = Settings("test", "127.0.0.1", sshd.port, sshd.user, str(tmp_path), sshd.user_key,
                        sshd.known_hosts, 1.0, 1, None)
    pool = Pool(settings, 1)
    try:
        with pool.use() as conn:
            yield conn.sftp
    finally:
        pool.close()


def revisions(entries: list[Metadata]) -> dict[str, tuple[str | None, str | None]]:
    return {md.path: (md.revision, md.target) for md in entries}


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The folders a walk decodes, in order."""
    folders: list[str] = []
    decode = listing._decode

    def counted(folder: str, answers: list[memoryview],
                hidden: list[tuple[bytes, Attrs]] | None = None) -> list[tuple[Metadata, bytes]]:
        folders.append(folder)
        return decode(folder, answers, hidden)

    monkeypatch.setattr(listing, "_decode", counted)
    return folders


def test_an_unchanged_tree_is_not_decoded_and_every_change_is_found(
        session: Session, tmp_path: Path, decoded: list[str]) -> None:
    root = tmp_path / "tree"
    for top in range(listing.FOLDERS_AT_ONCE + 2):
        (root / f"d{top}").mkdir(parents=True)
        for number in range(120):  # more than one READDIR answer in a folder
            (root / f"d{top}" / f"f{number}").write_bytes(b"x" * number)
    (root / "d0" / "link").symlink_to("f1")
    tree = listing.Tree()
    path = str(root).encode()
    walked = tree.walk(session, path)
    first = revisions(walked.listing())
    assert len(first) == (listing.FOLDERS_AT_ONCE + 2) * 121 + 1
    assert walked.changed == set(first)  # a first walk finds everything new
    tree.walk(session, path)  # the first set the folders' access times
    decoded.clear()
    walked = tree.walk(session, path)
    assert walked.changed == set()
    assert decoded == []  # nothing changed: nothing decoded
    assert revisions(walked.listing()) == first  # until the listing is asked for

    # an edit in place, same size: only the file's own time says so, not its folder's
    edited = root / "d3" / "f7"
    folder_time = (root / "d3").stat().st_mtime_ns
    with edited.open("r+b") as out:
        out.write(b"y" * 7)
    os.utime(edited, (time.time() + 5, time.time() + 5))  # another second, whenever it runs
    assert (root / "d3").stat().st_mtime_ns == folder_time
    decoded.clear()
    walked = tree.walk(session, path)
    assert walked.changed == {"d3/f7"}
    entries, tops = walked.part(walked.changed)
    assert tops == ["d3/f7"] and [md.path for md in entries] == ["d3/f7"]
    assert entries[0].revision != first["d3/f7"][0]
    assert decoded == ["d3"]  # the one folder that changed
    # a link given another target of the same length, its time and its folder's kept
    link = root / "d0" / "link"
    then = link.lstat().st_mtime_ns
    folder_then = (root / "d0").stat().st_mtime_ns
    link.unlink()
    link.symlink_to("f2")
    os.utime(link, ns=(then, then), follow_symlinks=False)
    os.utime(root / "d0", ns=(folder_then, folder_then))
    walked = tree.walk(session, path)
    assert walked.changed == {"d0/link"}
    assert [md.target for md in walked.part({"d0/link"})[0]] == ["f2"]
    # a new file in a folder (whose own time moves, which is no change of it), and nothing
    # after
    (root / "d5" / "new").write_bytes(b"new")
    walked = tree.walk(session, path)
    assert walked.changed == {"d5/new"}
    assert revisions(walked.listing())["d5/new"][0] is not None
    # a new file in the root: its folders' answers hold the root's new time in their
    # entry .., which changes nothing of theirs
    os.utime(root, (time.time() - 100, time.time() - 100))
    assert tree.walk(session, path).changed == set()
    (root / "top.txt").write_bytes(b"top")  # the root's time moves a hundred seconds
    assert tree.walk(session, path).changed == {"top.txt"}
    # a folder removed: it is what changed, and what was in it goes with it
    for name in os.listdir(root / "d6"):
        (root / "d6" / name).unlink()
    (root / "d6").rmdir()
    walked = tree.walk(session, path)
    assert walked.changed == {"d6"}
    assert walked.part({"d6"}) == ([], ["d6"])
    # a folder given another mode: what is below it is part of it (and decoded for that)
    (root / "d7").chmod(0o700)
    decoded.clear()
    walked = tree.walk(session, path)
    assert walked.changed == {"d7"}
    entries, _ = walked.part(walked.changed)
    assert len(entries) == 121 and sorted(decoded) == ["", "d7"]
    assert tree.walk(session, path).changed == set()


def test_a_change_in_a_folder_does_not_have_its_large_folders_decoded(
        session: Session, tmp_path: Path, decoded: list[str]) -> None:
    """Each folder's answers hold its entry .., with its parent's times: where they come
    first (as from every large folder of the usual file systems), they are not hashed, so a
    name made in the parent leaves its folders' answers as they were."""
    root = tmp_path / "tree"
    for name in ("big1", "big2"):
        (root / name).mkdir(parents=True)
        for number in range(300):  # some blocks of names: an indexed folder on ext4
            (root / name / f"{number:040d}").write_bytes(b"x")
    os.utime(root, (time.time() - 100, time.time() - 100))
    tree = listing.Tree()
    path = str(root).encode()
    tree.walk(session, path)
    tree.walk(session, path)  # (the first set the folders' access times)
    decoded.clear()
    (root / "top.txt").write_bytes(b"top")  # the root's time moves a hundred seconds
    walked = tree.walk(session, path)
    assert walked.changed == {"top.txt"}
    assert decoded == [""]


def test_the_dots_left_out_of_a_folder_s_hash_are_only_leading_ones() -> None:
    """A server may answer READDIR with any number of names at a time, in any order."""
    def answer(*names: bytes) -> memoryview:
        packed = struct.pack(">I", len(names))
        for name in names:
            packed += struct.pack(">I", len(name)) + name + struct.pack(">I", 1) + b"l"
            packed += struct.pack(">I", 0)  # no attributes
        return memoryview(packed)

    assert bytes(listing._past_dots(answer(b"."))) == b""  # one name in the answer
    assert bytes(listing._past_dots(answer(b".", b".."))) == b""
    assert bytes(listing._past_dots(answer(b".", b"..", b"f"))) == bytes(answer(b"f"))[4:]
    in_between = answer(b"f", b"..", b"g")
    assert bytes(listing._past_dots(in_between)) == bytes(in_between)[4:]


LISTED = re.compile(r"remote s: listed in \S+, (changes reported|no change); "
                    r"next listing in (\S+)s")


def listings(log: str) -> list[tuple[bool, float]]:
    """Each poll of remote s in the log: whether it reported a change, and the wait after."""
    return [(found == "changes reported", float(wait)) for found, wait in LISTED.findall(log)]


def test_the_poll_speeds_up_after_a_change_and_backs_off_to_poll_interval(
        make_ssh_cloud: MakeSshCloud, sshd: Sshd) -> None:
    cloud = make_ssh_cloud({}, {"s": SshRemote(sshd)}, poll_interval="5s")
    server = cloud.remotes["s"]
    (server / "docs").mkdir()
    (server / "docs" / "note.txt").write_text("first")
    cloud.mount()
    mnt = cloud.mountpoint
    wait_for((mnt / "docs" / "note.txt").exists, what="the first listing")
    assert (mnt / "docs" / "note.txt").read_text() == "first"
    wait_for(lambda: listings(cloud.log)[-3:] == [(True, 2.0), (False, 4.0), (False, 5.0)],
             what="the poll to back off from 2 s to poll_interval", timeout=15)
    # the same size, in place: the folder's time stays as it was
    folder_time = (server / "docs").stat().st_mtime_ns
    polls = len(listings(cloud.log))
    with (server / "docs" / "note.txt").open("r+") as out:
        out.write("again")
    assert (server / "docs").stat().st_mtime_ns == folder_time
    wait_for(lambda: any(found for found, _ in listings(cloud.log)[polls:]),
             what="a listing to find the edit made on the server", timeout=15)
    found_by = [found for found, _ in listings(cloud.log)[polls:]].index(True)
    # the next listing found it, or the one after if one was under way when it was made
    assert found_by <= 1
    wait_for(lambda: listings(cloud.log)[polls + found_by:][:3]
             == [(True, 2.0), (False, 4.0), (False, 5.0)],
             what="the poll to speed up, then back off again", timeout=15)
    assert (mnt / "docs" / "note.txt").read_text() == "again"
    cloud.umount()


def test_a_file_deleted_on_the_server_goes_after_a_read_finds_it_gone(
        make_ssh_cloud: MakeSshCloud, sshd: Sshd) -> None:
    """A read that finds the file gone from the server fails (no other copy holds it), and
    has the server listed at once: the name goes then, not at the next poll (8 s away
    here, the poll backing off), and what else changed in the same burst shows with it."""
    cloud = make_ssh_cloud({}, {"s": SshRemote(sshd)}, poll_interval="1h")
    server = cloud.remotes["s"]
    (server / "kept.txt").write_text("kept")
    (server / "gone.txt").write_text("gone")
    cloud.mount()
    gone = cloud.mountpoint / "gone.txt"
    wait_for(gone.exists, what="the first listing")
    wait_for(lambda: "no change; next listing in 8s" in cloud.log, timeout=30,
             what="the poll to back off to 8 s")
    (server / "gone.txt").unlink()
    (server / "new.txt").write_text("made in the same burst")
    with pytest.raises(OSError) as failed:
        gone.read_bytes()
    assert failed.value.errno == errno.EIO
    wait_for(lambda: not gone.exists(), timeout=4, what="the name to go")
    assert (cloud.mountpoint / "new.txt").read_text() == "made in the same burst"
    assert (cloud.mountpoint / "kept.txt").read_text() == "kept"
    assert cloud.umount().returncode == 0
    assert sorted(path.name for path in server.iterdir()) == [".onitufs-remote", "kept.txt",
                                                              "new.txt"]
