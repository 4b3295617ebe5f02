"""Creating, advancing, cancelling and finishing batches. Every step reads and writes the
database only, so whichever process drives a batch (the web process's driver thread, or
``manage.py batch run``) can stop at any moment and another can go on: finished lines are never
redone, and a line whose answer a dead worker cut (``interrupted``) runs again.

A line is one chat completion request: its rows are made exactly as the API makes them
(api.runner.create_rows, source "batch", priority "background"), with the owner's quotas checked
then. Quota policy: a refusal for tokens (day or month) fails that line with the quota's message
(error code insufficient_quota); a refusal for the rate or the number of answers at once pauses
the batch until the next tick. A batch never takes the owner's last fifth of their requests per
minute nor their last concurrent answer (``people_headroom``): their own chats still start.
"""
import json
import logging
import os
import socket
from datetime import timedelta
from types import SimpleNamespace

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone
from django_ratelimit.core import get_usage

from api import params
from api.errors import ApiError
from api.models import ApiKey
from api.runner import Choice, create_rows
from api.views import ChatShape, choice_error
from chat import generation
from chat.generation.rows import answer_rows
from chat.models import Message
from usage.models import UserQuota
from usage.quotas import RATE_GROUP, QuotaExceeded, effective_limits, in_flight

from .models import Batch, BatchFile, BatchLine
from .validation import BatchInvalid, error, validate_jsonl

logger = logging.getLogger(__name__)
WINDOWS = {"24h": timedelta(hours=24)}
ADOPT_SECONDS = 30  # a command-line driver unseen this long: the web driver takes its batch over
S = Batch.Status
L = BatchLine.Status


class BatchRefused(Exception):
    """The batch cannot be created at all (an ApiError-like status, message, param, code)."""

    def __init__(self, status, message, param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def driver_name():
    return f"cli:{socket.gethostname()}:{os.getpid()}"


def store_file(user, filename, data, purpose="batch"):
    return BatchFile.objects.create(owner=user, filename=filename[:255] or "input.jsonl", data=bytes(data),
                                    bytes=len(data), purpose=purpose)


def room_for_batch(user_id):
    """The active-batch limit: BatchRefused when ``user_id`` has as many batches running as allowed.
    Callers check it before validating a file too (that takes seconds for a big one)."""
    most = settings.SMOLSITE_BATCH_MAX_ACTIVE
    active = Batch.objects.filter(owner_id=user_id, status__in=Batch.ACTIVE).count()
    if active >= most:
        raise BatchRefused(429, f"You have {active} batches in progress; at most {most} may run at once. "
                                "Wait for one to finish or cancel one.", None, "too_many_batches")


def create_batch(user, input_file, endpoint="/v1/chat/completions", completion_window="24h", metadata=None,
                 api_key=None, driver="", checked=None):
    """Validate every line, then (all good) make the batch and its lines in progress; with any
    bad line the batch is made ``failed`` with the list of errors and nothing runs. ``checked``:
    what ``check_file`` already returned for this file (validated off the database thread)."""
    if completion_window not in WINDOWS:
        raise BatchRefused(400, "'completion_window' must be \"24h\".", "completion_window", "invalid_value")
    if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16 or any(
            not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > 512
            for k, v in metadata.items())):
        raise BatchRefused(400, "'metadata' must be an object of at most 16 string pairs (keys up to 64, values up "
                                "to 512 characters).", "metadata", "invalid_value")
    if input_file.purpose != "batch":
        raise BatchRefused(400, f"The file {input_file.id} has purpose '{input_file.purpose}', not 'batch'.",
                           "input_file_id", "invalid_file")
    room_for_batch(user.pk)
    now = timezone.now()
    batch = Batch.objects.create(owner=user, api_key=api_key, endpoint=endpoint, completion_window=completion_window,
                                 input_file=input_file, metadata=metadata, created_at=now,
                                 expires_at=now + WINDOWS[completion_window], driver=driver,
                                 driver_seen=now if driver else None)
    lines = checked if checked is not None else check_file(bytes(input_file.data), endpoint)
    if isinstance(lines, BatchInvalid):
        Batch.objects.filter(pk=batch.pk).update(status=S.FAILED, errors=lines.errors, failed_at=timezone.now())
        batch.refresh_from_db()
        return batch
    with transaction.atomic():
        BatchLine.objects.bulk_create(
            [BatchLine(batch=batch, index=i, custom_id=cid, body=body) for i, (cid, body, _) in enumerate(lines)],
            batch_size=500)
        Batch.objects.filter(pk=batch.pk).update(
            status=S.IN_PROGRESS, total=len(lines), in_progress_at=timezone.now(),
            models_used=", ".join(sorted({plan.model for _, _, plan in lines}))[:200])
    batch.refresh_from_db()
    return batch


