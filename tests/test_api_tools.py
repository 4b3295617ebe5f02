"""Tool calling through the served site, with the clients agents use: the official ``openai``
package and LangChain's ``ChatOpenAI.bind_tools``, on the real SmolLM2 model (and the tiny
random-weight SmolLM3, for its template's own tool block). A forced or required call is always
well formed: its arguments parse and validate against the tool's schema."""
import json

import jsonschema
import openai
import pytest

from browser_support import ARTIFACTS
from live_stack import LiveServer, live_database
from smollm3_tiny import write_tiny_smollm3
from test_api import SETUP, ask, message_id, raw_request, bearer

pytestmark = pytest.mark.model

SMOL = "smollm2-135m"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The current time in a time zone.",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}},
                   "required": ["zone"]}}}
FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_path):
    import subprocess
    import sys

    from browser_support import REPO

    ARTIFACTS.mkdir(exist_ok=True)
    workdir = tmp_path_factory.mktemp("api-tools")
    tiny = write_tiny_smollm3(workdir / "tiny-smollm3.gguf")
    models = {
        SMOL: {"path": default_model_path, "n_ctx": 2048, "threads": 2, "device": "cpu"},
        "smollm3-tiny": {"path": str(tiny), "n_ctx": 2048, "threads": 2, "device": "cpu"},
    }
    with live_database("api_tools") as database_url:
        live = LiveServer(workdir, models, ARTIFACTS / "api-tools-server.log", database_url=database_url).start()
        try:
            out = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP], cwd=REPO, env=live.env,
                                 check=True, capture_output=True, text=True, timeout=120).stdout
            live.people = json.loads(out.strip().splitlines()[-1])
            yield live
        finally:
            live.stop()


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.people["alice"]["key"], max_retries=0,
                         timeout=120)


def parameters(name):
    return {"get_weather": WEATHER, "get_time": TIME}[name]["function"]["parameters"]


def assert_well_formed(call, names=("get_weather",)):
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), parameters(call.function.name))


