"""Per-user limits on the chat page (chat.limits): open sockets, sends/regenerations/edits and
resume frames per minute, chats per user. Each refusal is an error the page shows (an error
frame, a close code it understands, HTTP 429); the socket is never closed with 1011. And the
Markdown of a whole answer is rendered off the one thread all sockets' database work shares."""
import asyncio
import json
import threading
import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from chat import rendering
from chat.models import Conversation, Message
from smolsite.asgi import application

MODEL = "smollm2-135m"


@pytest.fixture
def frozen_clock(monkeypatch):
    """django-ratelimit's windows start at fixed times: a window edge falling inside a test would
    let one more action through. Time stands still for the test (as in tests/test_quotas.py)."""
    import django_ratelimit.core as ratelimit_core

    now = time.time()
    monkeypatch.setattr(ratelimit_core, "time", type("FrozenTime", (), {"time": staticmethod(lambda: now)}))


def make_user(username):
    return get_user_model().objects.create_user(username, password="pw-123456789")


def make_conversation(user, **kwargs):
    return Conversation.objects.create(owner=user, model=MODEL, temperature=0.0, **kwargs)


async def open_socket(user, conv):
    comm = WebsocketCommunicator(application, f"/ws/chat/{conv.pk}/", headers=[(b"origin", b"http://127.0.0.1")])
    comm.scope["user"] = user
    connected, _ = await comm.connect()
    assert connected
    return comm


async def next_frame(comm, timeout=30):
    return json.loads(await comm.receive_from(timeout=timeout))


async def frames_until(comm, predicate, timeout=120):
    frames = []
    async with asyncio.timeout(timeout):
        while True:
            frames.append(await next_frame(comm, timeout))
            if predicate(frames[-1]):
                return frames


def final_of(message_id=None):
    return lambda f: f["type"] == "final" and (message_id is None or f["message"] == message_id)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_open_sockets_per_user_are_limited(settings):
    settings.SMOLSITE_MAX_SOCKETS_PER_USER = 2
    alice = await database_sync_to_async(make_user)("alice")
    bob = await database_sync_to_async(make_user)("bob")
    chats = [await database_sync_to_async(make_conversation)(alice) for _ in range(3)]
    first, second = await open_socket(alice, chats[0]), await open_socket(alice, chats[1])
    third = await open_socket(alice, chats[2])
    frame = await next_frame(third)
    assert frame["type"] == "error" and "2 chat tabs open" in frame["error"]
    assert await third.receive_output(timeout=10) == {"type": "websocket.close", "code": 4429}
    # Someone else is not affected; the first two still work.
    other = await open_socket(bob, await database_sync_to_async(make_conversation)(bob))
    await first.send_json_to({"action": "stop"})
    assert "Nothing is being generated" in (await next_frame(first))["error"]
    # A closed tab frees its place.
    await second.disconnect()
    again = await open_socket(alice, chats[2])
    await again.send_json_to({"action": "stop"})
    assert "Nothing is being generated" in (await next_frame(again))["error"]
    for comm in (first, again, other):
        await comm.disconnect()


