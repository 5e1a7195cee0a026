"""A remote on its own, with a driver module made here: what the core asks of it."""

from __future__ import annotations

import itertools
import threading
import time
import types
from pathlib import Path

import pytest
import trio

from onitufs import remotes
from onitufs.config import Options, RemoteConfig
from onitufs.plug import DriverError, Metadata, Plug
from onitufs.remotes import CallFailed, Remote


class NoChanges:
    """A sink for a driver that reports nothing."""

    async def update_file(self, remote: str, metadata: Metadata) -> None:
        raise AssertionError("not expected")

    async def delete_file(self, remote: str, path: str) -> None:
        raise AssertionError("not expected")

    async def move_file(self, remote: str, old_path: str, new: Metadata) -> None:
        raise AssertionError("not expected")

    async def report_tree(self, remote: str, entries: list[Metadata], started: float) -> bool:
        raise AssertionError("not expected")

    async def report_part(self, remote: str, entries: list[Metadata], scope: list[str],
                          started: float) -> bool:
        raise AssertionError("not expected")

    async def set_status(self, remote: str, error: str | None) -> None:
        raise AssertionError("not expected")

    async def retry_now(self, remote: str) -> None:
        raise AssertionError("not expected")


def test_what_a_driver_offers_is_asked_once_it_registered_its_handlers(tmp_path: Path) -> None:
    # After a restart the replicator has work queued before the driver's thread has
    # registered anything; taking "no restart_upload yet" for "none" started a saved
    # upload over from byte 0.
    registering = threading.Event()
    driver = types.ModuleType("late_driver")

    def start(plug: Plug) -> None:
        registering.wait()

        @plug.handler()
        def restart_upload(md: Metadata, offset: int) -> None:
            raise AssertionError("not called here")

        plug.ready()
        plug.stopping.wait()

    driver.start = start  # type: ignore[attr-defined]
    options = Options({}, "remotes.late", tmp_path)
    remote = Remote(RemoteConfig("late", "late_driver", "rw", options), 1, driver)
    answers: list[bool] = []

    async def ask() -> None:
        answers.append(await remote.has("restart_upload"))
        answers.append(await remote.has("move_file"))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(remote.run_driver, NoChanges(), lambda: False)
            nursery.start_soon(ask)
            await trio.sleep(0.2)
            assert answers == []  # still waiting for the driver
            registering.set()
            with trio.fail_after(10):
                while len(answers) < 2:
                    await trio.sleep(0.01)
            remote.stop()

    trio.run(main)
    assert answers == [True, False]


def test_a_driver_that_never_registers_fails_what_is_asked_of_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "no such handler" would leave a folder unmade or an upload started over for good
    monkeypatch.setattr(remotes, "READY_TIMEOUT", 0.2)
    driver = types.ModuleType("mute_driver")

    def start(plug: Plug) -> None:
        plug.stopping.wait()  # never says it is ready

    driver.start = start  # type: ignore[attr-defined]
    options = Options({}, "remotes.mute", tmp_path)
    remote = Remote(RemoteConfig("mute", "mute_driver", "rw", options), 1, driver)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(remote.run_driver, NoChanges(), lambda: False)
            with trio.fail_after(10), pytest.raises(CallFailed, match="registered"):
                await remote.has("make_dir")
            remote.stop()

    trio.run(main)
    assert not remote.health.online


def test_a_handler_that_found_the_remote_changed_ends_the_wait_for_the_next_listing(
        tmp_path: Path) -> None:
    # A read that found its file gone fails until a listing says so: a driver that polls
    # every hour must not leave it failing for an hour, nor hold up the end of the mount.
    waits: list[bool] = []
    driver = types.ModuleType("polling_driver")

    def start(plug: Plug) -> None:
        @plug.handler()
        def get_chunk(md: Metadata, offset: int, size: int) -> bytes:
            plug.look_again()
            return b""

        plug.ready()
        while not plug.stopping.is_set():
            waits.append(plug.wait_to_list(3600))

    driver.start = start  # type: ignore[attr-defined]
    options = Options({}, "remotes.polling", tmp_path)
    remote = Remote(RemoteConfig("polling", "polling_driver", "rw", options), 1, driver)

    async def main() -> None:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(remote.run_driver, NoChanges(), lambda: False)
                await remote.call("get_chunk", Metadata(path="gone"), 0, 1)
                while not waits:
                    await trio.sleep(0.01)
                assert waits == [True]  # asked once: one listing, then the hour's wait
                await trio.sleep(0.2)
                assert waits == [True]
                remote.stop()

    trio.run(main)
    assert waits == [True, False]


def test_a_metadata_copy_takes_a_new_extra_and_never_shares_the_old() -> None:
    md = Metadata(path="a", extra={"upload": "1"})
    assert md.copy(extra={"session": "2"}, size=3).extra == {"session": "2"}
    plain = md.copy()
    plain.extra["upload"] = "changed"
    assert md.extra == {"upload": "1"}


