"""OpenAI's Responses API through the served site (daphne, the embedded worker, the real
SmolLM2-135M and the echo backend), with the official ``openai`` package as the client: text,
streamed events in OpenAI's order, chains with ``previous_response_id`` kept as conversations,
structured output, function calls, background responses, and the 404s and 400s."""
import json
import re
import subprocess
import sys
import urllib.request

import jsonschema
import openai
import pytest

from browser_support import ARTIFACTS, REPO
from live_stack import LiveServer, live_database, wait_for
from smollm3_tiny import write_tiny_smollm3
from test_api import SETUP, bearer, raw_request

pytestmark = pytest.mark.model

SMOL = "smollm2-135m"
METRICS_TOKEN = "responses-metrics-token"
WEATHER = {"type": "function", "name": "get_weather", "description": "The current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                          "required": ["city"], "additionalProperties": False}, "strict": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_path):
    ARTIFACTS.mkdir(exist_ok=True)
    workdir = tmp_path_factory.mktemp("api-responses")
    tiny = write_tiny_smollm3(workdir / "tiny-smollm3.gguf")
    models = {
        SMOL: {"path": default_model_path, "n_ctx": 2048, "threads": 2, "device": "cpu"},
        "smollm3-echo": {"path": str(tiny), "backend": "echo", "device": "cpu"},
        "echo-slow": {"path": default_model_path, "backend": "echo", "delay": 0.05, "device": "cpu"},
    }
    with live_database("api_responses") as database_url:
        live = LiveServer(workdir, models, ARTIFACTS / "api-responses-server.log", database_url=database_url,
                          env={"SMOLSITE_METRICS_TOKEN": METRICS_TOKEN}).start()
        try:
            out = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP], cwd=REPO, env=live.env,
                                 check=True, capture_output=True, text=True, timeout=120).stdout
            live.people = json.loads(out.strip().splitlines()[-1])
            yield live
        finally:
            live.stop()


def client_for(server, who="alice"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.people[who]["key"], max_retries=0, timeout=120)


def row_of(server, response_id):
    return server.message(int(response_id.removeprefix("resp_")))


def options_of(server, response_id):
    options = row_of(server, response_id)["options"]
    return json.loads(options) if isinstance(options, str) else options  # SQLite's text, PostgreSQL's jsonb


def conversation_of(server, response_id):
    row = row_of(server, response_id)
    return server.query("SELECT * FROM chat_conversation WHERE id = ?", row["conversation_id"])[0]


def branch(server, response_id):
    """The stored rows from the conversation's root to the response's answer."""
    rows, row = [], row_of(server, response_id)
    while row is not None:
        rows.append(row)
        row = server.message(row["parent_id"]) if row["parent_id"] else None
    return rows[::-1]


def until_finished(client, response_id):
    return wait_for(lambda: (lambda r: r if r.status not in ("queued", "in_progress") else None)(
        client.responses.retrieve(response_id)), 180, f"{response_id} to finish", interval=0.3)


# ---- text --------------------------------------------------------------------------------------------

def test_a_text_response_is_a_stored_api_conversation_with_usage(server):
    client = client_for(server)
    response = client.responses.create(model=SMOL, input="Say hello in French.", instructions="You are terse.",
                                       max_output_tokens=16, temperature=0, metadata={"ticket": "T-1"})
    assert response.object == "response" and response.status in ("completed", "incomplete")
    assert response.model == SMOL and response.metadata == {"ticket": "T-1"}
    assert [item.type for item in response.output] == ["message"]
    text = response.output_text
    assert text and response.output[0].content[0].text == text
    usage = response.usage
    assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 16
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens >= 0 and usage.output_tokens_details.reasoning_tokens == 0
    row = row_of(server, response.id)
    assert (row["role"], row["status"], row["content"]) == ("assistant", "done", text)
    conv = conversation_of(server, response.id)
    assert (conv["source"], conv["system_prompt"]) == ("api", "You are terse.")
    assert [r["content"] for r in branch(server, response.id)] == ["Say hello in French.", text]
    ledger = server.query("SELECT * FROM usage_usagerecord WHERE message_id = ?", row["id"])[0]
    assert (ledger["source"], ledger["total_tokens"]) == ("api", usage.total_tokens)
    again = client.responses.retrieve(response.id)
    assert (again.id, again.status, again.output_text, again.usage.total_tokens) == (
        response.id, response.status, text, usage.total_tokens)
    assert again.instructions == "You are terse." and again.metadata == {"ticket": "T-1"}


