"""Numbered events from a generation to a channel-layer group, sent in flushes.

A flush is one send of the events a publisher gathered since the last one (never one per token).
The generation thread never waits on the network: flushes are handed to an event loop that sends
them in order (the web server's loop when the worker is in-process, a loop thread of the worker's
own otherwise).
"""
import asyncio
import logging
import os
import threading
import time
import weakref

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

# The first text goes out at once (time to first token); later text in flushes this far apart.
# Every flush wakes the publishing loop, Redis and each subscriber, which the decoding threads
# feel on 2 cores: with the pub/sub layer 25 ms flushes kept ~97.5% of raw tokens/s on the
# Celery path and 50 ms ~100% (bench/run.py; the list-based layer needed 100 ms for that).
FLUSH_SECONDS = float(os.environ.get("SMOLSITE_FLUSH_MS", "50")) / 1000
# A flush costs the web process about the same whatever it holds (a hop between threads or
# processes, the channel layer, a write to each client), and with many answers at once each
# flush holds a token or two: under load the flushes grow instead, so a process sends about
# EVENTS_PER_SECOND flushes in all, shared by its answers, and no answer waits more than
# MAX_FLUSH_SECONDS between flushes (what the eye still reads as streaming).
EVENTS_PER_SECOND = float(os.environ.get("SMOLSITE_EVENTS_PER_SECOND", "60"))
MAX_FLUSH_SECONDS = 0.25
# A flush the layer refused (Redis restarting) is sent again after these pauses, later flushes
# waiting behind it: a lost middle flush is recovered from the saved text, a lost "done" never is.
RESEND_SECONDS = (0.25, 0.5, 1, 2, 4, 8)
EVENT_TYPE = "gen.events"  # handled by the consumer's gen_events method
TEXT_KINDS = ("text", "reasoning", "tool")  # "tool": a call being written (inference.toolcalls)

_local = threading.local()
_streaming = weakref.WeakSet()  # this process's publishers between their first text and close()
_streaming_lock = threading.Lock()


def streaming_answers():
    with _streaming_lock:
        return len(_streaming)


def flush_interval(base):
    """The pause between flushes of one answer when ``streaming_answers()`` are streaming."""
    if base <= 0 or EVENTS_PER_SECOND <= 0:
        return base
    return max(base, min(MAX_FLUSH_SECONDS, streaming_answers() / EVENTS_PER_SECOND))
_loop_thread = None
_loop_thread_lock = threading.Lock()


_server_loop = None


def set_thread_loop(loop):
    """Embedded worker: publish on the web server's loop (the in-memory layer lives there)."""
    _local.loop = loop


def remember_server_loop(loop):
    """The web server's loop, for publishers in its other threads (the reaper): the in-memory
    layer is not thread-safe, so they must send on the loop its consumers wait on."""
    global _server_loop
    _server_loop = loop


def server_loop():
    """The web server's loop if it is known and running, else None."""
    loop = _server_loop
    return loop if loop is not None and loop.is_running() else None


def _own_loop():
    global _loop_thread
    with _loop_thread_lock:
        if _loop_thread is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="smolsite-publish", daemon=True)
            thread.start()
            _loop_thread = (loop, thread)
        return _loop_thread[0]


def publish_loop():
    loop = getattr(_local, "loop", None)
    return loop or server_loop() or _own_loop()


class Publisher:
    def __init__(self, group, message_id, layer=None, loop=None, flush_seconds=FLUSH_SECONDS):
        self.group = group
        self.message_id = message_id
        self.layer = layer or get_channel_layer()
        self.loop = loop or publish_loop()
        self.flush_seconds = flush_seconds
        self._interval = flush_seconds  # grows with the answers this process streams (flush_interval)
        self.seq = 0
        self._pending = []
        self._last_flush = 0.0
        self._text_sent = False
        self._lock = None
        self._futures = []

    def emit(self, kind, text="", **data):
        """Queue an event; consecutive text of one kind merges into one event."""
        if kind in TEXT_KINDS and self._pending and self._pending[-1]["kind"] == kind:
            self._pending[-1]["text"] += text
        else:
            event = {"kind": kind, **data}
            if kind in TEXT_KINDS:
                event["text"] = text
            self._pending.append(event)

    def due(self):
        """Whether to flush now: the first text at once, however recently other events (the start,
        a place in line) went out; later events once ``flush_seconds`` have passed."""
        if not self._pending:
            return False
        if not self._text_sent and any(e["kind"] in TEXT_KINDS for e in self._pending):
            return True
        return time.monotonic() - self._last_flush >= self._interval

    def flush(self):
        """Number the pending events and hand them to the loop; returns the last seq sent."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return self.seq
        events, self._pending = self._pending, []
        if not self._text_sent and any(e["kind"] in TEXT_KINDS for e in events):
            self._text_sent = True
            with _streaming_lock:
                _streaming.add(self)
        if self._text_sent:
            self._interval = flush_interval(self.flush_seconds)
        for event in events:
            self.seq += 1
            event["seq"] = self.seq
        payload = {"type": EVENT_TYPE, "message": self.message_id, "events": events}
        if self.group and self.layer is not None:
            future = asyncio.run_coroutine_threadsafe(self._send(payload), self.loop)
            self._futures = [f for f in self._futures if not f.done()] + [future]
        return self.seq

    async def _send(self, payload):
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            for attempt in range(len(RESEND_SECONDS) + 1):
                try:
                    await self.layer.group_send(self.group, payload)
                    return
                except Exception as exc:
                    if attempt == len(RESEND_SECONDS):
                        logger.exception("could not publish events for message %s", self.message_id)
                        return
                    logger.warning("could not publish events for message %s (%s: %s); trying again",
                                   self.message_id, type(exc).__name__, exc)
                    await asyncio.sleep(RESEND_SECONDS[attempt])

    def close(self, timeout=30):
        self.flush()
        with _streaming_lock:
            _streaming.discard(self)
        for future in self._futures:
            try:
                future.result(timeout)
            except Exception:
                logger.exception("publishing did not finish for message %s", self.message_id)
        self._futures = []
