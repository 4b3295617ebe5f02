"""chat.generation.follow.Follower, the numbered-event follower of the chat socket and the API,
with a fake adapter: events in order, a gap filled from the saved row, an end announced from the
saved text, a silence, a deleted message. No database, no model."""
import asyncio

import pytest

from chat.generation import follow
from chat.generation.follow import Follower

pytestmark = [pytest.mark.asyncio, pytest.mark.nodb]


class Recorder(Follower):
    def __init__(self, rows=None, background=False):
        super().__init__()
        self.rows = rows if rows is not None else {}
        self.resync_in_background = background
        self.log = []

    async def read_saved(self, message_ids):
        return {mid: dict(self.rows[mid]) for mid in message_ids if mid in self.rows}

    async def deliver(self, message_id, events):
        self.log.append(("events", message_id, [e["seq"] for e in events]))

    async def apply_saved(self, message_id, row):
        self.log.append(("saved", message_id, row["stream_seq"], row["status"]))

    async def ended_elsewhere(self, message_id):
        self.log.append(("ended elsewhere", message_id))

    async def gone(self, message_id):
        self.log.append(("gone", message_id))


def events(*seqs, done_at=None):
    return [{"seq": s, "kind": "done" if s == done_at else "text", "text": "x"} for s in seqs]


async def test_events_in_order_are_delivered_and_repeats_dropped():
    f = Recorder()
    await f.on_events(1, events(1, 2))
    await f.on_events(1, events(2, 3))
    await f.on_events(1, events(1))
    assert f.log == [("events", 1, [1, 2]), ("events", 1, [3])]
    assert f.seq[1] == 3 and 1 in f.heard


async def test_a_gap_takes_the_saved_row_then_the_events_after_it(monkeypatch):
    monkeypatch.setattr(follow, "RESYNC_WAIT", 0)
    f = Recorder({1: {"stream_seq": 5, "status": "streaming"}})
    await f.on_events(1, events(1))
    await f.on_events(1, events(5, 6, 7))
    assert f.log == [("events", 1, [1]), ("saved", 1, 5, "streaming"), ("events", 1, [6, 7])]
    assert f.seq[1] == 7 and not f.held


async def test_a_gap_waits_for_the_row_to_reach_it_holding_what_arrives_meanwhile(monkeypatch):
    monkeypatch.setattr(follow, "RESYNC_WAIT", 0.01)
    f = Recorder({1: {"stream_seq": 0, "status": "streaming"}}, background=True)
    await f.on_events(1, events(3, 4))
    assert 1 in f.held
    await f.on_events(1, events(5))
    f.rows[1]["stream_seq"] = 2
    for _ in range(100):
        if 1 not in f.held:
            break
        await asyncio.sleep(0.01)
    assert f.log == [("saved", 1, 2, "streaming"), ("events", 1, [3, 4, 5])]


async def test_a_gap_in_an_ended_answer_ends_it_from_the_row(monkeypatch):
    monkeypatch.setattr(follow, "RESYNC_WAIT", 0)
    f = Recorder({1: {"stream_seq": 9, "status": "done"}})
    f.hear(1)
    await f.on_events(1, events(4, 5))
    assert f.log == [("saved", 1, 9, "done")] and 1 not in f.heard


async def test_a_gap_whose_row_never_catches_up_takes_what_was_saved(monkeypatch):
    monkeypatch.setattr(follow, "RESYNC_WAIT", 0)
    f = Recorder({1: {"stream_seq": 1, "status": "streaming"}})
    await f.on_events(1, events(6))
    assert f.log == [("saved", 1, 1, "streaming"), ("events", 1, [6])]


async def test_a_gap_in_a_deleted_message_is_gone():
    f = Recorder()
    await f.on_events(1, events(3))
    assert f.log == [("gone", 1)] and not f.held


async def test_an_end_numbered_from_the_saved_text_still_ends_the_answer():
    f = Recorder()
    await f.on_events(1, events(1, 2, 3))
    await f.on_events(1, events(2, done_at=2))
    assert f.log[-1] == ("ended elsewhere", 1)
    f.log.clear()
    await f.on_events(2, events(1, done_at=1))  # a stop before any worker took it: seq 1
    assert f.log == [("events", 2, [1])] and 2 not in f.heard


async def test_a_silent_answer_is_read_again():
    f = Recorder({1: {"stream_seq": 4, "status": "streaming"}, 2: {"stream_seq": 2, "status": "done"},
                  3: {"stream_seq": 1, "status": "streaming"}})
    for mid in (1, 2, 3, 4):
        await f.on_events(mid, events(1))
    assert sorted(f.silent(0)) == [1, 2, 3, 4] and f.silent(60) == []
    f.log.clear()
    await f.check([1, 2, 3, 4], catch_up=False)
    assert f.log == [("saved", 2, 2, "done"), ("gone", 4)]
    f.log.clear()
    await f.check([1, 3])
    assert f.log == [("saved", 1, 4, "streaming")] and f.seq[1] == 4 and sorted(f.heard) == [1, 3]


async def test_show_saved_whatever_was_applied():
    f = Recorder({1: {"stream_seq": 2, "status": "streaming"}})
    await f.on_events(1, events(1, 2, 3))
    assert await f.show_saved(1) and f.seq[1] == 2
    assert not await f.show_saved(2)
