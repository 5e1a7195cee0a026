"""The local driver learns of changes in its folder from the kernel (inotify), not by polling.

Every mount here has poll_interval = "1h": a change that shows within seconds was
told by the kernel. Where the kernel cannot tell (its queue overflowed, it is out of
watches), the folder is listed in full instead; an unplugged disk stays an outage.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import onitufs_local
import pytest
from onitufs_local import listing, watch
from onitufs_local.disknames import Disk

from onitufs.config import Options
from onitufs.plug import GIVE_WAY_LIMIT, Plug
from onitufs.testing.backdoor import FolderBackdoor
from onitufs.testing.harness import Harness, started

from .conftest import (
    Cloud,
    MakeCloud,
    everywhere,
    is_mounted,
    made_with_the_number_of,
    snapshot,
    wait_for,
)
from .sshd import Sshd, sshfs_mounted
from .test_empty_remote import disk_at, outage_reason, plug_in, unplug, usb_disk, usb_state

pytest_plugins = ["tests.sshd"]

SOON = 10.0  # far below the hour of poll_interval, and room for a loaded machine


def soon(condition: Callable[[], bool], what: str) -> None:
    wait_for(condition, timeout=SOON, what=what)


def watched(make_cloud: MakeCloud, remotes: dict[str, str] | None = None) -> Cloud:
    cloud = make_cloud(remotes or {"a": "rw", "b": "rw"}, poll_interval="1h")
    cloud.mount()
    return cloud


def inotify_watches(pid: int) -> list[int]:
    """How many folders each inotify instance of the process watches."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                found.append(sum(line.startswith("inotify wd:") for line in info.splitlines()))
    return found


@contextlib.contextmanager
def inotify_limit(name: str, value: int) -> Iterator[None]:
    """One of the kernel's inotify limits lowered, and put back whatever happens."""
    path = Path("/proc/sys/fs/inotify") / name
    old = path.read_text()
    path.write_text(f"{value}\n")
    try:
        yield
    finally:
        path.write_text(old)


def test_changes_in_a_remote_folder_show_at_once(make_cloud: MakeCloud) -> None:
    cloud = watched(make_cloud)
    a = cloud.remotes["a"]
    (a / "new.txt").write_bytes(b"made on a")
    soon(lambda: everywhere(cloud, "new.txt", b"made on a"), "the new file everywhere")
    with (a / "new.txt").open("ab") as growing:  # a file written in many steps
        for _ in range(50):
            growing.write(b" and more")
            growing.flush()
    soon(lambda: everywhere(cloud, "new.txt", b"made on a" + b" and more" * 50),
         "the change everywhere")
    (a / "new.txt").unlink()
    soon(lambda: everywhere(cloud, "new.txt", None), "the delete everywhere")
    assert inotify_watches(cloud.pid or 0) == [1, 1]  # each remote's root folder
    assert cloud.umount().returncode == 0


def test_a_new_folder_is_watched_and_what_it_held_already_is_seen(
        make_cloud: MakeCloud, tmp_path: Path) -> None:
    cloud = watched(make_cloud)
    a = cloud.remotes["a"]
    # made in one go: files land before the driver can watch the folders
    for number in range(30):
        folder = a / "new" / f"sub{number % 3}" / "deeper"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{number}").write_bytes(f"content {number}".encode())
    # and a tree made elsewhere, moved in whole
    outside = tmp_path / "outside"
    (outside / "x" / "y").mkdir(parents=True)
    (outside / "x" / "y" / "z.txt").write_bytes(b"moved in")
    os.rename(outside / "x", a / "moved-in")
    expected = snapshot(a)
    soon(lambda: snapshot(cloud.mountpoint) == expected, "every new file in the mount")
    soon(lambda: snapshot(cloud.remotes["b"]) == expected, "every new file on b")
    # the new folders are watched: a change deep inside shows too
    (a / "moved-in" / "y" / "late.txt").write_bytes(b"late")
    soon(lambda: everywhere(cloud, "moved-in/y/late.txt", b"late"), "a file in a moved-in folder")
    assert cloud.umount().returncode == 0