def check_file(data, endpoint="/v1/chat/completions"):
    """The file's checked lines, or the BatchInvalid saying what is wrong (no database access)."""
    try:
        return validate_jsonl(data, endpoint)
    except BatchInvalid as exc:
        return exc


def cancel(batch):
    """Ask to stop: lines not started never run, running ones are stopped (finished ones are
    kept); the driver ends the batch ``cancelled`` once nothing runs."""
    now = timezone.now()
    if Batch.objects.filter(pk=batch.pk, status__in=(S.VALIDATING, S.IN_PROGRESS)).update(
            status=S.CANCELLING, cancelling_at=now):
        BatchLine.objects.filter(batch=batch, status=L.QUEUED).update(
            status=L.CANCELLED, finished_at=now, error={"code": "batch_cancelled",
                                                        "message": "The batch was cancelled before this line ran."})
        _stop_running(batch)
    batch.refresh_from_db()
    return batch


def cancel_all_of(user):
    """Cancel every batch of ``user`` still running (their account is being deleted:
    chat.signals.account_closing, connected by batches.apps)."""
    for batch in Batch.objects.filter(owner=user, status__in=Batch.ACTIVE):
        try:
            cancel(batch)
        except Exception:
            logger.exception("could not cancel batch %s of a deleted account", batch.pk)


def _stop_running(batch):
    for line in BatchLine.objects.filter(batch=batch, status=L.RUNNING):
        for message_id in line.message_ids:
            try:
                generation.stop_from_thread(message_id)
            except Exception:
                logger.exception("could not stop message %s of %s", message_id, line)


# ---- the driver's step -------------------------------------------------------------------------

def refusal(batch):
    """Why the batch may not run any more (its API key revoked or expired, its owner deactivated),
    or None. Checked at every step: a key is authorised once per request, but a batch runs on."""
    if not get_user_model().objects.filter(pk=batch.owner_id, is_active=True).exists():
        return {"code": "user_deactivated", "message": "The batch was stopped: its owner's account was deactivated."}
    if batch.api_key_id and not ApiKey.objects.usable().filter(pk=batch.api_key_id).exists():
        return {"code": "api_key_revoked", "message": "The batch was stopped: the API key that created it was "
                                                      "revoked or has expired."}
    return None


def _refuse(batch, why):
    """Stop a batch its owner or key may no longer run: lines not started never run, running ones
    are stopped (they keep their partial text); it ends ``cancelled`` with ``errors`` saying why."""
    now = timezone.now()
    if Batch.objects.filter(pk=batch.pk, status__in=(S.VALIDATING, S.IN_PROGRESS)).update(
            status=S.CANCELLING, cancelling_at=now, errors=[{**why, "param": None, "line": None}]):
        BatchLine.objects.filter(batch=batch, status__in=(L.QUEUED, L.STARTING)).update(
            status=L.CANCELLED, finished_at=now, error=why)
        _stop_running(batch)
        logger.warning("batch %s stopped: %s", batch.pk, why["code"])
    batch.refresh_from_db()


def advance(batch, driver=""):
    """One step of one batch: collect ended lines, start more, finish when nothing is left."""
    now = timezone.now()
    if driver:
        Batch.objects.filter(pk=batch.pk).update(driver=driver, driver_seen=now)
    if batch.status == S.IN_PROGRESS:
        why = refusal(batch)
        if why is not None:
            _refuse(batch, why)
    if batch.status == S.IN_PROGRESS and batch.expires_at and now >= batch.expires_at:
        _expire(batch)
    if batch.status == S.CANCELLING or batch.expired_at:
        _stop_running(batch)  # also a line a driver was starting while the batch was cancelled
    _collect(batch)
    if batch.status == S.IN_PROGRESS and not batch.expired_at:
        _fill(batch)
    _count(batch)
    open_lines = BatchLine.objects.filter(batch=batch, status__in=(L.QUEUED, L.STARTING, L.RUNNING)).exists()
    if not open_lines and batch.status in (S.IN_PROGRESS, S.CANCELLING, S.FINALIZING):
        final = {S.IN_PROGRESS: S.COMPLETED, S.FINALIZING: S.COMPLETED, S.CANCELLING: S.CANCELLED}[batch.status]
        if batch.expired_at:
            final = S.EXPIRED
        finalize(batch, final)
    return batch


