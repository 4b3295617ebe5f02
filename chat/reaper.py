"""Finds generations whose worker died and ends them as ``interrupted``, keeping their text."""
import logging
import threading
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from inference.publish import Publisher, publish_loop
from inference.workers import alive_workers, is_alive

from .generation import start_from_thread
from .models import Message, ToolCall, conversation_group

logger = logging.getLogger(__name__)


def _interrupt(messages, reason, status=Message.Status.INTERRUPTED):
    now = timezone.now()
    count = 0
    for m in messages:
        if Message.objects.filter(pk=m.pk, status=m.status).update(
                status=status, error=reason, updated_at=now, finished_at=now):
            count += 1
            _announce(m, status, reason)
    return count


def _announce(message, status, reason):
    try:
        pub = Publisher(conversation_group(message.conversation_id), message.pk)
        pub.seq = message.stream_seq
        pub.emit("done", status=status, error=reason, stats={})
        pub.close(timeout=5)
    except Exception:
        logger.exception("could not announce interrupted message %s", message.pk)


def reap(stale_seconds=None, queue_seconds=None):
    """Streaming messages whose worker is gone, or silent for too long, become interrupted."""
    stale_seconds = settings.SMOLSITE_STALE_SECONDS if stale_seconds is None else stale_seconds
    cutoff = timezone.now() - timedelta(seconds=stale_seconds)
    streaming = list(Message.objects.filter(status=Message.Status.STREAMING))
    dead = [m for m in streaming if m.updated_at < cutoff or (m.worker_id and not is_alive(m.worker_id))]
    if dead:
        logger.warning("marking %d generation(s) interrupted", len(dead))
    count = _interrupt(dead, "The worker stopped before the answer was finished.")
    count += _end_stuck_tools(cutoff, "The tool did not finish: the worker running it stopped.")
    return count + _reroute_orphans() + _fail_unserved(queue_seconds) + _requeue_unclaimed()


def _end_stuck_tools(cutoff, reason):
    """Tool calls queued or running since before ``cutoff`` (every call ends within its time limit,
    so their worker died) end as errors; a loop whose results are in but whose next answer was
    never made (its worker died in between) gets a note. Calls awaiting the user are left alone:
    they wait for Approve, Deny or Stop. Returns how many answers changed."""
    now = timezone.now()
    stuck = ToolCall.objects.filter(status__in=(ToolCall.Status.PENDING, ToolCall.Status.RUNNING),
                                    updated_at__lt=cutoff)
    changed = set(stuck.values_list("message_id", flat=True))
    for call in stuck.filter(message_id__in=changed):
        ToolCall.objects.filter(pk=call.pk, status=call.status).update(
            status=ToolCall.Status.ERROR, output=call.output or reason, updated_at=now, finished_at=now)
    for m in Message.objects.filter(role=Message.Role.ASSISTANT, status=Message.Status.DONE,
                                    finish_reason="tool_calls", finished_at__lt=cutoff,
                                    children__isnull=True, options__has_key="tool_round"):
        options = m.generation_options
        calls = list(m.tool_calls.values_list("status", flat=True))
        if m.tool_calls.filter(updated_at__gte=cutoff).exists():
            continue  # its last result is recent: the next answer may be on its way
        if (options.tool_note or options.tool_stopped or not calls
                or any(s not in ToolCall.ENDED for s in calls) or ToolCall.Status.STOPPED in calls):
            continue
        options.tool_note = "The answer did not go on after the tools: the worker stopped. Send a message to go on."
        if Message.objects.filter(pk=m.pk, children__isnull=True).update(options=options.to_dict()):
            changed.add(m.pk)
    for message_id, conversation_id in Message.objects.filter(pk__in=changed).values_list("pk", "conversation_id"):
        _announce_tools(conversation_id, message_id)
    return len(changed)


def _announce_tools(conversation_id, message_id):
    try:
        from .agent import announce_calls

        announce_calls(conversation_id, message_id)
    except Exception:
        logger.exception("could not announce the tool calls of message %s", message_id)


def _reroute_orphans():
    """A message routed to one worker's own queue (it held the conversation's tokens) waits there
    forever if that worker died before claiming it: send it to the shared device queue."""
    if not settings.REDIS_URL:
        return 0
    count = 0
    for m in Message.objects.filter(status=Message.Status.PENDING).exclude(worker_id=""):
        if is_alive(m.worker_id):
            continue
        if Message.objects.filter(pk=m.pk, status=Message.Status.PENDING, worker_id=m.worker_id).update(worker_id=""):
            logger.warning("message %s was routed to dead worker %s: re-queued for any worker", m.pk, m.worker_id)
            start_from_thread(m.pk, m.model_name, fail=False)
            count += 1
    return count


