"""Grammars in the shared engine step, on the real SmolLM2-135M: the grammar filters the most
likely tokens first and the answers are the same as filtering the whole vocabulary; a grammar
that still costs the step too much ends its own request with a clear error while a bystander's
answer goes on unchanged; and an enum's answers are its values."""
import json

import pytest

from inference.backends import Delta, Finish, GenerationRequest, SamplingParams

pytestmark = [pytest.mark.model, pytest.mark.nodb]

SCHEMA = {"type": "object", "properties": {
    "colour": {"type": "string", "enum": ["red", "green", "grey", "blue", "black"]},
    "count": {"type": "integer"}, "note": {"type": "string", "maxLength": 40}},
    "required": ["colour", "count", "note"]}


def request(content, grammar="", user="u", max_tokens=48, **params):
    return GenerationRequest(id="r", model="m", messages=[{"role": "user", "content": content}], user_key=user,
                             params=SamplingParams(max_tokens=max_tokens, **params), grammar=grammar)


def collect(backend, req):
    text, finish = [], None
    for chunk in backend.submit(req, backend.render_prompt(req), lambda: False):
        if isinstance(chunk, Delta):
            text.append(chunk.text)
        elif isinstance(chunk, Finish):
            finish = chunk
    return "".join(text), finish


@pytest.mark.parametrize("params", [{"temperature": 0.0}, {"temperature": 0.9, "seed": 7, "top_p": 0.95}])
def test_filtering_the_likeliest_tokens_first_answers_as_filtering_every_token(bundled_registry, monkeypatch,
                                                                              params):
    from inference.structured import grammar_for_schema
    from plugins.llama_cpp import sampling

    backend = bundled_registry().backend("m")
    grammar = grammar_for_schema(SCHEMA)
    prompts = ["Write a poem about the sea.",  # far from JSON: the window often holds no allowed token
               "Describe a car as JSON with colour, count and note."]
    windowed = [collect(backend, request(p, grammar, **params)) for p in prompts]
    monkeypatch.setattr(sampling, "WINDOW", sampling_vocab_size(backend))  # the whole vocabulary
    everything = [collect(backend, request(p, grammar, **params)) for p in prompts]
    for (text, finish), (reference, reference_finish) in zip(windowed, everything):
        assert finish.reason == reference_finish.reason and not finish.error, finish
        assert text == reference
        json.loads(text)  # and it is the JSON the grammar describes


def sampling_vocab_size(backend):
    import llama_cpp

    return llama_cpp.llama_vocab_n_tokens(backend.engine.vocab)


def test_a_grammar_too_costly_for_the_shared_step_ends_itself_and_spares_a_bystander(bundled_registry):
    """20,000 alternatives that share nothing with what the model wants to say: each token's
    filtering walks every one of them over the whole vocabulary (the schema limits refuse such
    a schema; a grammar can still get here by other routes, and this is the last guard)."""
    import threading

    from plugins.llama_cpp.engine import GRAMMAR_TOO_COSTLY

    backend = bundled_registry().backend("m")
    costly = "root ::= " + " | ".join(f'"zq{i:05d}xk"' for i in range(20_000))
    bystander = request("Tell me a story about a dragon.", user="bystander", max_tokens=32, temperature=0.0)
    alone = collect(backend, bystander)
    results = {}
    attacker = threading.Thread(target=lambda: results.update(
        attacker=collect(backend, request("Tell me a story.", costly, user="attacker", temperature=0.0))))
    attacker.start()
    beside = collect(backend, bystander)
    attacker.join(timeout=240)
    text, finish = results["attacker"]
    assert finish.reason == "error" and finish.error == GRAMMAR_TOO_COSTLY
    assert beside[0] == alone[0] and beside[1].reason == "length"


def test_an_enum_answer_is_one_of_its_values(bundled_registry):
    from inference.structured import grammar_for_schema

    backend = bundled_registry().backend("m")
    values = [f"option-{i}" for i in range(1000)]
    grammar = grammar_for_schema({"type": "object", "properties": {"pick": {"enum": values}}, "required": ["pick"]})
    for content in ["Pick an option.", "Write a poem about the sea."]:
        text, finish = collect(backend, request(content, grammar, temperature=0.8, seed=3))
        assert finish.reason == "stop", finish
        assert json.loads(text)["pick"] in values