def _expire(batch):
    now = timezone.now()
    Batch.objects.filter(pk=batch.pk).update(expired_at=now)
    batch.expired_at = now
    BatchLine.objects.filter(batch=batch, status=L.QUEUED).update(
        status=L.CANCELLED, finished_at=now,
        error={"code": "batch_expired", "message": "This request could not be executed before the completion window "
                                                   "expired."})
    _stop_running(batch)  # the batch stays in_progress until they have ended, then expires


def _plan(line):
    return params.check_plan(params.parse_chat(line.body))


def _enqueue(message_id, model):
    return generation.start_from_thread(message_id, model)


def _fill(batch):
    stale = timezone.now() - timedelta(seconds=60)
    # A driver that died between claiming a line and making its rows.
    BatchLine.objects.filter(batch=batch, status=L.STARTING, started_at__lt=stale).update(status=L.QUEUED)
    # Site-wide: each line in flight holds a device-worker thread while it waits for a running
    # slot (SMOLSITE_SLOTS), so all batches together stay below the worker's threads and a chat always finds one.
    busy = BatchLine.objects.filter(status__in=(L.STARTING, L.RUNNING)).count()
    room = min(settings.SMOLSITE_BATCH_IN_FLIGHT - busy, people_headroom(batch.owner_id))
    if room <= 0:
        return
    for line in list(BatchLine.objects.filter(batch=batch, status=L.QUEUED).order_by("index")[:room]):
        if not BatchLine.objects.filter(pk=line.pk, status=L.QUEUED).update(status=L.STARTING,
                                                                             started_at=timezone.now()):
            continue  # another driver took it
        try:
            plan = _plan(line)
            conversation_id, ids = create_rows(plan, batch.api_key, source="batch", user_id=batch.owner_id,
                                               priority="background")
        except QuotaExceeded as exc:
            if exc.kind == "tokens":
                _end_line(line, L.FAILED, response=None,
                          error={"code": "insufficient_quota", "message": str(exc)})
                continue
            BatchLine.objects.filter(pk=line.pk).update(status=L.QUEUED)  # paused: try again next tick
            return
        except ApiError as exc:  # the model was removed since validation, say
            _end_line(line, L.FAILED, response=None, error={"code": exc.code or "invalid_request",
                                                            "message": exc.message})
            continue
        BatchLine.objects.filter(pk=line.pk).update(status=L.RUNNING, message_ids=ids, conversation_id=conversation_id,
                                                    attempts=line.attempts + 1)
        for message_id in ids:
            _enqueue(message_id, plan.model)


