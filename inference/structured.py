"""Structured output that fails closed: a JSON Schema becomes a GBNF grammar that llama.cpp
enforces while sampling, and a schema the grammar could not fully enforce is refused up front
(with the reason), never answered unconstrained.

llama-cpp-python's converter (``llama_cpp.llama_grammar.json_schema_to_gbnf``) follows one
branch per schema node ($ref, anyOf, a list of types, const, enum, object, array, pattern,
format, string length, primitive) and silently ignores keywords the others would read, and
some keywords entirely (minimum, multipleOf, uniqueItems, not, if/then/else, ...). ``check``
walks the schema the same way and refuses whatever that branch would drop. Answers are then
validated with ``jsonschema`` as a second guard.

Also the grammar of tool calls (``tool_call_grammar``): every call a JSON object of a tool's name
and arguments valid against its ``parameters`` schema. The engine and the chat page's tools need
it below the API; the API's 400 errors for a bad request (api.params, api.tools) wrap these
exceptions there.
"""
import copy
import hashlib
import json
import re

import jsonschema

from .toolcalls import CLOSE, OPEN

# Keywords that constrain nothing (kept out of the grammar, allowed anywhere).
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
               "readOnly", "writeOnly", "$defs", "definitions", "nullable"}
PRIMITIVES = {"string", "number", "integer", "boolean", "null", "object", "array"}
FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
MAX_DEPTH = 64
# What one schema may cost. A grammar is checked against candidate tokens inside the engine's
# shared step, so its size sets every user's speed, and llama.cpp writes repetition counts out
# literally (a maxLength of 2,000,000 became ~16 MB of nested rules whose parse overflowed the
# engine thread's stack). Each limit is checked before any conversion and named in the 400.
# OpenAI's structured outputs refuse at similar sizes (1,000 enum values, 10 levels of objects).
LIMITS = {
    "repetition": 1000,  # minLength, maxLength, minItems, maxItems, a pattern's {m,n}
    "enum_values": 1000,  # enum and const values in the whole schema
    "enum_chars": 30_000,  # their characters, all together
    "alternatives": 64,  # the subschemas of one anyOf
    "object_properties": 100,  # the properties of one object
    "properties": 1000,  # object properties in the whole schema
    "pattern_chars": 1000,  # one pattern's length
    "grammar_bytes": 64 * 1024,  # the GBNF text the schema becomes
}
QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'


class SchemaError(ValueError):
    """The schema cannot be enforced; the message says where and why."""


class SchemaTooLarge(SchemaError):
    """The schema is enforceable in principle but over one of LIMITS (``limit`` names which)."""

    def __init__(self, message, limit):
        super().__init__(message)
        self.limit = limit


class _Budget:
    """Counts what the whole schema spends against LIMITS while ``_check`` walks it."""

    def __init__(self):
        self.spent = {"enum_values": 0, "enum_chars": 0, "properties": 0}

    def spend(self, path, what, amount, noun):
        self.spent[what] += amount
        if self.spent[what] > LIMITS[what]:
            raise SchemaTooLarge(f"{_where(path)}: the schema has more than {LIMITS[what]:,} {noun}, the most "
                                 "this server enforces (each one slows the shared sampling step)", what)


def _bound(path, keyword, value):
    if isinstance(value, int) and not isinstance(value, bool) and value > LIMITS["repetition"]:
        raise SchemaTooLarge(f"{_where(path)}: {keyword} is {value:,}; at most {LIMITS['repetition']:,} can be "
                             "enforced while sampling", "repetition")


def _check_pattern(path, pattern):
    if not isinstance(pattern, str):
        _refuse(path, "pattern must be a string")
    if len(pattern) > LIMITS["pattern_chars"]:
        raise SchemaTooLarge(f"{_where(path)}: the pattern is {len(pattern):,} characters; at most "
                             f"{LIMITS['pattern_chars']:,} are accepted", "pattern_chars")
    for match in QUANTIFIER.finditer(pattern):
        for number in match.groups():
            if number:
                _bound(path, f"the pattern's quantifier {match.group(0)}", int(number))
    if _nested_repetition(pattern) > LIMITS["repetition"]:
        raise SchemaTooLarge(f"{_where(path)}: the pattern repeats a group that itself repeats (like (a+)* or "
                             f"(x{{0,50}}){{0,50}}) more than {LIMITS['repetition']:,} times in all; the grammar "
                             "would follow every way of splitting the text", "repetition")


