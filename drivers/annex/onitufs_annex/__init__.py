"""onitufs driver for any git-annex special remote: a program that speaks git-annex's
external special remote protocol (git-annex-remote-NAME) becomes an onitufs remote.

onitufs plays git-annex's part: it runs the program (pool.py, program.py),
answers what it asks (host.py) and asks it to store, retrieve, check and
remove keys (transfers.py). Each revision is stored under its content key,
so the same content is stored once. A special remote cannot list what it
holds, so the driver keeps the tree itself (journal.py) and stores it on the
remote as a manifest (manifest.py, sync.py): a new machine with nothing but
this table rebuilds the mount from the remote, and machines that share the
remote see each other's changes at the next poll.

Config keys: ``program`` (required: a program on PATH, or a path), ``config``
(a table: what GETCONFIG answers), ``poll_interval`` ("30s": how often the
remote's manifest is looked at), ``timeout`` ("60s": how long a program may
stay silent; a transfer gets one second more per MiB), ``remove_after``
("1h": how long content that no file uses any more stays on the remote),
``export`` (false: store each file under its own path with the export
interface instead, so that the remote holds a browsable tree; content.py).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import threading
import time
from pathlib import Path

from onitufs.plug import DriverError, Metadata, Plug, Reports, outermost, within

from .content import Content
from .fetched import Fetched
from .handlers import register
from .host import Host
from .journal import Journal
from .pool import Pool
from .settings import OPTIONS as OPTIONS  # the table's keys, for the core to check
from .settings import check as check  # on first use: the program can be run
from .settings import read, work_folder
from .state import ProgramState
from .sync import Sync
from .transfers import Special

# Programs run at once for one remote: as many as the core runs handlers (4); the poll
# waits its turn.
PROGRAMS = 4


def start(plug: Plug) -> None:
    settings = read(plug.options)
    if plug.folder is None:
        raise DriverError("the annex driver keeps its state in a folder of the cache, and "
                          "was given none")
    work = work_folder(plug.folder)
    (work / "spool").mkdir(mode=0o700, exist_ok=True)
    # the program's git folder lasts as long as the cache: some keep tokens there
    (plug.folder / "git").mkdir(mode=0o700, exist_ok=True)
    host = Host(plug.name, ProgramState(plug.folder, settings.config), plug.folder / "git",
                settings.timeout)
    pool = Pool([settings.program], work, host, PROGRAMS,
                f"remote {plug.name}: {Path(settings.program).name}", settings.export,
                on_cost=lambda cost: setattr(plug, "cost", cost))

    ending = threading.Lock()

    def end() -> None:
        """End the programs, and drop a work folder under /tmp that nothing needs. The core
        may leave this thread behind when the mount ends: then the process's exit does it,
        or waits until this thread has."""
        with ending:
            if pool.closed:
                return
            pool.close()
            if work != plug.folder and not any((work / "spool").iterdir()):
                shutil.rmtree(work, ignore_errors=True)

    atexit.register(end)
    try:
        special = Special(pool, host, plug.progress)
        journal = Journal(plug.folder / "tree.json")

        def retrieve(key: str, where: str | None, file: Path, size: int) -> None:
            content.retrieve(key, where, file, size)

        fetched = Fetched(work / "fetched", retrieve)
        watcher = threading.current_thread()  # (start goes on to watch, below)

        def taken_in() -> None:
            # A handler took in another machine's tree: the next round comes now, and
            # whole. A round of the watch reports what it took in itself.
            if threading.current_thread() is not watcher:
                plug.look_again()

        sync = Sync(special, journal, fetched, work, settings.remove_after, taken_in)
        content = Content(special, journal, sync, fetched, settings.export)
        register(plug, journal, sync, content, fetched, work / "spool")
        plug.ready()
        watch(plug, sync, content, settings.poll_interval)
    finally:
        end()
        atexit.unregister(end)


def watch(plug: Plug, sync: Sync, content: Content, interval: float) -> None:
    """Every poll_interval, or at once when a handler took in another machine's tree:
    take in the remote's manifest, send ours, remove unused keys and what uploads left
    aside (only the first where onitufs may not write: plug.writable), and report what
    changed in the tree since the last report, with the paths onitufs changed since
    (plug.written_paths), as a part of the listing; the whole tree at the start, after an
    outage, when not taken or asked for."""
    journal = sync.journal
    reported: dict[str, tuple[str | None, str | None, str, str | None]] = {}
    reports = Reports(plug)
    asked = False  # plug.look_again asked for the whole listing
    while not plug.stopping.is_set():
        written = plug.written_paths()
        asked = plug.asked_to_look() or asked  # this round serves a request made before it
        try:
            if plug.writable:
                sync.poll()
                sync.collect()
                content.sweep()
            else:
                sync.look()
        except DriverError as error:
            plug.offline(str(error))
            reports.taken = False
        else:
            started = time.monotonic()
            with journal.lock:
                entries = [entry.describe(path) for path, entry in journal.tree.items()]
            now = {md.path: (md.revision, md.file_id, md.attrs_key(), md.target)
                   for md in entries}
            changed = {path for path in now.keys() | reported.keys()
                       if now.get(path) != reported.get(path)} | written
            if not reports.taken:
                plug.online()
            reports.send(started, None if asked else changed, entries.copy,
                         functools.partial(part_of, entries))
            reported, asked = now, False
        # at once after a handler took in another machine's tree, or when asked
        asked = plug.wait_to_list(interval) or asked


def part_of(entries: list[Metadata], scope: set[str]) -> tuple[list[Metadata], list[str]]:
    """The entries at and below the paths of `scope`, and its outermost paths."""
    tops = outermost(scope)
    wanted = set(tops)
    return [md for md in entries if within(md.path, wanted)], tops
