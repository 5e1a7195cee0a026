"""Shared fixtures: local-directory remotes, a config, and real mounts.

A mount made through the `cloud` fixture never outlives its test: the
fixture unmounts it and kills its daemon even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# the asserts of the conformance suite and of the tests' helpers, which the test modules import
pytest.register_assert_rewrite(
    "onitufs.testing",
    "tests.annex_backdoor",
    "tests.annex_programs",
    "tests.annex_remote",
    "tests.bitrot",
    "tests.delay",
    "tests.dropbox_backdoor",
    "tests.exfat",
    "tests.hung_daemon",
    "tests.namespace",
    "tests.sshd",
    "tests.terminal",
    "tests.trees",
)

from onitufs.config import Options, RemoteConfig, parse_size  # noqa: E402  (after the hook)
from onitufs.index import Index  # noqa: E402
from onitufs.plug import MARKER, TEMP_SUFFIX  # noqa: E402
from onitufs.remotes import Remote  # noqa: E402
from onitufs.replicator import Replicator  # noqa: E402
from onitufs.testing.dropbox_api import FakeDropbox  # noqa: E402

ONITUFS = [sys.executable, "-m", "onitufs"]
MiB = 1024**2


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: Any) -> Iterator[None]:
    """Name each failed test, and the seed it printed, last of all: on a CI, pytest puts
    every failure's whole diff in its summary, and a log's tail may hold nothing else."""
    result = yield
    for report in terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", []):
        seeds = sorted(set(re.findall(r"ONITUFS_SEED=\d+", report.capstdout)))
        terminalreporter.write_line(f"failed: {report.nodeid} {' '.join(seeds)}".rstrip())
    return result


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition",
             interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def everywhere(cloud: Cloud, relative: str, content: bytes | None) -> bool:
    """Every remote, and then the mount, hold `content` at `relative` (None: nothing
    there). The remotes come first: reading the mount holds uploads back
    (Replicator._yield_to_foreground), and a wait that read it first would slow them."""
    for place in [*cloud.remotes.values(), cloud.mountpoint]:
        target = place / relative
        if content is None:
            if os.path.lexists(target):
                return False
        elif not (target.is_file() and target.read_bytes() == content):
            return False
    return True


def versions(root: Path, stem: str) -> list[bytes]:
    """The contents of `stem` and of its conflict copies in a folder."""
    base = stem.rpartition(".")[0] or stem
    return sorted(path.read_bytes() for path in root.iterdir()
                  if path.name == stem or path.name.startswith(f"{base} (conflict from "))


def snapshot(root: Path, errors: bool = False) -> dict[str, tuple[str, bytes]]:
    """Every entry below root: kind and content (file bytes, or symlink target); onitufs's
    own files on a remote (uploads in progress, the identity marker) left out. With
    `errors`, an entry that cannot be read or listed is kept as kind "error" with the
    error for content rather than raising it (for saying what went wrong)."""
    found: dict[str, tuple[str, bytes]] = {}

    def unlisted(error: OSError) -> None:
        if not errors:
            raise error
        found[str(Path(error.filename or root).relative_to(root))] = (
            "error", str(error).encode())

    for folder, dirs, files in os.walk(root, onerror=unlisted):
        for name in dirs + files:
            path = Path(folder) / name
            relative = str(path.relative_to(root))
            if name.endswith(TEMP_SUFFIX) or relative == MARKER:
                continue
            try:
                if path.is_symlink():
                    found[relative] = ("symlink", os.fsencode(os.readlink(path)))
                elif path.is_dir():
                    found[relative] = ("dir", b"")
                else:
                    found[relative] = ("file", path.read_bytes())
            except OSError as error:
                if not errors:
                    raise
                found[relative] = ("error", str(error).encode())
    return found


def tree(root: Path) -> set[str]:
    """Every path below root, symbolic links not followed."""
    found = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(str((Path(folder) / name).relative_to(root)))
    return found


def made_with_the_number_of(old: Path, new: Path,
                            fill: Callable[[Path], object] = lambda folder: None) -> None:
    """Delete the folder `old` and make the folder `new` (the same path or another) until
    the file system gives the new one the old one's inode number, as it mostly does at
    once; `fill` puts old's content back before each new try."""
    for _ in range(50):
        number = os.stat(old).st_ino
        shutil.rmtree(old)
        new.mkdir()
        if os.stat(new).st_ino == number:
            return
        new.rmdir()
        old.mkdir()
        fill(old)
    raise AssertionError("the file system never reused the number")


def run(*args: str | Path, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*ONITUFS, *map(str, args)], capture_output=True, text=True,
                            env=env, timeout=240)  # within pytest's 300 s: callers say why
    if check and result.returncode != 0:
        raise AssertionError(f"onitufs {' '.join(map(str, args))} failed ({result.returncode}): "
                             f"{result.stderr}")
    return result


