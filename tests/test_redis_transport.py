"""What the scaled-out mode leaves to Redis: a job a device worker had reserved but not started when
it died comes back after the broker's visibility timeout and is answered by another worker, and
the list-based channel layer (SMOLSITE_CHANNEL_LAYER=core) carries an answer to the chat page as
the default pub/sub layer does."""
import asyncio
import signal
import subprocess
import sys
import uuid

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from chat import actions
from chat.models import Conversation, Message
from inference.tasks import generate
from live_stack import (MODEL, PrivateRedis, Stack, assembled_text, live_database, open_socket, send, until_final,
                        wait_for)
from redis_support import BASE_DIR, WorkerProcess, _clear_cache, redis_db, worker_env  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.redis, pytest.mark.model]

DEADLINE = 240  # a model load and one short answer on two possibly busy cores (bounds a hang only)
VISIBILITY_TIMEOUT = 5  # instead of the hour a served site waits (smolsite/settings.py)

# What a worker that dies after reserving a task leaves behind: the message taken from the queue and
# never acknowledged. Prints the task's id, then dies as the OOM killer would kill it.
RESERVE_AND_DIE = """
import os, signal, sys
from smolsite.celery import app

with app.connection_for_read() as connection:
    message = None
    while message is None:
        message = connection.default_channel.basic_get(sys.argv[1], no_ack=False)
    print(message.headers["id"], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (run `make test-redis`)")
def test_a_job_reserved_by_a_dead_worker_comes_back_after_the_visibility_timeout(
        transactional_db, redis_db, tmp_path):
    user = get_user_model().objects.create_user("reserved", password="pw-123456789")
    conversation = Conversation.objects.create(owner=user, model=MODEL, temperature=0.0, max_tokens=8, thinking=False)
    reply = actions.send(conversation.pk, "Name three colours.")
    queue = f"device.redelivery-{uuid.uuid4().hex[:8]}"  # no other worker of the run consumes it
    generate.apply_async(args=[str(reply.pk)], queue=queue)

    holder = subprocess.run([sys.executable, "-c", RESERVE_AND_DIE, queue], cwd=BASE_DIR, env=worker_env(),
                            capture_output=True, text=True, timeout=120)
    assert holder.returncode == -signal.SIGKILL, holder.stderr[-3000:]
    task_id = holder.stdout.strip()
    assert task_id and redis_db.llen(queue) == 0 and redis_db.hlen("unacked") == 1

    (tmp_path / "short_visibility.py").write_text(
        "from smolsite.settings import *  # noqa: F401,F403\n"
        f"CELERY_BROKER_TRANSPORT_OPTIONS = {{**CELERY_BROKER_TRANSPORT_OPTIONS, "
        f"'visibility_timeout': {VISIBILITY_TIMEOUT}}}\n")
    worker = WorkerProcess("redelivery", queue, tmp_path, DJANGO_SETTINGS_MODULE="short_visibility",
                           PYTHONPATH=f"{tmp_path}:{BASE_DIR}")
    try:
        worker.start().wait_ready()
        row = wait_for(lambda: Message.objects.filter(pk=reply.pk).exclude(status__in=Message.ACTIVE).first(),
                       DEADLINE, "the reserved job to be answered")
        # The message itself came back (a re-queued job would be a new task with a new id).
        log = worker.stdout_path.read_text(errors="replace") + worker.stderr_path.read_text(errors="replace")
        assert f"smolsite.generate[{task_id}] received" in log, log[-3000:]
    finally:
        worker.stop()
    assert row.status == Message.Status.DONE and row.content.strip(), (row.status, row.error)
    assert redis_db.hlen("unacked") == 0


@pytest.fixture
def private_redis(tmp_path):
    redis = PrivateRedis(tmp_path).start()
    yield redis
    redis.stop()


def test_the_list_based_channel_layer_carries_an_answer_to_the_chat_page(tmp_path, private_redis, default_model_path):
    with live_database("core_layer") as database_url:
        stack = Stack(tmp_path, default_model_path, database_url=database_url, redis_url=private_redis.url(0),
                      env={"SMOLSITE_CHANNEL_LAYER": "core"})
        try:
            stack.start()
            layer = stack.manage("import json; from django.conf import settings; "
                                 "print(json.dumps(settings.CHANNEL_LAYERS['default']['BACKEND']))")
            assert layer == "channels_redis.core.RedisChannelLayer"
            person = stack.make_person("listed", max_tokens=16)

            async def chat():
                async with open_socket(stack, person) as ws:
                    async with asyncio.timeout(DEADLINE):
                        reply = await send(ws, "Name three colours.")
                        return reply, await until_final(ws, reply)

            reply, frames = asyncio.run(chat())
            row = stack.message(reply)
            assert row["status"] == "done" and row["content"].strip(), row
            # Every event reached the page through the layer, in order, none missing.
            assert assembled_text(frames, reply) == row["content"]
            assert "Traceback" not in stack.log("web") + stack.log("worker")
        finally:
            stack.stop()
