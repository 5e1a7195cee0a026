"""`python -m bench` (and `make bench`): onitufs measured against others, in four suites.

fuse: mounts, one after the other, a tmpfs folder (the kernel alone, as a
reference), the minimal in-memory pyfuse3 filesystem of bench/memfs.py (the
baseline: what pyfuse3 on trio costs by itself) and onitufs with three
local-directory remotes; runs the same workloads in each; prints one table
with onitufs/memfs ratios and whether the bars are met; and ends with how
long `onitufs umount` took to upload what was still queued.
programs: real programs (tar, git, find, rm, make) on onitufs, rclone mount,
sshfs and plain disk (bench/programs.py). ssh: onitufs's SSH driver against
sshfs (bench/ssh.py). scale: fan-out, memory and a 100,000-file index
(bench/scale.py). `python -m bench SUITE...` runs only those named.
Nothing is written into the repository: everything lives in temporary
folders, removed at the end, as every mount and process is, also after an
error or Ctrl-C. While it runs, the VM's free-page reporting is paused
(bench/machine.py; `--as-is` leaves the machine alone)."""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from . import machine, programs, scale, workloads
from .targets import (
    GIB,
    REMOTES,
    UPLOAD_DELAY,
    MemFS,
    Onitufs,
    Target,
    TargetError,
    Tmpfs,
    clean_up,
    make_workdir,
)
from .workloads import MIB, SMALL, Data, WrongData

FILESYSTEMS = ("tmpfs", "memfs", "onitufs")
SUITES = ("fuse", "programs", "ssh", "scale")
BUSY_WARNING = 0.15  # CPU busy before the run above which the figures are flagged


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    bar: float | None  # the least onitufs/memfs ratio accepted (issue 18, bar 2), if any
    bar_name: str = ""


def metrics(size_mib: int, files: int) -> list[Metric]:
    return [
        Metric("write", f"sequential write {size_mib} MiB", "MiB/s", 0.9, "write"),
        Metric("write_durable", "  the same, fsync included", "MiB/s", None),
        Metric("read", f"cached read {size_mib} MiB", "MiB/s", 0.7, "cached read"),
        Metric("create", f"create {files} x 4 KiB files", "files/s", 0.8, "4 KiB create"),
        Metric("read_small", f"read {files} x 4 KiB files", "files/s", None),
    ]


