"""The shared lifecycle: start once, close any number of times, release what a failed start acquired."""

import threading

import pytest

from std_daq_service.lifecycle import BackgroundThread, Lifecycle


class Counting(Lifecycle):
    def __init__(self, fail: bool = False):
        self.opened = 0
        self.released = 0
        self.fail = fail

    def _open(self) -> None:
        self.opened += 1
        if self.fail:
            raise OSError("cannot bind")

    def _release(self) -> None:
        self.released += 1


def test_start_twice_opens_once_and_close_twice_releases_once():
    owner = Counting()
    assert owner.start() is owner
    owner.start()
    owner.close()
    owner.close()
    assert (owner.opened, owner.released) == (1, 1)


def test_close_before_start_releases_nothing_and_restart_opens_again():
    owner = Counting()
    owner.close()
    assert owner.released == 0
    with owner:
        assert owner.started
    with owner:
        pass
    assert (owner.opened, owner.released) == (2, 2)


def test_a_failed_start_releases_what_it_acquired_and_raises():
    owner = Counting(fail=True)
    with pytest.raises(OSError, match="cannot bind"):
        owner.start()
    assert owner.released == 1 and not owner.started
    owner.close()
    assert owner.released == 1


def test_background_thread_runs_until_closed_and_wakes_its_loop():
    ran = threading.Event()
    woken = []

    def loop(stop: threading.Event) -> None:
        ran.set()
        stop.wait()

    worker = BackgroundThread("test-loop", loop, wake=lambda: woken.append(True))
    with worker:
        assert ran.wait(5)
        assert worker.is_alive()
    assert not worker.is_alive() and woken == [True]
    worker.close()
    assert woken == [True]


def test_background_thread_close_waits_at_most_its_join_timeout_for_a_busy_loop():
    release = threading.Event()
    worker = BackgroundThread("test-busy", lambda stop: release.wait(), join_timeout_s=0.01).start()
    busy = next(t for t in threading.enumerate() if t.name == "test-busy")
    worker.close()
    assert busy.is_alive() and worker.stop.is_set() and not worker.started
    release.set()
    busy.join()


def test_a_failing_wake_still_stops_and_joins_the_thread():
    def loop(stop: threading.Event) -> None:
        stop.wait()

    def wake() -> None:
        raise OSError("the watcher is already closed")

    worker = BackgroundThread("test-failing-wake", loop, wake=wake)
    worker.start()
    with pytest.raises(OSError, match="already closed"):
        worker.close()
    assert not worker.is_alive()