def people_headroom(user_id):
    """How many more lines may start now while leaving the owner room for their own chats: a
    fifth (at least one) of their requests per minute and one of their concurrent answers stay
    free for them (when those limits are set and above one)."""
    limits = effective_limits(UserQuota.objects.filter(user_id=user_id).first())
    room = settings.SMOLSITE_BATCH_IN_FLIGHT
    limit = limits.requests_per_minute
    if limit is not None:
        usage = get_usage(None, group=RATE_GROUP, key=lambda group, request: str(user_id), rate=f"{limit}/m",
                          increment=False)
        used = (usage or {}).get("count") or 0
        room = min(room, limit - (max(1, limit // 5) if limit > 1 else 0) - used)
    limit = limits.concurrent_generations
    if limit is not None:
        room = min(room, limit - (1 if limit > 1 else 0) - in_flight(user_id)[0])
    return room


def _end_line(line, status, response, error, tokens=0):
    BatchLine.objects.filter(pk=line.pk).update(status=status, response=response, error=error,
                                                completion_tokens=tokens, finished_at=timezone.now())


def _collect(batch):
    running = list(BatchLine.objects.filter(batch=batch, status=L.RUNNING))
    if not running:
        return
    rows = answer_rows([mid for line in running for mid in line.message_ids])
    for line in running:
        mine = [rows.get(mid) for mid in line.message_ids]
        if any(r is not None and r["status"] in Message.ACTIVE for r in mine):
            continue
        _finish_line(batch, line, mine)


def _finish_line(batch, line, rows):
    tokens = sum((r or {}).get("completion_tokens") or 0 for r in rows)
    statuses = {(r or {}).get("status") for r in rows}
    if None in statuses:
        return _end_line(line, L.FAILED, None, {"code": "deleted", "message": "The answer was deleted."}, tokens)
    stopping = batch.status == S.CANCELLING or batch.expired_at
    if Message.Status.STOPPED in statuses or (stopping and Message.Status.INTERRUPTED in statuses):
        code = "batch_expired" if batch.expired_at else "batch_cancelled"
        return _end_line(line, L.CANCELLED, None, {"code": code, "message": "The batch was stopped while this line "
                                                                            "ran."}, tokens)
    if Message.Status.INTERRUPTED in statuses:
        if line.attempts < settings.SMOLSITE_BATCH_ATTEMPTS:
            # The worker died under it: run it again (the cut answer stays in its own conversation).
            BatchLine.objects.filter(pk=line.pk, status=L.RUNNING).update(status=L.QUEUED, message_ids=[])
            return None
    plan = _plan(line)
    choices = [Choice(i, mid, done=True, row=row) for i, (mid, row) in enumerate(zip(line.message_ids, rows))]
    request_id = f"req_{line.message_ids[0]}"
    for choice in choices:
        problem = choice_error(plan, choice)
        if problem is not None:
            body = problem.payload()
            return _end_line(line, L.FAILED, {"status_code": problem.status, "request_id": request_id, "body": body},
                             {"code": problem.code or problem.type, "message": problem.message}, tokens)
    created = min((r.get("finished_at") for r in rows if r.get("finished_at")), default=None)
    run = SimpleNamespace(choices=choices, created=int((created or timezone.now()).timestamp()))
    body = ChatShape.complete(plan, run)
    return _end_line(line, L.DONE, {"status_code": 200, "request_id": request_id, "body": body}, None, tokens)


def _count(batch):
    agg = BatchLine.objects.filter(batch=batch).aggregate(
        done=Count("id", filter=Q(status=L.DONE)), failed=Count("id", filter=Q(status=L.FAILED)),
        tokens=Sum("completion_tokens"))
    Batch.objects.filter(pk=batch.pk).update(completed=agg["done"], failed=agg["failed"],
                                             completion_tokens=agg["tokens"] or 0)
    batch.completed, batch.failed, batch.completion_tokens = agg["done"], agg["failed"], agg["tokens"] or 0


def output_lines(batch, statuses):
    for line in BatchLine.objects.filter(batch=batch, status__in=statuses).order_by("index").iterator():
        yield json.dumps(line.output_record(), ensure_ascii=False)


def finalize(batch, final):
    now = timezone.now()
    with transaction.atomic():
        locked = Batch.objects.select_for_update().get(pk=batch.pk)
        if locked.status not in (S.IN_PROGRESS, S.CANCELLING, S.FINALIZING):
            batch.refresh_from_db()
            return batch
        Batch.objects.filter(pk=batch.pk).update(status=S.FINALIZING, finalizing_at=locked.finalizing_at or now)
        out = "\n".join(output_lines(batch, (L.DONE,)))
        err = "\n".join(output_lines(batch, (L.FAILED, L.CANCELLED)))
        updates = {"status": final, f"{final}_at": timezone.now()}
        if final == S.EXPIRED:
            updates["expired_at"] = batch.expired_at or now
        if out:
            updates["output_file"] = store_file(batch.owner, f"{batch.id}_output.jsonl", (out + "\n").encode(),
                                                "batch_output")
        if err:
            updates["error_file"] = store_file(batch.owner, f"{batch.id}_error.jsonl", (err + "\n").encode(),
                                               "batch_output")
        Batch.objects.filter(pk=batch.pk).update(**updates)
    batch.refresh_from_db()
    return batch


def drivable(driver=""):
    """The batches this driver advances: its own, and (the web driver) those of a command-line
    driver not seen for ADOPT_SECONDS."""
    active = Batch.objects.filter(status__in=(S.IN_PROGRESS, S.CANCELLING, S.FINALIZING))
    if driver:
        return active.filter(driver=driver)
    stale = timezone.now() - timedelta(seconds=ADOPT_SECONDS)
    return active.filter(Q(driver="") | Q(driver_seen__lt=stale) | Q(driver_seen__isnull=True))


def adopt(batch):
    """Take over the batch of a command-line driver that went away. Embedded, its answers still
    queued were in that process's worker, which is gone with it: they run again here."""
    Batch.objects.filter(pk=batch.pk).update(driver="", driver_seen=None)
    batch.driver = ""
    if not settings.REDIS_URL:
        ids = [mid for ids in BatchLine.objects.filter(batch=batch, status=L.RUNNING).values_list("message_ids", flat=True)
               for mid in ids]
        Message.objects.filter(pk__in=ids, status=Message.Status.PENDING).update(
            status=Message.Status.INTERRUPTED, error="The command that ran this batch stopped.",
            finished_at=timezone.now())
    logger.warning("batch %s: its driver went away; the site's driver goes on with it", batch.pk)


def tick(driver=""):
    for batch in list(drivable(driver)):
        try:
            if batch.driver and not driver:
                adopt(batch)
            advance(batch, driver)
        except Exception:
            logger.exception("could not advance batch %s", batch.pk)