Results = dict[str, dict[str, float]]  # filesystem -> metric key -> figure


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0]
                                     if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, metavar="N",
                        help="size of the sequential file in MiB (default 1024)")
    parser.add_argument("--files", type=int, default=2000, metavar="N",
                        help="number of 4 KiB files (default 2000)")
    parser.add_argument("--fs", default=",".join(FILESYSTEMS), metavar="LIST",
                        help="comma-separated filesystems to measure, in this order "
                             f"(default {','.join(FILESYSTEMS)})")
    parser.add_argument("--settle", action="store_true",
                        help="before each onitufs workload, wait until its uploads are done, so "
                             "they do not compete with it (default: they run alongside, as in use)")
    parser.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                        help="where the temporary folders of memfs and onitufs go: onitufs keeps "
                             "its cache and remotes there (default: the system's temporary folder)")
    parser.add_argument("--ssh-mib", type=int, default=256, metavar="N",
                        help="then the SSH remote against sshfs on one local sshd, with an N MiB "
                             "file (default 256; 0 leaves it out); see bench/ssh.py")
    parser.add_argument("--as-is", action="store_true",
                        help="leave the VM's free-page reporting on: figures then depend on "
                             "which program touches memory the host took back (bench/machine.py)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 3 when a bar is not met")
    parser.add_argument("--targets", default=",".join(programs.TARGETS), metavar="LIST",
                        help="programs: comma-separated targets, in this order "
                             f"(default {','.join(programs.TARGETS)})")
    parser.add_argument("--rounds", type=int, default=programs.ROUNDS, metavar="N",
                        help="programs: rounds the targets take in turn, each step's figure "
                             f"its median (default {programs.ROUNDS})")
    parser.add_argument("--tree", type=Path, default=None, metavar="DIR",
                        help="programs: the tree for tar and git (default the system Python's "
                             "standard library)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="programs or scale (one of them): where its figures go as JSON "
                             "(default a new temporary file, whose path is printed)")
    # scale (bench/scale.py)
    parser.add_argument("--big-gib", type=float, default=4.0, metavar="N",
                        help="scale: the big file copied in, in GiB (default 4; less on a small "
                             "disk)")
    parser.add_argument("--fanout-mib", type=int, default=1024, metavar="N",
                        help="scale: the file fanned out to three remotes, in MiB (default 1024)")
    parser.add_argument("--index-files", type=int, default=100_000, metavar="N",
                        help="scale: the files of the remounted index (default 100000)")
    parser.add_argument("--idle-seconds", type=float, default=scale.IDLE_SECONDS, metavar="S",
                        help="scale: how long the remounted index's daemon is watched idle "
                             "(default 600, one round of the local driver's safety-net "
                             "walks; 0 leaves it out, and the minute of light use after "
                             "it)")
    parser.add_argument("suites", nargs="*", metavar="SUITE",
                        help=f"which suites to run, of {', '.join(SUITES)} (default all): fuse "
                             "(tmpfs, memfs, onitufs), programs (bench/programs.py), ssh "
                             "(bench/ssh.py), scale (bench/scale.py)")
    args = parser.parse_args(argv)
    args.suites = args.suites or list(SUITES)
    if any(suite not in SUITES for suite in args.suites):
        parser.error(f"SUITE: choose from {', '.join(SUITES)}")
    args.targets = [name.strip() for name in args.targets.split(",") if name.strip()]
    if not args.targets or any(name not in programs.TARGETS for name in args.targets):
        parser.error(f"--targets: choose from {', '.join(programs.TARGETS)}")
    if args.tree is not None and not args.tree.is_dir():
        parser.error(f"--tree: {args.tree} is not a folder")
    if args.json is not None and {"programs", "scale"} <= set(args.suites):
        parser.error("--json: name one suite with it, programs or scale")
    if args.big_gib * 1024 < 1 or args.fanout_mib < 1 or args.index_files < 1 \
            or args.idle_seconds < 0:
        parser.error("--big-gib must be at least 1/1024, --fanout-mib and --index-files at "
                     "least 1, --idle-seconds at least 0")
    if args.size_mib < 1 or args.files < 1 or args.rounds < 1:
        parser.error("--size-mib, --files and --rounds must be at least 1")
    args.fs = [name.strip() for name in args.fs.split(",") if name.strip()]
    unknown = [name for name in args.fs if name not in FILESYSTEMS]
    if unknown or not args.fs:
        parser.error(f"--fs: choose from {', '.join(FILESYSTEMS)}")
    return args


def filesystem_of(path: Path) -> str:
    """The type and source of the filesystem holding `path`, e.g. 'ext4 on /dev/vda'."""
    best, found = "", "?"
    resolved = str(path.resolve())
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields, _, tail = line.partition(" - ")
            point = fields.split()[4]
            if (resolved == point or resolved.startswith(point.rstrip("/") + "/")) \
                    and len(point) >= len(best):
                kind, source = tail.split()[:2]
                best, found = point, f"{kind} on {source}"
    return found