def test_streamed_events_come_in_order_and_the_helper_assembles_them(server):
    client = client_for(server)
    with client.responses.stream(model="smollm3-echo", input="one two three four") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == "one two three four"
    check_text_events(events, final)
    assert row_of(server, final.id)["content"] == final.output_text
    # The real model, through the plain create(stream=True) iterator (cut by max_output_tokens or not).
    raw = list(client.responses.create(model=SMOL, input="Name a colour.", max_output_tokens=12, temperature=0,
                                       stream=True))
    text = check_text_events(raw, raw[-1].response)
    assert row_of(server, raw[0].response.id)["content"] == text and raw[-1].response.usage.output_tokens > 0


def check_text_events(events, final):
    """The documented order for a text answer; returns the streamed text."""
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and kinds[4:4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert kinds[4 + len(deltas):] == ["response.output_text.done", "response.content_part.done",
                                       "response.output_item.done", final_kind(final)]
    text = "".join(e.delta for e in deltas)
    assert text and final.output_text == text == events[-4].text
    assert final.id == events[0].response.id and events[0].response.status == "in_progress"
    return text


def final_kind(response):
    return {"completed": "response.completed", "incomplete": "response.incomplete"}[response.status]


def test_reasoning_is_its_own_output_item_with_its_tokens(server):
    client = client_for(server)
    response = client.responses.create(model="smollm3-echo", input="<think>plan it well</think>The answer")
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == "plan it well" and response.output_text == "The answer"
    details = response.usage.output_tokens_details
    assert 0 < details.reasoning_tokens < response.usage.output_tokens
    with client.responses.stream(model="smollm3-echo", input="<think>a b</think>c d") as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == "a b"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "c d"
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    off = client.responses.create(model="smollm3-echo", input="hello", reasoning={"effort": "none"})
    assert [item.type for item in off.output] == ["message"] and off.output_text == "hello"
    assert conversation_of(server, off.id)["thinking"] in (0, False)


# ---- chains ---------------------------------------------------------------------------------------------

def test_a_chain_of_three_remembers_turn_one_and_reuses_the_cache(server):
    client = client_for(server)
    first = client.responses.create(model=SMOL, input="My name is Zorblax. Remember my name.",
                                    max_output_tokens=24, temperature=0)
    second = client.responses.create(model=SMOL, previous_response_id=first.id, input="Say OK.",
                                     max_output_tokens=8, temperature=0)
    third = client.responses.create(model=SMOL, previous_response_id=second.id, input="What is my name?",
                                    max_output_tokens=16, temperature=0)
    assert "Zorblax" in third.output_text, third.output_text
    # One conversation, each turn a child of the previous answer.
    rows = branch(server, third.id)
    assert [r["role"] for r in rows] == ["user", "assistant"] * 3
    assert [r["id"] for r in rows[1::2]] == [int(r.id[5:]) for r in (first, second, third)]
    assert len({r["conversation_id"] for r in rows}) == 1
    conv = conversation_of(server, third.id)
    assert conv["current_leaf_id"] == rows[-1]["id"] and conv["source"] == "api"
    # The whole history is in each prompt, and the worker still held all of it but the new turn.
    assert third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens
    assert third.usage.input_tokens_details.cached_tokens >= second.usage.input_tokens
    assert client.responses.retrieve(third.id).previous_response_id == second.id


def test_two_follow_ups_to_one_response_are_two_branches(server):
    client = client_for(server)
    root = client.responses.create(model="smollm3-echo", input="start")
    left = client.responses.create(model="smollm3-echo", previous_response_id=root.id, input="left")
    right = client.responses.create(model="smollm3-echo", previous_response_id=root.id, input="right")
    assert (left.output_text, right.output_text) == ("left", "right")
    left_rows, right_rows = branch(server, left.id), branch(server, right.id)
    assert left_rows[:2] == right_rows[:2] and left_rows[2]["id"] != right_rows[2]["id"]
    assert left_rows[2]["parent_id"] == right_rows[2]["parent_id"] == int(root.id[5:])


def test_a_chain_keeps_its_model(server):
    client = client_for(server)
    first = client.responses.create(model="smollm3-echo", input="hi")
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=SMOL, previous_response_id=first.id, input="hi again")
    assert info.value.body["param"] == "model" and info.value.body["code"] == "model_mismatch"


# ---- structured output and tools ------------------------------------------------------------------------

def test_a_json_schema_format_is_enforced(server):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                                               "legs": {"enum": [2, 4, 6]}},
              "required": ["name", "legs"], "additionalProperties": False}
    response = client_for(server).responses.create(
        model=SMOL, input="Describe a cat as JSON.", temperature=0, max_output_tokens=80,
        text={"format": {"type": "json_schema", "name": "cat", "schema": schema, "strict": True}})
    assert response.status == "completed", response.status
    jsonschema.validate(json.loads(response.output_text), schema)
    assert response.text.format.type == "json_schema" and response.text.format.name == "cat"