def test_tabs_opened_at_once_cannot_all_take_the_last_places(settings, monkeypatch):
    """Eight sockets of one user counted at the same moment (each in its own thread, as consumers
    do it) with a cache a round trip away: exactly the limit get in."""
    from django.core.cache import cache

    from chat import limits

    settings.SMOLSITE_MAX_SOCKETS_PER_USER = 3

    class RemoteCache:
        """Reads take a while, as from Redis: room for another tab between one's read and write."""

        def __getattr__(self, name):
            return getattr(cache, name)

        def get(self, *args, **kwargs):
            value = cache.get(*args, **kwargs)
            time.sleep(0.05)  # the answer on its way back
            return value

    monkeypatch.setattr(limits, "cache", RemoteCache())
    start = threading.Barrier(8)
    accepted = []

    def tab(i):
        start.wait()
        try:
            limits.open_socket(42, f"channel-{i}")
            accepted.append(i)
        except limits.LimitExceeded:
            pass

    threads = [threading.Thread(target=tab, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == 3
    limits.close_socket(42, f"channel-{accepted[0]}")
    limits.open_socket(42, "channel-late")  # a closed tab freed its place


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_sends_and_regenerations_per_minute_are_limited(loaded_registry, settings, frozen_clock):
    settings.SMOLSITE_ACTIONS_PER_MINUTE = 2
    alice = await database_sync_to_async(make_user)("alice")
    conv = await database_sync_to_async(make_conversation)(alice, max_tokens=4)
    comm = await open_socket(alice, conv)
    await comm.send_json_to({"action": "send", "content": "Hello"})
    await frames_until(comm, final_of())
    await comm.send_json_to({"action": "regenerate"})
    await frames_until(comm, final_of())
    count = await database_sync_to_async(Message.objects.filter(conversation=conv).count)()
    for frame in ({"action": "regenerate"}, {"action": "send", "content": "Again"}):
        await comm.send_json_to(frame)
        refused = await next_frame(comm)
        assert refused["type"] == "error" and refused["action"] == frame["action"]
        assert "at most 2 messages, regenerations and edits a minute" in refused["error"]
        assert 1 <= refused["retry_after"] <= 60
    # Nothing was written, and the socket goes on serving.
    assert await database_sync_to_async(Message.objects.filter(conversation=conv).count)() == count
    await comm.send_json_to({"action": "stop"})
    assert "Nothing is being generated" in (await next_frame(comm))["error"]
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_resume_frames_per_minute_are_limited_and_render_off_the_database_thread(settings, monkeypatch,
                                                                                       frozen_clock):
    settings.SMOLSITE_RESUMES_PER_MINUTE = 3
    alice = await database_sync_to_async(make_user)("alice")
    conv = await database_sync_to_async(make_conversation)(alice)

    @database_sync_to_async
    def answered():
        question = Message.objects.create(conversation=conv, role="user", content="Tell me a lot.")
        return Message.objects.create(conversation=conv, parent=question, role="assistant", status="done",
                                      content="\n\n".join(f"## Part {i}\n\n* a\n* **b**\n\n```python\nx = {i}\n```"
                                                          for i in range(200)))

    answer = await answered()
    rendered_on = []
    real = rendering.render_markdown

    def recording(text):
        rendered_on.append(threading.get_ident())
        return real(text)

    monkeypatch.setattr(rendering, "render_markdown", recording)
    database_thread = await database_sync_to_async(threading.get_ident)()
    comm = await open_socket(alice, conv)
    for _ in range(3):
        await comm.send_json_to({"action": "resume", "message": answer.pk})
        frames = await frames_until(comm, final_of(answer.pk))
        assert frames[0]["type"] == "snapshot" and "<h2>Part 199</h2>" in frames[-1]["html"]
    assert rendered_on and database_thread not in rendered_on
    await comm.send_json_to({"action": "resume", "message": answer.pk})
    refused = await next_frame(comm)
    assert refused["type"] == "error" and "at most 3 catch-ups" in refused["error"]
    await comm.send_json_to({"action": "stop"})
    assert "Nothing is being generated" in (await next_frame(comm))["error"]
    await comm.disconnect()


@pytest.mark.django_db
def test_chats_per_user_are_limited(client, settings):
    settings.SMOLSITE_MAX_CHATS_PER_USER = 2
    alice = make_user("alice")
    client.force_login(alice)
    for _ in range(2):
        conv = make_conversation(alice)
        Message.objects.create(conversation=conv, role="user", content="hi")
    # API conversations are not chats of the page: they do not count.
    Message.objects.create(conversation=make_conversation(alice, source="api"), role="user", content="hi")
    response = client.post("/new/")
    assert response.status_code == 429
    assert "2 chats, the most one account may keep" in response.content.decode()
    assert Conversation.objects.filter(owner=alice).count() == 3
    # Deleting one makes room.
    Conversation.objects.filter(owner=alice, source="chat").first().delete()
    response = client.post("/new/")
    assert response.status_code == 302
    assert Conversation.objects.filter(owner=alice, source="chat").count() == 2
