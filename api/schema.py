"""Structured output that fails closed: a JSON Schema becomes a GBNF grammar that llama.cpp
enforces while sampling, and a schema the grammar could not fully enforce is refused up front
(with the reason), never answered unconstrained.

llama-cpp-python's converter (``llama_cpp.llama_grammar.json_schema_to_gbnf``) follows one
branch per schema node ($ref, anyOf, a list of types, const, enum, object, array, pattern,
format, string length, primitive) and silently ignores keywords the others would read, and
some keywords entirely (minimum, multipleOf, uniqueItems, not, if/then/else, ...). ``check``
walks the schema the same way and refuses whatever that branch would drop. Answers are then
validated with ``jsonschema`` as a second guard.
"""
import copy
import functools
import json

import jsonschema

# Keywords that constrain nothing (kept out of the grammar, allowed anywhere).
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
               "readOnly", "writeOnly", "$defs", "definitions", "nullable"}
PRIMITIVES = {"string", "number", "integer", "boolean", "null", "object", "array"}
FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
MAX_DEPTH = 64
STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'


class SchemaError(ValueError):
    """The schema cannot be enforced; the message says where and why."""


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


def _check(node, path, depth):
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
        for i, sub in enumerate(node["anyOf"]):
            _check(sub, path + ["anyOf", str(i)], depth + 1)
    elif isinstance(kind, list):
        _only(node, {"type"}, path, "a list of types (use anyOf to constrain each)")
        if not kind or any(t not in PRIMITIVES for t in kind):
            _refuse(path, f"unknown type in {kind!r}")
    elif "const" in node:
        _only(node, {"const", "type"}, path, "const")
        _matches_type(node["const"], kind, path)
    elif "enum" in node:
        _only(node, {"enum", "type"}, path, "enum")
        if not isinstance(node["enum"], list) or not node["enum"]:
            _refuse(path, "enum must be a non-empty list")
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
        for name, sub in props.items():
            _check(sub, path + ["properties", name], depth + 1)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            _check(extra, path + ["additionalProperties"], depth + 1)
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
                _check(sub, path + ["prefixItems", str(i)], depth + 1)
        else:
            _only(node, {"type", "items", "minItems", "maxItems"}, path, "items")
            if not items:  # the converter reads an empty items schema as missing
                _refuse(path, "items must be a non-empty schema")
            for bound in ("minItems", "maxItems"):
                if bound in node and (not isinstance(node[bound], int) or isinstance(node[bound], bool)
                                      or node[bound] < 0):
                    _refuse(path, f"{bound} must be a non-negative integer")
            _check(items, path + ["items"], depth + 1)
    elif kind in (None, "string") and "pattern" in node:
        _only(node, {"type", "pattern"}, path, "pattern")
    elif kind in (None, "string") and "format" in node:
        _only(node, {"type", "format"}, path, "format")
        if node["format"] not in FORMATS:
            _refuse(path, f"format {node['format']!r} cannot be enforced (supported: {', '.join(sorted(FORMATS))})")
    elif kind == "string" and ("minLength" in node or "maxLength" in node):
        _only(node, {"type", "minLength", "maxLength"}, path, "minLength/maxLength")
    elif kind == "object" or not (set(node) - ANNOTATIONS):
        _only(node, {"type"}, path, "a free-form object")
    elif kind in PRIMITIVES:
        _only(node, {"type"}, path, f"type {kind!r}")
    else:
        _refuse(path, f"cannot be turned into a grammar: {json.dumps(node)[:200]}")


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
    _check(schema, [], 0)
    for defs in ("$defs", "definitions"):
        for name, sub in (schema.get(defs) or {}).items():
            _check(sub, [defs, name], 1)


def grammar_for_schema(schema):
    """The GBNF text enforcing ``schema``; SchemaError when it cannot be enforced. Recent schemas'
    grammars are kept (a batch file repeats one schema on every line; converting takes ~2 ms)."""
    try:
        key = json.dumps(schema)
    except (TypeError, ValueError, RecursionError):
        key = None
    if key is None or len(key) > 100_000:
        return _grammar_for_schema(schema)
    return _cached_grammar(key)


@functools.lru_cache(maxsize=256)
def _cached_grammar(key):
    try:
        schema = json.loads(key)
    except RecursionError:
        raise SchemaError("the schema is too deeply nested or recursive to convert") from None
    return _grammar_for_schema(schema)


def _grammar_for_schema(schema):
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    check(schema)
    try:
        grammar = json_schema_to_gbnf(json.dumps(_strip_annotations(copy.deepcopy(schema))))
    except RecursionError:
        raise SchemaError("the schema is too deeply nested or recursive to convert") from None
    except Exception as exc:  # the converter asserts and raises on what it cannot handle
        raise SchemaError(f"the grammar converter cannot handle it: {exc or type(exc).__name__}") from None
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