def cpu_busy(seconds: float = 1.0) -> float:
    """The fraction of the machine's CPU time spent busy over `seconds` (0 to 1), from /proc/stat."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        idle = values[3] + values[4]  # idle and iowait
        return sum(values[:8]), idle
    total_before, idle_before = sample()
    time.sleep(seconds)
    total_after, idle_after = sample()
    total = total_after - total_before
    return 0.0 if total <= 0 else 1 - (idle_after - idle_before) / total


def header(args: argparse.Namespace) -> str:
    try:
        import pyfuse3
        fuse = f"pyfuse3 {pyfuse3.__version__}"
    except ImportError:
        fuse = "pyfuse3 missing"
    return (f"onitufs benchmark: {args.size_mib} MiB sequential file, {args.files} files of 4 KiB; "
            f"{os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}, "
            f"{fuse}")


def run_workloads(target: Target, args: argparse.Namespace, data: Data, results: Results) -> None:
    """The four workloads in order, on a started target; figures go to results[target.name]."""
    figures = results.setdefault(target.name, {})
    onitufs = target if isinstance(target, Onitufs) else None
    def write() -> float:
        seconds, fsync = workloads.sequential_write(target.root, data, args.size_mib)
        figures["write_durable"] = args.size_mib / (seconds + fsync)
        return seconds

    steps: list[tuple[str, Callable[[], float], float, str]] = [
        ("write", write, args.size_mib, "MiB/s"),
        ("read", lambda: workloads.sequential_read(target.root, data, args.size_mib),
         args.size_mib, "MiB/s"),
        ("create", lambda: workloads.create_files(target.root, data, args.files),
         args.files, "files/s"),
        ("read_small", lambda: workloads.read_files(target.root, data, args.files),
         args.files, "files/s"),
    ]
    for key, step, amount, unit in steps:
        note = ""
        if onitufs is not None:
            if args.settle:
                waited = onitufs.settle()
                note = f" (waited {waited:.1f}s for uploads first)"
            else:
                queued, flying = onitufs.queue()
                if queued:
                    note = f" (uploads alongside: {queued} queued, {flying} in flight)"
        seconds = step()
        figures[key] = amount / seconds
        say(f"  {target.name:8} {key:10} {seconds:8.3f} s  {amount / seconds:10.1f} {unit}{note}")


def table(results: Results, size_mib: int, files: int) -> list[str]:
    columns = [name for name in FILESYSTEMS if name in results]
    ratio = "memfs" in results and "onitufs" in results
    rows = [["", "unit", *columns] + (["onitufs/memfs"] if ratio else [])]
    for metric in metrics(size_mib, files):
        row = [metric.label, metric.unit]
        for name in columns:
            value = results[name].get(metric.key)
            row.append("-" if value is None else f"{value:.1f}" if metric.unit == "MiB/s"
                       else f"{value:.0f}")
        if ratio:
            value = ratio_of(results, metric.key)
            row.append("-" if value is None else f"{value:.2f}")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                      for i, cell in enumerate(row)).rstrip() for row in rows]


def ratio_of(results: Results, key: str) -> float | None:
    memfs = results.get("memfs", {}).get(key)
    onitufs = results.get("onitufs", {}).get(key)
    return None if not memfs or onitufs is None else onitufs / memfs


def bars(results: Results, size_mib: int, files: int) -> tuple[str, bool]:
    """The bars line, and whether every bar was measured and met."""
    parts, all_met = [], True
    for metric in metrics(size_mib, files):
        if metric.bar is None:
            continue
        value = ratio_of(results, metric.key)
        if value is None:
            verdict, all_met = "not measured", False
        elif value >= metric.bar:
            verdict = f"met ({value:.2f})"
        else:
            verdict, all_met = f"NOT MET ({value:.2f})", False
        parts.append(f"{metric.bar_name} >= {metric.bar:.1f}: {verdict}")
    return "bars (onitufs/memfs): " + "; ".join(parts), all_met


def flush_report(target: Onitufs, args: argparse.Namespace) -> list[str]:
    """How long `onitufs umount` took, and whether the remotes got everything."""
    if target.flush_seconds is None:
        return []
    line = (f"onitufs umount (uploads everything still queued to {len(REMOTES)} remotes, "
            f"then unmounts): {target.flush_seconds:.2f} s")
    if target.flush_status == 2:
        line += f"; it left changes queued: {target.flush_stderr}"
    problems = target.remote_contents(args.size_mib, args.files)
    return [line, "remotes after umount: " + ("each holds every file" if not problems
                                              else "; ".join(problems))]


def log_report(target: Onitufs) -> list[str]:
    problems = target.log_problems()
    return ["onitufs log, warnings and errors:", *[f"  {line}" for line in problems]] \
        if problems else []


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def fuse_suite(args: argparse.Namespace, lines: list[str]) -> int:
    """tmpfs, memfs and onitufs through the four workloads; prints their table. The exit
    status: 0, 1 for an error, 3 for a bar not met under --strict, 130 when interrupted."""
    data = Data()
    results: Results = {}
    targets: list[Target] = []
    workdirs: list[tuple[Path, list[Path]]] = []  # folder, mount points inside it
    status = 0
    try:
        for name in args.fs:
            target: Target
            if name == "tmpfs":
                needed = args.size_mib * MIB + args.files * (SMALL + 4096) + 64 * MIB
                shm = Tmpfs.find(needed)
                if shm is None:
                    lines.append("tmpfs: none with room for the run; column left out")
                    continue
                folder = make_workdir(shm, "onitufs-bench-tmpfs-")
                target = Tmpfs(folder)
                workdirs.append((folder, []))
            else:
                folder = make_workdir(args.workdir, f"onitufs-bench-{name}-")
                workdirs.append((folder, []))
                if name == "memfs":
                    target = MemFS(folder)
                else:
                    total = args.size_mib * MIB + args.files * SMALL
                    target = Onitufs(folder, max(4 * GIB, 2 * total), UPLOAD_DELAY)
                workdirs[-1][1].append(target.root)
            targets.append(target)
            say(f"{name}: {target.describe()} ({filesystem_of(folder)})")
            target.start()
            run_workloads(target, args, data, results)
            if isinstance(target, Onitufs):
                say("  onitufs  umount     (uploading what is still queued)")
            target.stop()
            if isinstance(target, Onitufs):
                lines += flush_report(target, args)
    except KeyboardInterrupt:
        say("interrupted: cleaning up")
        status = 130
    except (TargetError, WrongData, OSError, subprocess.SubprocessError) as error:
        say(f"bench: {type(error).__name__}: {error}")
        status = 1
    finally:
        for target in targets:
            if isinstance(target, Onitufs):
                lines += log_report(target)
        if not clean_up(targets, workdirs):
            status = status or 1
    if results:
        print()
        print(header(args))
        print("\n".join(table(results, args.size_mib, args.files)))
        line, all_met = bars(results, args.size_mib, args.files)
        print(line)
        for extra in lines:
            print(extra)
        if "tmpfs" in results:
            print("tmpfs: no FUSE and no daemon; its page cache is its storage, so its reads are "
                  "memory copies (a reference, not a bar)")
        if args.strict and not all_met and status == 0:
            status = 3
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    say(header(args))
    try:
        with machine.steady_memory(args.as_is) as memory:
            say(memory)
            print(memory)  # the report says how the machine was set, beside its figures
            return run_suites(args)
    except KeyboardInterrupt:  # while the memory was touched: the suites catch their own
        say("bench: interrupted")
        return 130


def run_suites(args: argparse.Namespace) -> int:
    lines: list[str] = []
    status = 0
    busy = cpu_busy()
    if busy > BUSY_WARNING:
        lines.append(f"warning: the machine was {busy:.0%} busy with other work before the run: "
                     "the figures may be low and the ratios off")
        say(lines[-1])
    if "fuse" in args.suites:
        status = fuse_suite(args, lines)
    if "programs" in args.suites and status in (0, 3):
        report, result = programs.suite(args.targets, args.workdir, args.tree, args.json,
                                        args.strict, busy, args.rounds)
        print("\n".join(["", *report]))
        if "fuse" not in args.suites:
            print("\n".join(lines))
        status = max(status, result)
    if "ssh" in args.suites and args.ssh_mib > 0 and status in (0, 3):
        from . import ssh
        try:
            print("\n".join(["", *ssh.run(args.ssh_mib, args.workdir)]))
        except (TargetError, WrongData, OSError, subprocess.SubprocessError) as error:
            say(f"bench: ssh: {type(error).__name__}: {error}")
            status = 1
    if "scale" in args.suites and status in (0, 3):
        report, result = scale.suite(args.workdir, args.big_gib, args.fanout_mib,
                                     args.index_files, args.idle_seconds, args.json,
                                     args.strict, busy)
        print("\n".join(["", *report]))
        status = max(status, result)
    return status


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    say(f"(bench took {time.monotonic() - started:.0f} s)")
    sys.exit(code)
