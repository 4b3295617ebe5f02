"""Structured output that fails closed: which JSON Schemas become llama.cpp grammars (and that
llama.cpp accepts them), which are refused with the reason, and the check answers go through."""
import pytest

pytestmark = pytest.mark.nodb


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
    {"enum": ['say "hi"', "back\\slash", "two\nlines"], "description": "quotes and backslashes in values"},
    {"const": 'a "quoted" value'},
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

    from inference.structured import grammar_for_schema

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
    from inference.structured import SchemaError, grammar_for_schema

    with pytest.raises(SchemaError, match=why):
        grammar_for_schema(schema)


def test_answers_are_checked_against_the_schema():
    from inference.structured import validation_error

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert validation_error('{"n": 3}\n', schema) is None
    assert "does not match" in validation_error('{"n": "3"}', schema)
    assert "not valid JSON" in validation_error('{"n": 3', schema)
    assert "not valid JSON" in validation_error('{"s": "a\nb"}', None)  # a raw newline in a string
    assert validation_error("[1]", None) == "the answer is not a JSON object"


# What one schema may cost (inference.structured.LIMITS): each over-limit schema is refused before any
# conversion, naming the limit. The sizes an outsider used to stall or crash the server included.
TOO_LARGE = [
    ({"type": "string", "maxLength": 2_000_000}, "repetition"),  # crashed the worker (SIGSEGV)
    ({"type": "string", "minLength": 10**9}, "repetition"),  # would be written out a billion times
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 5000}, "repetition"),
    ({"type": "string", "pattern": "^a{0,100000}$"}, "repetition"),
    ({"type": "string", "pattern": "^(ab){3,}c{,5000}$"}, "repetition"),
    ({"type": "string", "pattern": "^" + "a" * 2000 + "$"}, "pattern_chars"),
    ({"type": "string", "pattern": "^(a+)*$"}, "repetition"),  # nested: every way of splitting the text
    ({"type": "string", "pattern": "^(\\w+\\s?)*$"}, "repetition"),
    ({"type": "string", "pattern": "^((a|b){0,100}(a|c){0,100}){0,100}$"}, "repetition"),
    ({"type": "object", "properties": {"x": {"type": "string", "enum": [f"v{i}" for i in range(20_000)]}}},
     "enum_values"),  # took 27 s for 7 tokens and made a bystander 75x slower
    ({"type": "object", "properties": {f"p{i}": {"enum": [f"{i}-{j}" for j in range(600)]} for i in range(2)}},
     "enum_values"),  # counted over the whole schema
    ({"enum": ["x" * 20_000, "y" * 20_000]}, "enum_chars"),
    ({"anyOf": [{"type": "object", "properties": {f"k{i}": {"type": "integer"}}} for i in range(500)]},
     "alternatives"),
    ({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(300)}}, "object_properties"),
    ({"type": "object", "properties": {f"o{i}": {"type": "object", "properties": {
        f"p{j}": {"type": "string"} for j in range(90)}} for i in range(20)}}, "properties"),
]


@pytest.mark.parametrize("schema, limit", TOO_LARGE)
def test_schemas_over_a_limit_are_refused_naming_it(schema, limit):
    from inference.structured import LIMITS, SchemaTooLarge, grammar_for_schema

    with pytest.raises(SchemaTooLarge) as caught:
        grammar_for_schema(schema)
    assert caught.value.limit == limit
    assert f"{LIMITS[limit]:,}" in str(caught.value)


def test_a_grammar_over_its_size_limit_is_refused(monkeypatch):
    from inference import structured as schemas

    many = {"type": "object", "properties": {f"p{i}": {"type": "string", "format": "date-time"} for i in range(90)},
            "required": [f"p{i}" for i in range(90)]}
    assert len(schemas.grammar_for_schema(many)) > 4096
    monkeypatch.setitem(schemas.LIMITS, "grammar_bytes", 4096)
    schemas._recent.clear()
    with pytest.raises(schemas.SchemaTooLarge, match="grammar of"):
        schemas.grammar_for_schema(many)
    schemas._recent.clear()


def test_the_largest_accepted_schemas_become_grammars_llama_cpp_parses(default_model_path):
    """At every limit, the grammar is one llama.cpp parses (no deep nesting to overflow a stack)."""
    import llama_cpp

    from inference.structured import LIMITS, grammar_for_schema

    n = LIMITS["repetition"]
    largest = [
        {"type": "string", "minLength": n // 2, "maxLength": n},
        {"type": "array", "items": {"type": "string", "maxLength": n}, "minItems": 1, "maxItems": n},
        {"type": "string", "pattern": "^((a|b){0,%d}c{1,%d}){0,%d}$" % (n // 40, n // 40, 40)},
        {"enum": [f"value-{i}" for i in range(LIMITS["enum_values"])]},
        {"anyOf": [{"type": "object", "properties": {f"k{i}": {"type": "integer"}}, "required": [f"k{i}"]}
                   for i in range(LIMITS["alternatives"])]},
        {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(LIMITS["object_properties"])}},
    ]
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(default_model_path.encode(), params)
    try:
        for schema in largest:
            sampler = llama_cpp.llama_sampler_init_grammar(llama_cpp.llama_model_get_vocab(model),
                                                           grammar_for_schema(schema).encode(), b"root")
            assert sampler, schema
            llama_cpp.llama_sampler_free(sampler)
    finally:
        llama_cpp.llama_model_free(model)


def test_an_enum_becomes_a_trie_of_exactly_its_values():
    """Shared prefixes are written once (only the distinct next characters are alive at a time),
    and the rule still matches exactly the values: checked by expanding the GBNF back to strings."""
    import re

    from inference.structured import grammar_for_schema

    values = ["red", "green", "grey", "gr", "", "a\"b", "value-1", "value-10", "value-2"]
    grammar = grammar_for_schema({"enum": values + [3, None]})
    root = next(line for line in grammar.splitlines() if line.startswith("root ::= "))[len("root ::= "):]
    assert root.count('"value-') == 1 and root.count('"gr') == 1

    def expand(text):  # the tiny GBNF subset the trie uses: literals, ( | ) groups and "?"
        tokens = re.findall(r'"(?:[^"\\]|\\.)*"|[()|?]', text)
        pos = 0

        def alternatives():
            nonlocal pos
            out = sequence()
            while pos < len(tokens) and tokens[pos] == "|":
                pos += 1
                out |= sequence()
            return out

        def sequence():
            nonlocal pos
            out = {""}
            while pos < len(tokens) and tokens[pos] not in "|)":
                if tokens[pos] == "(":
                    pos += 1
                    part = alternatives()
                    pos += 1  # ")"
                else:
                    part = {tokens[pos][1:-1].encode().decode("unicode_escape")}
                    pos += 1
                if pos < len(tokens) and tokens[pos] == "?":
                    part |= {""}
                    pos += 1
                out = {a + b for a in out for b in part}
            return out

        return alternatives()

    import json
    assert expand(root) == {json.dumps(v) for v in values + [3, None]}
