"""The SSH comparison: onitufs's SSH driver next to sshfs, against one real sshd on loopback.

Starts OpenSSH's sshd on 127.0.0.1 (tests/sshd.py), then measures, for
sshfs and for onitufs with that server as its only remote:

- cold read: a file that only the server holds, read in 1 MiB reads;
- upload: a file written in 1 MiB writes, until the server holds it whole
  and durably. sshfs: the writes, close and fsync. onitufs: from the close
  (the writes land in its local cache first; their time is shown apart)
  until the server holds it whole (the driver renames it into place after
  fsync@openssh.com; the server's folder is watched, not the mount).

Each figure is the best of ROUNDS. Beside the speed, the CPU time each side
spent per GiB (user + system, from /proc): the filesystem's own processes
(sshfs and its ssh; the onitufs daemon and its ssh clients) and the
server's (sshd, whose built-in SFTP server, internal-sftp, serves both). On
a machine with few cores, CPU time is what caps the speed.
Then both once more through a proxy that makes the round trip LONG_LINK
(delay.py), where what a connection may leave unacknowledged caps it; and
there, the time to see a whole tree of TREE_FOLDERS folders the server
holds: from the mount command until `find -ls` is done through sshfs, and
until onitufs's first listing shows in its mount (the poll that finds
changes on the server reads the same listing).
Everything lives in one temporary folder, removed at the end with every
mount and process, also after an error.
`python -m bench.ssh` runs it alone; `python -m bench` runs it after the rest.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.delay import DelayProxy
from tests.sshd import Sshd, descendants, sshfs_mounted

from .targets import TargetError, lazy_unmount, make_workdir, mounted, remove_workdir, wait_gone
from .workloads import MIB, drop_page_cache

ROUNDS = 3
BAR = 1.0
LONG_LINK = 0.05  # seconds of round trip through the proxy
LONG_LINK_MIB = 64
TREE_FOLDERS = (20, 10)  # 20 folders of 10 folders each, 5 files in each of those
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    seconds: float
    client_cpu: float  # CPU seconds of the filesystem's processes
    server_cpu: float  # of sshd's processes


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    ticks = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone
        ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


def measure(client: Callable[[], list[int]], server: Sshd, action: Callable[[], float]) -> Phase:
    """Run `action` (it returns the seconds it timed) and count the CPU time both sides used."""
    assert server.process is not None
    sessions = server.process.pid
    before = cpu_ticks(client() + descendants(sessions))
    seconds = action()
    after = cpu_ticks(client()), cpu_ticks(descendants(sessions))
    client_cpu, server_cpu = (sum(now - before.get(pid, 0) for pid, now in side.items()) / TICK
                              for side in after)
    return Phase(seconds, client_cpu, server_cpu)


def sshfs_processes(mnt: Path, port: int) -> list[int]:
    """The sshfs serving `mnt` and its ssh (which, sshfs having gone to the background,
    is no child of it: it is known by the server's port)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (argv[0] == b"sshfs" and str(mnt).encode() in argv) \
                    or (argv[0] == b"ssh" and f"-oPort={port}".encode() in argv):
                found.append(int(entry.name))
    if len(found) != 2:
        raise TargetError(f"expected sshfs and its ssh for {mnt}, found {len(found)} processes")
    return found


def write_file(path: Path, block: bytes, size_mib: int, fsync: bool) -> float:
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(size_mib):
            os.write(fd, block)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def read_file(path: Path, expected: str) -> float:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        drop_page_cache(fd)
        start = time.perf_counter()
        while chunk := os.read(fd, MIB):
            digest.update(chunk)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    if digest.hexdigest() != expected:
        raise TargetError(f"{path}: read back other bytes than the server holds")
    return elapsed


def make_source(path: Path, size_mib: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(size_mib):
            chunk = os.urandom(MIB)
            digest.update(chunk)
            out.write(chunk)
    # Dated a minute back, as a file that was on the server before the mount: one written
    # within the second of onitufs's listing is compared with the server again once that
    # second has passed (a whole re-read, over the upload measured next).
    past = time.time_ns() - 60 * 10**9
    os.utime(path, ns=(past, past))
    return digest.hexdigest()


def sshfs_round(server: Sshd, folder: Path, mnt: Path, size_mib: int, block: bytes,
                name: str, digest: str, port: int) -> tuple[Phase, Phase]:
    with sshfs_mounted(server, folder, mnt, port):
        client = functools.partial(sshfs_processes, mnt, port)
        read = measure(client, server, lambda: read_file(mnt / name, digest))
        upload = measure(client, server, lambda: write_file(mnt / f"up-sshfs-{name}", block,
                                                             size_mib, fsync=True))
    return read, upload


def onitufs(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onitufs", *map(str, args)], capture_output=True,
                          text=True, check=False, timeout=3600)


@contextlib.contextmanager
def onitufs_mounted(server: Sshd, folder: Path, work: Path, port: int, settings: list[str],
                    poll_interval: str) -> Iterator[tuple[Path, int]]:
    """onitufs mounted at WORK/mnt with the server as its only remote, its cache in WORK;
    `settings`: config lines before the remote's table. Yields the mount and the daemon's
    pid; the cache is removed afterwards."""
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    config = work / "onitufs.toml"
    config.write_text("\n".join([
        "[cache]", f'path = "{work / "cache"}"', *settings, "",
        *server.remote("server", folder, poll_interval=poll_interval, port=port)]))
    result = onitufs("mount", mnt, config)
    if result.returncode != 0:
        raise TargetError(f"onitufs mount failed: {result.stderr.strip()}")
    pid = json.loads(os.getxattr(mnt, "user.onitufs.status"))["pid"]
    try:
        yield mnt, pid
    finally:
        onitufs("umount", mnt)
        lazy_unmount(mnt)
        wait_gone(pid, 30)
        shutil.rmtree(work / "cache", ignore_errors=True)


def wait_for_upload(target: Path, size: int) -> float:
    start = time.perf_counter()
    # Watched on the server, not through the mount, so that watching costs the daemon
    # nothing: the driver renames the upload into place once it is whole and fsynced.
    while not (target.exists() and target.stat().st_size == size):
        if time.perf_counter() - start > 600:
            raise TargetError("onitufs: the upload did not finish in 600s")
        time.sleep(0.005)
    return time.perf_counter() - start


def onitufs_round(server: Sshd, folder: Path, work: Path, size_mib: int, block: bytes,
                  name: str, digest: str, port: int) -> tuple[Phase, Phase, float]:
    # sshfs sends each write as it comes: onitufs starts its upload as soon as it may too
    settings = [f'size = "{max(1024, 4 * size_mib)} MiB"', "", "[sync]", 'upload_delay = "0s"']
    with onitufs_mounted(server, folder, work, port, settings, "1s") as (mnt, pid):
        deadline = time.monotonic() + 60
        while not (mnt / name).exists():
            if time.monotonic() > deadline:
                raise TargetError("onitufs: the server's file did not show in the mount")
            time.sleep(0.05)
        def daemon() -> list[int]:
            return [pid, *descendants(pid)]  # its ssh clients do the transport's work
        read = measure(daemon, server, lambda: read_file(mnt / name, digest))
        target = folder / f"up-onitufs-{name}"
        write = write_file(mnt / target.name, block, size_mib, fsync=False)
        upload = measure(daemon, server,
                         lambda: wait_for_upload(target, size_mib * MIB))
    return read, upload, write


def make_tree(root: Path) -> Path:
    """The tree to list; returns the file that comes last."""
    top, sub = TREE_FOLDERS
    for a in range(top):
        for b in range(sub):
            folder = root / f"a{a}" / f"b{b}"
            folder.mkdir(parents=True)
            for f in range(5):
                (folder / f"f{f}").write_bytes(b"x")
    return folder / "f4"


def sshfs_sees_tree(server: Sshd, folder: Path, mnt: Path, port: int) -> float:
    start = time.perf_counter()
    with sshfs_mounted(server, folder, mnt, port):
        subprocess.run(["find", str(mnt), "-ls"], check=True, stdout=subprocess.DEVNULL,
                       timeout=600)
        return time.perf_counter() - start


def onitufs_sees_tree(server: Sshd, folder: Path, work: Path, port: int, last: Path) -> float:
    start = time.perf_counter()
    with onitufs_mounted(server, folder, work, port, [], "1h") as (mnt, _):
        shown = mnt / last.relative_to(folder)
        while not shown.exists():
            if time.perf_counter() - start > 600:
                raise TargetError("onitufs: the server's tree did not show in 600s")
            time.sleep(0.01)
        return time.perf_counter() - start


@dataclass
class Results:
    """Best MiB/s [read, upload, writes into the mount] and least CPU seconds per GiB
    [[client, server] for the read, for the upload], per filesystem."""

    speed: dict[str, list[float]]
    cpu: dict[str, list[list[float]]]


def compare(server: Sshd, folder: Path, work: Path, size_mib: int, rounds: int, port: int,
            where: str) -> Results:
    """Both filesystems, `rounds` times, each against the server through `port`."""
    block = os.urandom(MIB)
    results = Results({who: [0.0, 0.0, 0.0] for who in ("sshfs", "onitufs")},
                      {who: [[math.inf] * 2, [math.inf] * 2] for who in ("sshfs", "onitufs")})
    for round_no in range(rounds):
        for who in results.speed:
            name = f"cold-{who}-{round_no}.bin"
            digest = make_source(folder / name, size_mib)
            note = ""
            if who == "sshfs":
                read, upload = sshfs_round(server, folder, work / "sshfs", size_mib, block, name,
                                           digest, port)
            else:
                read, upload, write = onitufs_round(server, folder, work / "onitufs", size_mib,
                                                    block, name, digest, port)
                results.speed[who][2] = max(results.speed[who][2], size_mib / write)
                note = f" (the writes into the mount before: {size_mib / write:.1f} MiB/s)"
            print(f"  ssh {where} {who:8} round {round_no + 1}: cold read "
                  f"{size_mib / read.seconds:7.1f} MiB/s, upload "
                  f"{size_mib / upload.seconds:7.1f} MiB/s{note}", file=sys.stderr, flush=True)
            for i, phase in enumerate((read, upload)):
                results.speed[who][i] = max(results.speed[who][i], size_mib / phase.seconds)
                least = results.cpu[who][i]
                least[0] = min(least[0], phase.client_cpu * 1024 / size_mib)
                least[1] = min(least[1], phase.server_cpu * 1024 / size_mib)
            for path in folder.iterdir():
                path.unlink()
    return results


def speed_lines(results: Results) -> list[str]:
    lines = [f"{'':28}{'unit':>6}{'sshfs':>10}{'onitufs':>10}{'ratio':>8}"]
    for i, label in enumerate(("cold read from the server", "upload to the server")):
        sshfs, ours = results.speed["sshfs"][i], results.speed["onitufs"][i]
        lines.append(f"{label:28}{'MiB/s':>6}{sshfs:10.1f}{ours:10.1f}"
                     f"{ours / sshfs if sshfs else 0.0:8.2f}")
    return lines


def run(size_mib: int, workdir: Path | None = None) -> list[str]:
    """The comparison's table lines."""
    work = make_workdir(workdir, "onitufs-bench-ssh-")
    server = Sshd(work / "sshd")
    folder = work / "server"
    folder.mkdir()
    mounts = [work / "sshfs", work / "onitufs" / "mnt"]
    mounts[0].mkdir()
    (work / "onitufs").mkdir()
    proxy: DelayProxy | None = None
    try:
        server.start()
        near = compare(server, folder, work, size_mib, ROUNDS, server.port, "loopback")
        proxy = DelayProxy(server.port, LONG_LINK / 2)
        far = compare(server, folder, work, LONG_LINK_MIB, ROUNDS, proxy.port, "long link")
        last = make_tree(folder)
        sees_tree = {"sshfs": min(sshfs_sees_tree(server, folder, work / "sshfs", proxy.port)
                                  for _ in range(ROUNDS)),
                     "onitufs": min(onitufs_sees_tree(server, folder, work / "onitufs",
                                                      proxy.port, last)
                                    for _ in range(ROUNDS))}
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
        for point in mounts:
            lazy_unmount(point)
        kept = remove_workdir(work, [point for point in mounts if mounted(point)])
        if kept:
            print(f"bench: {kept}", file=sys.stderr)
    lines = [f"SSH remote vs sshfs, one sshd on 127.0.0.1, {size_mib} MiB file, best of {ROUNDS}:",
             *speed_lines(near)]
    lines.append(f"{'  onitufs: writes into the mount':34}{'-':>10}{near.speed['onitufs'][2]:10.1f}"
                 "   (local cache; the upload above starts at the close)")
    lines.append("CPU seconds per GiB, the filesystem's processes / the server's, least of "
                 f"{ROUNDS}:")
    for i, label in enumerate(("cold read", "upload")):
        lines.append(f"  {label:10}" + "".join(
            f"  {who} {near.cpu[who][i][0]:.2f} / {near.cpu[who][i][1]:.2f}" for who in near.cpu))
    lines += [f"The same through a proxy that makes the round trip {LONG_LINK * 1000:.0f} ms "
              f"(a long link), {LONG_LINK_MIB} MiB, best of {ROUNDS}:", *speed_lines(far)]
    top, sub = TREE_FOLDERS
    lines.append(f"{'the whole tree seen':28}{'s':>6}{sees_tree['sshfs']:10.2f}"
                 f"{sees_tree['onitufs']:10.2f}{sees_tree['sshfs'] / sees_tree['onitufs']:8.2f}"
                 f"   ({top + top * sub} folders, {top * sub * 5} files; ratio: sshfs's time "
                 "/ onitufs's)")
    met = [f"{label} {'met' if ratio >= BAR else 'NOT MET'} ({ratio:.2f})"
           for label, ratio in (("cold", near.speed["onitufs"][0] / near.speed["sshfs"][0]),
                                ("upload", near.speed["onitufs"][1] / near.speed["sshfs"][1]))]
    lines.append(f"bars on loopback (onitufs/sshfs >= {BAR:.1f}): " + "; ".join(met))
    return lines


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    print("\n".join(run(size)))
