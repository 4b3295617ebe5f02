"""Tool calls as text (inference.toolcalls): however the model's stream is cut into pieces, the
answer never holds call markup, a streamed call's fragments concatenate to exactly what the parse
returns, a cut-off call is never half parsed, and the trigger fires only outside reasoning. Plus
the prompts: SmolLM3's template gets the tools as JSON, any other template the generic block."""
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference import toolcalls
from inference.backends import GenerationRequest
from inference.prompt import ChatTemplate

pytestmark = pytest.mark.nodb

SMOLLM3_TEMPLATE = (Path(__file__).parent / "data" / "smollm3_chat_template.jinja").read_text()
CALL_A = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "P}a\\"ris", "n": [1, {"a": 2}]}}\n</tool_call>'
CALL_B = '<tool_call>{"name":"now","arguments":{}}</tool_call>'


def cuts(text, points):
    points = sorted({p % (len(text) + 1) for p in points})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def split(pieces):
    splitter = toolcalls.CallSplitter()
    out = []
    for piece in pieces:
        out += splitter.feed(piece)
    out += splitter.finish()
    return "".join(t for k, t in out if k == "text"), "".join(t for k, t in out if k == "tool")


def stream(pieces):
    calls = toolcalls.CallStream()
    names, arguments = {}, {}
    for piece in pieces:
        for index, name, fragment in calls.feed(piece):
            if name is not None:
                assert index not in names  # a name goes out once
                names[index] = name
            arguments[index] = arguments.get(index, "") + fragment
    return names, arguments


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 400), max_size=12), st.sampled_from(["", "Sure. ", "a <tool b <tool_cal c "]))
def test_however_cut_the_answer_holds_no_markup_and_fragments_join_to_the_parse(points, before):
    text = before + CALL_A + "\n" + CALL_B
    answer, tool_text = split(cuts(text, points))
    assert answer == before and tool_text == CALL_A + "\n" + CALL_B
    calls = toolcalls.parse(tool_text)
    assert [c["name"] for c in calls] == ["get_weather", "now"]
    assert json.loads(calls[0]["arguments"]) == {"city": 'P}a"ris', "n": [1, {"a": 2}]}
    names, arguments = stream(cuts(tool_text, points))
    assert names == {0: "get_weather", 1: "now"}
    assert [arguments[0], arguments[1]] == [c["arguments"] for c in calls]


@given(st.integers(1, len(CALL_A) - 1))
def test_a_call_cut_anywhere_is_left_out_whole(cut):
    assert toolcalls.parse(CALL_B + CALL_A[:cut]) == toolcalls.parse(CALL_B)
    names, arguments = stream([CALL_A[:cut]])
    # While it is written its arguments may stream, but never beyond what the model wrote.
    for index, text in arguments.items():
        assert CALL_A[:cut].find(text) >= 0


def test_malformed_blocks_are_not_calls():
    for body in ('{"name": 3, "arguments": {}}', '{"name": "f", "arguments": [1]}', '{"name": "f"} x',
                 "not json", '{"name": "f", "arguments": {}} trailing'):
        assert toolcalls.parse(f"<tool_call>{body}</tool_call>") == []


def feed_trigger(pieces):
    trigger = toolcalls.Trigger()
    for i, piece in enumerate(pieces):
        opened = trigger.feed(piece)
        if opened is not None:
            return opened, "".join(pieces[i + 1:])
    return None, None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 200), max_size=8))
def test_the_trigger_fires_at_the_first_call_outside_reasoning(points):
    text = "<think>maybe <tool_call>{no}</tool_call> here</think>\nOK <tool_call>\n{\"name\""
    opened, rest = feed_trigger(cuts(text, points))
    assert opened is not None
    assert (opened + rest).startswith("<tool_call>\n{") and text.endswith(opened + rest)
    # Without a reasoning block a call can open anywhere, even first.
    opened, rest = feed_trigger(cuts("<tool_call>{", points))
    assert opened + rest == "<tool_call>{"


def test_an_unfinished_reasoning_block_never_triggers():
    assert feed_trigger(["<think>", "<tool_call>{", "\"name\""])[0] is None


TOOLS = [{"name": "get_weather", "description": "Weather.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "get_weather",
                                                         "arguments": '{"city": "Paris"}'}]},
    {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "18 C"},
    {"role": "tool", "tool_call_id": "c2", "name": "get_weather", "content": "19 C"},
]


def test_smollm3s_template_reads_the_tools_as_json_and_the_calls_as_blocks():
    template = ChatTemplate(SMOLLM3_TEMPLATE)
    assert toolcalls.template_knows_tools(template.source)
    request = GenerationRequest(id="x", model="m", messages=HISTORY, tools=TOOLS)
    text = template.render(request.chat_messages(native_tools=True), enable_thinking=False,
                           xml_tools=[toolcalls.tool_json(t) for t in TOOLS])
    assert toolcalls.tool_json(TOOLS[0]) in text and "'name'" not in text  # JSON, not a Python repr
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<|im_start|>user\n18 C<|im_end|>" in text  # the template's own rendering of results


def test_a_template_without_tools_gets_the_generic_block_and_tool_responses():
    request = GenerationRequest(id="x", model="m", messages=HISTORY, tools=TOOLS, system_prompt="Be brief.")
    messages = request.chat_messages(native_tools=False)
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("Be brief.\n\n# Tools")
    assert toolcalls.tool_json(TOOLS[0]) in messages[0]["content"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == toolcalls.call_text("get_weather", '{"city": "Paris"}')
    assert messages[3]["content"] == ("<tool_response>\n18 C\n</tool_response>\n"
                                      "<tool_response>\n19 C\n</tool_response>")
    text = ChatTemplate("").render(messages)  # ChatML: what SmolLM2's own template writes
    assert "<|im_start|>assistant\n<tool_call>" in text