def drop_kernel_cache() -> None:
    """Make the kernel forget the pages it cached, so that reads ask the mount again."""
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def failed(cloud: Cloud, remote: str, path: str) -> int:
    """How many calls to `remote` about `path` failed so far."""
    return len(re.findall(rf"remote {remote}: \w+ {re.escape(path)}: ", cloud.log))


def tries_in(cloud: Cloud, remote: str, path: str, seconds: float) -> int:
    """How many uploads of `path` to `remote` began within the next `seconds`."""
    pattern = rf"remote {remote}: (?:start_upload|restart_upload) {re.escape(path)}\n"
    before = len(re.findall(pattern, cloud.log))
    time.sleep(seconds)
    return len(re.findall(pattern, cloud.log)) - before


def unmarked_once(cloud: Cloud, remote: str, why: str) -> None:
    """Remote `remote` cannot keep its marker (`why`: a pattern of the failure's words): it
    goes unavailable in one ERROR line and one WARNING, no driver stops, and the marker is
    tried again with backoff (1 to 4 times in 8 s), not in a loop."""
    def last_error() -> str:
        return str(next(r for r in cloud.status()["remotes"] if r["name"] == remote)["last_error"])

    wait_for(lambda: "cannot keep its marker" in last_error(), what=f"remote {remote} unavailable")
    assert 1 <= tries_in(cloud, remote, MARKER, 8) <= 4, "no backoff"
    assert "driver stopped" not in cloud.log and "Traceback" not in cloud.log
    outages = re.findall(rf"ERROR onitufs\.remotes: remote {remote}: cannot keep its marker "
                         rf"{re.escape(MARKER)} \({remote}: .*{why}.*\); treated as "
                         r"unavailable\n", cloud.log)
    assert len(outages) == 1, outages
    warnings = re.findall(rf"WARNING onitufs\.remotes: remote {remote}: .*{re.escape(MARKER)}: "
                          rf".*{why}", cloud.log)
    assert len(warnings) == 1, warnings  # the outage between two tries is no new trouble


def umount_leaves_queued(cloud: Cloud, said: str) -> None:
    """`onitufs umount` ends the mount with changes still queued: it exits 2, its words
    match `said`, and the daemon is gone."""
    result = run("umount", cloud.mountpoint, check=False)
    assert result.returncode == 2, result.stderr
    assert re.search(said, result.stderr), result.stderr
    cloud.wait_daemon_exit()


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


class Cloud:
    """Local remotes, a config and a mount point under one temporary folder."""

    def __init__(self, root: Path, remotes: dict[str, str], **settings: str) -> None:
        self.root = root
        self.mountpoint = root / "mnt"
        self.mountpoint.mkdir()
        self.cache = root / "cache"
        self.config = root / "onitufs.toml"
        self.remotes = {name: root / name for name in remotes}
        for path in self.remotes.values():
            path.mkdir()
        self.modes = remotes
        self.settings = {"upload_delay": "0.1s", "poll_interval": "0.3s", "cache_size": "256 MiB",
                         "block_size": "1 MiB", **settings}
        self.write_config()
        self.pid: int | None = None

    def write_config(self) -> None:
        s = self.settings
        lines = ["[cache]", 'path = "cache"', f'size = "{s["cache_size"]}"',
                 f'block_size = "{s["block_size"]}"',
                 f'write_buffer = "{s.get("write_buffer", "64 MiB")}"', "", "[sync]",
                 f'upload_delay = "{s["upload_delay"]}"', f'fsync = "{s.get("fsync", "local")}"',
                 f'stall = "{s.get("stall", "60s")}"', ""]
        for name, mode in self.modes.items():
            lines += [f"[remotes.{name}]", 'driver = "local"', f'path = "{name}"',
                      f'mode = "{mode}"', f'poll_interval = "{s["poll_interval"]}"', ""]
        self.config.write_text("\n".join(lines))

    @property
    def log(self) -> str:
        path = self.cache / "onitufs.log"
        return path.read_text() if path.exists() else ""

    def mount(self, *options: str, env: dict[str, str] | None = None) -> None:
        """Mount; each option is passed as -o OPTION; the daemon gets `env` if given."""
        run("mount", "--log-level", "debug",
            *[arg for option in options for arg in ("-o", option)], self.mountpoint, self.config,
            env=env)
        assert is_mounted(self.mountpoint)
        self.pid = int(self.status()["pid"])

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = json.loads(os.getxattr(self.mountpoint, "user.onitufs.status"))
        return status

    def umount(self) -> subprocess.CompletedProcess[str]:
        try:
            result = run("umount", self.mountpoint)
        except subprocess.TimeoutExpired:  # what the daemon was doing, for the failure
            raise AssertionError("onitufs umount hung; the log ends with:\n"
                                 + "\n".join(self.log.splitlines()[-60:])) from None
        assert not is_mounted(self.mountpoint)
        self.pid = None
        return result

    def kill9(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{self.pid}").exists(), what="the daemon to die")
        self.pid = None

    def wait_daemon_exit(self, timeout: float = 60.0) -> None:
        pid = self.pid
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout, "the daemon to exit")
        self.pid = None

    def wait_listed(self) -> None:
        """Until every remote's first listing is judged (a remote's state stays "listing"
        until then)."""
        wait_for(lambda: all(remote["state"] != "listing" for remote in self.status()["remotes"]),
                 what="the first listings")

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Until every writable remote has nothing left to do."""
        def synced() -> bool:
            remotes = self.status()["remotes"]
            return all(r["pending"] == 0 and r["in_flight"] == 0 for r in remotes)
        wait_for(synced, timeout, "the remotes to catch up")

    def write_evicted(self, name: str, size: int) -> bytes:
        """Write random content larger than the (small) cache, wait until every remote has
        it and the cache evicted it, and unmount: later reads must go to a remote."""
        content = os.urandom(size)
        (self.mountpoint / name).write_bytes(content)
        self.wait_synced()
        limit = parse_size(self.settings["cache_size"], "cache_size")
        wait_for(lambda: self.status()["cache_bytes"] <= limit, what="the cache to evict")
        self.umount()
        return content

    def cleanup(self) -> None:
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False,
                           capture_output=True)
        for pid in daemons_of(self.config):
            with contextlib.suppress(ProcessLookupError):  # it may have just exited
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(),  # type: ignore[misc]
                     what="the daemon to die")


def fill(path: Path) -> None:
    """Take every byte left on path's disk, as another program writing there would."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size, step = 0, 64 << 20
        while step >= 4096:
            try:
                os.posix_fallocate(fd, size, step)
                size += step
            except OSError:
                step //= 2
    finally:
        os.close(fd)


