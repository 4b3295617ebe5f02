"""tool_choice "auto" on the real SmolLM2-135M and its engine: the model writes freely until it
opens a call, then the calls' grammar takes over from the text it already wrote, so the call that
comes out is whole and valid; and a call opened in a way the grammar cannot follow is cut, never
left unconstrained."""
import json

import jsonschema
import numpy as np
import pytest

from api import tools as api_tools
from inference import toolcalls
from inference.backends import Delta, Finish, GenerationRequest, SamplingParams

pytestmark = [pytest.mark.model, pytest.mark.nodb]

WEATHER = {"name": "get_weather", "description": "The current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                          "required": ["city"], "additionalProperties": False}}
GRAMMAR = api_tools.grammar([WEATHER], "auto", True)


def token_of(vocab, text):
    import llama_cpp

    ids = (llama_cpp.llama_token * 8)()
    n = llama_cpp.llama_tokenize(vocab, text.encode(), len(text.encode()), ids, 8, False, True)
    assert n == 1, f"{text!r} is {n} tokens"
    return ids[0]


def allowed(sampler, token):
    from plugins.llama_cpp.sampling import TOKEN_DATA

    one = np.zeros(1, TOKEN_DATA)
    one["id"] = token
    sampler._apply(sampler.grammar, one)
    return one["logit"][0] != -np.inf


def test_the_grammar_waits_for_the_call_then_holds_the_model_to_it(bundled_registry):
    from plugins.llama_cpp.sampling import Sampler

    vocab = bundled_registry().backend("m").engine.vocab
    sampler = Sampler(vocab, SamplingParams(temperature=0.0), GRAMMAR, toolcalls.Trigger())
    try:
        for piece in ["Let", " me", " check", " <", "tool"]:
            assert sampler.saw(piece) and not sampler.trigger.fired
        assert sampler.saw("_call>\n") and sampler.trigger.fired
        assert allowed(sampler, token_of(vocab, "{")) and not allowed(sampler, token_of(vocab, "Hello"))
    finally:
        sampler.close()
    broken = Sampler(vocab, SamplingParams(temperature=0.0), GRAMMAR, toolcalls.Trigger())
    try:
        assert broken.saw("<tool_call>Hello") is False  # "H" cannot start a call: the answer is cut
    finally:
        broken.close()


STRICT = {"name": "get_weather", "description": "The current weather in a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                          "unit": {"enum": ["celsius", "fahrenheit"]}},
                         "required": ["city", "unit"], "additionalProperties": False}}


def shot(city, i):
    return [{"role": "user", "content": f"Weather in {city}?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": f"c{i}", "name": "get_weather",
                                                                 "arguments": json.dumps({"city": city})}]}]


def calls_from(backend, grammar):
    """The calls the model makes for four cities after two examples of calls that lack the
    "unit" STRICT requires, with ``grammar`` waiting for the call (or none)."""
    calls = []
    for city in ("Rome", "Berlin", "Oslo", "Lima"):
        request = GenerationRequest(
            id="r", model="m", messages=shot("Paris", 1) + shot("Tokyo", 2) + [{"role": "user",
                                                                                "content": f"Weather in {city}?"}],
            system_prompt="Answer weather questions with a get_weather call.", tools=[STRICT],
            params=SamplingParams(temperature=0.0, max_tokens=60), grammar=grammar,
            grammar_waits_for_call=bool(grammar))
        text, finish = [], None
        for chunk in backend.submit(request, backend.render_prompt(request), lambda: False):
            if isinstance(chunk, Delta):
                text.append(chunk.text)
            elif isinstance(chunk, Finish):
                finish = chunk
        text = "".join(text)
        assert finish.reason in ("stop", "length") and not finish.error
        if toolcalls.OPEN in text and finish.reason == "stop":
            found = toolcalls.parse(text[text.index(toolcalls.OPEN):])
            assert found, text  # an opened call that ended normally is a whole call
            calls += found
    return calls


def valid(call):
    try:
        jsonschema.validate(json.loads(call["arguments"]), STRICT["parameters"])
    except (ValueError, jsonschema.ValidationError):
        return False
    return call["name"] == "get_weather"


def test_auto_calls_from_the_engine_follow_the_schema_the_examples_break(bundled_registry):
    backend = bundled_registry().backend("m")
    free = calls_from(backend, "")
    held = calls_from(backend, api_tools.grammar([STRICT], "auto", True))
    # The control: left alone the model copies the examples, which lack "unit"...
    assert free and not all(valid(c) for c in free)
    # ...and with the grammar waiting for its call, every call it opens has one.
    assert held and all(valid(c) for c in held), held
