"""Retention of batches (chat.retention runs it, registered by batches.apps): batches that
finished SMOLSITE_RETENTION_DAYS ago go with their lines (bodies and answers) and their files;
stored files past their ``expires_at`` go whatever that setting; and a conversation a running
batch line still collects its answer from is never purged."""
import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models.functions import Coalesce
from django.utils import timezone

from chat.retention import CHUNK

from .models import Batch, BatchFile, BatchLine

logger = logging.getLogger(__name__)


def busy_conversations():
    """Conversations a running batch line still collects its answer from."""
    return set(BatchLine.objects.filter(status__in=(BatchLine.Status.STARTING, BatchLine.Status.RUNNING))
               .exclude(conversation_id=None).values_list("conversation_id", flat=True))


def run_pass():
    """The batches' part of a retention pass."""
    purge_expired_files()
    purge_batches()


def purge_batches(days=None, now=None):
    """Delete the batches that finished more than ``days`` (default the retention setting) ago,
    with their lines and their input, output and error files. Returns (batches, lines, files)."""
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