def _fail_unserved(queue_seconds):
    """A queued message whose model no live worker holds would otherwise wait forever."""
    queue_seconds = settings.SMOLSITE_QUEUE_SECONDS if queue_seconds is None else queue_seconds
    waiting = list(Message.objects.filter(status=Message.Status.PENDING,
                                          created_at__lt=timezone.now() - timedelta(seconds=queue_seconds)))
    if not waiting:
        return 0
    serving = {name for worker in alive_workers() for name in worker.get("models", [])}
    unserved = [m for m in waiting if m.model_name not in serving]
    count = 0
    for model_name in {m.model_name for m in unserved}:
        count += _interrupt([m for m in unserved if m.model_name == model_name],
                            f"No device worker is serving model {model_name!r}: start one "
                            "(make worker DEVICE=...) and press Retry.", status=Message.Status.ERROR)
    return count


UNCLAIMED_ERROR = ("No device worker took this answer although one serves model {model!r} (its queued job "
                   "was lost, twice): press Retry.")


def _nothing_ahead(message, since):
    """Whether ``message`` has waited for no one since ``since``: nothing of its model is being
    generated (a worker would have taken it), or a message of its model queued after ``since`` was
    taken already (the queue moved past it). A long queue under load is left alone."""
    same = Message.objects.filter(model_name=message.model_name, role=Message.Role.ASSISTANT)
    if not same.filter(status=Message.Status.STREAMING).exists():
        return True
    return same.filter(created_at__gt=since).exclude(status=Message.Status.PENDING).exclude(worker_id="").exists()


def _requeue_unclaimed(unclaimed_seconds=None):
    """A queued message that no worker has taken although a live one serves its model: the enqueue
    failed after its row was committed, or the broker lost the task. After SMOLSITE_UNCLAIMED_SECONDS
    it is queued once more (a second delivery is harmless: only one claim of a pending row
    succeeds, chat.store), and if still not taken one period later it fails with Retry."""
    seconds = settings.SMOLSITE_UNCLAIMED_SECONDS if unclaimed_seconds is None else unclaimed_seconds
    cutoff = timezone.now() - timedelta(seconds=seconds)
    waiting = list(Message.objects.filter(status=Message.Status.PENDING, updated_at__lt=cutoff))
    if not waiting:
        return 0
    serving = {name for worker in alive_workers() for name in worker.get("models", [])}
    count = 0
    for m in waiting:
        if m.model_name not in serving or not _nothing_ahead(m, m.updated_at):
            continue  # no worker: _fail_unserved's case; a queue ahead of it: it is not lost
        options = m.generation_options
        if options.requeued_at:
            count += _interrupt([m], UNCLAIMED_ERROR.format(model=m.model_name), status=Message.Status.ERROR)
            continue
        options.requeued_at = timezone.now().isoformat()
        # Conditional on the row as read: of several reapers (web processes), one re-queues it.
        if not Message.objects.filter(pk=m.pk, status=Message.Status.PENDING, updated_at=m.updated_at).update(
                options=options.to_dict(), worker_id="", updated_at=timezone.now()):
            continue
        logger.warning("message %s was not taken by any worker in %ss: queued again", m.pk, seconds)
        _enqueue_again(m)
        count += 1
    return count


def _enqueue_again(message):
    # Embedded, the job's events go out on the web server's loop when there is one (the reaper is
    # a thread; the in-memory layer is not thread-safe). Not queued: it fails at the next pass.
    start_from_thread(message.pk, message.model_name, loop=None if settings.REDIS_URL else publish_loop(), fail=False)


def reap_worker(worker_id, reason):
    """A worker known to be dead (the embedded supervisor saw its process end): its generations
    end now rather than when its heartbeat expires."""
    claimed = list(Message.objects.filter(status=Message.Status.STREAMING, worker_id=worker_id))
    return _interrupt(claimed, reason)


def reap_embedded_leftovers():
    """Embedded mode keeps its queue in memory: whatever was active at the last shutdown is lost."""
    leftovers = list(Message.objects.filter(status__in=Message.ACTIVE))
    count = _interrupt(leftovers, "The server restarted before the answer was finished.")
    return count + _end_stuck_tools(timezone.now(), "The server restarted before the tool finished.")


def start_reaper(interval=None):
    """Reaps every ``interval`` seconds (SMOLSITE_REAPER_SECONDS) on a daemon thread; the thread's
    ``stop()`` ends it (tests)."""
    interval = settings.SMOLSITE_REAPER_SECONDS if interval is None else interval
    stop = threading.Event()

    def loop():
        while not stop.wait(interval):
            try:
                reap()
            except Exception:
                logger.exception("reaper failed")
            finally:
                connection.close()  # a thread of its own: no request cycle closes its connection

    thread = threading.Thread(target=loop, name="smolsite-reaper", daemon=True)
    thread.stop = stop.set
    thread.start()
    return thread