def test_the_clients_pydantic_helper_gets_a_parsed_response(server):
    from typing import Literal

    from pydantic import BaseModel, Field

    class Cat(BaseModel):
        name: str = Field(max_length=30)
        legs: Literal[2, 4]

    parsed = client_for(server).responses.parse(model=SMOL, input="Describe a cat.", text_format=Cat,
                                                max_output_tokens=80, temperature=0)
    assert parsed.status == "completed" and isinstance(parsed.output_parsed, Cat)


def test_a_schema_the_grammar_cannot_enforce_is_refused_naming_text_format(server):
    with pytest.raises(openai.BadRequestError) as info:
        client_for(server).responses.create(model=SMOL, input="x", text={"format": {
            "type": "json_schema", "name": "n", "schema": {"type": "integer", "minimum": 3}}})
    assert info.value.body["param"] == "text.format" and info.value.body["code"] == "unsupported_schema"


def test_a_function_call_and_its_output_round_trip(server):
    client = client_for(server)
    asked = client.responses.create(model=SMOL, input="What is the weather in Paris?", tools=[WEATHER],
                                    tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=60,
                                    temperature=0)
    calls = [item for item in asked.output if item.type == "function_call"]
    assert asked.status == "completed" and len(calls) == 1, asked.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    assert asked.tools[0].name == "get_weather" and asked.tool_choice.name == "get_weather"
    answered = client.responses.create(
        model=SMOL, previous_response_id=asked.id, tools=[WEATHER], max_output_tokens=24, temperature=0,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 C and sunny"}])
    assert answered.status in ("completed", "incomplete") and answered.output_text
    # The output is this branch's: kept with the answer it asked for, not on the shared call row.
    assert options_of(server, answered.id)["tool_results"] == [{"call_id": call.call_id, "output": "18 C and sunny"}]
    assert server.query("SELECT output FROM chat_toolcall WHERE call_id = ?", call.call_id) == [{"output": ""}]
    # The answer to the call's output hangs right under the answer that made the call.
    assert row_of(server, answered.id)["parent_id"] == int(asked.id[5:])
    items = client.responses.input_items.list(answered.id)
    assert [(i.type, i.call_id, i.output) for i in items.data] == [
        ("function_call_output", call.call_id, "18 C and sunny")]


def history_of(server, response_id):
    """The turns the worker conditioned the response's answer on (chat.store.history_for)."""
    code = ("import json; from chat.models import Message; from chat.store import history_for; "
            f"print(json.dumps(history_for(Message.objects.get(pk={int(response_id[5:])}))))")
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, env=server.env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_each_branch_keeps_its_own_function_output_and_an_unanswered_call_is_refused(server):
    client = client_for(server)
    asked = client.responses.create(model=SMOL, input="What is the weather in Rome?", tools=[WEATHER],
                                    tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=60,
                                    temperature=0)
    call = next(item for item in asked.output if item.type == "function_call")

    def answer(output):
        return client.responses.create(
            model=SMOL, previous_response_id=asked.id, tools=[WEATHER], max_output_tokens=8, temperature=0,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": output}])

    sunny, secret = answer("18 C and sunny"), answer("PINEAPPLE is the secret word")
    follow_up = client.responses.create(model=SMOL, previous_response_id=sunny.id, input="And tomorrow?",
                                        max_output_tokens=8, temperature=0)
    for response, own, other in ((sunny, "18 C and sunny", "PINEAPPLE"), (secret, "PINEAPPLE", "18 C"),
                                 (follow_up, "18 C and sunny", "PINEAPPLE")):
        results = [t["content"] for t in history_of(server, response.id) if t["role"] == "tool"]
        assert len(results) == 1 and results[0].startswith(own) and other not in results[0], results
    # A branch that goes on from the call without its output is refused, as OpenAI does.
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=SMOL, previous_response_id=asked.id, input="Never mind.", max_output_tokens=8)
    assert info.value.body["param"] == "input[0]" and info.value.body["code"] == "tool_call_unanswered"
    # Deleting a branch takes its output with it: a new branch answering the call sees only its own.
    client.responses.delete(secret.id)
    again = answer("windy")
    assert [t["content"] for t in history_of(server, again.id) if t["role"] == "tool"] == ["windy"]


def test_a_streamed_function_call_concatenates_to_its_arguments(server):
    with client_for(server).responses.stream(
            model=SMOL, input="Weather in Oslo?", tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
            max_output_tokens=60, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [e.item.type for e in added] == ["function_call"]
    fragments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and fragments == done[0].arguments == final.output[0].arguments
    jsonschema.validate(json.loads(fragments), WEATHER["parameters"])
    assert final.output[0].call_id == added[0].item.call_id and events[-1].type == "response.completed"


def test_input_items_keep_client_managed_state_and_page(server):
    client = client_for(server)
    response = client.responses.create(model="smollm3-echo", input=[
        {"role": "user", "content": "one"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "two"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "three"}]}])
    assert response.output_text == "three"
    assert [r["content"] for r in branch(server, response.id)] == ["one", "two", "three", "three"]
    first = client.responses.input_items.list(response.id, limit=2)
    assert first.has_more and [i.content[0].text for i in first.data] == ["three", "two"]
    every = list(client.responses.input_items.list(response.id, limit=2))
    assert [i.content[0].text for i in every] == ["three", "two", "one"]
    ascending = client.responses.input_items.list(response.id, order="asc")
    assert [i.role for i in ascending.data] == ["user", "assistant", "user"] and not ascending.has_more