def test_a_forced_call_is_well_formed_and_stored_as_a_row(server):
    answer = client(server).chat.completions.create(
        model=SMOL, messages=ask("What is the weather in Paris?"), tools=[WEATHER, TIME], tool_choice=FORCE_WEATHER,
        max_tokens=80, temperature=0)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None and len(choice.message.tool_calls) >= 1
    for call in choice.message.tool_calls:
        assert_well_formed(call)
    assert answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 0
    rows = server.query("SELECT call_id, name, arguments, status FROM chat_toolcall WHERE message_id = ? "
                        "ORDER BY \"index\"", message_id(answer.id))
    assert [(r["call_id"], r["name"], r["arguments"]) for r in rows] == [
        (c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    assert {r["status"] for r in rows} == {"requested"}
    content = server.query("SELECT content FROM chat_message WHERE id = ?", message_id(answer.id))[0]["content"]
    assert "<tool_call>" not in content


def test_a_streamed_forced_call_concatenates_to_the_final_arguments(server):
    stream = client(server).chat.completions.create(
        model=SMOL, messages=ask("Weather in Oslo, please."), tools=[WEATHER], tool_choice=FORCE_WEATHER,
        max_tokens=80, temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    calls, finish, content = {}, None, ""
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": "", "ids_sent": 0})
                if delta.id:
                    call["id"], call["ids_sent"] = delta.id, call["ids_sent"] + 1
                    call["name"] = delta.function.name
                else:
                    assert delta.function.name is None  # the name goes out once
                call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and content == "" and calls
    for call in calls.values():
        assert call["ids_sent"] == 1 and call["name"] == "get_weather"
        jsonschema.validate(json.loads(call["arguments"]), parameters("get_weather"))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    rows = server.query("SELECT arguments FROM chat_toolcall WHERE call_id = ?", calls[0]["id"])
    assert rows[0]["arguments"] == calls[0]["arguments"]


def test_required_with_two_tools_calls_one_of_them(server):
    answer = client(server).chat.completions.create(
        model=SMOL, messages=ask("What time is it in Tokyo?"), tools=[WEATHER, TIME], tool_choice="required",
        parallel_tool_calls=False, max_tokens=80, temperature=0)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    assert_well_formed(choice.message.tool_calls[0], names=("get_weather", "get_time"))


def test_auto_answers_in_text_or_calls_a_tool_never_both_half_done(server):
    """A 135M model calls tools badly when free to choose; whatever it does, the answer is text
    without call markup, or well-formed calls with finish_reason tool_calls."""
    system = ("You are a tool-using assistant. When the user asks about weather, reply only with "
              "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": ..., \"unit\": \"celsius\"}}</tool_call>")
    for seed in range(3):
        answer = client(server).chat.completions.create(
            model=SMOL, messages=[{"role": "system", "content": system}] + ask("Weather in Rome?"),
            tools=[WEATHER], max_tokens=60, seed=seed, temperature=0.8)
        choice = answer.choices[0]
        assert "<tool_call>" not in (choice.message.content or "")
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            for call in choice.message.tool_calls:
                assert_well_formed(call)
        else:
            assert choice.finish_reason in ("stop", "length")


def test_auto_with_a_model_that_opens_a_call_is_held_to_the_grammar(server):
    """The prompt ends inside an assistant turn that has begun a call (a prefilled answer is
    what a raw completion would be; here the history makes the model likely to call): the
    grammar must take over from the model's own "<tool_call>"."""
    history = [
        {"role": "system", "content": "Always answer with a tool call."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "18 C and sunny"},
        {"role": "assistant", "content": "It is 18 C and sunny in Paris."},
        {"role": "user", "content": "Weather in Berlin?"},
    ]
    seen_call = False
    for seed in range(4):
        answer = client(server).chat.completions.create(model=SMOL, messages=history, tools=[WEATHER],
                                                        max_tokens=60, seed=seed, temperature=0.7)
        choice = answer.choices[0]
        assert "<tool_call>" not in (choice.message.content or "")
        for call in choice.message.tool_calls or []:
            seen_call = True
            assert_well_formed(call)
    # Not asserted: whether a 135M model chooses to call (seen_call); only that any call is whole.
    del seen_call


def test_a_tool_result_round_trip_is_answered_in_text(server):
    c = client(server)
    first = c.chat.completions.create(model=SMOL, messages=ask("Weather in Lisbon?"), tools=[WEATHER],
                                      tool_choice=FORCE_WEATHER, max_tokens=80, temperature=0)
    call = first.choices[0].message.tool_calls[0]
    messages = ask("Weather in Lisbon?") + [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "21 degrees, clear sky"},
    ]
    second = c.chat.completions.create(model=SMOL, messages=messages, tools=[WEATHER], tool_choice="none",
                                       max_tokens=40, temperature=0)
    choice = second.choices[0]
    assert choice.finish_reason in ("stop", "length") and not choice.message.tool_calls
    assert choice.message.content
    # The result is kept with the call it answers, in this request's conversation.
    rows = server.query("SELECT t.output, t.status FROM chat_toolcall t JOIN chat_message m ON t.message_id = m.id "
                        "WHERE m.conversation_id = (SELECT conversation_id FROM chat_message WHERE id = ?)",
                        message_id(second.id))
    assert [(r["output"], r["status"]) for r in rows] == [("21 degrees, clear sky", "ok")]


def test_a_call_cut_by_max_tokens_ends_with_length_and_no_markup(server):
    for stream in (False, True):
        response = client(server).chat.completions.create(
            model=SMOL, messages=ask("Weather in Madrid?"), tools=[WEATHER], tool_choice=FORCE_WEATHER,
            max_tokens=6, temperature=0, stream=stream)
        if stream:
            chunks = list(response)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert finish == ["length"] and "<tool_call>" not in content
        else:
            choice = response.choices[0]
            assert choice.finish_reason == "length"
            assert not choice.message.tool_calls and "<tool_call>" not in (choice.message.content or "")


def test_langchain_bind_tools_with_a_named_choice_returns_a_tool_call(server):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return "sunny"

    llm = ChatOpenAI(model=SMOL, base_url=server.url + "/v1", api_key=server.people["alice"]["key"],
                     temperature=0, max_tokens=60, max_retries=0)
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("What's the weather in Paris?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
    assert isinstance(message.tool_calls[0]["args"].get("city"), str)
    streamed = None
    for chunk in llm.bind_tools([get_weather], tool_choice="get_weather").stream("Weather in Nice?"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.tool_calls and streamed.tool_calls[0]["name"] == "get_weather"


def test_the_smollm3_template_gets_the_tools_as_json_and_calls_follow_the_grammar(server):
    """The tiny SmolLM3 has random weights (its text is noise) but SmolLM3's real template and
    a real llama.cpp run: a forced call from it still parses and validates."""
    answer = client(server).chat.completions.create(
        model="smollm3-tiny", messages=ask("Weather in Paris?"), tools=[WEATHER], tool_choice=FORCE_WEATHER,
        max_tokens=120, temperature=0)
    choice = answer.choices[0]
    if choice.finish_reason == "tool_calls":
        assert_well_formed(choice.message.tool_calls[0])
    else:  # noise can spend every token inside a string: cut, and then no call at all
        assert choice.finish_reason == "length" and not choice.message.tool_calls


BAD = [
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "get weather!"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "n": {"type": "integer", "multipleOf": 3}}}}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "s": {"type": "string", "maxLength": 2_000_000}}}}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"tools": [WEATHER], "tool_choice": "required", "stop": ["}"]}, "stop"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_x", "content": "r"}]},
     "messages[1].tool_call_id"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"id": "c1"}]}]},
     "messages[1].tool_calls"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"}]}, "messages[1].tool_calls[0].function.arguments"),
    # OpenAI's rule: every call is answered by a tool message before the conversation goes on.
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
        {"id": "c2", "type": "function", "function": {"name": "b", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"}, {"role": "user", "content": "and?"}]}, "messages[3]"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "a", "arguments": "{}"}}]}]}, "messages"),
]


@pytest.mark.parametrize("extra,param", BAD)
def test_bad_tool_requests_are_400_naming_the_parameter(server, extra, param):
    body = {"model": SMOL, "messages": ask("hi"), **extra}
    status, _, payload = raw_request(server, "/v1/chat/completions", body, bearer(server))
    assert status == 400, payload
    assert payload["error"]["param"] == param, payload


def test_a_batch_line_with_a_forced_call_gets_the_call(server):
    c = client(server)
    line = {"custom_id": "w", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": SMOL, "messages": ask("Weather in Bern?"), "tools": [WEATHER],
                     "tool_choice": FORCE_WEATHER, "max_tokens": 80, "temperature": 0}}
    upload = c.files.create(file=("tools.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch")
    batch = c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    import time
    deadline = time.monotonic() + 240
    while batch.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
        time.sleep(1)
        batch = c.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    out = json.loads(c.files.content(batch.output_file_id).text.strip())
    message = out["response"]["body"]["choices"][0]["message"]
    assert out["response"]["body"]["choices"][0]["finish_reason"] == "tool_calls"
    jsonschema.validate(json.loads(message["tool_calls"][0]["function"]["arguments"]), parameters("get_weather"))
    assert out["response"]["body"]["usage"]["completion_tokens"] > 0
