"""Retention: conversations with no activity for SMOLSITE_RETENTION_DAYS are deleted with their
messages. Never a kept one, and never one with an answer pending or streaming (or a batch line
still running in it). Batches that finished that long ago go too, with their lines (bodies and
answers) and their files. Whatever that setting, stored files past their ``expires_at`` are
deleted (rows and the bytes in them). Run periodically: Celery beat scaled out (chat.tasks), a
thread of the web process embedded (``start_retention``)."""
import logging
import threading
from datetime import timedelta

from django.conf import settings
from django.db import connections, transaction
from django.db.models.functions import Coalesce
from django.utils import timezone

from .models import Conversation, Message
from .socket_auth import recheck_sockets

logger = logging.getLogger(__name__)

CHUNK = 200  # conversations locked and deleted per transaction


def _busy_batch_conversations():
    """Conversations a running batch line still collects its answer from."""
    from batches.models import BatchLine

    return set(BatchLine.objects.filter(status__in=(BatchLine.Status.STARTING, BatchLine.Status.RUNNING))
               .exclude(conversation_id=None).values_list("conversation_id", flat=True))


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
    busy = _busy_batch_conversations() if candidates else set()
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


def purge_batches(days=None, now=None):
    """Delete the batches that finished more than ``days`` (default the retention setting) ago,
    with their lines and their input, output and error files. Returns (batches, lines, files)."""
    from batches.models import Batch, BatchFile

    days = settings.SMOLSITE_RETENTION_DAYS if days is None else days
    if not days or days <= 0:
        return 0, 0, 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    old = (Batch.objects.exclude(status__in=Batch.ACTIVE)
           .annotate(_ended=Coalesce("completed_at", "failed_at", "cancelled_at", "expired_at", "created_at"))
           .filter(_ended__lt=cutoff))
    batches = lines = files = 0
    for start in range(0, old.count(), CHUNK):
        chunk = list(old.order_by("pk").values("pk", "input_file_id", "output_file_id", "error_file_id")[:CHUNK])
        if not chunk:
            break
        file_ids = {row[k] for row in chunk for k in ("input_file_id", "output_file_id", "error_file_id")} - {None}
        with transaction.atomic():
            # An input file another, still running batch reads stays (it goes when it expires).
            file_ids -= set(Batch.objects.filter(status__in=Batch.ACTIVE, input_file_id__in=file_ids)
                            .values_list("input_file_id", flat=True))
            _, counts = Batch.objects.filter(pk__in=[row["pk"] for row in chunk]).delete()
            files += BatchFile.objects.filter(pk__in=file_ids).delete()[0]
        batches += counts.get("batches.Batch", 0)
        lines += counts.get("batches.BatchLine", 0)
    if batches:
        logger.info("retention: deleted %d batch(es), %d line(s) and %d file(s) finished over %g day(s) ago",
                    batches, lines, files, days)
    return batches, lines, files


def purge_expired_files(now=None):
    """Delete stored files past their ``expires_at`` (never the input of a batch still running).
    Returns the number deleted."""
    from batches.models import Batch, BatchFile

    running_inputs = Batch.objects.filter(status__in=Batch.ACTIVE).exclude(input_file=None).values("input_file_id")
    expired = BatchFile.objects.filter(expires_at__lt=now or timezone.now()).exclude(pk__in=running_inputs)
    deleted = 0
    while True:
        ids = list(expired.values_list("pk", flat=True)[:CHUNK])
        if not ids:
            break
        deleted += BatchFile.objects.filter(pk__in=ids).delete()[0]
    if deleted:
        logger.info("retention: deleted %d expired file(s)", deleted)
    return deleted


def run_once():
    """One periodic pass; errors are logged, never raised (the timer keeps going)."""
    try:
        purge_expired_files()
        purge_batches()
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