def test_a_folder_made_in_place_of_one_deleted_is_watched_though_it_has_its_number(
        make_cloud: MakeCloud) -> None:
    """rm -rf of a folder and mkdir of it again (a build's output folder), in one burst
    of events: the file system gives the new folder the old one's number, so its file id
    tells nothing; the old folder's watch ended with it, and the new one is watched."""
    cloud = watched(make_cloud)
    a = cloud.remotes["a"]
    (a / "out").mkdir()
    (a / "out" / "old.txt").write_bytes(b"old")
    soon(lambda: everywhere(cloud, "out/old.txt", b"old"), "the first folder everywhere")
    made_with_the_number_of(a / "out", a / "out",
                            lambda old: (old / "old.txt").write_bytes(b"old"))
    soon(lambda: everywhere(cloud, "out/old.txt", None), "the old file's delete everywhere")
    (a / "out" / "new.txt").write_bytes(b"made in the new folder")
    soon(lambda: everywhere(cloud, "out/new.txt", b"made in the new folder"),
         "a file made in the new folder everywhere")
    assert cloud.umount().returncode == 0


def test_renames_in_a_remote_folder_travel_as_renames(make_cloud: MakeCloud) -> None:
    cloud = watched(make_cloud)
    (cloud.mountpoint / "folder" / "inner").mkdir(parents=True)
    (cloud.mountpoint / "folder" / "inner" / "doc.txt").write_bytes(b"doc")
    (cloud.mountpoint / "loose.txt").write_bytes(b"loose")
    cloud.wait_synced()
    soon(lambda: everywhere(cloud, "folder/inner/doc.txt", b"doc"), "the uploads")
    b_inode = os.stat(cloud.remotes["b"] / "folder" / "inner" / "doc.txt").st_ino
    a = cloud.remotes["a"]
    os.rename(a / "loose.txt", a / "renamed.txt")
    os.rename(a / "folder", a / "renamed-folder")
    soon(lambda: everywhere(cloud, "renamed-folder/inner/doc.txt", b"doc")
         and everywhere(cloud, "renamed.txt", b"loose") and everywhere(cloud, "loose.txt", None)
         and not os.path.lexists(cloud.mountpoint / "folder"), "the renames everywhere")
    # a rename, not a copy: b's file was moved
    assert os.stat(cloud.remotes["b"] / "renamed-folder" / "inner" / "doc.txt").st_ino == b_inode
    # the renamed folder is still watched, under its new name
    (a / "renamed-folder" / "inner" / "after.txt").write_bytes(b"after the rename")
    soon(lambda: everywhere(cloud, "renamed-folder/inner/after.txt", b"after the rename"),
         "a file made in the renamed folder")
    shutil.rmtree(a / "renamed-folder")
    soon(lambda: everywhere(cloud, "renamed-folder", None), "the folder deleted everywhere")
    assert cloud.umount().returncode == 0


