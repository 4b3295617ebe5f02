"""Tools in the chat (chat.agent): the server's loop of call, run, result and continuation, driven
through the chat websocket (channels' WebsocketCommunicator) against the real SmolLM2-135M in
the in-process device worker and the real database.

A 135M model calls tools unreliably when it may choose, so these chats use the "Call a tool:
before every answer" setting (tool_choice "required"): the turn's first answer is a call, written
under the tools' grammar, so always well formed; later rounds are the model's choice ("auto"),
and the tests hold whatever it does to the loop's rules rather than to one wording."""
import asyncio
import json
import threading

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from chat import actions, agent
from chat.models import Conversation, Message, ToolCall
from chat.store import history_for
from inference.hookspecs import hookimpl
from smolsite.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

WAIT = 120  # seconds: generous, the cores may be shared; nothing is asserted about time


@pytest.fixture
def tools_plugin():
    """The built-in tools, as the site registers them (the "tools" entry point)."""
    from inference.plugins import get_plugin_manager
    from inference.tool_runner import registered_tools

    assert "calculator" in registered_tools()
    return get_plugin_manager()


class Gate:
    """A test tool that runs until the test opens its gate: "while a tool runs" is a state the
    test holds, not a moment it hopes to hit."""

    def __init__(self):
        self.opened = threading.Event()
        self.entered = threading.Event()

    @hookimpl
    def register_tools(self):
        from inference.tool_runner import Tool

        def wait(arguments, context):
            self.entered.set()
            self.opened.wait(60)
            return "the gate opened"

        return [Tool("gate", "Waits at a gate.", {"type": "object", "properties": {}}, wait, timeout=90)]


@pytest.fixture
def gate_tool(tools_plugin):
    gate = Gate()
    name = tools_plugin.register(gate, name="gate-under-test")
    yield gate
    gate.opened.set()
    tools_plugin.unregister(name=name)


@database_sync_to_async
def make_chat(username="alice", tools=("calculator",), **kwargs):
    user = get_user_model().objects.create_user(username, password="pw-123456789")
    fields = dict(owner=user, model="smollm2-135m", temperature=0.0, max_tokens=48, tools=list(tools),
                  tool_choice="required")
    fields.update(kwargs)
    return user, Conversation.objects.create(**fields)


async def connect(user, conv_id):
    comm = WebsocketCommunicator(application, f"/ws/chat/{conv_id}/", headers=[(b"origin", b"http://127.0.0.1")])
    comm.scope["user"] = user
    connected, _ = await comm.connect()
    assert connected
    return comm


async def receive_until(comm, predicate, frames=None, timeout=WAIT):
    frames = [] if frames is None else frames
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await comm.receive_from(timeout=timeout))
            frames.append(frame)
            if predicate(frame):
                return frames


@database_sync_to_async
def db(fn, *args, **kwargs):
    return fn(*args, **kwargs)


async def settled(conv_id, timeout=WAIT):
    """Wait until the conversation's loop is at rest: nothing generating, no call queued or
    running (calls awaiting approval are at rest: they wait for the user)."""
    def quiet():
        return (not Message.objects.filter(conversation_id=conv_id, status__in=Message.ACTIVE).exists()
                and not ToolCall.objects.filter(message__conversation_id=conv_id,
                                                status__in=(ToolCall.Status.PENDING, ToolCall.Status.RUNNING)).exists())
    async with asyncio.timeout(timeout):
        while True:
            if await db(quiet):
                # Still quiet a moment later: a continuation is made right after the last result.
                await asyncio.sleep(0.5)
                if await db(quiet):
                    return
            await asyncio.sleep(0.2)


def client_post_branch(user, conv_id, message_id):
    client = Client()
    client.force_login(user)
    return client.post(f"/c/{conv_id}/branch/", {"message": str(message_id)}, HTTP_HX_REQUEST="true")


def answers(conv_id):
    return list(Message.objects.filter(conversation_id=conv_id, role="assistant").order_by("id"))


def calls_of(message_id):
    return list(ToolCall.objects.filter(message_id=message_id).order_by("index"))