def _nested_repetition(pattern):
    """The largest product of nested repetition bounds in ``pattern`` (``*``, ``+`` and ``{m,}``
    count as the repetition limit, ``?`` as 1). A quantified group holding a quantifier makes
    the grammar keep one path per way of splitting the text: (a+)* has exponentially many."""
    unbounded = LIMITS["repetition"]
    stack = [0]  # per open group: the largest repetition inside it so far
    last = 1  # what a quantifier right here would repeat: 1 for an atom, a closed group's inside
    i = 0
    while i < len(pattern):
        c = pattern[i]
        bound = None
        if c == "\\":
            i += 2
            last = 1
            continue
        if c == "[":
            i += 1
            while i < len(pattern) and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            last = 1
        elif c == "(":
            stack.append(0)
            last = 1
        elif c == ")" and len(stack) > 1:
            inner = stack.pop()
            last = max(inner, 1)
            stack[-1] = max(stack[-1], inner)
        elif c in "*+":
            bound = unbounded
        elif c == "?":
            bound = 1
        elif c == "{" and (match := QUANTIFIER.match(pattern, i)):
            low, high = match.groups()
            bound = int(high) if high else (unbounded if "," in match.group(0) else int(low or 1))
            i = match.end() - 1
        else:
            last = 1
        if bound is not None:
            stack[-1] = max(stack[-1], bound * last)
            last = 1
        i += 1
    return stack[0]


def _where(path):
    return "/".join(path) or "the schema root"


def _refuse(path, message):
    raise SchemaError(f"{_where(path)}: {message}")


def _only(node, allowed, path, branch):
    extra = sorted(set(node) - ANNOTATIONS - set(allowed))
    if extra:
        _refuse(path, f"{', '.join(extra)} cannot be enforced while sampling next to {branch} "
                      "(the answer would not be guaranteed to follow it)")


def _check_type(node, path, wanted):
    kind = node.get("type")
    if kind is not None and kind not in wanted:
        _refuse(path, f"type {kind!r} does not fit {', '.join(sorted(wanted))}")


