"""A driver run outside a mount, as the core runs it, for driver test suites (needs pytest).

`started(module, table, backdoor)` checks the remote's table as a mount does
(the module's OPTIONS, then its check), calls `module.start(plug)` on a
thread of its own with a Plug whose reports go to a RecordingSink, served by
a trio loop on another thread as the core's would be, waits for
plug.ready() and the first listing, and gives a Harness. The Harness calls
handlers on worker threads, each with a time limit (a hang fails the test),
counts the changes it makes in plug.writes as the core does, and builds
uploads as the replicator does (chunks of one block, md.extra saved as JSON
after start_upload and after each chunk, chunks of zeros left out where the
driver keeps holes). The sink checks every report (a path the mount can
hold, a revision, no temporary file of an upload) and keeps a view of the
remote made of them.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

from onitufs.config import Options
from onitufs.plug import (
    ListingNeeded,
    Metadata,
    Plug,
    Stopped,
    at_or_below,
    check_keys,
    check_options,
)
from onitufs.remote_changes import bad_path_reason
from onitufs.remotes import CHANGES

from .backdoor import Backdoor

BLOCK = 64 * 1024  # the block size the suite's transfers and reads use
MTIME_NS = 1_600_000_000_123_456_789  # a time in the past, with nanoseconds
READY_TIMEOUT = 30.0  # for plug.ready() and the first listing
STOP_TIMEOUT = 10.0  # for start(plug) to return once plug.stopping is set
RESTART_AFTER = 0.2  # seconds before start(plug) is called again after it raised
# The changes the core records once a handler made them (Remote.touch).
RECORDED = CHANGES - {"start_upload", "restart_upload", "upload_chunk"}


class CoreLoop:
    """A trio loop on a thread of its own: where the Plug's reports are applied."""

    def __init__(self) -> None:
        self.token: trio.lowlevel.TrioToken | None = None
        self._running = threading.Event()
        self._done: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True,
                                        name="conformance-core")

    async def _main(self) -> None:
        self._done = trio.Event()
        self.token = trio.lowlevel.current_trio_token()
        self._running.set()
        await self._done.wait()

    def __enter__(self) -> trio.lowlevel.TrioToken:
        self._thread.start()
        self._running.wait()
        assert self.token is not None
        return self.token

    def __exit__(self, *exc_info: object) -> None:
        assert self._done is not None
        trio.from_thread.run_sync(self._done.set, trio_token=self.token)
        self._thread.join()


@dataclass
class Listing:
    started: float  # the time.monotonic() the driver said the listing began at
    entries: dict[str, Metadata]