def expected_outcome(call, conv):
    from inference.tool_runner import ToolContext, run_tool

    return run_tool(call.name, call.arguments, ToolContext(user_id=conv.owner_id, conversation_id=conv.pk))


# ---- the loop ---------------------------------------------------------------------------------

async def test_a_call_runs_and_the_answer_continues_with_its_result(loaded_registry, tools_plugin):
    user, conv = await make_chat()
    comm = await connect(user, conv.pk)
    await comm.send_json_to({"action": "send", "content": "What is 12 * 7?", "time_zone": "Europe/Paris"})
    frames = await receive_until(comm, lambda f: f["type"] == "final")
    first = next(f for f in frames if f["type"] == "thread")["active"]
    await settled(conv.pk)
    rows = await db(answers, conv.pk)
    assert rows[0].pk == first and rows[0].finish_reason == "tool_calls" and rows[0].content == ""
    assert rows[0].options["tool_round"] == 0 and rows[0].options["grammar_waits_for_call"] is False
    calls = await db(calls_of, first)
    assert calls and calls[0].name == "calculator"
    # The result is the tool's own, stored on the row with its time.
    outcome = await db(expected_outcome, calls[0], conv)
    assert calls[0].status == outcome.status and calls[0].output == outcome.output
    assert calls[0].duration is not None and calls[0].finished_at is not None
    # The loop went on: the next answer is a child of the one that called, in round 1, "auto".
    assert len(rows) >= 2 and rows[1].parent_id == first
    assert rows[1].options["tool_round"] == 1 and rows[1].options["grammar_waits_for_call"] is True
    conv_now = await db(Conversation.objects.get, pk=conv.pk)
    assert conv_now.time_zone == "Europe/Paris"
    # The continuation read the call and its result as a tool turn.
    history = await db(history_for, rows[1])
    assert history[-2]["role"] == "assistant" and history[-2]["tool_calls"][0]["name"] == "calculator"
    assert history[-1] == {"role": "tool", "tool_call_id": calls[0].call_id, "name": "calculator",
                           "content": calls[0].result_text()}
    # Every round ended in a visible state, and the turn ended: a text answer, or the round limit's note.
    last = rows[-1]
    assert all(r.status == "done" for r in rows)
    assert (await db(calls_of, last.pk)) == [] or last.options.get("tool_note")
    # The usage ledger counts each generation's calls.
    from usage.models import UsageRecord

    ledger = await db(lambda: dict(UsageRecord.objects.filter(message__conversation_id=conv.pk)
                                   .values_list("message_id", "tool_calls")))
    assert ledger[first] == len(calls)
    assert sum(ledger.values()) == await db(ToolCall.objects.filter(message__conversation_id=conv.pk).count)
    # This tab saw the cards and was moved on to the next answer.
    frames = await receive_until(comm, lambda f: f["type"] == "final" and f["message"] == last.pk, frames)
    tools_frames = [f for f in frames if f["type"] == "tools" and f["message"] == first]
    assert tools_frames and f'id="call-{calls[0].pk}"' in tools_frames[-1]["html"]
    assert any(f["type"] == "thread" and f["active"] == rows[1].pk for f in frames)
    await comm.disconnect()


async def test_the_round_limit_ends_the_turn_with_a_note(loaded_registry, tools_plugin, settings):
    settings.SMOLSITE_MAX_TOOL_ROUNDS = 1
    user, conv = await make_chat("bob")
    comm = await connect(user, conv.pk)
    await comm.send_json_to({"action": "send", "content": "Add 2 and 3."})
    await receive_until(comm, lambda f: f["type"] == "final")
    await settled(conv.pk)
    rows = await db(answers, conv.pk)
    assert len(rows) == 1  # no second answer
    assert "1 round of tool calls" in rows[0].options["tool_note"]
    # Every tab is told, on the answer itself.
    await receive_until(comm, lambda f: f["type"] == "tools" and "1 round of tool calls" in f["html"])
    # The turn is over: the chat takes a new message.
    await comm.send_json_to({"action": "send", "content": "Thanks."})
    await receive_until(comm, lambda f: f["type"] == "thread")
    await settled(conv.pk)
    await comm.disconnect()


