"""What the generation hooks record, in the device worker that runs the generation.

A hook that raises would fail the generation it observes, so every failure here is logged and
swallowed: a broken metric never costs anyone an answer.
"""
import logging
import threading

from django.utils import timezone

from chat.models import Message
from inference.plugin_api import current_worker_id, get_model

from . import instruments as m

logger = logging.getLogger(__name__)

SOURCES = ("chat", "api", "batch")

_lock = threading.Lock()
_running = {}  # request id -> labels, from generation_started to generation_finished


def _device(model):
    try:
        return get_model(model).device
    except Exception:  # a model made outside settings (tests' own registries): the worker's device
        worker = current_worker_id()
        return worker.split("@", 1)[0] if "@" in worker else "unknown"


def _message_facts(request_id):
    """(source, seconds the answer waited in the queue) from its Message row (one query), or
    ("other", None) for a job that is not a chat message."""
    try:
        row = Message.objects.filter(pk=int(request_id)).values_list("options", "created_at").first()
    except (TypeError, ValueError):
        row = None
    if row is None:
        return "other", None
    options, created_at = row
    source = (options or {}).get("source") or "chat"
    # Clocks of different hosts may disagree by a little: never a negative wait.
    wait = max(0.0, (timezone.now() - created_at).total_seconds())
    return (source if source in SOURCES else "chat"), wait


def started(request):
    try:
        source, wait = _message_facts(request.id)
        labels = {"model": request.model or "unknown", "device": _device(request.model), "source": source}
        m.GENERATIONS.labels(**labels).inc()
        m.IN_PROGRESS.labels(**labels).inc()
        with _lock:
            _running[request.id] = labels
        if wait is not None:
            m.QUEUE_WAIT.labels(**labels).observe(wait)
    except Exception:
        logger.exception("metrics: could not record the start of %s", request.id)


def finished(request, result):
    try:
        with _lock:
            labels = _running.pop(request.id, None)
        if labels is not None:
            m.IN_PROGRESS.labels(**labels).dec()
        else:  # its start was not recorded: count the outcome all the same
            labels = {"model": request.model or "unknown", "device": _device(request.model),
                      "source": _message_facts(request.id)[0]}
        m.OUTCOMES.labels(**labels, status=result.status or "unknown").inc()
        m.PROMPT_TOKENS.labels(**labels).inc(result.prompt_tokens or 0)
        m.CACHED_TOKENS.labels(**labels).inc(result.cached_tokens or 0)
        m.COMPLETION_TOKENS.labels(**labels).inc(result.completion_tokens or 0)
        if result.ttft is not None:
            m.TTFT.labels(**labels).observe(result.ttft)
        if result.tokens_per_second:
            m.TIME_PER_TOKEN.labels(**labels).observe(1.0 / result.tokens_per_second)
    except Exception:
        logger.exception("metrics: could not record the end of %s", request.id)


def throttled(action, scope):
    try:
        m.THROTTLED.labels(action=action, scope=scope).inc()
    except Exception:
        logger.exception("metrics: could not count a throttled %s", action)
