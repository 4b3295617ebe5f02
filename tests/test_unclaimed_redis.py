"""A queued task lost by Redis while a live Celery worker serves the model: the reaper queues it
again once (it is answered), and one lost twice fails with Retry. The worker is told to stop
consuming its device queue (Celery's remote control) just long enough for the test to delete the
task from Redis, as a Redis restart without persistence would."""
import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from django.conf import settings

from chat.models import Message
from chat.reaper import reap
from live_stack import assembled_text
from smolsite.celery import app
from test_redis import (SHORT, _clear_cache, _fresh_channel_layer, connect, cpu_worker, frames_until,  # noqa: F401
                        layer, make_conversation, redis_db, worker)

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (run `make test-redis`)"),
]
QUEUE = "device.cpu"


async def control(command):
    """cancel_consumer / add_consumer on the test's worker, waiting for its reply."""
    replies = await asyncio.to_thread(getattr(app.control, command), QUEUE, reply=True, timeout=30)
    assert replies and all("ok" in next(iter(r.values())) for r in replies), replies


def queued_tasks(redis_db, message_id):
    """The broker's copies of message ``message_id``'s task still waiting in the device queue."""
    found = []
    for key in redis_db.scan_iter(match=f"{QUEUE}*"):
        if redis_db.type(key) != b"list":
            continue
        for raw in redis_db.lrange(key, 0, -1):
            if json.loads(raw)["headers"].get("argsrepr") in (f"('{message_id}',)", f"['{message_id}']"):
                found.append((key, raw))
    return found


async def delete_queued_task(redis_db, message_id):
    async with asyncio.timeout(30):
        while not (found := queued_tasks(redis_db, message_id)):
            await asyncio.sleep(0.05)
    for key, raw in found:
        assert redis_db.lrem(key, 0, raw) == 1


async def send_and_lose(comm, redis_db, content):
    """Send over the socket while the worker does not consume, and delete the task from Redis."""
    await control("cancel_consumer")
    try:
        await comm.send_json_to({"action": "send", "content": content})
        reply_id = (await frames_until(comm, lambda f: f["type"] == "thread"))[-1]["active"]
        await delete_queued_task(redis_db, reply_id)
    finally:
        await control("add_consumer")
    return reply_id


def is_final(message_id):
    return lambda f: f["type"] == "final" and f["message"] == message_id


@pytest.mark.asyncio
async def test_a_task_redis_lost_is_queued_again_and_answered(worker, layer, redis_db, settings):
    settings.SMOLSITE_UNCLAIMED_SECONDS = 0
    user, conv = await make_conversation("lost-once", max_tokens=16)
    comm = await connect(user, conv)
    reply_id = await send_and_lose(comm, redis_db, SHORT)
    assert (await database_sync_to_async(Message.objects.get)(pk=reply_id)).status == "pending"
    assert await database_sync_to_async(reap)() == 1
    frames = await frames_until(comm, is_final(reply_id))
    message = await database_sync_to_async(Message.objects.get)(pk=reply_id)
    assert message.status == "done" and message.content.strip() and message.options["requeued_at"]
    assert message.worker_id == worker.worker_id
    assert assembled_text(frames, reply_id) == message.content
    await comm.disconnect()


@pytest.mark.asyncio
async def test_a_task_redis_lost_twice_fails_with_retry(worker, layer, redis_db, settings):
    settings.SMOLSITE_UNCLAIMED_SECONDS = 0
    user, conv = await make_conversation("lost-twice", max_tokens=16)
    comm = await connect(user, conv)
    reply_id = await send_and_lose(comm, redis_db, SHORT)
    await control("cancel_consumer")
    try:
        assert await database_sync_to_async(reap)() == 1  # queued again ...
        await delete_queued_task(redis_db, reply_id)  # ... and lost again
    finally:
        await control("add_consumer")
    assert await database_sync_to_async(reap)() == 1
    frames = await frames_until(comm, is_final(reply_id))
    done = [e for f in frames if f["type"] == "events" for e in f["events"] if e["kind"] == "done"]
    assert done and done[-1]["status"] == "error" and "press Retry" in done[-1]["error"]
    assert "Retry" in frames[-1]["html"]
    assert (await database_sync_to_async(Message.objects.get)(pk=reply_id)).status == "error"
    # Retry: answered by the same live worker.
    await comm.send_json_to({"action": "regenerate"})
    retry_id = (await frames_until(comm, lambda f: f["type"] == "thread"))[-1]["active"]
    await frames_until(comm, is_final(retry_id))
    assert (await database_sync_to_async(Message.objects.get)(pk=retry_id)).status == "done"
    await comm.disconnect()