@contextlib.contextmanager
def small_disk(cloud: Cloud, folder: Path, size: str) -> Iterator[Cloud]:
    """`folder` (a remote's, or the cache) on a tmpfs of `size`, to fill; the cloud's mount
    and daemons go first, then the tmpfs, whatever happens."""
    folder.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                   check=True)
    try:
        yield cloud
    finally:
        cloud.cleanup()
        subprocess.run(["umount", "-l", str(folder)], check=False)


def daemons_of(config: Path) -> list[int]:
    """Every process whose command line names this config (the daemons of a test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(config) in argv:
            found.append(int(entry.name))
    return found


MakeCloud = Callable[..., Cloud]


@pytest.fixture(autouse=True, scope="session")
def own_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Configs without a cache path cache in $XDG_CACHE_HOME: the tests' own folder, not
    the home folder of whoever runs them."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(home := tmp_path_factory.mktemp("cache-home"))
    yield home
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDropbox]:
    """A fake Dropbox with the folder /Cloud; `onitufs mount` (run with this process's
    environment) reaches it."""
    with FakeDropbox() as dropbox:
        for name, value in dropbox.env.items():
            monkeypatch.setenv(name, value)
        dropbox.mkdir("/Cloud")
        yield dropbox


@pytest.fixture
def make_cloud(tmp_path: Path) -> Iterator[MakeCloud]:
    made: list[Cloud] = []

    def make(remotes: dict[str, str] | None = None, **settings: str) -> Cloud:
        root = tmp_path / f"cloud{len(made)}"
        root.mkdir()
        for folder in (root, *root.parents):  # other users reach a mount with allow_other
            if folder == Path(tempfile.gettempdir()):
                break
            folder.chmod(folder.stat().st_mode | 0o711)
        cloud = Cloud(root, remotes or {"a": "rw", "b": "rw", "c": "rw"}, **settings)
        made.append(cloud)
        return cloud

    yield make
    for cloud in made:
        cloud.cleanup()


def two_machines(make_cloud: MakeCloud) -> tuple[Cloud, Cloud]:
    """Two mounts, as of two machines, that share one folder as their remote "shared" (each
    with a remote "mine" of its own), mounted."""
    first = make_cloud({"shared": "rw", "mine": "rw"})
    second = make_cloud({"shared": "rw", "mine": "rw"})
    second.remotes["shared"].rmdir()
    second.remotes["shared"].symlink_to(first.remotes["shared"])  # one folder, two machines
    first.mount()
    second.mount()
    return first, second


@pytest.fixture
def cloud(make_cloud: MakeCloud) -> Iterator[Cloud]:
    """Three read-write local remotes, mounted."""
    mounted = make_cloud()
    mounted.mount()
    yield mounted


@pytest.fixture
def one_remote(tmp_path: Path) -> Iterator[tuple[Index, Remote, Replicator]]:
    """A replicator of one remote, a, that no driver serves (1 MiB blocks): its queue and
    rules, below the mount."""
    index = Index(tmp_path / "cache", 2**30, MiB)
    try:
        config = RemoteConfig("a", "none", "rw", Options({}, "remotes.a", tmp_path))
        remote = Remote(config, index.remote_id("a"), types.ModuleType("none"))
        yield index, remote, Replicator(index, [remote], MiB, 60.0)
    finally:
        index.close()