def test_an_overflowing_queue_of_events_falls_back_to_a_listing(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"}, poll_interval="1h")
    # The limit holds for the instances made while it is set: the daemon's, at its mount.
    with inotify_limit("max_queued_events", 1):
        cloud.mount()
        soon(lambda: len(inotify_watches(cloud.pid or 0)) == 2, "the drivers' watches")
    overflows = cloud.log.count("queue of change notices overflowed")
    a = cloud.remotes["a"]
    for number in range(20):  # each file fires two events, where one fits
        (a / f"file{number}").write_bytes(f"content {number}".encode())
    expected = snapshot(a)
    soon(lambda: snapshot(cloud.mountpoint) == expected, "every file in the mount")
    soon(lambda: snapshot(cloud.remotes["b"]) == expected, "every file on b")
    assert cloud.log.count("queue of change notices overflowed") > overflows, cloud.log[-3000:]
    assert cloud.umount().returncode == 0


def test_out_of_watches_the_folder_is_polled(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"}, poll_interval="1h")
    (cloud.remotes["a"] / "folder").mkdir()
    # a needs two watches (its root, its folder): it gives up while the limit holds, at its
    # root or its folder, whichever of a and b takes the one watch there is first
    with inotify_limit("max_user_watches", 1):
        cloud.mount()
        soon(lambda: "remote a: cannot watch" in cloud.log, "remote a to give up watching")
    assert "listing" in cloud.log and "every 2s instead" in cloud.log, cloud.log[-3000:]
    pid = cloud.pid or 0
    a = cloud.remotes["a"]
    (a / "folder" / "polled.txt").write_bytes(b"found by a listing")
    soon(lambda: everywhere(cloud, "folder/polled.txt", b"found by a listing"), "the new file")
    assert len(inotify_watches(pid)) <= 1  # a's is closed (b's root may have had a watch)
    assert cloud.umount().returncode == 0


def test_an_unplugged_disk_is_an_outage_and_comes_back_watched(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"home": "rw", "usb": "rw"}, poll_interval="1h")
    with usb_disk(cloud) as disk:
        cloud.mount()
        (cloud.mountpoint / "photos").mkdir()
        for number in range(5):
            (cloud.mountpoint / "photos" / f"p{number}.jpg").write_bytes(bytes([number]) * 100)
        cloud.wait_synced()
        expected = snapshot(cloud.mountpoint)
        soon(lambda: snapshot(cloud.remotes["usb"]) == expected, "the files on the disk")
        unplug(cloud.remotes["usb"])  # no event comes of it: the driver looks at its root
        reason = outage_reason(cloud)
        assert "its folder is empty but held 5 files and 1 folder" in reason, reason
        assert snapshot(cloud.mountpoint) == expected
        assert snapshot(cloud.remotes["home"]) == expected
        plug_in(disk, cloud.remotes["usb"])
        soon(lambda: bool(usb_state(cloud)["online"]), "the disk back online")
        # the disk is watched again: a change made on it shows
        (cloud.remotes["usb"] / "photos" / "p9.jpg").write_bytes(b"added on the disk")
        soon(lambda: everywhere(cloud, "photos/p9.jpg", b"added on the disk"),
             "a file added on the disk once back")
        assert cloud.umount().returncode == 0


@contextlib.contextmanager
def big_folder_watched(tmp_path: Path) -> Iterator[tuple[Path, Harness]]:
    """The local driver on a folder holding big/f0 ... big/f199, outside a mount."""
    root = tmp_path / "remote"
    (root / "big").mkdir(parents=True)
    for number in range(200):
        (root / "big" / f"f{number}").write_bytes(b"x")
    table = {"driver": "local", "path": str(root), "poll_interval": "1h"}
    with started(onitufs_local, table, FolderBackdoor(root, tmp_path / "ballast"),
                 base_dir=tmp_path) as harness:
        yield root, harness


def test_what_events_name_goes_to_the_core_as_a_part_of_the_listing(tmp_path: Path) -> None:
    """The core compares the paths that changed, not the whole tree at each change."""
    with big_folder_watched(tmp_path) as (root, harness):
        sink = harness.sink
        wholes = len(sink.listings)
        (root / "new").write_bytes(b"news")
        sink.wait(lambda: "new" in sink.view, SOON, "the new file")
        (root / "big").rename(root / "moved")
        sink.wait(lambda: "moved/f7" in sink.view and "big/f7" not in sink.view, SOON,
                  "the folder renamed, with what it holds")
        with sink.cond:
            assert len(sink.listings) == wholes  # no whole listing since the first
            assert ["new"] in sink.parts
            assert any(set(scope) == {"big", "moved"} for scope in sink.parts)
            assert sink.view["moved/f199"].size == 1


def test_what_onitufs_changes_goes_to_the_core_as_parts_with_no_whole_listing_after(
        tmp_path: Path) -> None:
    """The events of onitufs's own changes name them: no whole listing is needed after a
    burst of writes, which would have the core compare every entry of the tree."""
    with big_folder_watched(tmp_path) as (_, harness):
        sink = harness.sink
        wholes = len(sink.listings)
        note = harness.upload("note.txt", b"first")
        harness.call("delete_file", harness.upload("gone.txt", b"soon gone"))
        moved = note.copy(path="big/note.txt")
        harness.call("move_file", note, moved)
        sink.wait(lambda: "big/note.txt" in sink.view and "note.txt" not in sink.view
                  and "gone.txt" not in sink.view, SOON, "onitufs's changes reported")
        time.sleep(2 * watch.TICK)  # when a whole listing came once the events stopped
        with sink.cond:
            assert len(sink.listings) == wholes, "a whole listing after onitufs's changes"
            assert any("big/note.txt" in scope or "big" in scope for scope in sink.parts)
        assert harness.next_listing()["big/note.txt"].size == 5  # one comes when asked


def test_a_walk_that_hangs_holds_another_remote_s_walk_back_only_so_long(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local remotes walk their trees one at a time (listing.py), but a disk that stopped
    answering does not stop the others from being listed."""
    monkeypatch.setattr(listing, "WALK_WAIT", 0.3)
    for name in ("stuck", "fine"):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "sub" / "f.txt").write_text(name)
    hung, release = threading.Event(), threading.Event()

    def stuck_disk(folder: str, stored: str) -> None:
        hung.set()
        release.wait(30)

    stuck = threading.Thread(target=listing.listing, args=(Disk(str(tmp_path / "stuck")), lambda: None),
                             kwargs={"watch": stuck_disk})
    stuck.start()
    try:
        assert hung.wait(10)
        began = time.monotonic()
        listed = listing.listing(Disk(str(tmp_path / "fine")), lambda: None)
        waited = time.monotonic() - began
        assert sorted(md.path for md in listed) == ["sub", "sub/f.txt"]
        assert 0.3 <= waited < 5, waited  # held back while the other walked, then listed
    finally:
        release.set()
        stuck.join()


def test_a_file_renamed_while_the_tree_is_listed_is_listed_under_its_new_name_only(
        tmp_path: Path) -> None:
    """The walk reads one folder, then the other: a file moved from the one to the other
    between the two reads is seen under both names or under neither (which the core would
    take for a copy, or a deletion that travels to the other remotes). The events of the
    walk's time set the listing right."""
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
    (tmp_path / "one" / "f.txt").write_text("f")
    calls = 0

    def give_way() -> None:  # before the root, then before each of the two folders
        nonlocal calls
        calls += 1
        if calls == 3:
            os.rename(tmp_path / "one" / "f.txt", tmp_path / "two" / "f.txt")

    tree = watch.Tree("a", Disk(str(tmp_path)), give_way)
    try:
        tree.list_all()
        assert calls == 3
        assert sorted(md.path for md in tree.listing()) == ["one", "two", "two/f.txt"]
    finally:
        tree.close()


@contextlib.contextmanager
def disk_of_two_folders(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A disk (disk_at) whose folder is bound on tmp_path/usb, holding folders one and
    two with a file in each: that folder, and the disk's own."""
    folder = tmp_path / "usb"
    folder.mkdir()
    with disk_at(tmp_path / "disk", folder) as files:
        for name in ("one", "two"):
            (files / name).mkdir()
            (files / name / "f.txt").write_text(name)
        yield folder, files


def test_a_disk_unmounted_and_mounted_again_during_a_walk_is_walked_again(
        tmp_path: Path) -> None:
    """The walk read a folder from the empty mount point while the disk was away. Back
    under the same device and inode, only its mount tells it from the one listed: the
    watcher must take the listing for stale, or what the walk missed reads as deleted."""
    with disk_of_two_folders(tmp_path) as (folder, files):
        calls = 0

        def give_way() -> None:  # before the root, then before each of the two folders
            nonlocal calls
            calls += 1
            if calls == 2:
                unplug(folder)
            elif calls == 3:
                plug_in(files, folder)

        tree = watch.Tree("usb", Disk(str(folder)), give_way)
        try:
            with contextlib.suppress(OSError):  # a folder that went during the walk
                tree.list_all()
            assert calls >= 2
            assert not tree.holds_root()
        finally:
            tree.close()


@pytest.mark.parametrize("how", ["watched", "polled"])
def test_a_disk_plugged_in_and_unplugged_again_during_a_walk_leaves_nothing_of_it(
        tmp_path: Path, how: str) -> None:
    """The walk began at the empty mount point, the disk came before the root was read and
    went again before its folders were: the root's path leads to the same folder at both
    ends of the walk. A listing of the disk's root without what its folders hold would
    read as their files deleted (with the marker in it, it passes as the remote's)."""
    with disk_of_two_folders(tmp_path) as (folder, files):
        unplug(folder)
        calls = 0

        def give_way() -> None:  # before the root, then before each of its folders
            nonlocal calls
            calls += 1
            if calls == 1:
                plug_in(files, folder)
            elif calls == 2:
                unplug(folder)

        if how == "watched":
            tree = watch.Tree("usb", Disk(str(folder)), give_way)
            try:
                with contextlib.suppress(OSError):  # a folder that went during the walk
                    tree.list_all()
                listed = [md.path for md in tree.listing()] if tree.holds_root() else None
            finally:
                tree.close()
        else:
            entries = listing.steady_listing(Disk(str(folder)), give_way, [])
            listed = None if entries is None else [md.path for md in entries]
        assert calls >= 1
        # Either the mount point's own listing (empty), or none taken.
        assert listed in ([], None), f"a listing of part of the disk: {listed}"


def test_a_watched_disk_can_be_unmounted(tmp_path: Path) -> None:
    """The watcher holds the root folder open only while it reads it: held for good, it
    would keep the disk from being unmounted (umount: target is busy) while onitufs runs,
    and a file manager could not eject it."""
    with disk_of_two_folders(tmp_path) as (folder, files):
        tree = watch.Tree("usb", Disk(str(folder)), lambda: None)
        try:
            tree.list_all()
            (files / "one" / "g.txt").write_text("g")
            assert tree.read(5.0)
            tree.apply()
            assert "one/g.txt" in {md.path for md in tree.listing()}
            result = subprocess.run(["umount", str(folder)],  # not lazily: as a file
                                    capture_output=True, text=True)  # manager does
            assert result.returncode == 0, f"the disk could not be unmounted: {result.stderr}"
        finally:
            tree.close()


def test_a_walk_gives_way_before_each_folder(tmp_path: Path) -> None:
    """Plug.give_way() comes before each folder is read: a walk of a big tree takes the
    time people using the mount leave it."""
    for folder in ("one/two", "three"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "f.txt").write_text(folder)
    read: list[str] = []

    def give_way() -> None:
        read.append("give way")

    listing.listing(Disk(str(tmp_path)), give_way,
                    watch=lambda folder, stored: read.append(folder))
    assert read[0::2] == ["give way"] * 4  # before each folder (in the order read)
    assert sorted(read[1::2]) == ["", "one", "one/two", "three"]


def test_a_listing_reuses_what_it_knew_only_where_nothing_changed(tmp_path: Path) -> None:
    """A walk given an earlier listing lists an unchanged entry as the very object it knew
    (a safety-net walk of an unchanged tree makes nothing new), and any change, even one
    that keeps a file's size and time, as a new description: the listing is always what a
    fresh walk would make."""
    root = tmp_path
    for name, content in (("same", b"same"), ("content", b"before"), ("mode", b"mode"),
                          ("replaced", b"12345"), ("kind", b"")):
        (root / name).write_bytes(content)
    os.symlink("same", root / "link")
    (root / "folder").mkdir()
    (root / "folder" / "inside").write_bytes(b"inside")
    first = {md.path: md for md in listing.listing(Disk(str(root)), lambda: None)}

    def keep_times(path: Path, change: Callable[[], object]) -> None:
        times = os.lstat(path)
        change()
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns), follow_symlinks=False)

    (root / "content").write_bytes(b"after, longer")
    keep_times(root / "mode", lambda: os.chmod(root / "mode", 0o600))
    (root / "other").write_bytes(b"54321")  # the same size and time, another file
    os.utime(root / "other", ns=(0, os.stat(root / "replaced").st_mtime_ns))
    os.replace(root / "other", root / "replaced")

    def retarget() -> None:
        os.unlink(root / "link")
        os.symlink("mode", root / "link")  # a target of the same length

    keep_times(root / "link", retarget)
    os.unlink(root / "kind")
    (root / "kind").mkdir()

    again = {md.path: md for md in listing.listing(Disk(str(root)), lambda: None, known=first)}
    fresh = {md.path: md for md in listing.listing(Disk(str(root)), lambda: None)}
    assert again == fresh
    assert {path for path in again if again[path] is first.get(path)} == \
        {"same", "folder", "folder/inside"}


def test_give_way_waits_while_the_mount_is_used_but_never_long(tmp_path: Path) -> None:
    looks: list[bool] = []
    busy = True

    def users_busy() -> bool:
        looks.append(busy)
        return busy

    plug = Plug("a", Options({}, "remotes.a", tmp_path), None, None,  # type: ignore[arg-type]
                users_busy=users_busy)
    began = time.monotonic()
    plug.give_way()
    assert GIVE_WAY_LIMIT <= time.monotonic() - began < 5  # waited, then went on anyway
    assert len(looks) > 1
    busy = False
    looks.clear()
    plug.give_way()
    assert looks == [False]  # an idle mount: on at once
    busy = True
    looks.clear()
    plug.stop()
    plug.give_way()
    assert looks == [True]  # the mount is ending: no waiting


def test_the_first_listing_completes_while_the_mount_is_in_use(make_cloud: MakeCloud) -> None:
    """A remount's full listing gives way to people using the mount, but is never
    starved by them: a file added to a remote while unmounted shows up, and travels, while
    the mount is kept busy the whole time."""
    cloud = watched(make_cloud)
    for number in range(40):
        (cloud.mountpoint / f"folder{number}").mkdir()
        (cloud.mountpoint / f"folder{number}" / "f.txt").write_text(str(number))
    cloud.wait_synced()
    cloud.umount()
    (cloud.remotes["a"] / "folder39" / "new.txt").write_text("added while unmounted")
    cloud.mount()
    stop = threading.Event()

    def use_the_mount() -> None:
        while not stop.is_set():
            os.stat(cloud.mountpoint / "folder0" / "f.txt")
            os.listdir(cloud.mountpoint)

    user = threading.Thread(target=use_the_mount)
    user.start()
    try:
        wait_for(lambda: (cloud.mountpoint / "folder39" / "new.txt").exists(), 60,
                 "the new file in the mount while it is in use")
        wait_for(lambda: (cloud.remotes["b"] / "folder39" / "new.txt").exists(), 60,
                 "the new file on remote b while the mount is in use")
    finally:
        stop.set()
        user.join()
    assert (cloud.mountpoint / "folder39" / "new.txt").read_text() == "added while unmounted"
    cloud.umount()



def test_a_file_another_machine_deleted_on_a_network_disk_goes_after_a_read_finds_it_gone(
        make_cloud: MakeCloud, sshd: Sshd, tmp_path: Path) -> None:
    """The remote is a folder on a network disk, and another machine deleted a file there:
    no event tells. The read that finds it gone fails (no other copy holds it), and the
    name goes from the mount with the next tick's full listing, not with the safety net's
    (poll_interval, an hour here)."""
    server = tmp_path / "server"
    server.mkdir()
    (server / "kept.txt").write_text("kept")
    (server / "gone.txt").write_text("gone")
    cloud = make_cloud({"a": "rw"}, poll_interval="1h")
    # a network disk, on which what the server's side changes raises no inotify event;
    # listings not cached, as on a disk another machine writes to
    with sshfs_mounted(sshd, server, cloud.remotes["a"], options=("dir_cache=no",)):
        cloud.mount()
        gone = cloud.mountpoint / "gone.txt"
        wait_for(gone.exists, what="the first listing")
        (server / "gone.txt").unlink()  # the other machine
        with pytest.raises(OSError) as failed:
            gone.read_bytes()
        assert failed.value.errno == errno.EIO
        wait_for(lambda: not gone.exists(), timeout=30, what="the name to go")
        assert (cloud.mountpoint / "kept.txt").read_text() == "kept"
        assert cloud.umount().returncode == 0
    assert not is_mounted(cloud.remotes["a"])
    assert sorted(path.name for path in server.iterdir()) == [".onitufs-remote", "kept.txt"]
