"""Following a generation's numbered events (inference.publish numbers each message's from 1), for
the chat socket (chat.consumers) and the API (api.runner).

The channel layer can lose events: a listener that joined after the first ones went out, Redis
restarted, a subscription lost for a moment. So each message's events are applied in order, a gap
is filled from the saved row (the worker writes it at least once a second), an end announced by
someone who numbers from the saved text (the reaper, a stop before any worker took the answer)
still ends it, and a message not heard of for a while is read again (``check``). What reaches the
client is the adapter's: the socket sends HTML fragments, the API server-sent JSON chunks.
"""
import asyncio

from ..models import Message

# A gap is filled once the saved row reaches it: read again every RESYNC_WAIT seconds, at most
# RESYNC_TRIES times (then whatever was saved is taken, and the events after the gap).
RESYNC_TRIES = 20
RESYNC_WAIT = 0.2


def has_ended(row):
    return row["status"] not in Message.ACTIVE


class Follower:
    """The generations one listener follows. An adapter implements:

    - ``read_saved(ids)``: {id: saved row}, each with at least ``stream_seq`` and ``status``;
    - ``deliver(id, events)``: events that follow on from what the client has, in order;
    - ``apply_saved(id, row)``: bring the client up to date from a saved row (ended or not);
    - ``ended_elsewhere(id)``: a "done" numbered at or before what was applied arrived;
    - ``gone(id)``: the message was deleted.

    ``resync_in_background``: fill a gap on a task of its own, holding back what arrives meanwhile
    (a socket must stay free for its client's frames), instead of before the next event is read.
    """

    resync_in_background = False

    def __init__(self):
        self.seq = {}  # message id -> the last event applied (or the seq of the saved row applied)
        self.held = {}  # message id -> events held back while its gap is filled
        self.heard = {}  # message id -> when it was last heard of (loop time), until it ends

    def hear(self, message_id):
        self.heard[message_id] = asyncio.get_running_loop().time()

    def forget(self, message_id):
        self.heard.pop(message_id, None)

    def silent(self, seconds):
        """The messages not heard of for ``seconds``, leaving out those whose gap is being filled."""
        cutoff = asyncio.get_running_loop().time() - seconds
        return [mid for mid, heard in self.heard.items() if heard <= cutoff and mid not in self.held]

    async def on_events(self, message_id, events):
        """One flush of events (inference.publish) as the channel layer brought it."""
        if message_id in self.held:
            self.held[message_id].extend(events)
            return
        last = self.seq.get(message_id, 0)
        fresh = [e for e in events if e["seq"] > last]
        if not fresh:
            if any(e["kind"] == "done" for e in events):
                await self.ended_elsewhere(message_id)
            return
        if fresh[0]["seq"] != last + 1 and fresh[0]["kind"] != "done":
            self.held[message_id] = list(fresh)
            if self.resync_in_background:
                asyncio.get_running_loop().create_task(self._resync(message_id))
            else:
                await self._resync(message_id)
            return
        await self._deliver(message_id, fresh)

    async def _deliver(self, message_id, events):
        self.seq[message_id] = events[-1]["seq"]
        self.hear(message_id)
        await self.deliver(message_id, events)
        if any(e["kind"] == "done" for e in events):
            self.forget(message_id)

    async def _resync(self, message_id):
        """Events before the first held one were lost: wait for the saved row to reach them, take
        it, then go on with the held events after it."""
        first = self.held[message_id][0]["seq"]
        row = None
        for _ in range(RESYNC_TRIES):
            row = (await self.read_saved([message_id])).get(message_id)
            if row is None or row["stream_seq"] >= first - 1 or has_ended(row):
                break
            await asyncio.sleep(RESYNC_WAIT)
        held = self.held.pop(message_id, [])
        if row is None:
            return await self._gone(message_id)
        if await self._apply_saved(message_id, row):
            return
        rest = [e for e in held if e["seq"] > self.seq[message_id]]
        if rest:
            await self._deliver(message_id, rest)

    async def _apply_saved(self, message_id, row):
        """Take the saved row as what the client has; True when the answer has ended."""
        self.seq[message_id] = row["stream_seq"]
        self.hear(message_id)
        await self.apply_saved(message_id, row)
        if has_ended(row):
            self.forget(message_id)
            return True
        return False

    async def _gone(self, message_id):
        self.forget(message_id)
        await self.gone(message_id)

    async def show_saved(self, message_id):
        """Bring the client up to date from the saved row whatever it has (a resume, a reconnect);
        False when there is no such message."""
        row = (await self.read_saved([message_id])).get(message_id)
        if row is None:
            return False
        await self._apply_saved(message_id, row)
        return True

    async def check(self, message_ids, catch_up=True):
        """Read these messages' rows again (nothing was heard of them for a while): one that
        ended, or was deleted, ends here too although no event said so, and with ``catch_up`` one
        whose row is ahead of what was applied is brought up to date from it."""
        if not message_ids:
            return
        rows = await self.read_saved(list(message_ids))
        for message_id in message_ids:
            row = rows.get(message_id)
            if row is None:
                await self._gone(message_id)
            elif has_ended(row) or (catch_up and row["stream_seq"] > self.seq.get(message_id, 0)):
                await self._apply_saved(message_id, row)
            elif message_id in self.heard:
                self.hear(message_id)

    # ---- the adapter's ----------------------------------------------------------------------
    async def read_saved(self, message_ids):
        raise NotImplementedError

    async def deliver(self, message_id, events):
        raise NotImplementedError

    async def apply_saved(self, message_id, row):
        raise NotImplementedError

    async def ended_elsewhere(self, message_id):
        raise NotImplementedError

    async def gone(self, message_id):
        pass