# ---- approval ---------------------------------------------------------------------------------

async def wait_awaiting(comm, frames=None):
    frames = await receive_until(comm, lambda f: f["type"] == "final", frames)
    first = next(f for f in frames if f["type"] == "thread")["active"]
    calls = await db(calls_of, first)
    assert calls and all(c.status == "awaiting" for c in calls)
    final = next(f for f in frames if f["type"] == "final")
    assert f'data-approve="{calls[0].pk}"' in final["html"] and f'data-deny="{calls[0].pk}"' in final["html"]
    return first, calls


async def test_approve_runs_the_call_and_the_loop_goes_on(loaded_registry, tools_plugin):
    user, conv = await make_chat("carol", tools_ask=True)
    comm = await connect(user, conv.pk)
    await comm.send_json_to({"action": "send", "content": "What is 6 * 7?"})
    first, calls = await wait_awaiting(comm)
    # Waiting for the user: nothing runs, nothing continues, and the chat is busy.
    await asyncio.sleep(1)
    assert len(await db(answers, conv.pk)) == 1
    with pytest.raises(actions.ActionError, match="approve or deny"):
        await db(actions.send, conv.pk, "another question")
    response = await db(client_post_branch, user, conv.pk, first)
    assert response.status_code == 409 and b"waiting for you" in response.content
    # A reload shows the waiting card with its buttons.
    client = Client()
    await db(client.force_login, user)
    page = await db(client.get, f"/c/{conv.pk}/thread/", HTTP_HX_REQUEST="true")
    assert f'data-approve="{calls[0].pk}"' in page.content.decode()
    for call in calls:
        await comm.send_json_to({"action": "approve", "call": call.pk})
    await settled(conv.pk)
    calls = await db(calls_of, first)
    outcome = await db(expected_outcome, calls[0], conv)
    assert calls[0].status == outcome.status and calls[0].output == outcome.output
    rows = await db(answers, conv.pk)
    assert len(rows) >= 2 and rows[1].parent_id == first
    # Deciding twice is an error frame, not an exception.
    await comm.send_json_to({"action": "approve", "call": calls[0].pk})
    frames = await receive_until(comm, lambda f: f["type"] == "error")
    assert "nothing to decide" in frames[-1]["error"]
    await comm.disconnect()


async def test_deny_records_denied_and_the_model_is_told(loaded_registry, tools_plugin):
    user, conv = await make_chat("dave", tools_ask=True)
    comm = await connect(user, conv.pk)
    await comm.send_json_to({"action": "send", "content": "What is 6 * 7?"})
    first, calls = await wait_awaiting(comm)
    for call in calls:
        await comm.send_json_to({"action": "deny", "call": call.pk})
    await settled(conv.pk)
    calls = await db(calls_of, first)
    assert {c.status for c in calls} == {"denied"} and all(c.output == "" for c in calls)
    rows = await db(answers, conv.pk)
    assert len(rows) >= 2 and rows[1].parent_id == first
    history = await db(history_for, rows[1])
    assert history[-1]["role"] == "tool" and "denied" in history[-1]["content"]
    await comm.disconnect()


async def test_stop_while_waiting_for_approval_ends_the_turn(loaded_registry, tools_plugin):
    user, conv = await make_chat("erin", tools_ask=True)
    comm = await connect(user, conv.pk)
    await comm.send_json_to({"action": "send", "content": "What is 6 * 7?"})
    first, calls = await wait_awaiting(comm)
    await comm.send_json_to({"action": "stop"})
    frames = await receive_until(comm, lambda f: f["type"] == "tools")
    assert "Stopped" in frames[-1]["html"] and "data-approve" not in frames[-1]["html"]
    calls = await db(calls_of, first)
    assert {c.status for c in calls} == {"stopped"}
    assert len(await db(answers, conv.pk)) == 1
    # Approving a stopped call is refused; a new message is not.
    await comm.send_json_to({"action": "approve", "call": calls[0].pk})
    frames = await receive_until(comm, lambda f: f["type"] == "error")
    assert "nothing to decide" in frames[-1]["error"]
    await comm.send_json_to({"action": "stop"})
    frames = await receive_until(comm, lambda f: f["type"] == "error")
    assert "Nothing is being generated" in frames[-1]["error"]
    await comm.send_json_to({"action": "send", "content": "Never mind."})
    await receive_until(comm, lambda f: f["type"] == "thread")
    await settled(conv.pk)
    await comm.disconnect()