def _check(node, path, depth, budget):
    if depth > MAX_DEPTH:
        _refuse(path, f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(node, dict):
        _refuse(path, "every subschema must be a JSON object (true/false schemas are not supported)")
    kind = node.get("type")
    if "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            _refuse(path, f"only local references (#/$defs/...) are supported, not {ref!r}")
        _only(node, {"$ref"}, path, "$ref")
    elif "oneOf" in node:
        _refuse(path, "oneOf is not supported (the grammar cannot make alternatives exclusive): use anyOf")
    elif "anyOf" in node:
        _only(node, {"anyOf"}, path, "anyOf")
        if not isinstance(node["anyOf"], list) or not node["anyOf"]:
            _refuse(path, "anyOf must be a non-empty list")
        if len(node["anyOf"]) > LIMITS["alternatives"]:
            raise SchemaTooLarge(f"{_where(path)}: anyOf has {len(node['anyOf']):,} alternatives; at most "
                                 f"{LIMITS['alternatives']:,} are enforced", "alternatives")
        for i, sub in enumerate(node["anyOf"]):
            _check(sub, path + ["anyOf", str(i)], depth + 1, budget)
    elif isinstance(kind, list):
        _only(node, {"type"}, path, "a list of types (use anyOf to constrain each)")
        if not kind or any(t not in PRIMITIVES for t in kind):
            _refuse(path, f"unknown type in {kind!r}")
    elif "const" in node:
        _only(node, {"const", "type"}, path, "const")
        _matches_type(node["const"], kind, path)
        _spend_values(budget, path, [node["const"]])
    elif "enum" in node:
        _only(node, {"enum", "type"}, path, "enum")
        if not isinstance(node["enum"], list) or not node["enum"]:
            _refuse(path, "enum must be a non-empty list")
        _spend_values(budget, path, node["enum"])
        for value in node["enum"]:
            _matches_type(value, kind, path)
    elif kind in (None, "object") and ("properties" in node or
                                       ("additionalProperties" in node and node["additionalProperties"] is not True)):
        _only(node, {"type", "properties", "required", "additionalProperties"}, path, "properties")
        props = node.get("properties", {})
        if not isinstance(props, dict):
            _refuse(path, "properties must be an object")
        required = node.get("required", [])
        if not isinstance(required, list) or any(not isinstance(r, str) for r in required):
            _refuse(path, "required must be a list of property names")
        missing = [r for r in required if r not in props]
        if missing:
            _refuse(path, f"required names {', '.join(missing)}, which properties does not define")
        if len(props) > LIMITS["object_properties"]:
            raise SchemaTooLarge(f"{_where(path)}: the object has {len(props):,} properties; at most "
                                 f"{LIMITS['object_properties']:,} are enforced in one object", "object_properties")
        budget.spend(path, "properties", len(props), "object properties")
        for name, sub in props.items():
            _check(sub, path + ["properties", name], depth + 1, budget)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            _check(extra, path + ["additionalProperties"], depth + 1, budget)
        elif extra not in (None, False, True):
            _refuse(path, "additionalProperties must be a boolean or a schema")
    elif "allOf" in node:
        _refuse(path, "allOf is not supported: merge the subschemas into one")
    elif kind in (None, "array") and ("items" in node or "prefixItems" in node):
        items = node.get("items") if "items" in node else node.get("prefixItems")
        if isinstance(items, list):
            _only(node, {"type", "items", "prefixItems"}, path, "prefixItems")
            if "items" in node and "prefixItems" in node:
                _refuse(path, "give either items or prefixItems")
            for i, sub in enumerate(items):
                _check(sub, path + ["prefixItems", str(i)], depth + 1, budget)
        else:
            _only(node, {"type", "items", "minItems", "maxItems"}, path, "items")
            if not items:  # the converter reads an empty items schema as missing
                _refuse(path, "items must be a non-empty schema")
            for bound in ("minItems", "maxItems"):
                if bound in node and (not isinstance(node[bound], int) or isinstance(node[bound], bool)
                                      or node[bound] < 0):
                    _refuse(path, f"{bound} must be a non-negative integer")
                _bound(path, bound, node.get(bound))
            _check(items, path + ["items"], depth + 1, budget)
    elif kind in (None, "string") and "pattern" in node:
        _only(node, {"type", "pattern"}, path, "pattern")
        _check_pattern(path, node["pattern"])
    elif kind in (None, "string") and "format" in node:
        _only(node, {"type", "format"}, path, "format")
        if node["format"] not in FORMATS:
            _refuse(path, f"format {node['format']!r} cannot be enforced (supported: {', '.join(sorted(FORMATS))})")
    elif kind == "string" and ("minLength" in node or "maxLength" in node):
        _only(node, {"type", "minLength", "maxLength"}, path, "minLength/maxLength")
        for bound in ("minLength", "maxLength"):
            _bound(path, bound, node.get(bound))
    elif kind == "object" or not (set(node) - ANNOTATIONS):
        _only(node, {"type"}, path, "a free-form object")
    elif kind in PRIMITIVES:
        _only(node, {"type"}, path, f"type {kind!r}")
    else:
        _refuse(path, f"cannot be turned into a grammar: {json.dumps(node)[:200]}")


def _spend_values(budget, path, values):
    budget.spend(path, "enum_values", len(values), "enum and const values")
    budget.spend(path, "enum_chars", sum(len(json.dumps(v)) for v in values), "characters of enum and const values")


def _matches_type(value, kind, path):
    if kind is not None:
        try:
            jsonschema.validate(value, {"type": kind})
        except jsonschema.ValidationError:
            _refuse(path, f"{json.dumps(value)[:80]} is not of type {kind!r}")


def _strip_annotations(node):
    """The schema without annotation keywords (the converter reads a node with only a
    description as an unknown type); $defs and definitions are kept for references."""
    if isinstance(node, list):
        return [_strip_annotations(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "$defs", "definitions"):
            out[key] = {k: _strip_annotations(v) for k, v in value.items()} if isinstance(value, dict) else value
        elif key in ANNOTATIONS:
            continue
        elif key in ("const", "enum"):
            out[key] = value  # values, not schemas
        else:
            out[key] = _strip_annotations(value)
    return out


def check(schema):
    """Raise SchemaError unless every constraint of ``schema`` can be enforced by the grammar."""
    if not isinstance(schema, dict):
        raise SchemaError("the schema must be a JSON object")
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SchemaError(f"not a valid JSON Schema: {exc.message}") from None
    except RecursionError:
        raise SchemaError(f"nested deeper than {MAX_DEPTH} levels") from None
    budget = _Budget()
    _check(schema, [], 0, budget)
    for defs in ("$defs", "definitions"):
        for name, sub in (schema.get(defs) or {}).items():
            _check(sub, [defs, name], 1, budget)


def grammar_for_schema(schema):
    """The GBNF text enforcing ``schema``; SchemaError when it cannot be enforced. Recent schemas'
    grammars are kept, by digest (a batch file repeats one schema on every line; a cache keyed by
    the schema text itself would hold up to 256 bodies of 100 KB)."""
    try:
        key = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        raise SchemaError("the schema is too deeply nested or recursive to convert") from None
    digest = hashlib.sha256(key.encode()).digest()
    grammar = _recent.get(digest)
    if grammar is None:
        grammar = _grammar_for_schema(schema)
        _recent[digest] = grammar
        while len(_recent) > 64:
            _recent.pop(next(iter(_recent)))
    return grammar


_recent = {}  # digest -> grammar, oldest first (dicts keep insertion order)


def _converter_class():
    from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter

    class Converter(SchemaConverter):
        """llama-cpp-python's converter, except that an enum becomes a trie of its values. Written
        as alternatives, every value is a separate path the grammar walks for every candidate
        token until the values part ("value-1" | "value-2" | ... keeps 1,000 paths alive for six
        characters); as a trie, only the distinct next characters are."""

        def visit(self, schema, name):
            if "enum" in schema and set(schema) <= {"enum", "type"}:
                rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
                values = sorted({json.dumps(v) for v in schema["enum"]})
                return self._add_rule(rule_name, _trie_rule(values, _literal))
            return super().visit(schema, name)

        def _generate_constant_rule(self, value):
            return _literal(json.dumps(value))

    return Converter


def _literal(text):
    """``text`` as a GBNF string literal. The converter's own escaping leaves backslashes alone,
    so a value holding a quote ("a\\"b" in JSON) ended its literal early and llama.cpp refused it."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


def _trie_rule(words, literal):
    """GBNF matching exactly ``words`` (sorted, distinct), sharing their common prefixes."""
    if words == [""]:
        return '""'
    ends = "" in words
    words = [w for w in words if w]
    prefix = words[0][:next((i for i in range(len(words[0])) if any(len(w) <= i or w[i] != words[0][i]
                                                                      for w in words)), len(words[0]))]
    if prefix and not ends:
        rest = [w[len(prefix):] for w in words]
        return literal(prefix) + ("" if rest == [""] else " " + _trie_rule(rest, literal))
    groups = {}
    for w in words:
        groups.setdefault(w[0], []).append(w)
    alternatives = " | ".join(_trie_rule(group, literal) for group in groups.values())
    return f"({alternatives})" + ("?" if ends else "")


def _grammar_for_schema(schema):
    return _grammar({"": schema})


def grammar_for_rules(named):
    """GBNF with one rule per item of ``named`` ({rule name: schema}), each enforcing its schema,
    and no root: the caller writes its own (api.tools joins calls to several functions)."""
    return _grammar(named)


def _grammar(named):
    for schema in named.values():
        check(schema)
    try:
        converter = _converter_class()(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        for name, schema in named.items():
            converter.visit(converter.resolve_refs(_strip_annotations(copy.deepcopy(schema)), "stdin"), name)
        grammar = converter.format_grammar()
    except RecursionError:
        raise SchemaError("the schema is too deeply nested or recursive to convert") from None
    except Exception as exc:  # the converter asserts and raises on what it cannot handle
        raise SchemaError(f"the grammar converter cannot handle it: {exc or type(exc).__name__}") from None
    if len(grammar) > LIMITS["grammar_bytes"]:
        raise SchemaTooLarge(f"the schema becomes a grammar of {len(grammar):,} bytes; at most "
                             f"{LIMITS['grammar_bytes']:,} are enforced (fewer properties, alternatives or "
                             "enum values make it smaller)", "grammar_bytes")
    # The converter's string characters admit raw control characters (a newline inside a string
    # is not JSON): use llama.cpp's own definition, as in its JSON grammar.
    return "\n".join(STRICT_CHAR if line.startswith("char ::= ") else line for line in grammar.split("\n"))


def json_object_grammar():
    from llama_cpp.llama_grammar import JSON_GBNF

    return JSON_GBNF


def validation_error(text, schema=None):
    """Why ``text`` is not a JSON value (an object for json_object) valid against ``schema``, or None."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"the answer is not valid JSON ({exc})"
    if schema is None:
        return None if isinstance(value, dict) else "the answer is not a JSON object"
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return f"the answer does not match the schema: {exc.message}"
    return None


# ---- tool calls ----------------------------------------------------------------------------

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_TOOL_DESCRIPTION_CHARS = 8192


def tool_call_grammar(tools, choice, parallel):
    """The GBNF for the calls ``choice`` allows ("auto", "required" or a tool's name) among
    ``tools`` ([{"name", "parameters"}]): one call, or with ``parallel`` one or more, each
    ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` (inference.toolcalls) with valid
    arguments. Raises SchemaTooLarge or SchemaError (the tools together cannot be enforced)."""
    chosen = [t for t in tools if choice in ("auto", "required") or t["name"] == choice]
    named = {f"call{i}": {"type": "object", "properties": {"name": {"const": t["name"]}, "arguments": t["parameters"]},
                          "required": ["name", "arguments"], "additionalProperties": False}
             for i, t in enumerate(chosen)}
    rules = grammar_for_rules(named)
    block = f'"{OPEN}" "\\n"? call "\\n"? "{CLOSE}"'
    return "\n".join([f"root ::= {block}" + (f' ("\\n"? {block})*' if parallel else ""),
                      "call ::= " + " | ".join(named), rules])
