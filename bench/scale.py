"""The scale suite: fan-out, memory, a big index and idle (issue 18, bars 3 and 4), one
run, three parts.

1. fan-out: a FANOUT file (1 GiB) on disk is copied once into onitufs with three
   local remotes, timed until `onitufs umount` returns (the local driver fsyncs
   what it writes, so by then every remote holds it durably); the baseline is
   three plain `cp` of the same file to three folders on the same disk, then
   `sync`. Bar: onitufs at most 1.5x the baseline.
2. memory: a SMALL (512 MiB) then a BIG (4 GiB) file written into onitufs in
   1 MiB writes (as `head -c`; the data comes from a 64 MiB random buffer
   stamped with a counter every 64 KiB, so no two blocks are alike), each
   replicated to the three remotes before the next; the daemon's RssAnon
   (/proc/PID/status) is sampled every 0.2 s from the mount to the end of the
   umount. Bars: its peak under 200 MiB; the big copy's MiB/s at least 0.9 of
   the small one's.
3. index: a tree of INDEX_FILES (100,000) small files in a few hundred folders
   is written into remote a of a new onitufs, taken in by its first mount and
   replicated to b and c (progress is printed), then unmounted; the remount is
   timed from `onitufs mount` until it returns, ready, and `find MNT -ls` right
   after it; the same tree goes through `rclone mount` (bench/baselines.py),
   with `find -ls` right after its mount. Bars: ready in under 1 s; the find at
   least 5x faster than rclone's. Then, once every remote is listed and nothing is
   queued, the daemon's CPU time (/proc/PID/stat, all its threads) over
   LIGHT_SECONDS (60) with a small file written in the mount every LIGHT_EVERY
   (5) seconds, a mount in light use (no bar; each write is uploaded to the
   three remotes, which must hold them all afterwards; one file is written and
   uploaded before, as the first change after a remount has the core decode
   what each remote holds from the index, once); then over IDLE seconds
   (600, the local driver's default poll_interval, so that one round of its
   safety-net walks falls within, and not within the light use) with nothing
   changing: idle means idle, issue 18's bar 3, under 1% of a core (each remote
   holds the whole tree here, not a third of it).

Each part checks what the remotes hold afterwards, so a fast but wrong run
fails instead of winning. Free space is checked first; every part cleans up
after itself (mounts, daemons, rclone, folders), also after an error or
Ctrl-C. `python -m bench scale` runs this suite alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from onitufs.plug import MARKER

from .baselines import RcloneMount
from .targets import (
    GIB,
    REMOTES,
    UPLOAD_DELAY,
    Onitufs,
    Target,
    TargetError,
    clean_up,
    json_path,
    make_workdir,
    wait_gone,
)
from .workloads import MIB, WrongData

CHUNK = MIB  # each write, as dd bs=1M / head -c
STAMP_EVERY = 64 * 1024  # the counter's stride: well under onitufs's 1 MiB blocks
POOL = 64 * MIB  # the random bytes the data is made of
_STAMP = struct.Struct(">Q")
SAMPLE_EVERY = 0.2  # seconds between two readings of the daemon's RssAnon
INDEX_FOLDER_FILES = 250  # files per folder of the index tree
INDEX_FILE_SIZE = 1024
INTAKE_TIMEOUT = 3600.0  # for the first mount to take in and replicate the index tree
PROGRESS_EVERY = 10.0
IDLE_SECONDS = 600.0  # the local driver's default poll_interval: one round of walks
LIGHT_SECONDS = 60.0  # the window of light use, before the idle one
LIGHT_EVERY = 5.0  # seconds between two small files written in it
MARGIN = GIB  # free space kept beyond what the largest part needs
COMMAND_TIMEOUT = 3600


@dataclass(frozen=True)
class Bar:
    key: str
    label: str
    limit: float
    at_most: bool  # the figure must be <= limit (else >= limit); "under" is taken as <=

    def met(self, value: float) -> bool:
        return value <= self.limit if self.at_most else value >= self.limit

    def text(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.limit:g}"


BARS = (
    Bar("fanout_ratio", "fan-out: onitufs (cp + umount) / (3 cp + sync)", 1.5, True),
    Bar("rss_anon_peak_mib", "memory: daemon's peak RssAnon, MiB", 200.0, True),
    Bar("big_to_small_speed", "memory: big copy's MiB/s / small copy's", 0.9, False),
    Bar("remount_seconds", "index: remount ready, s", 1.0, True),
    Bar("find_speedup", "index: rclone's find -ls / onitufs's", 5.0, False),
    Bar("idle_core_percent", "idle: the daemon's % of a core", 1.0, True),
)

Figures = dict[str, float]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Stream:
    """The content written: 1 MiB chunks out of a 64 MiB random pool, each 64 KiB stamped
    with its own counter, so that no two blocks of a file are alike; chunk(i) is the same
    every time it is asked for, so a copy can be checked against it."""

    def __init__(self) -> None:
        self.pool = bytearray(os.urandom(POOL))
        self.view = memoryview(self.pool)

    def chunk(self, number: int) -> memoryview:
        start = number * CHUNK % POOL
        for offset in range(0, CHUNK, STAMP_EVERY):
            self.pool[start + offset:start + offset + _STAMP.size] = _STAMP.pack(
                (number * CHUNK + offset) // STAMP_EVERY)
        return self.view[start:start + CHUNK]

    def write(self, path: Path, mib: int, durable: bool = False) -> float:
        """Write `mib` MiB to `path` in 1 MiB writes, then close (fsync first if `durable`);
        the seconds it took."""
        start = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for number in range(mib):
                written = os.write(fd, self.chunk(number))
                if written != CHUNK:
                    raise OSError(f"{path}: short write, {written} of {CHUNK} bytes")
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        return time.perf_counter() - start

    def check(self, path: Path, mib: int, every: int = 1) -> None:
        """That `path` holds the `mib` MiB written (every `every`-th chunk compared)."""
        size = path.stat().st_size if path.exists() else None
        if size != mib * MIB:
            raise WrongData(f"{path}: {size} bytes, not {mib * MIB}")
        with open(path, "rb") as file:
            for number in range(0, mib, every):
                file.seek(number * CHUNK)
                if file.read(CHUNK) != self.chunk(number):
                    raise WrongData(f"{path}: MiB {number} differs from what was written")


class RssSampler:
    """The peak RssAnon of a process, read from /proc/PID/status every SAMPLE_EVERY
    seconds on a thread of its own until stopped or the process is gone."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with open(f"/proc/{self.pid}/status") as status:
                    for line in status:
                        if line.startswith("RssAnon:"):
                            self.peak = max(self.peak, int(line.split()[1]) * 1024)
                            self.samples += 1
                            break
            except (OSError, ValueError):
                return  # the process is gone
            self._stop.wait(SAMPLE_EVERY)

    def stop(self) -> int:
        """Stop sampling; the peak, in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak


def run(command: list[str], timeout: float = COMMAND_TIMEOUT) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            timeout=timeout)
    if result.returncode != 0:
        raise WrongData(f"{' '.join(command)} failed ({result.returncode}): "
                        f"{result.stderr.strip()[-500:]}")
    return result.stdout


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


@contextlib.contextmanager
def part(problems: list[str]) -> Iterator[tuple[list[Target], list[tuple[Path, list[Path]]]]]:
    """The targets and temporary folders of one part, all cleaned up when it ends, however
    it ends (so that the next part has the disk space back); a failed cleanup is noted."""
    targets: list[Target] = []
    workdirs: list[tuple[Path, list[Path]]] = []
    try:
        yield targets, workdirs
    finally:
        for target in targets:
            if isinstance(target, Onitufs):
                problems += [f"onitufs log: {line}" for line in target.log_problems()]
        if not clean_up(targets, workdirs):
            problems.append("a cleanup failed (see above)")


def new_onitufs(workdir: Path | None, name: str, cache_size: int, targets: list[Target],
                workdirs: list[tuple[Path, list[Path]]]) -> Onitufs:
    folder = make_workdir(workdir, f"onitufs-bench-scale-{name}-")
    workdirs.append((folder, []))
    target = Onitufs(folder, cache_size, UPLOAD_DELAY)
    workdirs[-1][1].append(target.root)
    targets.append(target)
    return target


def umount(target: Onitufs) -> float:
    """`onitufs umount`, which returns once every remote holds everything; its seconds."""
    target.stop()
    assert target.flush_seconds is not None
    if target.flush_status != 0:
        raise TargetError(f"onitufs umount left changes queued ({target.flush_status}): "
                          f"{target.flush_stderr}")
    return target.flush_seconds


def fanout(stream: Stream, mib: int, workdir: Path | None, figures: Figures,
           problems: list[str]) -> None:
    with part(problems) as (targets, workdirs):
        folder = make_workdir(workdir, "onitufs-bench-scale-fanout-")
        workdirs.append((folder, []))
        source = folder / "source.bin"
        stream.write(source, mib, durable=True)
        copies = [folder / f"copy-{name}" for name in REMOTES]
        run(["sync"])

        def three_cp() -> None:
            for copy in copies:
                copy.mkdir()
                run(["cp", str(source), str(copy)])
            run(["sync"])
        figures["fanout_cp_seconds"] = timed(three_cp)
        say(f"  3 x cp + sync            {figures['fanout_cp_seconds']:8.2f} s")
        for copy in copies:
            shutil.rmtree(copy)
        run(["sync"])

        target = new_onitufs(workdir, "fanout", 4 * GIB, targets, workdirs)
        target.start()
        figures["fanout_onitufs_cp_seconds"] = timed(
            lambda: run(["cp", str(source), str(target.root)]))
        figures["fanout_onitufs_umount_seconds"] = umount(target)
        figures["fanout_onitufs_seconds"] = (figures["fanout_onitufs_cp_seconds"]
                                             + figures["fanout_onitufs_umount_seconds"])
        figures["fanout_ratio"] = figures["fanout_onitufs_seconds"] / figures["fanout_cp_seconds"]
        say(f"  onitufs cp + umount      {figures['fanout_onitufs_seconds']:8.2f} s "
            f"(cp {figures['fanout_onitufs_cp_seconds']:.2f} s, umount "
            f"{figures['fanout_onitufs_umount_seconds']:.2f} s)")
        for remote in target.remotes:
            run(["cmp", str(source), str(remote / source.name)])


def memory(stream: Stream, big_mib: int, small_mib: int, workdir: Path | None,
           figures: Figures, problems: list[str]) -> None:
    with part(problems) as (targets, workdirs):
        target = new_onitufs(workdir, "memory", max(4 * GIB, 2 * (big_mib + small_mib) * MIB),
                             targets, workdirs)
        target.start()
        assert target.pid is not None
        sampler = RssSampler(target.pid)
        try:
            for name, mib in (("small", small_mib), ("big", big_mib)):
                seconds = stream.write(target.root / f"{name}.bin", mib)
                figures[f"{name}_mib"] = mib
                figures[f"{name}_mib_per_second"] = mib / seconds
                say(f"  write {mib:5d} MiB           {seconds:8.2f} s "
                    f"{mib / seconds:8.1f} MiB/s (RssAnon so far {sampler.peak / MIB:.0f} MiB)")
                if name == "small":  # replicated before the big one, so as not to slow it
                    waited = target.settle(INTAKE_TIMEOUT)
                    say(f"  (waited {waited:.1f} s for its uploads)")
            figures["memory_umount_seconds"] = umount(target)
            say(f"  umount (uploads the rest) {figures['memory_umount_seconds']:7.2f} s")
            wait_gone(target.pid, 30)
        finally:
            peak = sampler.stop()
        # only now: the peak of a part cut short says nothing of the bar
        figures["rss_anon_peak_mib"] = peak / MIB
        figures["rss_samples"] = sampler.samples
        say(f"  daemon's peak RssAnon    {figures['rss_anon_peak_mib']:8.0f} MiB "
            f"({sampler.samples} samples)")
        figures["big_to_small_speed"] = (figures["big_mib_per_second"]
                                         / figures["small_mib_per_second"])
        for remote in target.remotes:  # in full for one remote, sampled for the others
            stream.check(remote / "small.bin", small_mib, 1 if remote.name == REMOTES[0] else 7)
            stream.check(remote / "big.bin", big_mib, 1 if remote.name == REMOTES[0] else 7)


def make_tree(root: Path, files: int) -> int:
    """`files` files of INDEX_FILE_SIZE bytes (each naming itself first, so all differ) in
    folders of INDEX_FOLDER_FILES under `root`; how many folders."""
    filler = os.urandom(INDEX_FILE_SIZE)
    folders = 0
    for number in range(files):
        folder = root / f"d{number // INDEX_FOLDER_FILES:04d}"
        if number % INDEX_FOLDER_FILES == 0:
            folder.mkdir(parents=True)
            folders += 1
        name = f"f{number:06d}"
        header = f"{folder.name}/{name}\n".encode()
        (folder / name).write_bytes(header + filler[len(header):])
    return folders


def count_files(root: Path) -> int:
    return sum(len([name for name in names if name != MARKER]) for _, _, names in os.walk(root))


def find_ls(root: Path, least: int, name: str) -> float:
    start = time.perf_counter()
    output = run(["find", str(root), "-ls"])
    seconds = time.perf_counter() - start
    lines = output.count("\n")
    if lines < least:
        raise WrongData(f"{name}: find -ls listed {lines} entries, fewer than the {least} there")
    return seconds


def intake(target: Onitufs, files: int) -> float:
    """Wait until the first mount has taken in the tree on remote a and every other remote
    holds it too, printing progress; the seconds waited."""
    start = time.monotonic()
    shown = start
    while True:
        queued, flying = target.queue()
        if (queued, flying) == (0, 0) and all(count_files(remote) == files
                                              for remote in target.remotes):
            return time.monotonic() - start
        now = time.monotonic()
        if now - start > INTAKE_TIMEOUT:
            raise TargetError(f"onitufs: the index tree not replicated after "
                              f"{INTAKE_TIMEOUT:.0f} s")
        if now - shown >= PROGRESS_EVERY:
            done = sum(remote["done"] for remote in target.status()["remotes"])
            say(f"  ... {now - start:5.0f} s: {queued} changes queued, {flying} in flight, "
                f"{done} uploads done (of {files * (len(REMOTES) - 1)})")
            shown = now
        time.sleep(1.0)


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time of a process, all its threads, so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def listed_and_settled(target: Onitufs) -> None:
    """Until every remote is listed and nothing is queued."""
    start = time.monotonic()
    while any(remote["state"] != "online" for remote in target.status()["remotes"]):
        if time.monotonic() - start > INTAKE_TIMEOUT:
            raise TargetError("onitufs: its remotes not listed after the remount")
        time.sleep(1.0)
    target.settle(INTAKE_TIMEOUT)


def idle(target: Onitufs, seconds: float, figures: Figures) -> None:
    """The daemon's share of a core over `seconds` with nothing changing, once every
    remote is listed and nothing is queued."""
    assert target.pid is not None
    listed_and_settled(target)
    say(f"  idle: the daemon's CPU time over {seconds:.0f} s with nothing changing")
    before = cpu_seconds(target.pid)
    time.sleep(seconds)
    figures["idle_core_percent"] = 100 * (cpu_seconds(target.pid) - before) / seconds
    figures["idle_seconds"] = seconds


def light_use(target: Onitufs, seconds: float, figures: Figures) -> None:
    """The daemon's share of a core over `seconds` while a small file is written in the
    mount every LIGHT_EVERY seconds, once every remote is listed and nothing is queued;
    then every remote must hold them all."""
    assert target.pid is not None
    listed_and_settled(target)
    folder = target.root / "light-use"
    folder.mkdir()
    first = b"the first change after the remount\n"
    (folder / "first.txt").write_bytes(first)
    listed_and_settled(target)
    say(f"  light use: the daemon's CPU time over {seconds:.0f} s, a file written every "
        f"{LIGHT_EVERY:g} s")
    before, start = cpu_seconds(target.pid), time.monotonic()
    written: dict[str, bytes] = {}
    while time.monotonic() - start < seconds:
        name = f"note-{len(written)}.txt"
        written[name] = f"note {len(written)}\n".encode() * (len(written) + 1)
        (folder / name).write_bytes(written[name])
        time.sleep(max(0.0, start + len(written) * LIGHT_EVERY - time.monotonic()))
    elapsed = time.monotonic() - start
    figures["light_core_percent"] = 100 * (cpu_seconds(target.pid) - before) / elapsed
    figures["light_files"] = len(written)
    target.settle(INTAKE_TIMEOUT)
    for remote in target.remotes:
        for name, content in {"first.txt": first, **written}.items():
            if (remote / "light-use" / name).read_bytes() != content:
                raise WrongData(f"{remote}: light-use/{name} is not what was written")


def index(files: int, workdir: Path | None, figures: Figures, problems: list[str],
          idle_seconds: float) -> None:
    with part(problems) as (targets, workdirs):
        target = new_onitufs(workdir, "index", 4 * GIB, targets, workdirs)
        start = time.perf_counter()
        folders = make_tree(target.remotes[0], files)
        figures["index_make_seconds"] = time.perf_counter() - start
        figures["index_folders"] = folders
        say(f"  tree of {files} files in {folders} folders written in "
            f"{figures['index_make_seconds']:.1f} s; the first mount takes it in")
        figures["index_first_mount_seconds"] = timed(target.start)
        figures["index_intake_seconds"] = intake(target, files)
        say(f"  first mount {figures['index_first_mount_seconds']:.1f} s, taken in and "
            f"replicated {figures['index_intake_seconds']:.1f} s after it")
        figures["index_umount_seconds"] = umount(target)
        least = files + folders
        figures["remount_seconds"] = timed(target.start)
        assert target.pid is not None
        sampler = RssSampler(target.pid)
        try:
            figures["onitufs_find_seconds"] = find_ls(target.root, least, "onitufs")
        finally:
            peak = sampler.stop()
        figures["index_rss_anon_peak_mib"] = peak / MIB
        say(f"  onitufs remount {figures['remount_seconds']:.2f} s, find -ls "
            f"{figures['onitufs_find_seconds']:.2f} s")
        if idle_seconds > 0:
            light_use(target, min(LIGHT_SECONDS, idle_seconds), figures)
            idle(target, idle_seconds, figures)
        umount(target)

        folder = make_workdir(workdir, "onitufs-bench-scale-rclone-")
        workdirs.append((folder, []))
        rclone = RcloneMount(folder)
        targets.append(rclone)
        workdirs[-1][1].append(rclone.root)
        make_tree(rclone.remote, files)
        say(f"  rclone: {rclone.describe()}")
        figures["rclone_mount_seconds"] = timed(rclone.start)
        figures["rclone_find_seconds"] = find_ls(rclone.root, least, "rclone")
        say(f"  rclone mount {figures['rclone_mount_seconds']:.2f} s, find -ls "
            f"{figures['rclone_find_seconds']:.2f} s")
        rclone.stop()
        figures["find_speedup"] = figures["rclone_find_seconds"] / figures["onitufs_find_seconds"]


def needed_bytes(fanout_mib: int, big_mib: int, small_mib: int, files: int) -> int:
    """Free space the largest part needs: fan-out, the source and the cache beside three
    remotes; memory, the cache and three remotes; index, five trees (onitufs's cache is
    not counted: its blocks are the tree's), each file taking at least one 4 KiB block."""
    tree = files * max(4096, INDEX_FILE_SIZE) + files // INDEX_FOLDER_FILES * 4096
    return max(5 * fanout_mib * MIB, 4 * (big_mib + small_mib) * MIB, 5 * tree) + MARGIN


def table(figures: Figures) -> list[str]:
    rows = [["bar", "figure", "bar", "verdict"]]
    for bar in BARS:
        value = figures.get(bar.key)
        rows.append([bar.label, "-" if value is None else f"{value:.2f}", bar.text(),
                     "not measured" if value is None else "met" if bar.met(value)
                     else "NOT MET"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(widths[i]) if i == 1 else cell.ljust(widths[i])
                      for i, cell in enumerate(row)).rstrip() for row in rows]


def details(figures: Figures) -> list[str]:
    """The figures the bars are made of, in words."""
    def get(key: str) -> str:
        value = figures.get(key)
        return "-" if value is None else f"{value:.0f}" if value == int(value) else f"{value:.2f}"
    return [
        f"fan-out: 3 x cp + sync {get('fanout_cp_seconds')} s; onitufs cp "
        f"{get('fanout_onitufs_cp_seconds')} s + umount {get('fanout_onitufs_umount_seconds')} s",
        f"memory: {get('small_mib')} MiB at {get('small_mib_per_second')} MiB/s, "
        f"{get('big_mib')} MiB at {get('big_mib_per_second')} MiB/s; umount "
        f"{get('memory_umount_seconds')} s",
        f"index: {get('index_folders')} folders; first mount {get('index_first_mount_seconds')} s, "
        f"taken in and replicated {get('index_intake_seconds')} s; remount "
        f"{get('remount_seconds')} s, find -ls {get('onitufs_find_seconds')} s (RssAnon peak "
        f"{get('index_rss_anon_peak_mib')} MiB); rclone mount {get('rclone_mount_seconds')} s, "
        f"find -ls {get('rclone_find_seconds')} s; in light use ({get('light_files')} files "
        f"written) {get('light_core_percent')}% of a core, idle {get('idle_core_percent')}% "
        f"over {get('idle_seconds')} s",
    ]


def load() -> list[float]:
    with open("/proc/loadavg") as loadavg:
        return [float(value) for value in loadavg.read().split()[:3]]


def suite(workdir: Path | None, big_gib: float, fanout_mib: int, files: int,
          idle_seconds: float, json_option: Path | None, strict: bool,
          busy: float) -> tuple[list[str], int]:
    """The three parts in order; the report's lines and an exit status (0, 1 for an error or
    too little room, 3 for a bar not met under `strict`, 130 when interrupted). `busy`: how
    busy the machine was before the run (0 to 1), kept with the figures."""
    started = time.time()
    big_mib = round(big_gib * 1024)
    small_mib = min(512, max(1, big_mib // 8))
    where = Path(workdir or tempfile.gettempdir())
    disk = shutil.disk_usage(where)
    needed = needed_bytes(fanout_mib, big_mib, small_mib, files)
    if disk.free < needed:
        return [f"scale: not enough room in {where}: {needed / GIB:.1f} GiB needed, "
                f"{disk.free / GIB:.1f} GiB free (use --big-gib, --fanout-mib, --index-files or "
                "--workdir)"], 1
    figures: Figures = {}
    problems: list[str] = []
    load_before = load()
    status = 0
    stream = Stream()
    parts: list[tuple[str, Callable[[], None]]] = [
        (f"fan-out, {fanout_mib} MiB to three remotes",
         lambda: fanout(stream, fanout_mib, workdir, figures, problems)),
        (f"memory, {small_mib} then {big_mib} MiB copied in",
         lambda: memory(stream, big_mib, small_mib, workdir, figures, problems)),
        (f"index, {files} files, remount and find -ls, against rclone, then idle",
         lambda: index(files, workdir, figures, problems, idle_seconds)),
    ]
    try:
        for title, action in parts:
            say(f"scale: {title} (load average {' '.join(f'{v:.2f}' for v in load())})")
            action()
    except KeyboardInterrupt:
        say("interrupted: cleaned up")
        status = 130
    except (TargetError, WrongData, OSError, subprocess.SubprocessError) as error:
        say(f"bench: scale: {type(error).__name__}: {error}")
        status = 1
    load_after = load()
    met = all(bar.key in figures and bar.met(figures[bar.key]) for bar in BARS)
    path = json_path(json_option, "scale")
    path.write_text(json.dumps({
        "suite": "scale",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": {"cores": os.cpu_count(), "linux": platform.release(),
                    "python": platform.python_version(), "busy_before": round(busy, 3),
                    "load_before": load_before, "load_after": load_after},
        "sizes": {"fanout_mib": fanout_mib, "small_mib": small_mib, "big_mib": big_mib,
                  "index_files": files},
        "figures": figures,
        "bars": {bar.key: {"value": figures.get(bar.key), "limit": bar.limit,
                           "at_most": bar.at_most,
                           "met": None if bar.key not in figures else bar.met(figures[bar.key])}
                 for bar in BARS},
        "problems": problems,
    }, indent=2) + "\n")
    if strict and not met and status == 0:
        status = 3
    title = (f"scale (bars 3 and 4): fan-out {fanout_mib} MiB, copies of {small_mib} and {big_mib} MiB, "
             f"index of {files} files; on {os.cpu_count()} cores, {busy:.0%} busy before the "
             f"run, load average {load_before[0]:.2f} before and {load_after[0]:.2f} after (other "
             "work lowers the figures and moves the ratios)")
    return [title, *table(figures), *details(figures), *problems,
            f"figures written to {path}"], status