# ---- background, cancel, delete, store ------------------------------------------------------------------

def test_a_background_response_is_queued_and_polled_to_completed(server):
    client = client_for(server)
    response = client.responses.create(model=SMOL, input="Say hi.", background=True, max_output_tokens=8,
                                       temperature=0)
    assert response.status in ("queued", "in_progress") and response.background is True
    assert options_of(server, response.id)["priority"] == "background"
    done = until_finished(client, response.id)
    assert done.status in ("completed", "incomplete") and done.output_text
    assert done.output_text == row_of(server, response.id)["content"] and done.usage.output_tokens > 0


def test_a_background_response_can_be_cancelled(server):
    client = client_for(server)
    words = " ".join(f"w{i}" for i in range(1000))  # 50 s at 50 ms a word
    response = client.responses.create(model="echo-slow", input=words, background=True)
    cancelled = client.responses.cancel(response.id)
    assert cancelled.status == "cancelled", cancelled.status
    assert client.responses.retrieve(response.id).status == "cancelled"
    assert len(row_of(server, response.id)["content"].split()) < 1000
    # Only background responses are cancelled this way.
    plain = client.responses.create(model="smollm3-echo", input="x")
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(plain.id)


def test_store_false_leaves_no_conversation_but_the_usage_row(server):
    client = client_for(server)
    before = server.query("SELECT COUNT(*) AS n, COALESCE(SUM(total_tokens), 0) AS t FROM usage_usagerecord")[0]
    response = client.responses.create(model="smollm3-echo", input="forget me NOW-7", store=False)
    assert response.output_text == "forget me NOW-7" and response.store is False
    assert row_of(server, response.id) is None
    assert server.query("SELECT id FROM chat_message WHERE content LIKE '%NOW-7%'") == []
    after = server.query("SELECT COUNT(*) AS n, COALESCE(SUM(total_tokens), 0) AS t FROM usage_usagerecord")[0]
    assert after["n"] == before["n"] + 1 and after["t"] == before["t"] + response.usage.total_tokens
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    # Streamed, and as the next turn of a stored chain: the chain stays, the turn goes.
    kept = client.responses.create(model="smollm3-echo", input="keep me")
    with client.responses.stream(model="smollm3-echo", input="drop me", previous_response_id=kept.id,
                                 store=False) as stream:
        dropped = stream.get_final_response()
    assert dropped.output_text == "drop me" and row_of(server, dropped.id) is None
    assert [r["content"] for r in branch(server, kept.id)] == ["keep me", "keep me"]
    assert conversation_of(server, kept.id)["current_leaf_id"] == int(kept.id[5:])


def test_deleting_a_response_deletes_its_turn(server):
    client = client_for(server)
    first = client.responses.create(model="smollm3-echo", input="alpha")
    second = client.responses.create(model="smollm3-echo", input="beta", previous_response_id=first.id)
    conversation = conversation_of(server, first.id)["id"]
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    assert client.responses.retrieve(first.id).output_text == "alpha"
    assert conversation_of(server, first.id)["current_leaf_id"] == int(first.id[5:])
    client.responses.delete(first.id)
    assert server.query("SELECT id FROM chat_conversation WHERE id = ?", conversation) == []


# ---- errors ------------------------------------------------------------------------------------------------

