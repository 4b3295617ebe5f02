"""The scaled-out path for real: a Celery device worker subprocess holding the real SmolLM2-135M,
Redis as broker, channel layer and cache, and the test database shared with the worker.

These tests run in their own pytest invocation with REDIS_URL set (``make test-redis``, part of
``make test``), so the whole process is configured from the environment exactly as a served
scaled-out site is; without REDIS_URL they are skipped. The Redis database in REDIS_URL is
flushed at the start: give it a dedicated number (the Makefile uses /13).
"""
import asyncio
import json
import os
import signal
import time

import pytest
import pytest_asyncio
from channels.db import database_sync_to_async
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model

from chat import actions
from chat.models import Conversation, Message, conversation_group
from chat.reaper import reap
from inference import dispatch
from inference.stop import is_stop_requested, request_stop
from inference.workers import alive_workers, is_alive
from live_stack import assembled_text
from redis_support import (CELERY, START_TIMEOUT, WorkerProcess, _clear_cache, redis_db,  # noqa: F401 (fixtures;
                           worker_env)  # the names other modules import from here)

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (run `make test-redis`)"),
]

MODEL = "smollm2-135m"
SHORT = "Name three colours."
# Greedy SmolLM2-135M answers this with well over 1,000 tokens: long enough to stop or kill mid-stream.
LONG = "Explain in detail how a computer works, from transistors to operating systems."
GEN_TIMEOUT = 120


@pytest.fixture(scope="module")
def cpu_worker(django_db_setup, redis_db, tmp_path_factory):
    """One device worker for the module, restarted by ``worker`` if a test stopped it. One engine
    slot, so a second request waits in line behind a running one."""
    worker = WorkerProcess("cpu-test", "device.cpu", tmp_path_factory.mktemp("workers"), SMOLSITE_SLOTS="1")
    yield worker
    worker.stop()  # before pytest-django drops the test database the worker is connected to


@pytest.fixture
def worker(cpu_worker, transactional_db):
    cpu_worker.ensure_running()
    yield cpu_worker
    # Leave the worker idle for the next test: stop whatever is still queued or generating.
    active = list(Message.objects.filter(status__in=Message.ACTIVE).values_list("pk", flat=True))
    for pk in active:
        request_stop(str(pk))
    deadline = time.monotonic() + 30
    while (cpu_worker.running and time.monotonic() < deadline
           and Message.objects.filter(pk__in=active, status__in=Message.ACTIVE).exists()):
        time.sleep(0.1)


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """A new channels-redis layer per test: each async test runs on its own event loop."""
    channel_layers._reset_backends("CHANNEL_LAYERS")
    yield


@pytest_asyncio.fixture
async def layer():
    layer = get_channel_layer()
    assert type(layer).__name__ in ("RedisChannelLayer", "RedisPubSubChannelLayer")
    yield layer
    # channels-redis closes this loop's connections when pytest-asyncio closes the loop.


# ---- helpers ------------------------------------------------------------------------------------

class GroupListener:
    """A member of a conversation's channel-layer group, receiving what the worker publishes."""

    def __init__(self, layer, conversation_id):
        self.layer, self.group = layer, conversation_group(conversation_id)
        self.events = {}  # message id -> events in arrival order

    async def __aenter__(self):
        # The default prefix: a layer's process-local channels share one Redis list, read by whichever
        # receiver holds the layer's receive lock (a channel with another prefix would starve).
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(self.group, self.channel)
        return self

    async def __aexit__(self, *exc):
        await self.layer.group_discard(self.group, self.channel)

    async def next_batch(self, timeout=GEN_TIMEOUT):
        while True:
            message = await asyncio.wait_for(self.layer.receive(self.channel), timeout)
            if message["type"] == "gen.events":
                self.events.setdefault(int(message["message"]), []).extend(message["events"])
                return message

    async def until(self, predicate, timeout=GEN_TIMEOUT):
        async with asyncio.timeout(timeout):
            while not predicate():
                await self.next_batch()

    def text(self, message_id):
        return "".join(e["text"] for e in self.events.get(message_id, []) if e["kind"] == "text")

    def done(self, message_id):
        return next((e for e in self.events.get(message_id, []) if e["kind"] == "done"), None)


