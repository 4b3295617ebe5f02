"""OpenAI's tool-calling request fields, checked, and the grammar that makes every call well formed.

A call is ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` (inference.toolcalls) whose
arguments follow that function's ``parameters`` schema, enforced while sampling by a grammar
built with the structured-output converter (inference.structured) and bounded by its limits.
``required`` and a named function run under it from the first token; ``auto`` lets the model
write freely until it opens a call.
"""
import json

from inference import structured as schemas
from inference.structured import MAX_TOOL_DESCRIPTION_CHARS as MAX_DESCRIPTION_CHARS
from inference.structured import TOOL_NAME as NAME

from .errors import invalid

MAX_TOOLS = 128  # OpenAI's own limit
CHOICES = ("none", "auto", "required")
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def parse_tools(data):
    """[{"name", "description", "parameters"}] from ``tools``; [] when absent."""
    tools = data.get("tools")
    if tools is None or tools == []:
        return []
    if not isinstance(tools, list):
        raise invalid("'tools' must be a list of {\"type\": \"function\", \"function\": {...}} objects.", "tools")
    if len(tools) > MAX_TOOLS:
        raise invalid(f"'tools' has {len(tools)} tools; at most {MAX_TOOLS} are accepted.", "tools")
    out, seen = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise invalid(f"'{where}' must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}.", where)
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise invalid(f"'{where}.function.name' must be 1 to 64 letters, digits, underscores or dashes, not "
                          f"{json.dumps(name)[:80]}.", f"{where}.function.name")
        if name in seen:
            raise invalid(f"'{where}.function.name': two tools are named '{name}'.", f"{where}.function.name")
        seen.add(name)
        description = fn.get("description", "")
        if description is None:
            description = ""
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
            raise invalid(f"'{where}.function.description' must be a string of at most {MAX_DESCRIPTION_CHARS} "
                          "characters.", f"{where}.function.description")
        parameters = fn.get("parameters")
        if parameters is None:
            parameters = EMPTY_PARAMETERS
        param = f"{where}.function.parameters"
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise invalid(f"'{param}' must be a JSON Schema of type object.", param)
        try:
            schemas.check(parameters)
        except schemas.SchemaTooLarge as exc:
            raise invalid(f"'{param}' is too large to enforce: {exc}", param, "schema_too_large") from None
        except schemas.SchemaError as exc:
            raise invalid(f"'{param}' cannot be enforced: {exc}", param, "unsupported_schema") from None
        out.append({"name": name, "description": description, "parameters": parameters})
    return out


def parse_tool_choice(data, tools):
    """"none", "auto", "required" or a tool's name (a named function); "auto" when absent."""
    choice = data.get("tool_choice")
    if choice is None:
        return "auto" if tools else "none"
    if isinstance(choice, str):
        if choice not in CHOICES:
            raise invalid(f"'tool_choice' must be none, auto, required or {{\"type\": \"function\", \"function\": "
                          f"{{\"name\": ...}}}}, not {json.dumps(choice)[:40]}.", "tool_choice")
        if choice == "required" and not tools:
            raise invalid("'tool_choice' is 'required' but no 'tools' were given.", "tool_choice")
        return choice
    if (not isinstance(choice, dict) or choice.get("type") != "function"
            or not isinstance(choice.get("function"), dict) or not isinstance(choice["function"].get("name"), str)):
        raise invalid("'tool_choice' must be none, auto, required or {\"type\": \"function\", \"function\": "
                      "{\"name\": ...}}.", "tool_choice")
    name = choice["function"]["name"]
    if name not in {t["name"] for t in tools}:
        raise invalid(f"'tool_choice' names the function '{name[:64]}', which is not in 'tools'.", "tool_choice")
    return name


def parse_parallel(data):
    value = data.get("parallel_tool_calls")
    if value is None:
        return True
    if not isinstance(value, bool):
        raise invalid("'parallel_tool_calls' must be true or false.", "parallel_tool_calls")
    return value


def assistant_calls(message, index):
    """The ``tool_calls`` of an assistant message in the history: [{"id", "name", "arguments"}]."""
    param = f"messages[{index}].tool_calls"
    calls = message.get("tool_calls")
    if message.get("function_call"):
        raise invalid(f"'messages[{index}].function_call' is the deprecated form: send 'tool_calls'.",
                      f"messages[{index}].function_call")
    if calls is None or calls == []:
        return []
    if not isinstance(calls, list):
        raise invalid(f"'{param}' must be a list.", param)
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if (not isinstance(call.get("id") if isinstance(call, dict) else None, str) or not isinstance(fn, dict)
                or not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments", ""), str)):
            raise invalid(f"'{param}[{j}]' must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", "
                          "\"arguments\"}} with arguments as a JSON string.", param)
        arguments = fn.get("arguments") or "{}"
        try:
            json.loads(arguments)
        except ValueError:
            raise invalid(f"'{param}[{j}].function.arguments' must be a JSON string (the model reads it back as "
                          f"it was sent), not {json.dumps(arguments[:60])}.", f"{param}[{j}].function.arguments") from None
        out.append({"id": call["id"], "name": fn["name"], "arguments": arguments})
    return out


def grammar(tools, choice, parallel):
    """The GBNF for the calls ``choice`` allows (inference.structured.tool_call_grammar), or the
    400 error saying why these tools cannot be enforced together."""
    try:
        return schemas.tool_call_grammar(tools, choice, parallel)
    except schemas.SchemaTooLarge as exc:
        raise invalid(f"These tools are too large to enforce together: {exc}", "tools", "schema_too_large") from None
    except schemas.SchemaError as exc:
        raise invalid(f"These tools cannot be enforced: {exc}", "tools", "unsupported_schema") from None
