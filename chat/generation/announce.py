"""Telling a conversation's tabs and followers (its channel-layer group) about a generation."""
import asyncio
import logging

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from inference.publish import EVENT_TYPE, publish_loop

from ..models import conversation_group
from .rows import conversation_of

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 10


def ended(message_id, status, error=""):
    """The event that ends an answer no worker took: numbered 1, as nothing was published before
    it (a follower that saw more takes it as an end announced from the saved row)."""
    return {"type": EVENT_TYPE, "message": message_id,
            "events": [{"seq": 1, "kind": "done", "status": status, "error": error, "stats": {}}]}


def tell(group, payload):
    """Send a channel-layer event from a plain thread (a worker's or the web process's), on the
    loop the publishers use, and wait for it: what follows must not overtake it."""
    layer = get_channel_layer()
    if layer is None:
        return
    future = asyncio.run_coroutine_threadsafe(layer.group_send(group, payload), publish_loop())
    try:
        future.result(PUBLISH_TIMEOUT)
    except Exception:  # a tab that missed it catches up on its next reload or stall check
        logger.exception("could not tell %s about %s", group, payload.get("type"))


def tell_ended(message_id, status, error=""):
    """``ended`` to the message's conversation, from a plain thread."""
    tell(conversation_group(conversation_of(message_id)), ended(message_id, status, error))


async def tell_ended_here(message_id, status, error=""):
    """``ended`` to the message's conversation, on this (the web server's) loop."""
    conversation_id = await database_sync_to_async(conversation_of)(message_id)
    await get_channel_layer().group_send(conversation_group(conversation_id), ended(message_id, status, error))