def assert_contiguous(events):
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), f"seq not 1..n without gaps: {seqs}"


@database_sync_to_async
def make_conversation(username, **kwargs):
    user = get_user_model().objects.create_user(username, password="pw-123456789")
    fields = {"model": MODEL, "temperature": 0.0, "thinking": False, **kwargs}
    return user, Conversation.objects.create(owner=user, **fields)


@database_sync_to_async
def send(conversation, content):
    return actions.send(conversation.pk, content)


@database_sync_to_async
def get_message(pk):
    return Message.objects.get(pk=pk)


async def connect(user, conversation):
    from smolsite.asgi import application

    comm = WebsocketCommunicator(application, f"/ws/chat/{conversation.pk}/",
                                 headers=[(b"origin", b"http://127.0.0.1")])
    comm.scope["user"] = user
    connected, _ = await comm.connect()
    assert connected
    return comm


async def frames_until(comm, predicate, timeout=GEN_TIMEOUT):
    frames = []
    async with asyncio.timeout(timeout):
        while True:
            frames.append(json.loads(await comm.receive_from(timeout=timeout)))
            if predicate(frames[-1]):
                return frames


# ---- (a) generation through the Celery worker -----------------------------------------------------

@pytest.mark.asyncio
async def test_greedy_generation_through_a_celery_worker_over_redis(worker, layer, loaded_registry):
    from inference.testing import make_request, run_request

    user, conv = await make_conversation("alice", max_tokens=48)
    comm = await connect(user, conv)
    async with GroupListener(layer, conv.pk) as listener:
        await comm.send_json_to({"action": "send", "content": SHORT})
        frames = await frames_until(comm, lambda f: f["type"] == "final")
        reply_id = next(f for f in frames if f["type"] == "thread")["active"]
        await listener.until(lambda: listener.done(reply_id))
    await comm.disconnect()

    message = await get_message(reply_id)
    assert message.status == "done", message.error
    # Generated by the Celery worker process, not in this one.
    assert message.worker_id == worker.worker_id and message.worker_id.endswith(f":{worker.pid}")

    # What the group received: every event once, numbered 1..n, start first and done last.
    events = listener.events[reply_id]
    assert_contiguous(events)
    assert events[0]["kind"] == "start" and events[-1]["kind"] == "done"
    assert len(events) >= 3  # start, text, done
    assert listener.text(reply_id) == message.content
    assert message.stream_seq == events[-1]["seq"] - 1  # persisted with the row, before "done" went out

    # What the websocket client received through the consumer equals the persisted row.
    assert assembled_text(frames, reply_id) == message.content and message.content.strip()

    # Usage counts, on the row and in the final event.
    stats = events[-1]["stats"]
    assert 0 < message.completion_tokens <= 48 and message.prompt_tokens > 10
    assert stats["completion_tokens"] == message.completion_tokens
    assert stats["prompt_tokens"] == message.prompt_tokens
    assert message.ttft is not None and message.tokens_per_second > 0
    assert message.backend_name == "llama_cpp"

    # Greedy: the worker's answer is exactly what the same service produces in this process
    # (prefilled cold, as in the fresh worker: a prefix shared from another batch rounds differently).
    await asyncio.to_thread(loaded_registry.backend(MODEL).engine.forget_cached)
    local, _ = await asyncio.to_thread(run_request, loaded_registry, make_request(MODEL, SHORT, max_tokens=48))
    assert local.text == message.content
    assert local.completion_tokens == message.completion_tokens