class RecordsListings(NoChanges):
    """A sink that keeps the listings and the statuses a driver reports."""

    def __init__(self) -> None:
        self.listings: list[float] = []
        self.statuses: list[str | None] = []

    async def report_tree(self, remote: str, entries: list[Metadata], started: float) -> bool:
        self.listings.append(started)
        return True

    async def set_status(self, remote: str, error: str | None) -> None:
        self.statuses.append(error)


def test_a_listing_dated_on_the_wall_clock_stops_the_driver_saying_so(tmp_path: Path) -> None:
    # onitufs keeps when it changed each path on the monotonic clock, as a listing says when
    # it began. A time.time() there is later than all of them: a file onitufs had just
    # written, which the listing missed, would read as deleted.
    driver = types.ModuleType("wall_clock_driver")

    def start(plug: Plug) -> None:
        plug.ready()
        plug.report_tree([], time.monotonic())
        plug.report_tree([], time.time())
        raise AssertionError("the listing was taken")

    driver.start = start  # type: ignore[attr-defined]
    options = Options({}, "remotes.wall", tmp_path)
    remote = Remote(RemoteConfig("wall", "wall_clock_driver", "rw", options), 1, driver)
    sink = RecordsListings()

    async def main() -> None:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(remote.run_driver, sink, lambda: False)
                while not sink.statuses:
                    await trio.sleep(0.01)
                remote.stop()

    trio.run(main)
    assert len(sink.listings) == 1 and sink.listings[0] <= time.monotonic()
    assert sink.statuses[0] is not None and sink.statuses[0].startswith("driver stopped: ")
    assert "take it with time.monotonic(), not time.time()" in sink.statuses[0]


class ForwardsStatus(NoChanges):
    """A sink that passes a driver's status on to its remote, as the core's does."""

    def __init__(self) -> None:
        self.remote: Remote | None = None

    async def set_status(self, remote: str, error: str | None) -> None:
        assert self.remote is not None
        self.remote.set_status(error)


def test_a_driver_that_stops_soon_after_each_start_waits_longer_each_time(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Each start reached the remote (a listing answered, say) before the stop: the remote's
    # own count of failures went back to 0 each time, and it started again every second,
    # with a traceback each time.
    starts: list[float] = []
    driver = types.ModuleType("stopping_driver")

    def start(plug: Plug) -> None:
        starts.append(time.monotonic())
        plug.ready()
        plug.online()
        raise RuntimeError("the same fault")

    driver.start = start  # type: ignore[attr-defined]
    options = Options({}, "remotes.stopping", tmp_path)
    remote = Remote(RemoteConfig("stopping", "stopping_driver", "rw", options), 1, driver)
    sink = ForwardsStatus()
    sink.remote = remote

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(remote.run_driver, sink, lambda: False)
            await trio.sleep(6.5)
            remote.stop()

    trio.run(main)
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    # 1 s, then 2 s, then 4 s: past the end (a busy machine may add to each, not take away)
    assert len(gaps) == 2 and 0.9 <= gaps[0] < 1.9 <= gaps[1], gaps
    stops = [record for record in caplog.records if record.msg == "remote %s: driver stopped: %s"]
    assert len(stops) == 3 and [bool(record.exc_info) for record in stops] == \
        [True, False, False]


def test_why_changes_wait_is_the_last_change_failure_not_a_later_read_failure(
        tmp_path: Path) -> None:
    # A read of a file gone from under it (a remote's FUSE disk keeping it as .fuse_hidden
    # for a moment) made `onitufs umount` give that as why three changes stayed queued.
    driver = types.ModuleType("refusing_driver")

    def start(plug: Plug) -> None:
        @plug.handler()
        def end_upload(md: Metadata) -> None:
            raise DriverError(f"{md.path}: the folder takes it for another name")

        @plug.handler()
        def get_chunk(md: Metadata, offset: int, size: int) -> bytes:
            raise DriverError(f"{md.path}: no longer on the remote")

        plug.ready()
        plug.stopping.wait()

    driver.start = start  # type: ignore[attr-defined]
    options = Options({}, "remotes.refusing", tmp_path)
    remote = Remote(RemoteConfig("refusing", "refusing_driver", "rw", options), 1, driver)
    remote.trusted.set()  # (a listing passed its identity check)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(remote.run_driver, NoChanges(), lambda: False)
            with trio.fail_after(10):
                with pytest.raises(CallFailed, match="another name"):
                    await remote.call("end_upload", Metadata(path="a.txt"))
                with pytest.raises(CallFailed, match="no longer"):
                    await remote.call("get_chunk", Metadata(path="gone"), 0, 1)
            remote.stop()

    trio.run(main)
    assert remote.health.change_error == \
        "DriverError: a.txt: the folder takes it for another name"
    assert remote.health.last_error == "DriverError: gone: no longer on the remote"
