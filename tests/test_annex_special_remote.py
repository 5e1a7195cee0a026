"""git-annex-remote-onitufs with the real git-annex: a repository stores into a real mount,
and content counts as stored only once the mount's remotes hold it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Cloud, MakeCloud, wait_for

BIN = Path(sys.executable).parent


def run_in(repo: Path, *args: str | Path, check: bool = True,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([*map(str, args)], cwd=repo, capture_output=True, text=True, env=env,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git-annex repository."""
    path = tmp_path / "repo"
    path.mkdir()
    run_in(path, "git", "init", "-q", "-b", "main")
    run_in(path, "git", "config", "user.name", "Test")
    run_in(path, "git", "config", "user.email", "test@example.com")
    run_in(path, "git", "annex", "init", "-q", "test")
    return path


def initremote(repo: Path, cloud: Cloud, *extra: str) -> None:
    run_in(repo, "git", "annex", "initremote", "cloud", "type=external", "externaltype=onitufs",
           f"mount={cloud.mountpoint}", "encryption=none", *extra)


def init_export(repo: Path, cloud: Cloud) -> None:
    """An export remote, cloudtree, of the mount's folder photos."""
    run_in(repo, "git", "annex", "initremote", "cloudtree", "type=external",
           "externaltype=onitufs", f"mount={cloud.mountpoint}", "prefix=photos",
           "exporttree=yes", "encryption=none")


def add_files(repo: Path, count: int, size: int = 3000) -> dict[str, bytes]:
    files = {f"file{n}.bin": os.urandom(size + n) for n in range(count)}
    for name, content in files.items():
        (repo / name).write_bytes(content)
    run_in(repo, "git", "annex", "add", "-q", ".")
    run_in(repo, "git", "commit", "-q", "-m", "files")
    return files


def key_of(repo: Path, name: str) -> str:
    return run_in(repo, "git", "annex", "lookupkey", name).stdout.strip()


def held_by(folder: Path, key: str) -> bytes | None:
    """The content of `key` in a remote's folder, where git-annex's layout puts it."""
    found = list((folder / ".git-annex").glob(f"*/*/{key}"))
    return found[0].read_bytes() if found else None


def test_copy_jobs_durable_then_drop_and_get(make_cloud: MakeCloud, repo: Path) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    initremote(repo, cloud)
    files = add_files(repo, 50)
    run_in(repo, "git", "annex", "copy", "--to", "cloud", "-J4", ".")
    # durable when copy returned: both remotes hold every file, no waiting
    keys = dict(line.split(" ", 1) for line in run_in(
        repo, "git", "annex", "find", "--format", "${file} ${key}\\n").stdout.splitlines())
    assert keys.keys() == files.keys()
    for name, content in files.items():
        for remote in cloud.remotes.values():
            assert held_by(remote, keys[name]) == content, (name, remote)
    whereis = run_in(repo, "git", "annex", "whereis", "file0.bin").stdout
    assert "cloud" in whereis and "onitufs remotes a, b" in whereis
    run_in(repo, "git", "annex", "fsck", "-q", "--from", "cloud", "-J4")
    run_in(repo, "git", "annex", "drop", "-q", ".")
    assert not (repo / "file0.bin").exists()
    run_in(repo, "git", "annex", "get", "-q", "-J4", ".")
    for name, content in files.items():
        assert (repo / name).read_bytes() == content
    # a drop from the remote deletes on every remote
    run_in(repo, "git", "annex", "drop", "-q", "--from", "cloud", "file1.bin")
    cloud.wait_synced()
    assert all(held_by(remote, key_of(repo, "file1.bin")) is None
               for remote in cloud.remotes.values())


