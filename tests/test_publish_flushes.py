"""Flushes of events grow with the answers a process streams at once (inference.publish.flush_interval),
so the web process's cost per token falls under load instead of rising; the first text of every
answer still goes out at once."""
import asyncio
import threading
import weakref

import pytest
from channels.layers import InMemoryChannelLayer

from inference import publish
from inference.publish import Publisher

pytestmark = pytest.mark.nodb


@pytest.fixture(autouse=True)
def own_count(monkeypatch):
    """This module counts its own publishers: others' answers may still stream in this process."""
    monkeypatch.setattr(publish, "_streaming", weakref.WeakSet())


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def streaming(n, loop, base=0.05):
    pubs = [Publisher(f"g{i}", i, layer=InMemoryChannelLayer(), loop=loop, flush_seconds=base) for i in range(n)]
    for pub in pubs:
        pub.emit("text", "hello")
        assert pub.due()  # the first text at once, however many stream
        pub.flush()
    return pubs


def test_one_answer_keeps_the_configured_pause(loop, monkeypatch):
    monkeypatch.setattr(publish, "EVENTS_PER_SECOND", 60.0)
    [pub] = streaming(1, loop)
    assert publish.streaming_answers() == 1
    pub.emit("text", " world")
    pub.flush()
    assert pub._interval == pytest.approx(0.05)
    pub.close()
    assert publish.streaming_answers() == 0


def test_many_answers_share_the_event_budget_up_to_the_longest_pause(loop, monkeypatch):
    monkeypatch.setattr(publish, "EVENTS_PER_SECOND", 60.0)
    pubs = streaming(9, loop)
    pubs[0].emit("text", " more")
    pubs[0].flush()
    assert pubs[0]._interval == pytest.approx(9 / 60)
    pubs[0].emit("text", " again")
    assert not pubs[0].due()  # well within 150 ms of the last flush
    extra = streaming(30, loop)
    pubs[0].flush()
    assert pubs[0]._interval == publish.MAX_FLUSH_SECONDS
    for pub in pubs + extra:
        pub.close()
    assert publish.streaming_answers() == 0
    late = streaming(1, loop)[0]
    late.flush()
    assert late._interval == pytest.approx(0.05)  # the crowd gone, the pause is back
    late.close()


def test_the_budget_can_be_switched_off_and_a_publisher_that_never_closes_is_forgotten(loop, monkeypatch):
    monkeypatch.setattr(publish, "EVENTS_PER_SECOND", 0.0)
    pubs = streaming(20, loop)
    pubs[0].flush()
    assert pubs[0]._interval == pytest.approx(0.05)
    for pub in pubs:
        for future in pub._futures:
            future.result(5)
    del pubs, pub  # a publisher dropped without close() (a thread that died) does not count for ever
    import gc

    gc.collect()
    assert publish.streaming_answers() == 0