async def test_stop_while_a_tool_runs_ends_the_turn(loaded_registry, gate_tool):
    user, conv = await make_chat("frank", tools=("gate",))
    comm = await connect(user, conv.pk)
    await comm.send_json_to({"action": "send", "content": "Open the gate."})
    frames = await receive_until(comm, lambda f: f["type"] == "final")
    first = next(f for f in frames if f["type"] == "thread")["active"]
    assert await asyncio.to_thread(gate_tool.entered.wait, WAIT)
    assert {c.status for c in await db(calls_of, first)} == {"running"}
    with pytest.raises(actions.ActionError, match="tool is still running"):
        await db(actions.send, conv.pk, "another question")
    await comm.send_json_to({"action": "stop"})
    await receive_until(comm, lambda f: f["type"] == "tools" and "Stopped" in f["html"])
    gate_tool.opened.set()
    await settled(conv.pk)
    calls = await db(calls_of, first)
    assert {c.status for c in calls} == {"stopped"}
    assert calls[0].output == "the gate opened"  # what it returned is kept, the status stays
    assert len(await db(answers, conv.pk)) == 1  # the answer did not go on
    await comm.disconnect()


async def test_stop_while_the_continuation_writes(loaded_registry, tools_plugin):
    user, conv = await make_chat("gina", max_tokens=400)
    comm = await connect(user, conv.pk)
    await comm.send_json_to({"action": "send", "content": "What is 2 + 2? Then write a long story about it."})
    frames = []
    await receive_until(comm, lambda f: f["type"] == "thread" and f["active"] != frames_first(frames), frames)
    second = frames[-1]["active"]
    await comm.send_json_to({"action": "stop"})
    await receive_until(comm, lambda f: f["type"] == "final" and f["message"] == second)
    await settled(conv.pk)
    row = await db(Message.objects.get, pk=second)
    assert row.status in ("stopped", "done")  # stopped, or it had ended before the Stop arrived
    assert not await db(lambda: Message.objects.filter(parent_id=second).exists())
    await comm.disconnect()


def frames_first(frames):
    threads = [f for f in frames if f["type"] == "thread"]
    return threads[0]["active"] if threads else None


# ---- reload, second tab, branches --------------------------------------------------------------

async def test_a_second_tab_mid_loop_sees_the_calls_and_keeps_streaming(loaded_registry, gate_tool):
    user, conv = await make_chat("hana", tools=("gate",))
    comm = await connect(user, conv.pk)
    await comm.send_json_to({"action": "send", "content": "Open the gate."})
    frames = await receive_until(comm, lambda f: f["type"] == "final")
    first = next(f for f in frames if f["type"] == "thread")["active"]
    assert await asyncio.to_thread(gate_tool.entered.wait, WAIT)
    # A reload while the tool runs: the page shows the running card.
    client = Client()
    await db(client.force_login, user)
    page = (await db(client.get, f"/c/{conv.pk}/")).content.decode()
    call = (await db(calls_of, first))[0]
    assert f'id="call-{call.pk}"' in page and 'data-status="running"' in page
    second_tab = await connect(user, conv.pk)
    gate_tool.opened.set()
    # The second tab hears of the result and of the next answer, and streams it to its end.
    got = await receive_until(second_tab, lambda f: f["type"] == "thread")
    nxt = got[-1]["active"]
    got = await receive_until(second_tab, lambda f: f["type"] == "final" and f["message"] == nxt, got)
    assert any(f["type"] == "tools" and f["message"] == first and "the gate opened" in f["html"] for f in got)
    await settled(conv.pk)
    row = await db(Message.objects.get, pk=nxt)
    assert row.parent_id == first and row.status == "done"
    await comm.disconnect()
    await second_tab.disconnect()


