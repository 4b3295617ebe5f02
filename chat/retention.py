"""Retention: conversations with no activity for SMOLSITE_RETENTION_DAYS are deleted with their
messages. Never a kept one, and never one with an answer pending or streaming (or a batch line
still running in it). Batches that finished that long ago go too, with their lines (bodies and
answers) and their files. Whatever that setting, stored files past their ``expires_at`` are
deleted (rows and the bytes in them). Run periodically: Celery beat scaled out (chat.tasks), a
thread of the web process embedded (``start_retention``). The batches' part of a pass is in
batches.retention, registered here by batches.apps (``register``)."""
import logging
import threading
from datetime import timedelta

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from .models import Conversation, Message
from .socket_auth import recheck_sockets

logger = logging.getLogger(__name__)

CHUNK = 200  # conversations locked and deleted per transaction


# What other apps add to a pass, registered at startup by the apps above chat (batches.apps):
# chat sits below them and never imports them (docs/architecture.md, Layers).
_passes = []  # functions run at the start of every pass, before the conversations' purge
_busy = []  # functions giving the ids of conversations another app still collects answers from


def register(run=None, busy_conversations=None):
    """Add ``run()`` to every pass and/or ``busy_conversations()`` (a set of conversation ids that
    purge_expired must leave alone)."""
    if run is not None and run not in _passes:
        _passes.append(run)
    if busy_conversations is not None and busy_conversations not in _busy:
        _busy.append(busy_conversations)


def _busy_conversations():
    busy = set()
    for source in _busy:
        busy |= set(source())
    return busy


def purge_expired(days=None, now=None):
    """Delete the conversations whose last activity is more than ``days`` (default the setting)
    ago. Returns (conversations, messages) deleted; days <= 0 deletes nothing."""
    days = settings.SMOLSITE_RETENTION_DAYS if days is None else days
    if not days or days <= 0:
        return 0, 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    expired = Conversation.objects.filter(updated_at__lt=cutoff, kept=False)
    candidates = list(expired.exclude(messages__status__in=Message.ACTIVE).order_by("pk")
                      .values_list("pk", flat=True).distinct())
    busy = _busy_conversations() if candidates else set()
    conversations = messages = 0
    deleted_ids = []
    for start in range(0, len(candidates), CHUNK):
        chunk = [pk for pk in candidates[start:start + CHUNK] if pk not in busy]
        with transaction.atomic():
            # Locked, then checked again: sending a message takes the same row lock (chat.actions)
            # and sets updated_at, so a chat that came back to life in the meantime stays.
            ids = set(expired.select_for_update().filter(pk__in=chunk).values_list("pk", flat=True))
            ids -= set(Message.objects.filter(conversation_id__in=ids, status__in=Message.ACTIVE)
                       .values_list("conversation_id", flat=True))
            if not ids:
                continue
            _, counts = Conversation.objects.filter(pk__in=ids).delete()
        conversations += counts.get("chat.Conversation", 0)
        messages += counts.get("chat.Message", 0)
        deleted_ids += sorted(ids)
    if conversations:
        logger.info("retention: deleted %d conversation(s) and %d message(s) with no activity for %g day(s)",
                    conversations, messages, days)
        recheck_sockets(deleted_ids)  # open tabs of them are told the chat is gone
    else:
        logger.debug("retention: no conversation older than %g day(s) to delete", days)
    return conversations, messages


def run_once():
    """One periodic pass; errors are logged, never raised (the timer keeps going)."""
    try:
        for run in _passes:  # batches: expired files, finished batches (batches.retention)
            run()
        return purge_expired()
    except Exception:
        logger.exception("retention pass failed")
        return None
    finally:
        # Called on a thread of its own (the timer, a Celery pool thread) that may wait an hour for
        # the next pass: it holds no database connection meanwhile.
        connections.close_all()


class RetentionTimer:
    """Embedded mode: a daemon thread of the web process that runs a pass every
    SMOLSITE_RETENTION_INTERVAL seconds (the first one right after start)."""

    def __init__(self, interval=None):
        self.interval = settings.SMOLSITE_RETENTION_INTERVAL if interval is None else interval
        self.passes = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="smolsite-retention", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            run_once()
            self.passes += 1
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=30)


def start_retention():
    """Start the embedded timer: always, since stored files expire whatever the retention
    setting (with it off, a pass deletes expired files only)."""
    if settings.SMOLSITE_RETENTION_DAYS and settings.SMOLSITE_RETENTION_DAYS > 0:
        logger.info("retention: conversations idle and batches finished for %g day(s) are deleted (checked every "
                    "%g s)", settings.SMOLSITE_RETENTION_DAYS, settings.SMOLSITE_RETENTION_INTERVAL)
    return RetentionTimer().start()
