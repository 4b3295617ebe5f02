"""Fuzzing the chat websocket (issue 12, "Bad input and access"): random and malformed frames,
wrong types, unknown ids and other users' ids, huge and binary frames, through the real ASGI
application (session middleware, origin check, routing, ChatConsumer).

Whatever arrives, the consumer answers (an error frame, or a snapshot of one's own message),
never closes the socket (no 1011, no crash), shows nothing of another user's and writes nothing:
the chats here cannot start a generation (one's model is no longer configured, the other has an
answer streaming), so every row must stay as it was. Runs on SQLite and PostgreSQL."""
import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.forms.models import model_to_dict
from django.test import Client
from hypothesis import given, strategies as st

from chat.models import Conversation, Message
from chat.socket_auth import contains_nul
from fuzz_support import json_values, odd_numbers, odd_text, scaled

PASSWORD = "correct-horse-battery-9"
SECRET = "bobs-private-words"
ACTIONS = ["send", "edit", "regenerate", "stop", "resume", "", "SEND", "delete", "__init__", "do_send"]


class Chats:
    def __init__(self, streaming):
        self.streaming = streaming
        users = get_user_model().objects
        self.alice = users.create_user("alice", password=PASSWORD)
        bob = users.create_user("bob", password=PASSWORD)
        client = Client()
        client.force_login(self.alice)
        self.session = client.cookies["sessionid"].value
        # Streaming: the model is real but an answer is being generated, so nothing new may start.
        model = "smollm2-135m" if streaming else "no-longer-configured"
        self.conv = Conversation.objects.create(owner=self.alice, title="mine", model=model)
        q = Message.objects.create(conversation=self.conv, role="user", content="question")
        a = Message.objects.create(conversation=self.conv, parent=q, role="assistant", content="answer",
                                   status="streaming" if streaming else "done", model_name=model)
        self.own_ids = [q.pk, a.pk]
        theirs = Conversation.objects.create(owner=bob, title=SECRET, model="smollm2-135m")
        q = Message.objects.create(conversation=theirs, role="user", content=SECRET)
        a = Message.objects.create(conversation=theirs, parent=q, role="assistant", content=SECRET, status="done")
        self.their_ids = [q.pk, a.pk]

    @staticmethod
    def rows():
        return [(type(o).__name__, o.pk, repr(sorted(model_to_dict(o).items())))
                for model in (Conversation, Message) for o in model.objects.order_by("pk")]


def message_ids(chats):
    return st.one_of(st.sampled_from(chats.own_ids + chats.their_ids), st.integers(min_value=-5, max_value=10 ** 6),
                     odd_numbers, odd_text, json_values,
                     st.sampled_from(chats.own_ids + chats.their_ids).map(str))


def frames(chats):
    known = st.fixed_dictionaries(
        {"action": st.sampled_from(ACTIONS) | odd_text | json_values},
        optional={"message": message_ids(chats), "content": st.one_of(odd_text, json_values),
                  "seq": odd_numbers, "extra": json_values})
    return st.one_of(
        known.map(json.dumps),
        json_values.map(json.dumps),  # valid JSON that is not an object, or one without an action
        st.text(max_size=200),  # not JSON at all
        st.binary(max_size=200),  # binary frames
        st.sampled_from(["[" * 50_000, "{" * 20_000, '{"action": "send", "content": "' + "\\" * 3 + '"}', "\ufeff{}",
                         '{"action": "resume", "message": 1e999}', '{"action": "edit", "message": -0.0}',
                         '{"action": "regenerate", "message": true}', '{"action": "send", "action": "stop"}']),
    )


async def open_socket(chats):
    from smolsite.asgi import application

    comm = WebsocketCommunicator(application, f"/ws/chat/{chats.conv.pk}/", headers=[
        (b"origin", b"http://127.0.0.1"), (b"cookie", f"sessionid={chats.session}".encode())])
    connected, _ = await comm.connect()
    assert connected
    if chats.streaming:  # a chat with an answer in progress shows it on connect
        assert (await receive(comm))["type"] == "snapshot"
    return comm


async def receive(comm):
    output = await comm.receive_output(30)  # re-raises an exception of the consumer
    assert output["type"] == "websocket.send", f"the server closed the socket: {output}"
    return json.loads(output["text"])


def is_stop(frame):
    if isinstance(frame, bytes):
        return False  # binary frames are refused whatever they hold
    try:
        value = json.loads(frame)
    except (TypeError, ValueError, RecursionError):
        return False
    return isinstance(value, dict) and value.get("action") == "stop" and not contains_nul(value)