async def test_branches_keep_their_calls(loaded_registry, tools_plugin, settings):
    settings.SMOLSITE_MAX_TOOL_ROUNDS = 1  # one round: each branch's loop is one answer with its call
    user, conv = await make_chat("ivan")
    comm = await connect(user, conv.pk)
    await comm.send_json_to({"action": "send", "content": "What is 3 * 3?"})
    frames = await receive_until(comm, lambda f: f["type"] == "final")
    first = next(f for f in frames if f["type"] == "thread")["active"]
    await settled(conv.pk)
    question = (await db(Message.objects.get, pk=first)).parent_id
    await comm.send_json_to({"action": "edit", "message": question, "content": "What is 4 * 4?"})
    frames = await receive_until(comm, lambda f: f["type"] == "thread")
    edited = frames[-1]["active"]
    await settled(conv.pk)
    await comm.send_json_to({"action": "regenerate", "message": edited})
    frames = await receive_until(comm, lambda f: f["type"] == "thread")
    regenerated = frames[-1]["active"]
    await settled(conv.pk)
    for answer in (first, edited, regenerated):
        calls = await db(calls_of, answer)
        assert calls and all(c.message_id == answer for c in calls)
    # The thread shows only the current branch's cards.
    conv_now = await db(Conversation.objects.get, pk=conv.pk)
    assert conv_now.current_leaf_id == regenerated
    client = Client()
    await db(client.force_login, user)
    page = (await db(client.get, f"/c/{conv.pk}/thread/", HTTP_HX_REQUEST="true")).content.decode()
    for call in await db(calls_of, regenerated):
        assert f'id="call-{call.pk}"' in page
    for call in await db(calls_of, first) + await db(calls_of, edited):
        assert f'id="call-{call.pk}"' not in page
    await comm.disconnect()


async def test_regenerating_a_continuation_reads_the_same_results(loaded_registry, tools_plugin):
    user, conv = await make_chat("judy")
    comm = await connect(user, conv.pk)
    await comm.send_json_to({"action": "send", "content": "What is 5 * 5?"})
    await receive_until(comm, lambda f: f["type"] == "final")
    await settled(conv.pk)
    rows = await db(answers, conv.pk)
    second = rows[1]
    await comm.send_json_to({"action": "regenerate", "message": second.pk})
    frames = await receive_until(comm, lambda f: f["type"] == "thread")
    again = await db(Message.objects.get, pk=frames[-1]["active"])
    assert again.parent_id == second.parent_id and again.options["tool_round"] == 1
    await settled(conv.pk)
    assert (await db(history_for, again)) == (await db(history_for, second))
    await comm.disconnect()


# ---- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("frame, expected", [
    ({"action": "approve"}, "Malformed"),
    ({"action": "approve", "call": "abc"}, "Malformed"),
    ({"action": "deny", "call": [1]}, "Malformed"),
    ({"action": "deny", "call": True}, "Malformed"),
    ({"action": "approve", "call": 10 ** 30}, "No such tool call"),
    ({"action": "approve", "call": 0}, "No such tool call"),
    ({"action": "deny", "call": 987654}, "No such tool call"),
])
async def test_bad_decisions_are_error_frames(loaded_registry, frame, expected):
    user, conv = await make_chat("kim")
    comm = await connect(user, conv.pk)
    await comm.send_json_to(frame)
    got = await receive_until(comm, lambda f: f["type"] == "error", timeout=10)
    assert expected in got[-1]["error"]
    await comm.disconnect()


async def test_a_chat_without_tools_sends_none(loaded_registry, tools_plugin):
    user, conv = await make_chat("lee", tools=())
    reply = await db(actions.send, conv.pk, "Hello")
    assert reply.options == {}
    conv.tools = ["calculator", "no_such_tool"]
    await db(conv.save)
    conv = await db(Conversation.objects.get, pk=conv.pk)
    options = agent.options_for(conv, 0)
    assert [t["name"] for t in options["tools"]] == ["calculator"]


