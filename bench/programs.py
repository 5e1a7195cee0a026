"""The real-programs suite: tar, git, find, rm and a C build, in each filesystem.

The tree is the system Python's standard library (symbolic links left out,
since rclone's local backend keeps none), made into a tarball and into a
git repository on plain disk at bench time, in a temporary folder. In each
target, in order:

1. tar x: the tarball extracted into the mount;
2. git clone --no-hardlinks of the repository into the mount;
3. git status in the clone, right after;
4. find -ls of the whole mount after a remount (unmount, mount again; only
   the find is timed: the unmount is where onitufs and rclone finish their
   uploads, and it is shown apart);
5. rm -rf of both trees;
6. make -j2 of C_FILES small C files and a Makefile written into the mount
   (the writing not timed), its program then run and its answer checked.

onitufs (three local remotes) runs them with its uploads going on alongside,
as in use; nothing waits for them but the remount. The targets take turns
for ROUNDS rounds, each in fresh folders, and each step's figure is its
median: on a machine of two cores one run of a step took from 2.4 to 5.8 s
in sshfs, which one round would have made the baseline. Each step checks what it
did, so that a filesystem that is fast but wrong fails instead of winning;
after its last unmount, each target's backing folders must hold what the
mount showed. The table gives the seconds per step and target, onitufs's
ratio to the faster of rclone and sshfs and whether the issue's bars are
met; the figures also go to a JSON file, so that runs can be compared.

The in-memory pyfuse3 filesystem of the fuse suite (memfs, kept across
its remount in a file) runs the steps too, as the floor: what pyfuse3 on
trio takes by itself on this machine, with nothing stored anywhere. Its
ratio to the faster of rclone and sshfs is shown beside onitufs's; where
it is above a bar, no filesystem built on pyfuse3 can meet that bar here.
`python -m bench programs` runs this suite alone.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onitufs.plug import MARKER

from .baselines import PlainDisk, RcloneMount, Sshfs
from .targets import (
    GIB,
    UPLOAD_DELAY,
    MemFS,
    Onitufs,
    Target,
    TargetError,
    clean_up,
    json_path,
    make_workdir,
)
from .workloads import MIB, WrongData

TARGETS = ("plain", "memfs", "onitufs", "rclone", "sshfs")
COMPARED = ("rclone", "sshfs")  # onitufs's ratio is to the faster of these
C_FILES = 40
COMMAND_TIMEOUT = 1800
ROUNDS = 3
TREE = "stdlib"
CLONE = "clone"
BUILD = "build"
# Git as a user with no configuration of their own would run it.
GIT_ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}


@dataclass(frozen=True)
class Step:
    key: str
    label: str
    bar: float  # the most onitufs / min(rclone, sshfs) accepted


STEPS = (
    Step("tar", "tar x", 0.5),
    Step("clone", "git clone", 0.5),
    Step("status", "git status", 1.0),
    Step("find", "find -ls after remount", 0.5),
    Step("rm", "rm -rf of both trees", 0.5),
    Step("build", f"make -j2, {C_FILES} C files", 0.5),
)
REMOUNT = "remount"  # the seconds of the unmount and mount before the find: shown, no bar

Seconds = dict[str, dict[str, float]]  # target -> step key -> seconds


def medians(rounds: list[Seconds]) -> Seconds:
    """Each target's and step's median over the rounds that measured it."""
    taken: dict[str, dict[str, list[float]]] = {}
    for one in rounds:
        for name, steps in one.items():
            for key, value in steps.items():
                taken.setdefault(name, {}).setdefault(key, []).append(value)
    return {name: {key: statistics.median(values) for key, values in steps.items()}
            for name, steps in taken.items()}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(command: list[str], cwd: Path | None = None) -> str:
    """Run a program to its end; its output. Failing is an error of the filesystem under test."""
    result = subprocess.run(command, cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True,
                            text=True, check=False, timeout=COMMAND_TIMEOUT)
    if result.returncode != 0:
        raise WrongData(f"{' '.join(command)} failed ({result.returncode}): "
                        f"{result.stderr.strip()[-500:]}")
    return result.stdout


def timed(command: list[str], cwd: Path | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    output = run(command, cwd)
    return time.perf_counter() - start, output


@dataclass
class Source:
    """The tree as a tarball and as a git repository, both on plain disk."""

    tree: Path
    tarball: Path
    repository: Path
    files: int = 0
    folders: int = 0
    size: int = 0
    tarball_size: int = 0

    @classmethod
    def make(cls, tree: Path, work: Path) -> Source:
        source = cls(tree, work / f"{TREE}.tar", work / "repository" / TREE)

        def regular(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
            if member.isfile():
                source.files += 1
                source.size += member.size
            elif member.isdir():
                source.folders += 1
            else:
                return None
            return member

        with tarfile.open(source.tarball, "w") as tar:
            tar.add(tree, arcname=TREE, filter=regular)
        source.repository.parent.mkdir()
        source.tarball_size = source.tarball.stat().st_size
        run(["tar", "-xf", str(source.tarball), "-C", str(source.repository.parent)])
        run(["git", "init", "-q", str(source.repository)])
        run(["git", "add", "-A"], cwd=source.repository)
        run(["git", "commit", "-q", "-m", "the tree"], cwd=source.repository)
        return source

    def describe(self) -> str:
        return (f"{self.tree}: {self.files} files in {self.folders} folders, "
                f"{self.size / MIB:.0f} MiB (tarball {self.tarball_size / MIB:.0f} MiB)")


def system_stdlib() -> Path:
    """The Python standard library of the system's Python (/usr/lib/python3.N: a virtualenv's
    or pyenv's may hold thousands of other packages' files besides), the newest."""
    found = sorted((path for path in Path("/usr/lib").glob("python3.*")
                    if path.name.split(".", 1)[1].isdigit() and path.is_dir()),
                   key=lambda path: int(path.name.split(".", 1)[1]))
    if not found:
        raise TargetError("no /usr/lib/python3.N here: give a tree with --tree")
    return found[-1]


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def write_build(folder: Path) -> int:
    """C_FILES small C files, a main and a Makefile in `folder`; what the program will print."""
    folder.mkdir()
    calls, expected = [], 0
    for number in range(C_FILES):
        (folder / f"part{number:02d}.c").write_text(
            f"#include <stdio.h>\n#include <string.h>\n\n"
            f"static const char words_{number}[] = \"part {number} of the bench build\";\n\n"
            f"long part{number}(long x)\n{{\n"
            f"    long total = x;\n"
            f"    for (size_t i = 0; i < strlen(words_{number}); i++)\n"
            f"        total += (long)words_{number}[i] * {number + 1};\n"
            f"    return total;\n}}\n")
        calls.append(f"    total = part{number}(total);")
        expected += sum(ord(c) for c in f"part {number} of the bench build") * (number + 1)
    declarations = "".join(f"long part{number}(long x);\n" for number in range(C_FILES))
    (folder / "main.c").write_text(
        f"#include <stdio.h>\n\n{declarations}\nint main(void)\n{{\n    long total = 0;\n"
        + "\n".join(calls) + "\n    printf(\"%ld\\n\", total);\n    return 0;\n}\n")
    (folder / "Makefile").write_text(
        "CFLAGS = -O2 -Wall\nOBJECTS = $(patsubst %.c,%.o,$(wildcard *.c))\n\n"
        "program: $(OBJECTS)\n\t$(CC) -o $@ $^\n\n"
        "%.o: %.c\n\t$(CC) $(CFLAGS) -c -o $@ $<\n")
    return expected


def listing(root: Path) -> dict[str, int]:
    """Every file under `root` (relative path) and its size."""
    return {os.path.relpath(os.path.join(folder, name), root): os.stat(os.path.join(folder, name)
                                                                      ).st_size
            for folder, _, files in os.walk(root) for name in files}


def backing_folders(target: Target) -> list[Path]:
    """The folders that must hold, once it is unmounted, what the target's mount showed."""
    if isinstance(target, Onitufs):
        return target.remotes
    if isinstance(target, RcloneMount):
        return [target.remote]
    if isinstance(target, Sshfs):
        return [target.folder]
    return []