# ---- (b), (c) stop ----------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_stop_mid_stream_keeps_the_partial_text(worker, layer):
    user, conv = await make_conversation("bob", max_tokens=1000)
    comm = await connect(user, conv)
    await comm.send_json_to({"action": "send", "content": LONG})
    frames = await frames_until(comm, lambda f: f["type"] == "events" and any(e["kind"] == "text" for e in f["events"]))
    reply_id = frames[-1]["message"]
    await comm.send_json_to({"action": "stop"})  # sets the stop flag in Redis
    frames += await frames_until(comm, lambda f: f["type"] == "final")
    await comm.disconnect()

    message = await get_message(reply_id)
    assert message.status == "stopped"
    assert message.content.strip() and assembled_text(frames, reply_id) == message.content
    assert 0 < message.completion_tokens < 1000
    done = [e for f in frames if f["type"] == "events" for e in f["events"] if e["kind"] == "done"]
    assert done and done[0]["status"] == "stopped" and done[0]["stats"]["finish_reason"] == "stopped"
    assert message.worker_id == worker.worker_id
    assert not is_stop_requested(str(reply_id))  # the worker cleared its flag


@pytest.mark.asyncio
async def test_stop_requested_before_the_job_is_enqueued(worker, layer):
    _, conv = await make_conversation("carol", max_tokens=200)
    reply = await send(conv, LONG)
    request_stop(str(reply.pk))
    async with GroupListener(layer, conv.pk) as listener:
        dispatch.enqueue(str(reply.pk), reply.model_name)
        await listener.until(lambda: listener.done(reply.pk))

    events = listener.events[reply.pk]
    assert_contiguous(events)
    assert [e["kind"] for e in events] == ["start", "done"] and events[-1]["status"] == "stopped"
    message = await get_message(reply.pk)
    assert message.status == "stopped" and message.content == "" and message.completion_tokens == 0
    assert message.worker_id == worker.worker_id  # the worker claimed it, then honoured the flag
    assert message.finished_at is not None
    assert not is_stop_requested(str(reply.pk))


@pytest.mark.asyncio
async def test_stop_while_queued_behind_another_generation(worker, layer):
    _, conv_a = await make_conversation("dave", max_tokens=1000)
    _, conv_b = await make_conversation("erin", max_tokens=1000)
    first = await send(conv_a, LONG)
    second = await send(conv_b, LONG)
    async with GroupListener(layer, conv_a.pk) as a, GroupListener(layer, conv_b.pk) as b:
        dispatch.enqueue(str(first.pk), MODEL)
        await a.until(lambda: a.text(first.pk))  # the worker's only slot is busy with the first
        dispatch.enqueue(str(second.pk), MODEL)
        # The second waits in the engine's line, and its tabs are told where it stands.
        await b.until(lambda: any(e["kind"] == "queue" for e in b.events.get(second.pk, [])))
        assert next(e for e in b.events[second.pk] if e["kind"] == "queue")["ahead"] == 0
        dispatch.stop(str(second.pk))
        await b.until(lambda: b.done(second.pk))
        assert (await get_message(first.pk)).status == "streaming"  # unaffected by the other stop
        dispatch.stop(str(first.pk))
        await a.until(lambda: a.done(first.pk))
        await b.until(lambda: b.done(second.pk))

    first, second = await get_message(first.pk), await get_message(second.pk)
    assert first.status == "stopped" and first.content.strip() and first.content == a.text(first.pk)
    assert second.status == "stopped" and second.content == "" and second.completion_tokens == 0
    assert second.worker_id == worker.worker_id
    assert [e["kind"] for e in b.events[second.pk]] == ["start", "queue", "done"]


# ---- (d) a worker that cannot load its model ------------------------------------------------------