async def exchange(comm, chats, frame):
    """One frame in; its answer out: one error frame, or a snapshot of one's own message (and,
    for a finished one, its final rendering). Nothing else may follow."""
    # send_input, not send_to: an empty frame is a frame too (send_to refuses to send one).
    key = "bytes" if isinstance(frame, bytes) else "text"
    await comm.send_input({"type": "websocket.receive", key: frame})
    if chats.streaming and is_stop(frame):
        # Stopping a streaming answer is answered through the stream (the worker's "done"), and
        # no worker runs here.
        assert await comm.receive_nothing(timeout=0.05)
        return []
    answers = [await receive(comm)]
    if answers[0]["type"] == "snapshot" and answers[0]["status"] not in Message.ACTIVE:
        answers.append(await receive(comm))
        assert answers[1]["type"] == "final", answers
    assert answers[0]["type"] in ("error", "snapshot"), answers
    for answer in answers[answers[0]["type"] == "error":]:
        assert answer["message"] in chats.own_ids, answer
    assert SECRET not in json.dumps(answers)
    assert await comm.receive_nothing(timeout=0.02), "more than one answer to one frame"
    return answers


def run_fuzz(streaming, examples):
    loop = asyncio.new_event_loop()
    try:
        chats = loop.run_until_complete(database_sync_to_async(Chats)(streaming))
        before = loop.run_until_complete(database_sync_to_async(Chats.rows)())
        comm = loop.run_until_complete(open_socket(chats))

        @scaled(examples)
        @given(frame=frames(chats))
        def check(frame):
            loop.run_until_complete(exchange(comm, chats, frame))

        try:
            check()
            # Still the same socket, still serving, and not one row written.
            answers = loop.run_until_complete(exchange(comm, chats, json.dumps({"action": "resume",
                                                                                 "message": chats.own_ids[1]})))
            assert answers[0]["type"] == "snapshot"
            assert loop.run_until_complete(database_sync_to_async(Chats.rows)()) == before
        finally:
            loop.run_until_complete(comm.disconnect())
    finally:
        loop.close()


@pytest.mark.django_db(transaction=True)
def test_fuzz_frames_in_a_chat_whose_model_is_gone(settings):
    settings.SMOLSITE_WS_AUTH_SECONDS = 600
    settings.SMOLSITE_RESUMES_PER_MINUTE = settings.SMOLSITE_ACTIONS_PER_MINUTE = 10 ** 6  # tests/test_limits.py
    run_fuzz(streaming=False, examples=40)


@pytest.mark.django_db(transaction=True)
def test_fuzz_frames_while_an_answer_streams(settings):
    """The model is configured, but its answer is streaming: send, edit and regenerate are refused,
    stop only raises the (cache) stop flag, resume shows one's own message."""
    settings.SMOLSITE_WS_AUTH_SECONDS = 600
    settings.SMOLSITE_RESUMES_PER_MINUTE = settings.SMOLSITE_ACTIONS_PER_MINUTE = 10 ** 6
    run_fuzz(streaming=True, examples=40)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("size", [0, 1, 32_000, 32_001, 65_000, 65_536, 65_537, 1_000_000, 8_000_000])
@pytest.mark.parametrize("kind", ["text", "json", "binary"])
async def test_huge_frames_get_an_error_and_write_nothing(settings, size, kind):
    settings.SMOLSITE_WS_AUTH_SECONDS = 600
    chats = await database_sync_to_async(Chats)(streaming=False)
    before = await database_sync_to_async(Chats.rows)()
    comm = await open_socket(chats)
    if kind == "binary":
        await comm.send_input({"type": "websocket.receive", "bytes": b"\x00" * size})
    elif kind == "text":
        await comm.send_input({"type": "websocket.receive", "text": "é" * size})
    else:
        await comm.send_to(text_data=json.dumps({"action": "send", "content": "x" * size}))
    answer = await receive(comm)
    assert answer["type"] == "error", answer
    error = answer["error"]
    if kind == "binary":
        assert "Binary" in error
    elif len(("é" * size if kind == "text" else "x" * size).encode()) > settings.SMOLSITE_MAX_FRAME_BYTES:
        assert "too large" in error
    assert await database_sync_to_async(Chats.rows)() == before
    await exchange(comm, chats, json.dumps({"action": "stop"}))  # still serving
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_flood_of_frames_is_answered_in_order_and_the_socket_survives(settings):
    """Hundreds of bad frames without waiting for answers: every one is answered, none lost."""
    settings.SMOLSITE_WS_AUTH_SECONDS = 600
    chats = await database_sync_to_async(Chats)(streaming=False)
    comm = await open_socket(chats)
    count = 300
    for i in range(count):
        await comm.send_to(text_data=json.dumps({"action": "resume", "message": f"not-an-id-{i}"}))
    answers = []
    while len(answers) < count:
        output = await comm.receive_output(30)
        assert output["type"] == "websocket.send", output
        answers.append(json.loads(output["text"]))
    # Malformed, or (past SMOLSITE_RESUMES_PER_MINUTE) told to slow down: answered either way.
    assert all(a["type"] == "error" and ("Malformed" in a["error"] or "Slow down" in a["error"])
               for a in answers), {a.get("error") for a in answers}
    await exchange(comm, chats, json.dumps({"action": "stop"}))  # nothing more came, and it still serves
    await comm.disconnect()