def test_testremote(make_cloud: MakeCloud, repo: Path) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    initremote(repo, cloud)
    result = run_in(repo, "git", "annex", "testremote", "cloud", "--fast", timeout=120)
    assert re.search(r"All \d+ tests passed", result.stdout), result.stdout[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_full_testremote(make_cloud: MakeCloud, repo: Path) -> None:
    """Every check of git-annex's testremote (some 570), not only the --fast ones."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    initremote(repo, cloud)
    result = run_in(repo, "git", "annex", "testremote", "cloud", timeout=1700)
    assert re.search(r"All \d+ tests passed", result.stdout), result.stdout[-2000:]


def test_store_with_a_remote_down_fails(make_cloud: MakeCloud, repo: Path) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    initremote(repo, cloud)
    add_files(repo, 2)
    cloud.remotes["b"].rename(cloud.root / "b-unplugged")
    result = run_in(repo, "git", "annex", "copy", "--to", "cloud", "-J2", ".", check=False)
    assert result.returncode != 0
    said = result.stdout + result.stderr  # with -J git-annex writes to stderr
    assert "not durable" in said and "b is offline" in said, said
    for name in ("file0.bin", "file1.bin"):
        assert "cloud" not in run_in(repo, "git", "annex", "whereis", name).stdout
    # durable=1 is content on one remote: a is enough
    run_in(repo, "git", "annex", "enableremote", "cloud", "durable=1")
    run_in(repo, "git", "annex", "copy", "-q", "--to", "cloud", "file0.bin")
    assert "cloud" in run_in(repo, "git", "annex", "whereis", "file0.bin").stdout


def test_not_mounted_wrong_mount_other_config(make_cloud: MakeCloud, repo: Path) -> None:
    cloud, other = make_cloud({"a": "rw"}), make_cloud({"a": "rw"})
    result = run_in(repo, "git", "annex", "initremote", "cloud", "type=external",
                    "externaltype=onitufs", f"mount={cloud.mountpoint}", "encryption=none",
                    check=False)
    assert result.returncode != 0 and f"{cloud.mountpoint}: not a mount point" in result.stderr
    cloud.mount()
    initremote(repo, cloud)
    add_files(repo, 1)
    cloud.umount()
    for command in (("copy", "--to", "cloud"), ("fsck", "--from", "cloud")):
        result = run_in(repo, "git", "annex", *command, "file0.bin", check=False)
        assert result.returncode != 0
        assert f"({cloud.mountpoint}: not a mount point) failed" in result.stdout, result.stdout
    # a mount of another config at the same mount point: not the remote that was set up
    subprocess.run([sys.executable, "-m", "onitufs", "mount", str(cloud.mountpoint),
                    str(other.config)], check=True, capture_output=True)
    result = run_in(repo, "git", "annex", "copy", "--to", "cloud", "file0.bin", check=False)
    assert result.returncode != 0
    assert f"an onitufs mount of {other.config}, not of {cloud.config}" in result.stdout
    assert not any((other.root / "a").rglob("SHA256E-*"))


def test_export_tree_changes_reach_every_remote(make_cloud: MakeCloud, repo: Path) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    init_export(repo, cloud)
    files = add_files(repo, 3)
    (repo / "sub").mkdir()
    (repo / "sub" / "deep.bin").write_bytes(deep := os.urandom(5000))
    run_in(repo, "git", "annex", "add", "-q", "sub")
    run_in(repo, "git", "commit", "-q", "-m", "sub")
    run_in(repo, "git", "annex", "export", "-q", "main", "--to", "cloudtree")
    expected = {**files, "sub/deep.bin": deep}

    def check() -> None:
        cloud.wait_synced()
        for remote in cloud.remotes.values():
            tree = remote / "photos"
            held = {str(path.relative_to(tree)): path.read_bytes()
                    for path in tree.rglob("*") if path.is_file() and ".git-annex" not in path.parts}
            assert held == expected, remote

    check()
    # a change, a rename and a delete, exported again
    run_in(repo, "git", "annex", "unlock", "file0.bin")
    (repo / "file0.bin").write_bytes(changed := os.urandom(4000))
    run_in(repo, "git", "mv", "file1.bin", "renamed.bin")
    run_in(repo, "git", "rm", "-q", "sub/deep.bin")
    run_in(repo, "git", "annex", "add", "-q", "file0.bin")
    run_in(repo, "git", "commit", "-q", "-a", "-m", "changes")
    run_in(repo, "git", "annex", "export", "-q", "main", "--to", "cloudtree")
    expected = {"file0.bin": changed, "renamed.bin": files["file1.bin"],
                "file2.bin": files["file2.bin"]}
    check()
    assert not (cloud.remotes["a"] / "photos" / "sub").exists()


def test_an_export_takes_away_only_what_it_put_there(make_cloud: MakeCloud, repo: Path) -> None:
    """The mount is a folder in use: a file put beside the exported ones, and an exported
    file edited through the mount, are not git-annex's to delete or rename when the export
    no longer has them; what the export made and no longer uses goes, emptied folders too."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    init_export(repo, cloud)
    files = add_files(repo, 4)
    for folder in ("sub", "gone"):
        (repo / folder).mkdir()
        (repo / folder / "deep.bin").write_bytes(os.urandom(5000))
    run_in(repo, "git", "annex", "add", "-q", "sub", "gone")
    run_in(repo, "git", "commit", "-q", "-m", "folders")
    run_in(repo, "git", "annex", "export", "-q", "main", "--to", "cloudtree")
    tree = cloud.mountpoint / "photos"
    (tree / "sub" / "notes.txt").write_bytes(note := os.urandom(700))
    (tree / "file0.bin").write_bytes(edited := os.urandom(900))
    (tree / "file3.bin").write_bytes(edited3 := os.urandom(800))
    run_in(repo, "git", "rm", "-q", "-r", "sub", "gone", "file0.bin", "file1.bin")
    run_in(repo, "git", "mv", "file3.bin", "moved.bin")
    run_in(repo, "git", "commit", "-q", "-m", "removed")
    run_in(repo, "git", "annex", "export", "-q", "main", "--to", "cloudtree")
    cloud.wait_synced()
    for root in (cloud.mountpoint, *cloud.remotes.values()):
        kept = {str(path.relative_to(root / "photos")): path.read_bytes()
                for path in (root / "photos").rglob("*")
                if path.is_file() and ".git-annex" not in path.parts}
        assert kept == {"sub/notes.txt": note, "file0.bin": edited, "file3.bin": edited3,
                        "file2.bin": files["file2.bin"], "moved.bin": files["file3.bin"]}, root
        assert not (root / "photos" / "gone").exists(), root


def test_an_export_replaces_nothing_it_did_not_put_there(make_cloud: MakeCloud,
                                                         repo: Path) -> None:
    """A file made or edited through the mount where the export then writes (a new file,
    an exported file's new version, a rename's target) is someone's work: the export
    fails there, naming it, and puts its own there once it is moved away."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    init_export(repo, cloud)
    files = add_files(repo, 3)
    run_in(repo, "git", "annex", "export", "-q", "main", "--to", "cloudtree")
    tree = cloud.mountpoint / "photos"
    mine = {"file0.bin": os.urandom(900), "new.bin": os.urandom(700), "other.bin": os.urandom(800)}
    for name, content in mine.items():
        (tree / name).write_bytes(content)
    run_in(repo, "git", "annex", "unlock", "file0.bin")
    (repo / "file0.bin").write_bytes(version := os.urandom(4000))
    (repo / "new.bin").write_bytes(new := os.urandom(4100))
    run_in(repo, "git", "mv", "file1.bin", "other.bin")
    run_in(repo, "git", "annex", "add", "-q", ".")
    run_in(repo, "git", "commit", "-q", "-m", "changed")
    result = run_in(repo, "git", "annex", "export", "main", "--to", "cloudtree", check=False)
    assert result.returncode != 0
    said = result.stdout + result.stderr
    for name in mine:
        assert f"cannot write {tree / name}: holds other content, made or changed through the " \
            "mount; not replaced (move it away, then try again)" in said, said
    cloud.wait_synced()
    for root in (cloud.mountpoint, *cloud.remotes.values()):
        for name, content in mine.items():
            assert (root / "photos" / name).read_bytes() == content, (root, name)
    for name in mine:
        (tree / name).rename(tree / f"{name}.mine")
    run_in(repo, "git", "annex", "export", "-q", "main", "--to", "cloudtree")
    cloud.wait_synced()
    for root in (cloud.mountpoint, *cloud.remotes.values()):
        kept = {path.name: path.read_bytes() for path in (root / "photos").iterdir()
                if path.is_file()}
        assert kept == {"file0.bin": version, "new.bin": new, "other.bin": files["file1.bin"],
                        "file2.bin": files["file2.bin"],
                        **{f"{name}.mine": content for name, content in mine.items()}}, root


def test_an_export_does_not_follow_a_symbolic_link_out_of_the_mount(
        make_cloud: MakeCloud, repo: Path, tmp_path: Path) -> None:
    """A symbolic link in the mount where the export has a folder (made there since, or
    brought by a remote from another machine) is not followed out of the mount: neither
    a store nor a remove below it touches the folder it points to, and each says why in
    one line."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    init_export(repo, cloud)
    (repo / "sub").mkdir()
    (repo / "sub" / "deep.bin").write_bytes(deep := os.urandom(5000))
    files = add_files(repo, 1)
    run_in(repo, "git", "annex", "export", "-q", "main", "--to", "cloudtree")
    # the same photo kept outside the mount, and the exported folder made a link to it
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "deep.bin").write_bytes(deep)
    (outside / "mine.txt").write_bytes(b"not the export's")
    linked = cloud.mountpoint / "photos" / "sub"
    (linked / "deep.bin").unlink()
    linked.rmdir()
    linked.symlink_to(outside)
    run_in(repo, "git", "rm", "-q", "sub/deep.bin")
    (repo / "sub").mkdir()
    (repo / "sub" / "new.bin").write_bytes(os.urandom(4000))
    run_in(repo, "git", "annex", "add", "-q", "sub")
    run_in(repo, "git", "commit", "-q", "-m", "changed")
    result = run_in(repo, "git", "annex", "export", "main", "--to", "cloudtree", check=False)
    assert result.returncode != 0
    said = result.stdout + result.stderr
    assert f"{linked}: a symbolic link; an export does not follow one" in said, said
    assert {path.name: path.read_bytes() for path in outside.iterdir()} == {
        "deep.bin": deep, "mine.txt": b"not the export's"}
    assert (cloud.mountpoint / "photos" / "file0.bin").read_bytes() == files["file0.bin"]


