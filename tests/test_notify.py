"""The entry invalidator (fs/notify.py) without FUSE: stopping it drops the queue
and waits for the invalidation under way, so the daemon stops answering only
once nothing can wait on a request any more."""

import threading

import pyfuse3
import trio

from e2efs.fs.notify import EntryInvalidator


def test_stop_drops_the_queue_and_waits_for_the_one_under_way(monkeypatch):
    started, release = threading.Event(), threading.Event()
    done = []

    def invalidate_entry(parent, name):        # the kernel waits for a pending READDIR on the folder
        started.set()
        release.wait(10)
        done.append(name)
    monkeypatch.setattr(pyfuse3, "invalidate_entry", invalidate_entry)
    inv = EntryInvalidator()
    for name in (b"a", b"b", b"c"):
        inv.ask(1, name)
    assert started.wait(10)

    at_stop = []

    async def stopper():
        await inv.stop()
        at_stop.append(list(done))

    async def stop_while_serving():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stopper)
            await trio.sleep(0.2)               # the request loop answers meanwhile
            release.set()
    trio.run(stop_while_serving)
    assert at_stop == [[b"a"]]                  # stop returned only once "a" was through
    assert done == [b"a"]                       # "b" and "c" were dropped
    inv.ask(1, b"d")                            # nothing is taken once stopped
    inv.close()
    assert done == [b"a"]
