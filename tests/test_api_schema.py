"""Structured output that fails closed: which JSON Schemas become llama.cpp grammars (and that
llama.cpp accepts them), which are refused with the reason, and the check answers go through."""
import pytest


ENFORCEABLE = [
    {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"},
                                      "id": {"type": "string", "format": "uuid"}}, "required": ["when", "id"]},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
     "required": ["code"], "additionalProperties": False},
    {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}]},
    {"type": "object", "additionalProperties": {"type": "integer"}},
    {"$defs": {"node": {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#/$defs/node"},
                                                                              {"type": "null"}]}}}},
     "type": "object", "properties": {"head": {"$ref": "#/$defs/node"}}},  # recursive
    {"type": ["string", "null"], "description": "annotations are fine anywhere"},
    {"title": "anything", "description": "a free-form value"},
]

NOT_ENFORCEABLE = [
    ({"type": "integer", "maximum": 3}, "maximum"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
    ({"allOf": [{"type": "object"}]}, "allOf"),
    ({"not": {"type": "string"}}, "not"),
    ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "maxLength"),
    ({"type": ["string", "null"], "maxLength": 3}, "maxLength"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "required names b"),
    ({"$ref": "https://example.org/schema.json"}, "local references"),
    ({"type": "object", "properties": {"a": True}}, "JSON object"),
    ({"type": "string", "enum": ["a", 1]}, "not of type"),
    ({"type": "strin"}, "not a valid JSON Schema"),
    # The converter loses references below a root $ref: refused, not answered unconstrained.
    ({"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"},
     "converter cannot handle"),
]


@pytest.mark.parametrize("schema", ENFORCEABLE)
def test_enforceable_schemas_become_grammars_llama_cpp_accepts(schema, default_model_path):
    import llama_cpp

    from api.schema import grammar_for_schema

    grammar = grammar_for_schema(schema)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True  # the tokenizer alone, no weights
    model = llama_cpp.llama_model_load_from_file(default_model_path.encode(), params)
    try:
        sampler = llama_cpp.llama_sampler_init_grammar(llama_cpp.llama_model_get_vocab(model), grammar.encode(),
                                                       b"root")
        assert sampler, grammar
        llama_cpp.llama_sampler_free(sampler)
    finally:
        llama_cpp.llama_model_free(model)


@pytest.mark.parametrize("schema, why", NOT_ENFORCEABLE)
def test_schemas_the_grammar_would_not_enforce_are_refused_with_the_reason(schema, why):
    from api.schema import SchemaError, grammar_for_schema

    with pytest.raises(SchemaError, match=why):
        grammar_for_schema(schema)


def test_answers_are_checked_against_the_schema():
    from api.schema import validation_error

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert validation_error('{"n": 3}\n', schema) is None
    assert "does not match" in validation_error('{"n": "3"}', schema)
    assert "not valid JSON" in validation_error('{"n": 3', schema)
    assert "not valid JSON" in validation_error('{"s": "a\nb"}', None)  # a raw newline in a string
    assert validation_error("[1]", None) == "the answer is not a JSON object"
