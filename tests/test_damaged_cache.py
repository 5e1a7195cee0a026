"""A damaged cache is never served and never spread: bytes changed inside data.mdb."""

from __future__ import annotations

import os
from pathlib import Path

from .bitrot import loop_disk
from .conftest import Cloud, MakeCloud, run

BLOCK = 1024 * 1024


def scribble(cache: Path, content: bytes, at: int, length: int = 16) -> None:
    """Change `length` bytes of the cached copy of `content`, at its byte `at`, in place."""
    data_file = cache / "data.mdb"
    raw = bytearray(data_file.read_bytes())
    probe = content[at - 64:at]
    where = raw.find(probe)
    assert where >= 0, "the content is not in the cache file"
    assert raw.find(probe, where + 1) < 0, "the probe is not unique"
    spot = where + 64
    raw[spot:spot + length] = bytes(b ^ 0xFF for b in raw[spot:spot + length])
    data_file.write_bytes(raw)


def damage(cloud: Cloud) -> bytes:
    """A file written to both remotes, then a block of it damaged in the cache."""
    cloud.mount()
    content = os.urandom(3 * BLOCK + 1000)
    (cloud.mountpoint / "f").write_bytes(content)
    cloud.wait_synced()
    cloud.umount()
    scribble(cloud.cache, content, BLOCK + 5000)
    return content


def damaged_cloud(make_cloud: MakeCloud) -> tuple[Cloud, bytes]:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    return cloud, damage(cloud)


def test_a_damaged_block_is_read_again_from_a_remote(make_cloud: MakeCloud) -> None:
    cloud, content = damaged_cloud(make_cloud)
    cloud.mount()
    assert (cloud.mountpoint / "f").read_bytes() == content
    assert f"bytes {BLOCK}-{2 * BLOCK - 1} is damaged" in cloud.log
    # a change of the file next to the damage keeps the good bytes around it
    with open(cloud.mountpoint / "f", "r+b") as changed:
        changed.seek(BLOCK + 10)
        changed.write(b"new")
    expected = content[:BLOCK + 10] + b"new" + content[BLOCK + 13:]
    assert (cloud.mountpoint / "f").read_bytes() == expected
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert (remote / "f").read_bytes() == expected, name


def test_fsck_finds_a_damaged_block_and_verify_spreads_nothing(make_cloud: MakeCloud) -> None:
    cloud, content = damaged_cloud(make_cloud)
    result = run("fsck", cloud.config, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"bytes {BLOCK}-{2 * BLOCK - 1} of /f were damaged" in result.stdout, result.stdout
    assert run("fsck", cloud.config, check=False).returncode == 0
    result = run("verify", cloud.config, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for name, remote in cloud.remotes.items():
        assert (remote / "f").read_bytes() == content, name
    cloud.mount()
    assert (cloud.mountpoint / "f").read_bytes() == content
    cloud.umount()


def test_verify_repairs_the_cache_not_the_remotes(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    with loop_disk(cloud.remotes["a"]) as disk_a, loop_disk(cloud.remotes["b"]) as disk_b:
        content = damage(cloud)
        result = run("verify", cloud.config, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        for name, remote in cloud.remotes.items():
            assert (remote / "f").read_bytes() == content, name
        assert run("fsck", cloud.config, check=False).returncode == 0  # repaired by verify
        for disk in (disk_a, disk_b):  # only the cache has the content now
            disk.rot(disk.folder / "f", 0, bytes(len(content)))
        cloud.mount()
        assert (cloud.mountpoint / "f").read_bytes() == content
        cloud.umount()


def test_verify_names_the_bytes_that_differ(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"})
    with loop_disk(cloud.remotes["a"]) as disk:
        cloud.mount()
        content = os.urandom(2 * BLOCK)
        (cloud.mountpoint / "f").write_bytes(content)
        cloud.wait_synced()
        cloud.umount()
        remote_copy = cloud.remotes["a"] / "f"
        spot = BLOCK + 100  # every one of its 4 bytes changed, so that all 4 differ
        disk.rot(remote_copy, spot, bytes(byte ^ 0xFF for byte in content[spot:spot + 4]))
        result = run("verify", cloud.config, check=False)
        assert f"bytes {BLOCK + 100}-{BLOCK + 103} differ" in result.stdout, result.stdout
        assert remote_copy.read_bytes() == content


def test_damaged_content_that_no_remote_holds_is_an_error_not_zeros(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"}, upload_delay="1h", stall="5s")  # fsck stops waiting soon
    cloud.mount()
    content = os.urandom(2 * BLOCK)
    (cloud.mountpoint / "f").write_bytes(content)
    cloud.kill9()  # before any upload: the cache holds the only copy
    scribble(cloud.cache, content, 500)
    result = run("fsck", cloud.config, check=False)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "no remote holds that content" in result.stdout
    cloud.mount()
    try:
        (cloud.mountpoint / "f").read_bytes()
        raise AssertionError("damaged content was served")
    except OSError as error:
        assert error.errno == 5
    with open(cloud.mountpoint / "f", "rb") as readable:
        readable.seek(BLOCK)
        assert readable.read() == content[BLOCK:]
