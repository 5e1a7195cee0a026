"""onitufs fsck mends a damaged index; onitufs verify finds and repairs damaged copies."""

from __future__ import annotations

import os
import threading
import time

from onitufs.index import ROOT_INO, Index, q

from .bitrot import loop_disk
from .conftest import MakeCloud, run, snapshot

MAP = 2**40


def test_fsck_of_a_clean_cache(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"})
    cloud.mount()
    (cloud.mountpoint / "d").mkdir()
    (cloud.mountpoint / "d" / "f").write_bytes(b"fine")
    cloud.umount()
    result = run("fsck", cloud.config, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 problems" in result.stdout


def test_fsck_mends_a_damaged_index(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"})
    cloud.mount()
    (cloud.mountpoint / "d").mkdir()
    (cloud.mountpoint / "d" / "nameless").write_bytes(b"keep me")
    (cloud.mountpoint / "counted").write_bytes(b"x")
    cloud.umount()
    index = Index(cloud.cache, MAP, 0)
    with index.write() as txn:
        folder = index.lookup(ROOT_INO, b"d", txn)
        assert folder is not None
        nameless = index.lookup(folder, b"nameless", txn)
        assert nameless is not None
        index.unlink(txn, folder, b"nameless", nameless)  # an inode that lost its name
        index.link(txn, ROOT_INO, b"ghost", 999_999)  # a name that leads nowhere
        counted = index.get_inode(index.lookup(ROOT_INO, b"counted", txn) or 0, txn)
        assert counted is not None
        counted.nlink = 7
        index.put_inode(txn, counted)
        txn.put(q(888_888) + q(0), b"stray block", db=index.db["blocks"])
    index.close()
    result = run("fsck", cloud.config, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    for words in ("led to no inode", "now /lost+found/", "link count 7, should be 1",
                  "belonged to no content"):
        assert words in result.stdout, result.stdout
    result = run("fsck", cloud.config, check=False)
    assert result.returncode == 0, result.stdout
    cloud.mount()
    lost = cloud.mountpoint / "lost+found" / str(nameless)
    assert lost.read_bytes() == b"keep me"
    assert not (cloud.mountpoint / "ghost").exists()
    assert os.stat(cloud.mountpoint / "counted").st_nlink == 1
    cloud.umount()
    assert (cloud.remotes["a"] / "lost+found" / str(nameless)).read_bytes() == b"keep me"


def test_verify_repairs_a_damaged_copy(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    with loop_disk(cloud.remotes["b"]) as disk:
        cloud.mount()
        content = os.urandom(3 * 1024 * 1024 + 1)
        (cloud.mountpoint / "data.bin").write_bytes(content)
        (cloud.mountpoint / "small.txt").write_bytes(b"small")
        cloud.umount()
        result = run("verify", cloud.config, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "4 copies read back, 0 damaged" in result.stdout
        damaged = cloud.remotes["b"] / "data.bin"
        spot = 2 * 1024 * 1024 + 5
        disk.rot(damaged, spot, bytes(byte ^ 0xFF for byte in content[spot:spot + 3]))
        result = run("verify", cloud.config, check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "remote b: /data.bin: bytes 2097157-2097159 differ from the cached content" \
            in result.stdout
        assert damaged.read_bytes() == content
        assert snapshot(cloud.remotes["a"]) == snapshot(cloud.remotes["b"])


def test_verify_takes_in_what_changed_on_a_remote_while_unmounted(make_cloud: MakeCloud) -> None:
    """A chmod there (its ctime moved) is no damage, and an edit there a new version:
    neither is read as the copy the index knows."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    content = os.urandom(3 * 1024 * 1024)
    (cloud.mountpoint / "same").write_bytes(content)
    (cloud.mountpoint / "edited").write_bytes(b"before")
    cloud.wait_synced()
    cloud.umount()
    time.sleep(0.05)  # past the tick of the kernel's clock the upload was stamped in
    os.chmod(cloud.remotes["b"] / "same", 0o600)
    (cloud.remotes["b"] / "edited").write_bytes(b"after, on b")
    result = run("verify", cloud.config, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 damaged" in result.stdout, result.stdout
    cloud.mount()
    assert (cloud.mountpoint / "edited").read_bytes() == b"after, on b"
    assert (cloud.mountpoint / "same").read_bytes() == content
    cloud.umount()


def test_verify_reports_an_unreachable_remote_without_calling_it_damaged(
        make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    (cloud.mountpoint / "file").write_bytes(b"content")
    cloud.umount()
    away = cloud.remotes["b"].with_name("b.away")
    cloud.remotes["b"].rename(away)
    try:
        result = run("verify", cloud.config, check=False)
    finally:
        away.rename(cloud.remotes["b"])
    assert result.returncode == 4, result.stdout + result.stderr
    assert "remote b: /file: unreadable" in result.stdout
    assert "damaged there" not in result.stderr
    result = run("verify", cloud.config, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fsck_of_a_mounted_cache_is_an_operational_error(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"})
    cloud.mount()
    result = run("fsck", cloud.config, check=False)
    assert result.returncode == 8
    assert "cache in use by another onitufs process" in result.stderr


def test_verify_while_another_machine_keeps_editing_a_remote(make_cloud: MakeCloud) -> None:
    """Edits on b taken in while a's copies are read make those copies an older revision,
    never damaged ones: what they are compared with may be the new content already (the
    replicator fetched it to send it to a), or the copy read may change under the read."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    size = 3 * 1024 * 1024  # a few blocks: a copy's read spans several of the loop's turns
    names = [f"f{number:02}" for number in range(40)]
    cloud.mount()
    for name in names:
        (cloud.mountpoint / name).write_bytes(os.urandom(size))
    cloud.wait_synced()
    cloud.umount()
    done = threading.Event()
    edits: dict[str, bytes] = {}

    def edit_on_b() -> None:  # for a few seconds: verify ends once nothing is left to send
        for _ in range(20):
            if done.wait(0.1):
                break
            for name in names[::3]:
                edits[name] = os.urandom(size)
                (cloud.remotes["b"] / name).write_bytes(edits[name])

    editor = threading.Thread(target=edit_on_b)
    editor.start()
    try:
        result = run("verify", cloud.config, check=False)
    finally:
        done.set()
        editor.join()
    assert " 0 damaged" in result.stdout, result.stdout + result.stderr
    assert "is damaged" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    cloud.mount()
    cloud.wait_synced()
    assert snapshot(cloud.remotes["a"]) == snapshot(cloud.remotes["b"])
    for name, content in edits.items():
        assert (cloud.mountpoint / name).read_bytes() == content
    cloud.umount()
