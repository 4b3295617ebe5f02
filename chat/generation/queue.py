"""Starting a generation: its job handed to the model's device (inference.dispatch), the worker it
was pinned to remembered (chat.reaper re-queues it if that worker dies first), or, when it cannot
be queued, the pending row ended as an error every tab shows with Retry: no worker would ever
claim it."""
import asyncio
import logging

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings

from inference import dispatch
from inference.publish import remember_server_loop

from . import rows
from .announce import tell_ended, tell_ended_here

logger = logging.getLogger(__name__)


def could_not_queue(exc):
    return f"Could not queue the answer: {str(exc) or type(exc).__name__}"


def preferred_worker(conversation_id):
    """Scaled out, the worker that answered this chat last: it holds its tokens, so prefer it."""
    return rows.last_worker(conversation_id) if settings.REDIS_URL else ""


async def start(message_id, model_name, affinity=""):
    """Queue an answer from the web server's loop; returns "" or, when it could not be queued, the
    error it ended with."""
    loop = asyncio.get_running_loop()
    remember_server_loop(loop)
    try:
        # Off the event loop: with Redis this is a network round trip.
        pinned = await sync_to_async(dispatch.enqueue, thread_sensitive=False)(
            str(message_id), model_name, loop, affinity=affinity)
        if pinned:
            await database_sync_to_async(rows.mark_routed)(message_id, pinned)
        return ""
    except Exception as exc:
        logger.exception("could not enqueue message %s", message_id)
        return await failed_to_queue(message_id, could_not_queue(exc))


async def failed_to_queue(message_id, text):
    """End a pending answer that could not be queued, on every tab; returns ``text``."""
    if await database_sync_to_async(rows.fail_pending)(message_id, text):
        await tell_ended_here(message_id, "error", text)
    return text


def start_from_thread(message_id, model_name, affinity="", loop=None, fail=True):
    """``start`` from a plain thread (the batch driver, the tool loop, the reaper). ``loop``:
    embedded, the loop the job's events go out on (default: inference.dispatch.enqueue_from_thread's
    choice). ``fail``: False leaves an answer that could not be queued pending (the reaper's
    second try: its next pass fails it)."""
    try:
        if loop is None and not settings.REDIS_URL:
            pinned = dispatch.enqueue_from_thread(message_id, model_name)
        else:
            pinned = dispatch.enqueue(str(message_id), model_name, loop, affinity=affinity)
        if pinned:
            rows.mark_routed(message_id, pinned)
        return ""
    except Exception as exc:
        logger.exception("could not enqueue message %s", message_id)
        text = could_not_queue(exc)
        if fail and rows.fail_pending(message_id, text):
            tell_ended(message_id, "error", text)
        return text
