"""The daemon's kernel-side tuning holds on a real mount (what make bench relies on)."""

import os
import signal
import threading
import time

import pytest
import trio

from e2efs.fs.daemon import READ_AHEAD_KB, _device_of


def test_read_ahead_is_raised_before_any_request_after_init(mounted):
    """A file takes the read-ahead it is opened with: raised only later, a program
    that opened its file first read all of it in 128 KiB requests (8x as many)."""
    if os.geteuid() != 0:
        pytest.skip("setting a bdi's read_ahead_kb needs root")
    os.listdir(mounted.path)                 # answered only after the raise
    with open(f"/sys/class/bdi/{_device_of(mounted.path)}/read_ahead_kb") as f:
        assert int(f.read()) == READ_AHEAD_KB


async def test_after_init_runs_once_before_the_second_request_is_waited_for():
    from e2efs.fs import requestloop
    r, w = os.pipe()
    calls = []
    try:
        wait = requestloop._PollingWait(r, after_init=lambda: calls.append(wait.served))
        for _ in range(3):
            os.write(w, b"x")
            assert await wait()
            os.read(r, 1)
        assert calls == [2]
    finally:
        os.close(r)
        os.close(w)


def test_polling_request_loop_is_used_and_still_yields_to_signals(mounted):
    """A pyfuse3 without the wait hook must show up here, not as a silent 2x
    slowdown; and while requests stream without a pause, SIGTERM still
    reaches trio and unmounts promptly."""
    os.listdir(mounted.path)
    assert "request loop: polling the FUSE device directly" in mounted.log_text()
    stop = threading.Event()

    def stream_requests():
        while not stop.is_set():
            try:
                os.statvfs(mounted.path)
            except OSError:
                return

    threads = [threading.Thread(target=stream_requests) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        mounted.proc.send_signal(signal.SIGTERM)
        assert mounted.proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 3
        mounted.proc = None
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not os.path.ismount(mounted.path)


async def test_request_wait_spins_only_while_requests_come_quickly():
    """The request loop looks for the next request without sleeping only while
    requests follow each other within microseconds; after a longer gap it
    sleeps in poll(2) and spends no CPU waiting (a pipe stands in for /dev/fuse)."""
    from e2efs.fs import requestloop
    r, w = os.pipe()
    try:
        wait = requestloop._PollingWait(r)
        os.write(w, b"x")
        assert await wait() and wait.spin                  # one at once: spin for the next
        os.read(r, 1)
        threading.Timer(0.01, os.write, (w, b"x")).start()
        cpu = time.thread_time()
        assert await wait()
        assert time.thread_time() - cpu < 0.004            # spun SPIN_NS at most, then slept
        assert not wait.spin
        os.read(r, 1)
        threading.Timer(0.01, os.write, (w, b"x")).start()
        cpu = time.thread_time()
        assert await wait() and time.thread_time() - cpu < 0.002    # no spin at all this time
    finally:
        os.close(r)
        os.close(w)


async def test_work_that_waits_for_a_pause_runs_between_requests(nursery):
    """``on_quiet`` runs once a quiet spell starts and again when it asks to, not
    while requests come quickly; if it fails, requests are still served."""
    from e2efs.fs import requestloop
    r, w = os.pipe()
    calls = []

    def on_quiet():
        calls.append(time.monotonic())
        return 0.03 if len(calls) < 3 else None
    try:
        wait = requestloop._PollingWait(r, on_quiet)
        nursery.start_soon(wait.quiet_worker)
        os.write(w, b"x")
        assert await wait() and calls == []                # a request is waiting: no pause
        os.read(r, 1)
        threading.Timer(0.2, os.write, (w, b"x")).start()
        assert await wait()
        assert len(calls) == 3 and calls[2] - calls[1] >= 0.025      # asked again after 30 ms, then done
        os.read(r, 1)
        wait.on_quiet = lambda: 1 / 0
        threading.Timer(0.05, os.write, (w, b"x")).start()
        assert await wait()
    finally:
        os.close(r)
        os.close(w)


async def test_terminate_during_work_in_a_pause_is_not_lost(nursery):
    """pyfuse3.terminate() wakes only a task that is waiting on the device right
    then: work done in a pause must never take the request loop out of its wait."""
    from e2efs.fs import requestloop
    for _ in range(20):
        r, w = os.pipe()
        turns = []

        def on_quiet():
            turns.append(1)
            return 0.0 if len(turns) < 50 else None      # due again at once, many times
        try:
            wait = requestloop._PollingWait(r, on_quiet)
            worker = trio.CancelScope()

            async def run_worker():
                with worker:
                    await wait.quiet_worker()
            nursery.start_soon(run_worker)

            async def terminate_while_working():
                while not turns:
                    await trio.sleep(0)
                trio.lowlevel.notify_closing(r)         # what pyfuse3.terminate() does
            nursery.start_soon(terminate_while_working)
            with trio.fail_after(2):
                assert await wait() is False
            worker.cancel()
        finally:
            os.close(r)
            os.close(w)