@dataclass
class Run:
    """One target through the steps."""

    target: Target
    source: Source
    seconds: dict[str, float] = field(default_factory=dict)

    def note(self) -> str:
        if not isinstance(self.target, Onitufs):
            return ""
        queued, flying = self.target.queue()
        return f" (uploads alongside: {queued} queued, {flying} in flight)" if queued else ""

    def step(self, key: str, action: Callable[[], float]) -> None:
        note = self.note()
        self.seconds[key] = action()
        say(f"  {self.target.name:8} {key:8} {self.seconds[key]:8.2f} s{note}")

    def tar(self) -> float:
        seconds, _ = timed(["tar", "-xf", str(self.source.tarball), "--no-same-owner",
                            "-C", str(self.target.root)])
        found = count_files(self.target.root / TREE)
        if found != self.source.files:
            raise WrongData(f"{self.target.name}: tar x left {found} files, the tarball has "
                            f"{self.source.files}")
        return seconds

    def clone(self) -> float:
        seconds, _ = timed(["git", "clone", "-q", "--no-hardlinks", str(self.source.repository),
                            str(self.target.root / CLONE)])
        return seconds

    def status(self) -> float:
        seconds, output = timed(["git", "status"], cwd=self.target.root / CLONE)
        if "working tree clean" not in output:
            raise WrongData(f"{self.target.name}: git status after the clone: {output.strip()}")
        return seconds

    def find(self) -> float:
        start = time.perf_counter()
        self.target.stop()
        self.target.start()
        self.seconds[REMOUNT] = time.perf_counter() - start
        seconds, output = timed(["find", str(self.target.root), "-ls"])
        # both trees' files and folders, the clone's .git besides
        least = 2 * (self.source.files + self.source.folders)
        if output.count("\n") < least:
            raise WrongData(f"{self.target.name}: find -ls after the remount listed "
                            f"{output.count(chr(10))} entries, fewer than the {least} written")
        return seconds

    def rm(self) -> float:
        seconds, _ = timed(["rm", "-rf", str(self.target.root / TREE),
                            str(self.target.root / CLONE)])
        left = sorted(os.listdir(self.target.root))
        if left:
            raise WrongData(f"{self.target.name}: after rm -rf the mount still holds {left}")
        return seconds

    def build(self) -> float:
        folder = self.target.root / BUILD
        expected = write_build(folder)
        seconds, _ = timed(["make", "-s", "-j2"], cwd=folder)
        # run from a copy: rclone mount shows every file without its execute bits
        program = self.source.tarball.with_name(f"program-{self.target.name}")
        shutil.copyfile(folder / "program", program)
        program.chmod(0o755)
        answer = run([str(program)]).strip()
        if answer != str(expected):
            raise WrongData(f"{self.target.name}: the program built printed {answer!r}, "
                            f"not {expected}")
        return seconds

    def all(self) -> None:
        for step, action in zip(STEPS, (self.tar, self.clone, self.status, self.find, self.rm,
                                        self.build), strict=True):
            self.step(step.key, action)
        shown = listing(self.target.root)
        self.target.stop()
        for folder in backing_folders(self.target):
            held = listing(folder)
            held.pop(MARKER, None)  # onitufs's mark on each of its remotes
            if held != shown:
                raise WrongData(f"{self.target.name}: after the unmount {folder} does not hold "
                                "what the mount showed")