def test_worker_that_cannot_load_its_model_exits_non_zero(django_db_setup, redis_db, tmp_path):
    missing = tmp_path / "no-such-model.gguf"
    bad = WorkerProcess("cpu-broken", "device.cpu", tmp_path,
                        SMOLSITE_MODELS=json.dumps({MODEL: {"path": str(missing), "device": "cpu"}}))
    bad.start()
    try:
        code = bad.proc.wait(START_TIMEOUT)
    finally:
        bad.stop(signal.SIGKILL)
    stderr = bad.stderr_path.read_text()
    assert code == 3, bad.logs()
    assert f"smolsite: device worker 'cpu' cannot load its models: model '{MODEL}': model file not found: {missing}" \
        in stderr
    assert not [w for w in alive_workers() if w["id"].endswith(f":{bad.pid}")]


# ---- (e) a worker killed mid-generation -------------------------------------------------------------

@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_worker_killed_mid_generation_is_reaped_as_interrupted(redis_db, layer, tmp_path):
    # A worker of its own, on a queue of its own, so the module's worker cannot take the job.
    queue = f"device.cpu-victim-{os.getpid()}"
    victim = WorkerProcess("cpu-victim", queue, tmp_path)
    await asyncio.to_thread(lambda: victim.start().wait_ready())
    try:
        _, conv = await make_conversation("frank", max_tokens=2000)
        reply = await send(conv, LONG)
        async with GroupListener(layer, conv.pk) as listener:
            from inference.tasks import generate

            generate.apply_async(args=[str(reply.pk)], queue=queue)
            # Wait until the worker has saved partial text (it saves at least once a second).
            async with asyncio.timeout(GEN_TIMEOUT):
                while not (message := await get_message(reply.pk)).content:
                    assert message.status in Message.ACTIVE, message.status
                    await asyncio.sleep(0.1)
            victim.stop(signal.SIGKILL)
            assert victim.proc.returncode == -signal.SIGKILL

            killed = await get_message(reply.pk)
            assert killed.status == "streaming" and killed.content and killed.worker_id == victim.worker_id
            assert listener.done(reply.pk) is None
            # Its heartbeat outlives it by up to its TTL: until then the reaper leaves the row alone.
            assert await database_sync_to_async(reap)() == 0
            async with asyncio.timeout(60):
                while is_alive(victim.worker_id):
                    await asyncio.sleep(0.5)
            assert await database_sync_to_async(reap)() == 1

            message = await get_message(reply.pk)
            assert message.status == "interrupted"
            assert message.content == killed.content  # the partial text is kept
            assert "worker stopped" in message.error and message.finished_at is not None
            # Open clients are told: a "done" event numbered after the last persisted one.
            await listener.until(lambda: listener.done(reply.pk), timeout=30)
            done = listener.done(reply.pk)
            assert done["status"] == "interrupted" and done["seq"] == killed.stream_seq + 1
    finally:
        victim.stop(signal.SIGKILL)


# ---- (f) /readyz --------------------------------------------------------------------------------------

def test_readyz_lists_the_worker_and_is_503_without_one(worker, admin_client):
    client = admin_client  # the worker list is for staff (anonymous callers see only ok)
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    checks = response.json()["checks"]
    assert checks["database"]["ok"] and checks["channel_layer"]["ok"]
    listed = [w for w in checks["workers"]["workers"] if w["id"] == worker.worker_id]
    assert listed and listed[0]["models"] == [MODEL] and listed[0]["device"] == "cpu"

    # A clean shutdown takes the worker's heartbeat with it.
    assert worker.stop() == 0, worker.logs()
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["checks"]["database"]["ok"] and body["checks"]["channel_layer"]["ok"]
    assert body["checks"]["workers"] == {"ok": False, "workers": [],
                                         "error": "no device worker with a loaded model"}


# ---- (g) cache-affine routing between two workers -------------------------------------------------