# ---- exports ------------------------------------------------------------------------------------

@database_sync_to_async
def exported():
    from chat import export

    user = get_user_model().objects.create_user("mo", password="pw-123456789")
    conv = Conversation.objects.create(owner=user, model="smollm2-135m", tools=["calculator"])
    question = Message.objects.create(conversation=conv, role="user", content="What is 2 + 2?")
    answer = Message.objects.create(conversation=conv, parent=question, role="assistant", status="done",
                                    finish_reason="tool_calls", options={"tool_round": 0})
    ToolCall.objects.create(message=answer, call_id="call_x", name="calculator", arguments='{"expression": "2 + 2"}',
                            output="4", status="ok", duration=0.5)
    conv.current_leaf = answer
    conv.save()
    return (export.conversation_json(conv), export.conversation_markdown(conv),
            export.conversation_json(conv, include_text=False), export.conversation_markdown(conv, include_text=False))


async def test_exports_hold_the_calls_and_results():
    data, markdown, bare, bare_markdown = await exported()
    call = data["messages"][1]["tool_calls"][0]
    assert call["name"] == "calculator" and call["status"] == "ok" and call["duration"] == 0.5
    assert call["arguments"] == '{"expression": "2 + 2"}' and call["output"] == "4"
    assert data["settings"]["tools"] == ["calculator"]
    assert "**Tool call: calculator** (ok, 0.50 s)" in markdown and '{"expression": "2 + 2"}' in markdown
    # Without text: the name and status only.
    call = bare["messages"][1]["tool_calls"][0]
    assert call["arguments"] is None and call["output"] is None and call["status"] == "ok"
    assert "2 + 2" not in bare_markdown and "Tool call **calculator**: ok" in bare_markdown


# ---- the reaper ---------------------------------------------------------------------------------

@database_sync_to_async
def stuck_loop():
    from datetime import timedelta

    from django.utils import timezone

    from chat import reaper

    user = get_user_model().objects.create_user("nell", password="pw-123456789")
    conv = Conversation.objects.create(owner=user, model="smollm2-135m", tools=["calculator"])
    question = Message.objects.create(conversation=conv, role="user", content="What is 2 + 2?")
    long_ago = timezone.now() - timedelta(hours=1)

    def answer(parent, status):
        m = Message.objects.create(conversation=conv, parent=parent, role="assistant", status="done",
                                   finish_reason="tool_calls", options={"tool_round": 0}, finished_at=long_ago)
        call = ToolCall.objects.create(message=m, call_id=f"call_{m.pk}", name="calculator", status=status,
                                       arguments="{}", output="4" if status == "ok" else "", updated_at=long_ago)
        return m, call

    running_answer, running = answer(question, "running")  # its worker died while the tool ran
    lost_answer, finished = answer(question, "ok")  # its worker died before the next answer
    waiting_answer, waiting = answer(question, "awaiting")  # waits for the user: left alone
    fresh_answer, fresh = answer(question, "pending")
    ToolCall.objects.filter(pk=fresh.pk).update(updated_at=timezone.now())  # just approved: left alone
    reaper.reap()
    return ({c.pk: (c.status, c.output) for c in ToolCall.objects.filter(message__conversation=conv)},
            {m.pk: (m.options or {}).get("tool_note", "") for m in Message.objects.filter(conversation=conv)},
            running, finished, waiting, fresh, lost_answer, running_answer)


async def test_the_reaper_ends_stuck_calls_and_notes_a_lost_loop():
    calls, notes, running, finished, waiting, fresh, lost_answer, running_answer = await stuck_loop()
    assert calls[running.pk] == ("error", "The tool did not finish: the worker running it stopped.")
    assert calls[finished.pk] == ("ok", "4")
    assert calls[waiting.pk][0] == "awaiting" and calls[fresh.pk][0] == "pending"
    assert "did not go on after the tools" in notes[lost_answer.pk]
    # Its call ended as an error only now: its loop is not noted until that too is old.
    assert notes[running_answer.pk] == ""