def ratio(seconds: Seconds, key: str, target: str = "onitufs") -> float | None:
    """The target's seconds over the faster of rclone's and sshfs's."""
    best = [seconds[name][key] for name in COMPARED if key in seconds.get(name, {})]
    ours = seconds.get(target, {}).get(key)
    return None if ours is None or not best else ours / min(best)


def table(seconds: Seconds) -> list[str]:
    columns = [name for name in TARGETS if name in seconds]
    rows = [["seconds", *columns, "memfs/best", "onitufs/best", "bar"]]
    for step in (*STEPS, Step(REMOUNT, "  (unmount + mount before the find)", 0.0)):
        row = [step.label, *[f"{seconds[name][step.key]:.2f}" if step.key in seconds[name]
                             else "-" for name in columns]]
        floor = ratio(seconds, step.key, "memfs")
        value = ratio(seconds, step.key)
        if step.key == REMOUNT:
            row += ["", "", ""]
            rows.append(row)
            continue
        row.append("-" if floor is None else f"{floor:.2f}")
        if value is None:
            row += ["-", f"<= {step.bar:.1f} not measured"]
        else:
            row += [f"{value:.2f}", f"<= {step.bar:.1f} {'met' if value <= step.bar else 'NOT MET'}"]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(widths[i]) if i in (0, len(row) - 1) else cell.rjust(widths[i])
                      for i, cell in enumerate(row)).rstrip() for row in rows]