def test_another_users_response_is_404_everywhere(server):
    mine = client_for(server, "alice").responses.create(model="smollm3-echo", input="private")
    bob = client_for(server, "bob")
    for call in (lambda: bob.responses.retrieve(mine.id), lambda: bob.responses.delete(mine.id),
                 lambda: bob.responses.cancel(mine.id), lambda: bob.responses.input_items.list(mine.id),
                 lambda: bob.responses.create(model="smollm3-echo", input="x", previous_response_id=mine.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert client_for(server, "alice").responses.retrieve(mine.id).output_text == "private"


@pytest.mark.parametrize("body, status, param, code", [
    ({"input": "x", "previous_response_id": "resp_999999999"}, 404, "previous_response_id",
     "previous_response_not_found"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, 400, "input[0].type", "unsupported_input_item"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]}, 400,
     "input[0].content[0]", "unsupported_input_item"),
    ({"input": [{"role": "robot", "content": "x"}]}, 400, "input[0].role", None),
    ({"input": [{"type": "function_call_output", "call_id": "call_nope", "output": "x"}]}, 400, "input[0].call_id",
     None),
    ({"input": []}, 400, "input", None),
    ({"input": "x", "tools": [{"type": "web_search"}]}, 400, "tools[0]", "unsupported_parameter"),
    ({"input": "x", "tools": [{"type": "function", "name": "bad name!"}]}, 400, "tools[0].name", None),
    ({"input": "x", "max_output_tokens": 0}, 400, "max_output_tokens", None),
    ({"input": "x", "temperature": 3}, 400, "temperature", None),
    ({"input": "x", "reasoning": {"effort": "extreme"}}, 400, "reasoning.effort", None),
    ({"input": "x", "background": True, "store": False}, 400, "background", None),
    ({"input": "x", "truncation": "auto"}, 400, "truncation", "unsupported_parameter"),
    ({"input": "x", "metadata": {"k": 1}}, 400, "metadata", None),
    ({"input": "x", "model": "no-such-model"}, 404, "model", "model_not_found"),
])
def test_bad_requests_name_the_parameter(server, body, status, param, code):
    got, _, payload = raw_request(server, "/v1/responses", {"model": "smollm3-echo", **body}, bearer(server))
    assert got == status, payload
    assert payload["error"]["param"] == param and payload["error"]["code"] == code, payload


def test_a_prompt_longer_than_the_context_is_400_naming_input(server):
    words = " ".join(f"w{i}" for i in range(3000))
    with pytest.raises(openai.BadRequestError) as info:
        client_for(server).responses.create(model=SMOL, input=words)
    assert info.value.body["param"] == "input" and info.value.body["code"] == "context_length_exceeded"


def completion_tokens(server, model, source):
    request = urllib.request.Request(server.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    total = 0.0
    for labels, value in re.findall(r"^smolsite_completion_tokens_total\{([^}]*)\} (\S+)$", text, re.M):
        if f'model="{model}"' in labels and f'source="{source}"' in labels:
            total += float(value)
    return total


def test_metrics_and_quotas_count_responses_as_api_requests(server):
    before = completion_tokens(server, "smollm3-echo", "api")
    response = client_for(server).responses.create(model="smollm3-echo", input="count these four words")
    wait_for(lambda: completion_tokens(server, "smollm3-echo", "api") == before + response.usage.output_tokens, 60,
             "the response's tokens in /metrics")
    # 60 tokens a day: the prompt and max_output_tokens held back do not fit.
    with pytest.raises(openai.RateLimitError) as info:
        client_for(server, "tight").responses.create(model="smollm3-echo", input="hi", max_output_tokens=100)
    assert info.value.body["code"] == "insufficient_quota"


def test_the_server_log_has_no_traceback(server):
    blocks = server.log_path.read_text().split("Traceback (most recent call last):")[1:]
    assert not blocks, blocks[0][-3000:]


def test_a_background_response_survives_a_restart(server):
    """Last: it restarts the server. The restarted server finds the answer cut (embedded, its queue
    was in memory) and the poll runs it again, under the same id."""
    client = client_for(server)
    words = " ".join(f"r{i}" for i in range(200))  # 10 s at 50 ms a word
    response = client.responses.create(model="echo-slow", input=words, background=True)
    wait_for(lambda: row_of(server, response.id)["content"], 60, "the answer to be under way")
    server.stop()
    server.start()
    # The restarted server finds it cut; the batch driver's tick may already have revived it (a second run).
    assert row_of(server, response.id)["status"] == "interrupted" or options_of(server, response.id).get("runs") == 2
    done = until_finished(client, response.id)
    assert (done.id, done.status, done.output_text) == (response.id, "completed", words)
    assert options_of(server, response.id)["runs"] == 2