@dataclass
class RecordingSink:
    """The core's side of the Plug for a test: every report checked and recorded. `view` is
    what the core would hold the remote to have: what the reports say, and what the
    harness's own changes made (which a listing begun before them cannot tell about, as
    in the core)."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    view: dict[str, Metadata] = field(default_factory=dict)
    listings: list[Listing] = field(default_factory=list)
    parts: list[list[str]] = field(default_factory=list)  # the scope of each report_part
    statuses: list[str | None] = field(default_factory=list)  # plug.offline's reasons, None: online
    retries: int = 0  # plug.retry_now calls
    problems: list[str] = field(default_factory=list)  # reports no driver may make
    upload_names: set[str] = field(default_factory=set)  # every md.extra["upload"] given out
    touched: dict[str, float] = field(default_factory=dict)  # paths the harness changed, when

    def _check(self, md: Metadata, how: str) -> None:
        said = f"{how} reported {md.path!r}"
        reason = bad_path_reason(md.path) if isinstance(md.path, str) else "not a str"
        if reason is not None:
            self.problems.append(f"{said}: {reason}")
        if md.kind not in ("file", "dir", "symlink"):
            self.problems.append(f"{said} of kind {md.kind!r}")
        if md.kind != "dir" and not isinstance(md.revision, str):
            self.problems.append(f"{said} without a revision (a str): {md.revision!r}")
        if md.kind == "symlink" and not isinstance(md.target, str):
            self.problems.append(f"{said}, a symbolic link, without its target")
        if not 0 <= md.mode <= 0o7777 or md.size < 0 or md.mtime_ns < 0:
            self.problems.append(f"{said} with mode {md.mode:o}, size {md.size}, "
                                 f"mtime_ns {md.mtime_ns}")
        if md.xattrs:
            self.problems.append(f"{said} with xattrs (reports leave them empty)")
        if any(name in md.path for name in self.upload_names):
            self.problems.append(f"{said}: the temporary file of an upload (nothing of an "
                                 "upload shows before end_upload)")

    # the view (under the lock)

    def _set(self, md: Metadata) -> None:
        self.view[md.path] = md.copy()

    def _forget(self, path: str) -> None:
        self.view = {known: md for known, md in self.view.items() if not at_or_below(known, path)}

    def _move(self, old_path: str, new: Metadata) -> None:
        moved = {new.path + known[len(old_path):]: md for known, md in self.view.items()
                 if at_or_below(known, old_path) and known != old_path}
        self._forget(old_path)
        for path, md in moved.items():
            self.view[path] = md.copy(path=path)
        self._set(new)

    def changed(self, handler: str, args: tuple[Any, ...]) -> None:
        """The harness changed the remote through a handler: as the core records it."""
        with self.cond:
            now = time.monotonic()
            if handler == "delete_file":
                self._forget(args[0].path)
            elif handler == "move_file":
                self._move(args[0].path, args[1])
                self.touched[args[0].path] = now
            else:
                self._set(args[0])
            self.touched[args[-1].path] = now
            self.cond.notify_all()

    # the ChangeSink

    async def update_file(self, remote: str, metadata: Metadata) -> None:
        with self.cond:
            self._check(metadata, "update_file")
            self._set(metadata)
            self.cond.notify_all()

    async def delete_file(self, remote: str, path: str) -> None:
        with self.cond:
            self._forget(path)
            self.cond.notify_all()

    async def move_file(self, remote: str, old_path: str, new: Metadata) -> None:
        with self.cond:
            self._check(new, "move_file")
            self._move(old_path, new)
            self.cond.notify_all()

    async def report_tree(self, remote: str, entries: list[Metadata], started: float) -> bool:
        with self.cond:
            for md in entries:
                self._check(md, "report_tree")
            listed = {md.path: md.copy() for md in entries}
            self.listings.append(Listing(started, listed))
            # as the core does: what the harness changed after the listing began is left out
            later = [path for path, when in self.touched.items() if when >= started]

            def left_out(path: str) -> bool:
                return any(at_or_below(path, changed) for changed in later)

            self.view = {path: md for path, md in listed.items() if not left_out(path)} \
                | {path: md for path, md in self.view.items() if left_out(path)}
            self.cond.notify_all()
            return not later

    async def report_part(self, remote: str, entries: list[Metadata], scope: list[str],
                          started: float) -> bool:
        with self.cond:
            if not self.listings:
                raise ListingNeeded()  # as the core: a whole listing comes first
            for md in entries:
                self._check(md, "report_part")
                if not any(at_or_below(md.path, top) for top in scope):
                    self.problems.append(f"report_part reported {md.path!r}, outside its "
                                         f"scope {scope!r}")
            later = [path for path, when in self.touched.items() if when >= started
                     and any(at_or_below(path, top) or at_or_below(top, path) for top in scope)]

            def left_out(path: str) -> bool:
                return any(at_or_below(path, changed) for changed in later)

            def inside(path: str) -> bool:
                return any(at_or_below(path, top) for top in scope)

            self.parts.append(list(scope))
            self.view = {path: md for path, md in self.view.items()
                         if not inside(path) or left_out(path)} \
                | {md.path: md.copy() for md in entries if not left_out(md.path)}
            self.cond.notify_all()
            return not later

    async def set_status(self, remote: str, error: str | None) -> None:
        with self.cond:
            self.statuses.append(error)
            self.cond.notify_all()

    async def retry_now(self, remote: str) -> None:
        with self.cond:
            self.retries += 1
            self.cond.notify_all()

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Until condition() holds (called under the lock); fails after timeout, or at once
        on a report no driver may make."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not condition():
                self.fail_on_problems()
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"timed out after {timeout:g}s waiting for {what}", pytrace=False)
                self.cond.wait(min(left, 0.5))
            self.fail_on_problems()

    def fail_on_problems(self) -> None:
        if self.problems:
            pytest.fail("the driver reported what onitufs-drivers(7) rules out:\n  "
                        + "\n  ".join(self.problems), pytrace=False)


class Harness:
    """A started driver: its Plug, the sink of its reports, and the backdoor to its remote."""

    def __init__(self, module: ModuleType, options: Options, backdoor: Backdoor,
                 token: trio.lowlevel.TrioToken, folder: Path, call_timeout: float,
                 report_timeout: float) -> None:
        self.module = module
        self.options = options
        self.folder = folder
        self.backdoor = backdoor
        self.token = token
        self.call_timeout = call_timeout
        self.report_timeout = report_timeout
        self.sink = RecordingSink()
        self.crashes: list[str] = []  # what start(plug) raised, if it did
        self.plug = self._new_plug()
        self._thread: threading.Thread | None = None
        self._uploads = 0

    # the driver's life

    def start(self) -> None:
        """Start the driver, as a mount does; returns once it is ready and listed its remote."""
        plug = self.plug
        listed = len(self.sink.listings)
        self._thread = threading.Thread(target=self._run, args=(plug,), daemon=True,
                                        name="conformance-driver")
        self._thread.start()
        if not plug.wait_ready(READY_TIMEOUT):
            pytest.fail(f"start(plug) did not call plug.ready() within {READY_TIMEOUT:g}s"
                        f"{self._crashed()}", pytrace=False)
        self.sink.wait(lambda: len(self.sink.listings) > listed, READY_TIMEOUT,
                       "the first listing (plug.report_tree): onitufs changes nothing on a "
                       f"remote before its first listing{self._crashed()}")

    def _run(self, plug: Plug) -> None:
        """As the core runs start(plug): again after a pause when it raised."""
        while not plug.stopping.is_set():
            try:
                self.module.start(plug)
                return
            except Stopped:
                return
            except Exception as error:
                self.crashes.append(f"{type(error).__name__}: {error}")
                with contextlib.suppress(Stopped):
                    plug.offline(f"driver stopped: {error}")
                plug.stopping.wait(RESTART_AFTER)

    def stop(self) -> None:
        """End the driver as the end of a mount does; start(plug) must return soon."""
        self.plug.stop()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
            if self._thread.is_alive():
                pytest.fail(f"start(plug) did not return within {STOP_TIMEOUT:g}s of "
                            "plug.stopping being set (wait with plug.wait_to_list or "
                            "plug.stopping.wait)",
                            pytrace=False)
            self._thread = None

    def restart(self, writable: bool = True) -> None:
        """Stop the driver and start it anew with a new Plug, as after a crash or an unmount:
        whatever it kept in memory is gone. `writable=False`: as a remote the config then
        makes read-only (plug.writable)."""
        self.stop()
        self.plug = self._new_plug()
        self.plug.writable = writable
        self.start()

    def _new_plug(self) -> Plug:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # as the core makes it
        return Plug("conformance", self.options, self.sink, self.token, self.folder)

    def _crashed(self) -> str:
        return f" (start(plug) raised: {'; '.join(self.crashes)})" if self.crashes else ""

    # handlers

    def needs(self, handler: str) -> None:
        """Skip the test for a driver without this optional handler."""
        if not self.plug.has(handler):
            pytest.skip(f"not applicable: the driver has no {handler} handler (optional in "
                        "onitufs-drivers(7))")

    def call(self, handler: str, *args: Any) -> Any:
        """Run a handler on a worker thread, as the core does; a handler that does not
        return within call_timeout fails the test."""
        outcome: list[tuple[bool, Any]] = []

        def work() -> None:
            try:
                outcome.append((True, self.plug.call(handler, *args)))
            except BaseException as error:
                outcome.append((False, error))

        worker = threading.Thread(target=work, daemon=True, name=f"conformance-{handler}")
        worker.start()
        worker.join(self.call_timeout)
        if worker.is_alive():
            pytest.fail(f"{handler} did not return within {self.call_timeout:g}s: a handler "
                        "must fail, not hang", pytrace=False)
        ok, value = outcome[0]
        if not ok:
            raise value
        if handler in RECORDED:
            with self.sink.cond:  # as the core counts the changes it made
                self.plug.wrote(arg.path for arg in args if isinstance(arg, Metadata))
            self.sink.changed(handler, args)
        return value

    def failure(self, handler: str, *args: Any) -> Exception:
        """The exception the handler raises; fails the test if it returns."""
        try:
            self.call(handler, *args)
        except Exception as error:
            return error
        pytest.fail(f"{handler} returned; it should have failed", pytrace=False)

    def upload_name(self) -> str:
        with self.sink.cond:
            self._uploads += 1
            name = f"conformance-{self._uploads:x}-1"
            self.sink.upload_names.add(name)
        return name

    def transfer(self, path: str, data: bytes, **fields: Any) -> Transfer:
        """An upload of data to path, not started; fields are Metadata's (revision: the token
        replaced, None for a new file)."""
        md = Metadata(path=path, size=len(data), **{"mtime_ns": MTIME_NS, "mode": 0o644,
                                                      **fields})
        return Transfer(self, md, data)

    def upload(self, path: str, data: bytes, **fields: Any) -> Metadata:
        """A whole upload; returns its Metadata, revision and file_id set by end_upload."""
        return self.transfer(path, data, **fields).run()

    def read(self, md: Metadata) -> bytes:
        """The file, block by block with get_chunk, as the core reads it."""
        parts = []
        for offset in range(0, md.size, BLOCK):
            want = min(BLOCK, md.size - offset)
            chunk = self.call("get_chunk", md, offset, want)
            assert isinstance(chunk, bytes | bytearray | memoryview), \
                f"get_chunk returned {type(chunk).__name__}, not bytes"
            assert len(chunk) == want, \
                f"get_chunk({md.path!r}, {offset}, {want}) gave {len(chunk)} bytes"
            parts.append(bytes(chunk))
        return b"".join(parts)

    # what the driver reports

    def listed(self, path: str, condition: Callable[[Metadata], bool] = lambda md: True,
               what: str = "") -> Metadata:
        """What the reports say is at path, once they say it and it meets the condition."""
        self.sink.wait(lambda: path in self.sink.view and condition(self.sink.view[path]),
                       self.report_timeout, f"{path!r} to be reported{what}{self._crashed()}")
        with self.sink.cond:
            return self.sink.view[path]

    def unlisted(self, path: str) -> None:
        """Once the reports say nothing is at path."""
        self.sink.wait(lambda: path not in self.sink.view, self.report_timeout,
                       f"{path!r} to be reported gone{self._crashed()}")

    def next_listing(self) -> dict[str, Metadata]:
        """The first complete listing begun after now, asked for with plug.look_again (a
        driver whose changes come as events otherwise sends parts only): the driver reports
        it even when it looks like the last one it reported, as the core asks again where
        a read found what that listing did not say."""
        now = time.monotonic()  # before the request, which the driver may take at once
        self.plug.look_again()
        found: list[Listing] = []

        def begun() -> bool:
            found[:] = [listing for listing in self.sink.listings if listing.started > now]
            return bool(found)

        self.sink.wait(begun, self.report_timeout,
                       f"a listing (plug.report_tree) begun after plug.writes moved"
                       f"{self._crashed()}")
        return found[0].entries

    def status(self, offline: bool) -> None:
        """Once the driver last said the remote is offline, or online."""
        self.sink.wait(lambda: bool(self.sink.statuses)
                       and (self.sink.statuses[-1] is not None) == offline,
                       self.report_timeout,
                       "plug.offline(reason)" if offline else "plug.online()")


@dataclass
class Transfer:
    """One upload as the replicator makes it; `saved` is what it saves for a resume: the
    offset reached and md.extra, through JSON."""

    harness: Harness
    md: Metadata
    data: bytes
    offset: int = 0
    saved: tuple[int, dict[str, Any]] = (0, {})

    def _save(self) -> None:
        try:
            extra = json.loads(json.dumps(self.md.extra))
        except (TypeError, ValueError) as error:
            pytest.fail(f"md.extra is not JSON-serialisable ({error}): {self.md.extra!r}",
                        pytrace=False)
        assert extra.get("upload") == self.saved[1]["upload"], \
            f"md.extra lost or changed its 'upload' name: {extra!r}"
        self.saved = (self.offset, extra)

    def name(self) -> None:
        """Give the transfer its name and save it, as the core does before start_upload."""
        self.md.extra = {"upload": self.harness.upload_name()}
        self.saved = (0, dict(self.md.extra))

    def start(self) -> None:
        self.name()
        self.harness.call("start_upload", self.md)
        self._save()

    def send(self, until: int | None = None) -> None:
        """upload_chunk from where the transfer is up to `until` (a block boundary), or to
        the end."""
        end = self.md.size if until is None else until
        holes = self.harness.plug.keeps_holes
        while self.offset < end:
            chunk = self.data[self.offset:self.offset + BLOCK]
            hole = holes and not any(chunk)
            if not hole:
                self.harness.call("upload_chunk", self.md, self.offset, chunk)
            self.offset += len(chunk)
            if not hole and self.offset < self.md.size:
                self._save()

    def end(self) -> Metadata:
        self.harness.call("end_upload", self.md)
        assert isinstance(self.md.revision, str), \
            f"end_upload left md.revision {self.md.revision!r}: it sets the new token"
        return self.md

    def run(self) -> Metadata:
        """The whole upload: start, every chunk, end."""
        self.start()
        self.send()
        return self.end()

    def resume(self) -> int:
        """restart_upload from what was saved, on a Metadata made afresh as after a crash;
        returns the offset the transfer goes on from."""
        offset, extra = self.saved
        self.md = self.md.copy()
        self.md.extra = dict(extra)
        resumed = self.harness.call("restart_upload", self.md, offset)
        if resumed is None:
            resumed = offset
        assert isinstance(resumed, int) and 0 <= resumed <= offset and resumed % BLOCK == 0, \
            f"restart_upload(md, {offset}) returned {resumed!r}: it returns the offset given, " \
            "nothing, or a smaller one where a chunk began"
        self.offset = resumed
        return resumed

    def abort(self) -> None:
        """abort_upload as the core calls it: the path and the saved md.extra only."""
        self.harness.call("abort_upload", Metadata(path=self.md.path, extra=dict(self.saved[1])))


@contextlib.contextmanager
def started(module: ModuleType, table: Mapping[str, Any], backdoor: Backdoor, *, base_dir: Path,
            folder: Path | None = None, call_timeout: float = 30.0,
            report_timeout: float = 20.0) -> Iterator[Harness]:
    """The driver `module` started for the remote that `table` (a [remotes.NAME] table,
    `driver` included) describes, its folder fresh and empty; stopped after the block.

    base_dir is the configuration's folder; folder the driver's own (Plug.folder), which a
    mount gives in its cache, kept across restarts (default: base_dir/drivers/conformance).
    call_timeout bounds each handler call; report_timeout how long a change on the remote
    may take to be reported (the driver's poll, and then some).
    """
    options = Options(table, "remotes.conformance", base_dir)
    check_keys(module, options, str(table.get("driver", module.__name__)))
    check_options(module, options)
    with CoreLoop() as token:
        harness = Harness(module, options, backdoor, token,
                          folder or base_dir / "drivers" / "conformance", call_timeout,
                          report_timeout)
        try:
            harness.start()
            yield harness
        finally:
            harness.stop()
        harness.sink.fail_on_problems()