def verdict(value: float | None, floor: float | None, bar: float) -> dict[str, object]:
    return {"onitufs_to_best": value, "memfs_to_best": floor, "bar": bar,
            "met": None if value is None else value <= bar}


def figures(rounds: list[Seconds], source: Source | None, started: float,
            busy: float) -> dict[str, object]:
    """What the JSON file holds: the medians, and each round's seconds."""
    seconds = medians(rounds)
    return {
        "suite": "programs",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": {"cores": os.cpu_count(), "linux": platform.release(),
                    "python": platform.python_version(), "busy_before": round(busy, 3)},
        "tree": None if source is None else {"path": str(source.tree), "files": source.files,
                                             "folders": source.folders, "bytes": source.size},
        "c_files": C_FILES,
        "seconds": seconds,
        "rounds": rounds,
        "ratios": {step.key: verdict(ratio(seconds, step.key), ratio(seconds, step.key, "memfs"),
                                     step.bar) for step in STEPS},
    }


def make_target(name: str, workdir: Path | None) -> Target:
    folder = make_workdir(workdir, f"onitufs-bench-programs-{name}-")
    try:
        if name == "plain":
            return PlainDisk(folder)
        if name == "memfs":
            return MemFS(folder, keeps=True)
        if name == "onitufs":
            return Onitufs(folder, 4 * GIB, UPLOAD_DELAY)
        if name == "rclone":
            return RcloneMount(folder)
        return Sshfs(folder)
    except BaseException:
        clean_up([], [(folder, [])])
        raise


def suite(names: list[str], workdir: Path | None, tree: Path | None, json_option: Path | None,
          strict: bool, busy: float, rounds: int = ROUNDS) -> tuple[list[str], int]:
    """Run the steps in each named target, the targets taking turns for `rounds` rounds;
    the report's lines and an exit status (0, 1 for an error, 3 for a bar not met under
    `strict`, 130 when interrupted). `busy`: how busy the machine was before the run
    (0 to 1), kept with the figures."""
    started = time.time()
    measured: list[Seconds] = []
    targets: list[Target] = []
    work = make_workdir(workdir, "onitufs-bench-programs-source-")
    workdirs: list[tuple[Path, list[Path]]] = [(work, [])]
    source: Source | None = None
    lines: list[str] = []
    status = 0
    try:
        tree = tree or system_stdlib()
        source = Source.make(tree, work)
        say(f"programs: {source.describe()}")
        for number in range(1, rounds + 1):
            measured.append({})
            for name in names:
                target = make_target(name, workdir)
                targets.append(target)
                workdirs.append((target.workdir, [target.root]))
                say(f"{name}, round {number} of {rounds}: {target.describe()}")
                target.start()
                one = Run(target, source)
                measured[-1][name] = one.seconds
                one.all()
                # the next target gets the disk and the memory this one took
                if not clean_up([targets.pop()], [workdirs.pop()]):
                    raise TargetError(f"{name}: cannot clean up after round {number}")
    except KeyboardInterrupt:
        say("interrupted: cleaning up")
        status = 130
    except (TargetError, WrongData, OSError, subprocess.SubprocessError) as error:
        say(f"bench: programs: {type(error).__name__}: {error}")
        status = 1
    finally:
        for target in targets:
            if isinstance(target, Onitufs):
                problems = target.log_problems()
                if problems:
                    lines += ["onitufs log, warnings and errors:", *[f"  {p}" for p in problems]]
        if not clean_up(targets, workdirs):
            status = status or 1
    measured = [one for one in measured if one]
    if not measured:
        return lines, status
    seconds = medians(measured)
    path = json_path(json_option, "programs")
    path.write_text(json.dumps(figures(measured, source, started, busy), indent=2) + "\n")
    title = (f"real programs, median seconds of {len(measured)} round(s)"
             + ("" if source is None else f", {source.describe()}"))
    met = all(ratio(seconds, step.key) is not None and (ratio(seconds, step.key) or 0.0) <= step.bar
              for step in STEPS)
    if strict and not met and status == 0:
        status = 3
    return [title, *table(seconds), *lines, f"figures written to {path}"], status
