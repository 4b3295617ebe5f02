"""Finds generations whose worker died and ends them as ``interrupted``, keeping their text."""
import logging
import threading
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from inference.publish import Publisher
from inference.workers import is_alive

from .models import Message

logger = logging.getLogger(__name__)
INTERVAL = 10


def _interrupt(messages, reason):
    now = timezone.now()
    count = 0
    for m in messages:
        if Message.objects.filter(pk=m.pk, status=m.status).update(
                status=Message.Status.INTERRUPTED, error=reason, updated_at=now, finished_at=now):
            count += 1
            _announce(m)
    return count


def _announce(message):
    try:
        pub = Publisher(f"conv.{message.conversation_id}", message.pk)
        pub.seq = message.stream_seq
        pub.emit("done", status=Message.Status.INTERRUPTED, error="the worker stopped", stats={})
        pub.close(timeout=5)
    except Exception:
        logger.exception("could not announce interrupted message %s", message.pk)


def reap(stale_seconds=None):
    """Streaming messages whose worker is gone, or silent for too long, become interrupted."""
    stale_seconds = settings.SMOLSITE_STALE_SECONDS if stale_seconds is None else stale_seconds
    cutoff = timezone.now() - timedelta(seconds=stale_seconds)
    streaming = list(Message.objects.filter(status=Message.Status.STREAMING))
    dead = [m for m in streaming if m.updated_at < cutoff or (m.worker_id and not is_alive(m.worker_id))]
    if dead:
        logger.warning("marking %d generation(s) interrupted", len(dead))
    return _interrupt(dead, "The worker stopped before the answer was finished.")


def reap_embedded_leftovers():
    """Embedded mode keeps its queue in memory: whatever was active at the last shutdown is lost."""
    leftovers = list(Message.objects.filter(status__in=Message.ACTIVE))
    return _interrupt(leftovers, "The server restarted before the answer was finished.")


def start_reaper():
    def loop():
        stop = threading.Event()
        while not stop.wait(INTERVAL):
            try:
                reap()
            except Exception:
                logger.exception("reaper failed")

    thread = threading.Thread(target=loop, name="smolsite-reaper", daemon=True)
    thread.start()
    return thread