@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_follow_ups_go_to_the_worker_holding_the_conversation(cpu_worker, redis_db, layer, tmp_path,
                                                                    loaded_registry):
    from chat.store import history_for
    from inference.testing import make_request, run_request

    cpu_worker.stop()  # only the two workers of this test take device.cpu
    pair = [WorkerProcess("cpu-left", "device.cpu", tmp_path), WorkerProcess("cpu-right", "device.cpu", tmp_path)]
    for w in pair:
        w.start()
    try:
        for w in pair:
            await asyncio.to_thread(w.wait_ready)
        user, conv = await make_conversation("gina", max_tokens=16)
        comm = await connect(user, conv)

        async def turn(content):
            await comm.send_json_to({"action": "send", "content": content})
            frames = await frames_until(comm, lambda f: f["type"] == "final", timeout=GEN_TIMEOUT)
            reply_id = next(f for f in frames if f["type"] == "thread")["active"]
            return await get_message(reply_id)

        first = await turn("Remember the colour teal. " * 8 + "Which colour?")
        assert first.status == "done", first.error
        holder = next(w for w in pair if w.worker_id == first.worker_id)
        other = next(w for w in pair if w is not holder)
        follow = await turn("And which colour comes after it?")
        assert follow.status == "done" and follow.worker_id == holder.worker_id
        assert follow.cached_tokens > first.prompt_tokens // 2  # its own earlier turn was not prefilled again

        # The holder dies: the next turn is first routed to it (its heartbeat lingers), then the
        # reaper sees it dead and hands the message to the other worker, which prefills everything.
        holder.stop(signal.SIGKILL)
        await comm.send_json_to({"action": "send", "content": "Name one more colour."})
        async with asyncio.timeout(120):
            while True:
                await database_sync_to_async(reap)()
                last = await database_sync_to_async(
                    lambda: Message.objects.filter(conversation=conv, role="assistant").order_by("-id").first())()
                if last.pk != follow.pk and last.status not in Message.ACTIVE:
                    break
                await asyncio.sleep(0.5)
        assert last.status == "done", last.error
        assert last.worker_id == other.worker_id and last.cached_tokens == 0
        # A correct answer: what a cold engine in this process says to the same history.
        request = make_request(MODEL, "", max_tokens=16)
        request.messages = await database_sync_to_async(history_for)(last)
        await asyncio.to_thread(loaded_registry.backend(MODEL).engine.forget_cached)
        local, _ = await asyncio.to_thread(run_request, loaded_registry, request)
        assert local.text == last.content
        await comm.disconnect()
    finally:
        for w in pair:
            w.stop(signal.SIGKILL)


# ---- the OpenAI-compatible API, scaled out -------------------------------------------------------

@pytest.mark.asyncio
async def test_api_request_runs_on_a_celery_worker_and_streams_over_redis(worker, layer):
    from django.test import AsyncClient

    from api.models import ApiKey

    user = await database_sync_to_async(get_user_model().objects.create_user)("api-user", password="pw-123456789")
    _, key = await database_sync_to_async(ApiKey.create_for)(user, "scaled out")
    client, auth = AsyncClient(), {"Authorization": f"Bearer {key}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": SHORT}], "max_tokens": 12, "temperature": 0}

    plain = await client.post("/v1/chat/completions", body, content_type="application/json", headers=auth)
    assert plain.status_code == 200, plain.content
    answer = json.loads(plain.content)
    reply = await get_message(int(answer["id"].rsplit("-", 1)[1]))
    assert reply.worker_id == worker.worker_id  # generated by the Celery worker process
    assert answer["choices"][0]["message"]["content"] == reply.content and reply.content.strip()

    streamed = await client.post("/v1/chat/completions", {**body, "stream": True,
                                                          "stream_options": {"include_usage": True}},
                                 content_type="application/json", headers=auth)
    assert streamed.status_code == 200
    events = [e for e in b"".join([chunk async for chunk in streamed.streaming_content]).decode().strip()
              .split("\n\n") if not e.startswith(":")]  # comments: queue positions, keep-alives
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == reply.content  # greedy: the same answer, every event received through Redis
    assert chunks[-1]["usage"]["completion_tokens"] == reply.completion_tokens
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # the worker kept the prompt