def test_a_full_cache_disk_fails_the_store(make_cloud: MakeCloud, repo: Path) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"}, cache_size="1 GiB", write_buffer="4 MiB")
    cloud.cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(cloud.cache)],
                   check=True)
    try:
        subprocess.run([sys.executable, "-m", "onitufs", "mount", "--log",
                        str(cloud.root / "onitufs.log"), str(cloud.mountpoint), str(cloud.config)],
                       check=True, capture_output=True)
        initremote(repo, cloud)
        (repo / "big.bin").write_bytes(os.urandom(24 * 1024 * 1024))
        run_in(repo, "git", "annex", "add", "-q", "big.bin")
        result = run_in(repo, "git", "annex", "copy", "--to", "cloud", "big.bin", check=False)
        assert result.returncode != 0
        said = result.stdout + result.stderr
        assert f"the mount at {cloud.mountpoint} is full" in said, said
        assert "cloud" not in run_in(repo, "git", "annex", "whereis", "big.bin").stdout
    finally:
        cloud.cleanup()
        subprocess.run(["umount", "-l", str(cloud.cache)], check=False)


def test_get_of_content_no_longer_cached(make_cloud: MakeCloud, repo: Path) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"}, cache_size="1 MiB", block_size="64 KiB",
                       write_buffer="512 KiB")
    cloud.mount()
    initremote(repo, cloud)
    files = add_files(repo, 4, size=700_000)
    run_in(repo, "git", "annex", "copy", "-q", "--to", "cloud", "-J4", ".")
    wait_for(lambda: cloud.status()["cache_bytes"] <= 1024 * 1024, what="the cache to evict")
    run_in(repo, "git", "annex", "drop", "-q", ".")
    run_in(repo, "git", "annex", "get", "-q", "-J4", ".")
    for name, content in files.items():
        assert (repo / name).read_bytes() == content
    info = run_in(repo, "git", "annex", "info", "cloud").stdout
    assert f"mount: {cloud.mountpoint}" in info and f"onitufs config: {cloud.config}" in info


