"""Another kind of node made on a remote where it held one (a folder where a file was, a
file where a symlink was, ...): the old node's delete and the new node travel, each by
the rules of any delete and any new file, and nothing of either is lost.

Taken for the old node's next version, the new one never showed in the mount, and a
delete of the old node in the mount deleted it on that remote; a folder where a file
was stopped the remote's driver (ENOTDIR) at the first name inside it."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from onitufs.plug import MARKER

from .conftest import Cloud, MakeCloud, snapshot, wait_for
from .sshd import MakeSshCloud, Sshd, SshRemote

pytest_plugins = ["tests.sshd"]

KINDS = ["file", "folder", "symlink"]
CHANGES = [(before, after) for before in KINDS for after in KINDS if after != before]


def make(path: Path, kind: str, label: str) -> None:
    """A node of `kind` at `path`, its content telling who made it."""
    if kind == "file":
        path.write_bytes(f"{label}'s file".encode())
    elif kind == "folder":
        path.mkdir()
        (path / "inner").write_bytes(f"{label}'s inner file".encode())
    else:
        path.symlink_to(f"{label}-target")


def holds(path: Path, kind: str, label: str) -> bool:
    """Whether `path` holds what make(path, kind, label) made, and nothing else."""
    if kind == "file":
        return path.is_file() and not path.is_symlink() \
            and path.read_bytes() == f"{label}'s file".encode()
    if kind == "folder":
        return path.is_dir() and not path.is_symlink() and os.listdir(path) == ["inner"] \
            and (path / "inner").read_bytes() == f"{label}'s inner file".encode()
    return path.is_symlink() and os.readlink(path) == f"{label}-target"


def remove(path: Path, kind: str) -> None:
    if kind == "folder":
        shutil.rmtree(path)
    else:
        path.unlink()


def names(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name != MARKER)


def replaced_everywhere(cloud: Cloud, kind: str, label: str) -> bool:
    # The remotes first: a mount read while changes wait has the replicator give way
    # (for up to 3 s) to what looks like someone at work in it.
    return all(holds(place / "x", kind, label) and names(place) == ["x"]
               for place in [*cloud.remotes.values(), cloud.mountpoint])


@pytest.mark.parametrize("when", ["mounted", "unmounted"])
@pytest.mark.parametrize(("before", "after"), CHANGES)
def test_another_kind_made_on_a_remote_travels(make_cloud: MakeCloud, before: str, after: str,
                                               when: str) -> None:
    cloud = make_cloud()
    cloud.mount()
    make(cloud.mountpoint / "x", before, "mount")
    cloud.wait_synced()
    if when == "unmounted":  # then the first listing finds it, not the kernel's events
        cloud.umount()
    remove(cloud.remotes["a"] / "x", before)
    make(cloud.remotes["a"] / "x", after, "a")
    if when == "unmounted":
        cloud.mount()
    wait_for(lambda: replaced_everywhere(cloud, after, "a"), what=f"a's {after} everywhere")
    # In the mount like any other node: its delete goes everywhere.
    remove(cloud.mountpoint / "x", after)
    cloud.umount()
    assert "driver stopped" not in cloud.log
    for name, remote in cloud.remotes.items():
        assert names(remote) == [], name


@pytest.mark.parametrize("later", ["mount", "remote"])
@pytest.mark.parametrize(("before", "after"), [("file", "folder"), ("folder", "file")])
def test_another_kind_made_on_a_remote_beside_a_newer_version_here_keeps_both(
        make_cloud: MakeCloud, before: str, after: str, later: str) -> None:
    """The mount's newer version had not reached the remote: the remote's delete does not
    win over it, and the new node there is kept beside it (the later keeps the name)."""
    cloud = make_cloud(upload_delay="1h")
    cloud.mount()
    make(cloud.mountpoint / "x", before, "base")
    os.setxattr(cloud.mountpoint, "user.onitufs.flush", b"1")
    cloud.wait_synced()
    if before == "file":
        (cloud.mountpoint / "x").write_bytes(b"mount's file")
    else:
        (cloud.mountpoint / "x" / "inner").write_bytes(b"mount's inner file")
    a = cloud.remotes["a"] / "x"
    remove(a, before)
    make(a, after, "a")
    stamp = time.time() + (60 if later == "remote" else -60)
    os.utime(a, (stamp, stamp), follow_symlinks=False)
    winner, loser = ("a", "mount") if later == "remote" else ("mount", "a")
    aside_label = "a" if later == "mount" else socket.gethostname()
    kinds = {"a": after, "mount": before}

    def both_kept(place: Path) -> bool:
        aside = [name for name in names(place) if name != "x"]
        return len(aside) == 1 and aside[0].startswith(f"x (conflict from {aside_label} ") \
            and holds(place / "x", kinds[winner], winner) \
            and holds(place / aside[0], kinds[loser], loser)
    wait_for(lambda: both_kept(cloud.mountpoint), what="both versions in the mount")
    cloud.umount()
    assert "driver stopped" not in cloud.log
    for name, remote in cloud.remotes.items():
        assert both_kept(remote), name


def test_another_kind_made_on_a_backup_is_kept_aside_there(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "backup": "w"})
    cloud.mount()
    make(cloud.mountpoint / "x", "file", "mount")
    cloud.wait_synced()
    backup = cloud.remotes["backup"]
    remove(backup / "x", "file")
    make(backup / "x", "folder", "backup")
    wait_for(lambda: len(names(backup)) == 2, what="the backup's folder kept aside there")
    (cloud.mountpoint / "x").write_bytes(b"mount's file")
    cloud.umount()
    assert "driver stopped" not in cloud.log
    aside = [name for name in names(backup) if name != "x"]
    assert aside[0].startswith("x (conflict from backup ")
    assert holds(backup / aside[0], "folder", "backup")
    assert holds(backup / "x", "file", "mount")
    assert names(cloud.remotes["a"]) == ["x"]
    assert holds(cloud.remotes["a"] / "x", "file", "mount")


@pytest.mark.parametrize(("before", "after"), [("file", "folder"), ("folder", "file")])
def test_another_kind_made_on_an_ssh_server_travels(make_ssh_cloud: MakeSshCloud, sshd: Sshd,
                                                    before: str, after: str) -> None:
    cloud = make_ssh_cloud({"a": "rw"}, {"s": SshRemote(sshd)})
    cloud.mount()
    make(cloud.mountpoint / "x", before, "mount")
    cloud.wait_synced()
    server = cloud.remotes["s"]
    remove(server / "x", before)
    make(server / "x", after, "server")
    wait_for(lambda: all(holds(place / "x", after, "server") and names(place) == ["x"]
                         for place in [*cloud.remotes.values(), cloud.mountpoint]),
             what=f"the server's {after} everywhere")
    cloud.umount()
    assert "driver stopped" not in cloud.log


def test_a_read_only_remotes_folder_beside_a_newer_file_here_stops_nothing(
        make_cloud: MakeCloud) -> None:
    """A read-only remote's folder made where the mount's newer file is shows under a
    conflict name; what is in it, and a file moved into it there, cannot show below the
    mount's file. They stay on that remote, nothing is deleted for them elsewhere, and
    the driver goes on (it stopped with ENOTDIR at the first name inside)."""
    cloud = make_cloud({"a": "r", "b": "rw"}, upload_delay="1h")
    a = cloud.remotes["a"]
    make(a / "x", "file", "a")
    (a / "dir").mkdir()
    (a / "dir" / "child").write_bytes(b"child")
    cloud.mount()
    assert (cloud.mountpoint / "dir" / "child").read_bytes() == b"child"
    (cloud.mountpoint / "x").write_bytes(b"mount's file")
    remove(a / "x", "file")
    make(a / "x", "folder", "a")
    wait_for(lambda: len(names(cloud.mountpoint)) == 3, what="a's folder under a conflict name")
    os.rename(a / "dir" / "child", a / "x" / "child")
    (a / "later.txt").write_bytes(b"reported after the move")
    wait_for(lambda: (cloud.mountpoint / "later.txt").exists(), what="a's next change")
    cloud.umount()
    assert "driver stopped" not in cloud.log
    aside = [name for name in names(cloud.remotes["b"]) if name.startswith("x (conflict from a ")]
    assert len(aside) == 1 and (cloud.remotes["b"] / aside[0]).is_dir()
    assert (cloud.remotes["b"] / "x").read_bytes() == b"mount's file"
    assert (cloud.remotes["b"] / "dir" / "child").read_bytes() == b"child"
    assert sorted(os.listdir(a / "x")) == ["child", "inner"]


@pytest.mark.parametrize("here", ["folder made a file", "file made a folder"])
def test_another_kind_made_here_while_a_remote_edits_the_old_keeps_both(
        make_cloud: MakeCloud, here: str) -> None:
    edits_the_old_and_keeps_both(make_cloud(upload_delay="1h"), "a", here)


def test_a_folder_made_a_file_here_while_an_ssh_server_edits_in_it_keeps_both(
        make_ssh_cloud: MakeSshCloud, sshd: Sshd) -> None:
    cloud = make_ssh_cloud({"b": "rw"}, {"a": SshRemote(sshd)}, upload_delay="1h")
    edits_the_old_and_keeps_both(cloud, "a", "folder made a file")


def edits_the_old_and_keeps_both(cloud: Cloud, editor: str, here: str) -> None:
    """The edit there wins over the delete here, and the new node here keeps the name: the
    edit is kept beside it under a conflict name (a folder made a file here: the remote's
    folder, renamed there, with the edit in it). That one stalled the unmount: the delete
    of the edited file there was refused (Changed) and tried again for ever, the edit
    being left out below what is no folder here; before that, it stopped the driver."""
    cloud.mount()
    folder_before = here == "folder made a file"
    make(cloud.mountpoint / "x", "folder" if folder_before else "file", "base")
    os.setxattr(cloud.mountpoint, "user.onitufs.flush", b"1")
    cloud.wait_synced()
    remove(cloud.mountpoint / "x", "folder" if folder_before else "file")
    make(cloud.mountpoint / "x", "file" if folder_before else "folder", "mount")
    edited = cloud.remotes[editor] / ("x/inner" if folder_before else "x")
    edited.write_bytes(b"edited on a")
    stamp = time.time() - 60  # (a file's later version would keep the name)
    os.utime(edited, (stamp, stamp))

    def both_kept(place: Path) -> bool:
        aside = [name for name in names(place) if name != "x"]
        if len(aside) != 1 or not aside[0].startswith(f"x (conflict from {editor} "):
            return False
        kept = place / aside[0] / "inner" if folder_before else place / aside[0]
        return holds(place / "x", "file" if folder_before else "folder", "mount") \
            and kept.is_file() and kept.read_bytes() == b"edited on a"
    wait_for(lambda: both_kept(cloud.mountpoint), what="both in the mount")
    cloud.umount()
    assert "driver stopped" not in cloud.log
    for name, remote in cloud.remotes.items():
        assert both_kept(remote), name


def found(tree: dict[str, tuple[str, bytes]], kind: str, label: str) -> bool:
    """Whether what make(path, kind, label) made is in `tree` (a snapshot) at some name."""
    if kind == "file":
        return ("file", f"{label}'s file".encode()) in tree.values()
    if kind == "symlink":
        return ("symlink", f"{label}-target".encode()) in tree.values()
    # (Two folders of one name are merged, two files in them kept apart.)
    return ("file", f"{label}'s inner file".encode()) in tree.values()


@pytest.mark.parametrize("there", ["edited", "deleted", "the same kind made", "a third kind made"])
@pytest.mark.parametrize(("before", "after"), CHANGES)
def test_another_kind_made_here_while_a_remote_changes_the_old(
        make_cloud: MakeCloud, before: str, after: str, there: str) -> None:
    """Whatever a remote did meanwhile to what the mount replaced with another kind, the
    unmount returns, the remotes end alike, and nothing either side made is lost."""
    cloud = make_cloud(upload_delay="1h")
    cloud.mount()
    make(cloud.mountpoint / "x", before, "base")
    os.setxattr(cloud.mountpoint, "user.onitufs.flush", b"1")
    cloud.wait_synced()
    remove(cloud.mountpoint / "x", before)
    make(cloud.mountpoint / "x", after, "mount")
    a = cloud.remotes["a"] / "x"
    theirs = {"edited": before, "the same kind made": after,
              "a third kind made": next(k for k in KINDS if k not in (before, after))}.get(there)
    if there == "edited" and before == "folder":
        (a / "inner").write_bytes(b"a's inner file")
    else:
        remove(a, before)
        if theirs is not None:
            make(a, theirs, "a")
    time.sleep(0.5)  # (the remote's change reported before the flush, in most runs)
    cloud.umount()
    assert "driver stopped" not in cloud.log
    trees = {name: snapshot(remote) for name, remote in cloud.remotes.items()}
    assert trees["a"] == trees["b"] == trees["c"], trees
    assert found(trees["a"], after, "mount"), trees["a"]
    if theirs is not None:
        assert found(trees["a"], theirs, "a"), trees["a"]