def children(pid: int) -> list[int]:
    """The processes `pid` started, and theirs."""
    found = []
    for line in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found += [int(line), *children(int(line))]
    return found


def test_a_store_takes_out_what_an_older_onitufs_left_a_day_ago(make_cloud: MakeCloud,
                                                                repo: Path) -> None:
    """An older onitufs wrote its temporary files in .git-annex/tmp itself, under no lock:
    one a day old is a dead store's, and a store takes it out of the mount and off every
    remote; a recent one may be a store at work, and stays."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    initremote(repo, cloud)
    tmp = cloud.mountpoint / ".git-annex" / "tmp"
    tmp.mkdir(parents=True)
    old, recent = tmp / "SHA256E-s9--0a1b.bin.4242.81234567", tmp / "SHA256E-s9--2c3d.bin.77.9"
    old.write_bytes(b"cut short")
    recent.write_bytes(b"at work")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    add_files(repo, 1)
    run_in(repo, "git", "annex", "copy", "-q", "--to", "cloud", "file0.bin")
    cloud.wait_synced()
    for root in (cloud.mountpoint, *cloud.remotes.values()):
        assert sorted(path.name for path in (root / ".git-annex" / "tmp").iterdir()
                      if path.is_file()) == [recent.name], root


def test_a_store_killed_midway_leaves_nothing_behind(make_cloud: MakeCloud, repo: Path) -> None:
    """A git-annex-remote-onitufs killed while it wrote a store's temporary file (kill -9,
    a power loss, a Ctrl-C): a later store takes the partial copy out of the mount, so it
    is not left on every remote for good; a store at work beside it is not touched."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    initremote(repo, cloud)
    size = 256 * 1024 * 1024
    (repo / "big.bin").write_bytes(big := os.urandom(size))
    run_in(repo, "git", "annex", "add", "-q", "big.bin")
    run_in(repo, "git", "commit", "-q", "-m", "big")

    def partial(root: Path) -> list[Path]:
        return [path for path in (root / ".git-annex" / "tmp").rglob("*") if path.is_file()]

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    copy = subprocess.Popen(["git", "annex", "copy", "--to", "cloud", "big.bin"], cwd=repo,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(path.stat().st_size > 0 for path in partial(cloud.mountpoint)),
                 what="the store to write its temporary file")
        program = [pid for pid in children(copy.pid)
                   if b"git-annex-remote-onitufs" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(program) == 1, program
        os.kill(program[0], signal.SIGSTOP)
        [left] = partial(cloud.mountpoint)
        assert left.stat().st_size < size
        # another store meanwhile, of another git-annex: the stopped one's file stays
        add_files(repo, 1)
        run_in(repo, "git", "annex", "copy", "-q", "--to", "cloud", "file0.bin")
        assert partial(cloud.mountpoint) == [left]
        os.kill(program[0], signal.SIGKILL)
        copy.wait(timeout=120)  # git-annex may try again itself, with a new program
    finally:
        copy.kill()
        copy.wait()
    run_in(repo, "git", "annex", "copy", "-q", "--to", "cloud", "big.bin", timeout=300)
    cloud.wait_synced()
    for root in (cloud.mountpoint, *cloud.remotes.values()):
        assert not partial(root), root
        assert held_by(root, key_of(repo, "big.bin")) == big
