"""Reading a Responses request (POST /v1/responses) into the chat completions' Plan.

The request is rewritten as the chat completions body it means (input items as messages, flat
function tools as nested ones, ``text.format`` as ``response_format``) and read by
api.params.parse_chat, so both endpoints accept, refuse and run exactly the same things; a
refusal's ``param`` is then renamed back to the Responses field it came from.

A ``previous_response_id`` chain is the stored branch up to that response (chat.store.history_for):
its turns go before the new input, and only the new input becomes rows.
"""
import json
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Optional

from chat.models import Message
from chat.store import history_for

from . import params, prompt_size
from .errors import ApiError, invalid

ROLES = ("user", "system", "developer", "assistant")
TEXT_PARTS = ("input_text", "output_text", "text")
# Fields OpenAI's Responses API has that this server does not do: refused rather than ignored.
UNSUPPORTED = {
    "conversation": lambda v: v is not None,
    "prompt": lambda v: v is not None,
    "top_logprobs": lambda v: v not in (None, 0),
    "max_tool_calls": lambda v: v is not None,
    "truncation": lambda v: v not in (None, "disabled"),
    "include": lambda v: v is not None and (not isinstance(v, list)
                                            or any(i != "reasoning.encrypted_content" for i in v)),
}


@dataclass
class ResponseRequest:
    plan: params.Plan
    history: int = 0  # how many of plan.turns the previous_response_id chain holds
    previous: Optional[Message] = None  # that response's answer row
    meta: dict = field(default_factory=dict)  # what the response object echoes (kept in the row's options)
    background: bool = False
    store: bool = True


def response_id(message_id):
    return f"resp_{message_id}"


def message_id_of(rid):
    """The answer row a response id names, or None for anything not shaped like one of ours."""
    match = re.fullmatch(r"resp_(\d{1,18})", rid or "")
    return int(match.group(1)) if match else None


def find_response(user_id, rid):
    """The answer row of the stored response ``rid`` of ``user_id``, or None (another user's
    responses do not exist for them)."""
    pk = message_id_of(rid)
    if pk is None:
        return None
    message = (Message.objects.select_related("conversation").filter(
        pk=pk, role=Message.Role.ASSISTANT, conversation__owner_id=user_id).first())
    if message is None or message.generation_options.response is None:
        return None
    return message


def not_found(rid, param=None):
    return ApiError(404, f"No response with id '{str(rid)[:80]}' was found.", param=param,
                    code="response_not_found" if param is None else "previous_response_not_found")


def load_previous(data, user_id):
    """(the previous response's row, the chat messages of its branch), or (None, []); database work."""
    rid = data.get("previous_response_id")
    if rid is None:
        return None, []
    if not isinstance(rid, str):
        raise invalid("'previous_response_id' must be a string like 'resp_123'.", "previous_response_id")
    previous = find_response(user_id, rid)
    if previous is None:
        raise not_found(rid, "previous_response_id")
    if previous.status in Message.ACTIVE:
        raise invalid(f"The response '{rid}' is still in progress: wait until it has finished to continue it.",
                      "previous_response_id", "previous_response_in_progress")
    turns = history_for(SimpleNamespace(conversation=previous.conversation, parent=previous, parent_id=previous.pk))
    # The previous answer's own calls stay open: their outputs belong to the follow-ups (each
    # branch may answer them), not to the history.
    own = {c.call_id for c in previous.tool_calls.all()}
    turns = [t for t in turns if not (t["role"] == "tool" and t["tool_call_id"] in own)]
    return previous, [_chat_message(t) for t in turns]


def _chat_message(turn):
    message = {"role": turn["role"], "content": turn["content"]}
    if turn.get("reasoning"):
        message["reasoning_content"] = turn["reasoning"]
    if turn.get("tool_calls"):
        message["tool_calls"] = [{"id": c["id"], "type": "function",
                                  "function": {"name": c["name"], "arguments": c["arguments"]}}
                                 for c in turn["tool_calls"]]
    if turn["role"] == "tool":
        message["tool_call_id"] = turn["tool_call_id"]
    return message


def _text(value, param, output=False):
    """The text of a content field: a string or a list of text parts."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise invalid(f"'{param}' must be a string or a list of text parts.", param)
    parts = []
    for j, part in enumerate(value):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid(f"'{param}[{j}]' must be an object with a 'type'.", f"{param}[{j}]")
        if part["type"] == "refusal" and output:
            parts.append(part.get("refusal") or "")
            continue
        if part["type"] not in TEXT_PARTS:
            raise invalid(f"'{param}[{j}]' has type '{part['type'][:40]}': only text parts are supported (these "
                          "models read text only).", f"{param}[{j}]", "unsupported_input_item")
        if not isinstance(part.get("text"), str):
            raise invalid(f"'{param}[{j}].text' must be a string.", f"{param}[{j}].text")
        parts.append(part["text"])
    return "\n".join(parts)


def input_messages(value):
    """(chat messages, the input index each came from, the input items as stored) from ``input``."""
    if isinstance(value, str):
        return ([{"role": "user", "content": value}], [0],
                [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}])
    if not isinstance(value, list) or not value:
        raise invalid("'input' is required: a string or a non-empty list of input items.", "input")
    messages, origin, items = [], [], []
    tail = None  # the input index of the item that made or extended the last message
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"'{where}' must be an object.", where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ROLES:
                raise invalid(f"'{where}.role' must be one of {', '.join(ROLES)}, not {json.dumps(role)[:40]}.",
                              f"{where}.role")
            text = _text(item.get("content"), f"{where}.content", output=role == "assistant")
            messages.append({"role": role, "content": text})
            origin.append(i)
            kind_of_part = "output_text" if role == "assistant" else "input_text"
            items.append({"type": "message", "role": role, "content": [{"type": kind_of_part, "text": text}]})
            tail = i
        elif kind == "function_call":
            call = _function_call(item, where)
            if messages and messages[-1]["role"] == "assistant" and tail == i - 1:
                messages[-1].setdefault("tool_calls", []).append(call)  # one assistant turn: text and calls
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
                origin.append(i)
            items.append({"type": "function_call", "call_id": call["id"], "name": call["function"]["name"],
                          "arguments": call["function"]["arguments"]})
            tail = i
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise invalid(f"'{where}.call_id' must be the call_id of a function call.", f"{where}.call_id")
            output = _text(item.get("output"), f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
            origin.append(i)
            items.append({"type": "function_call_output", "call_id": call_id, "output": output})
            tail = i
        elif kind == "reasoning":
            continue  # a model's earlier reasoning, sent back by clients that keep state: not read again
        else:
            raise invalid(f"'{where}' is an input item of type {json.dumps(kind)[:60]}, which this server does not "
                          "support: send messages, function_call and function_call_output items.", f"{where}.type",
                          "unsupported_input_item")
    if not messages:
        raise invalid("'input' has no messages.", "input")
    return messages, origin, items


def _function_call(item, where):
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "{}")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not isinstance(arguments, str):
        raise invalid(f"'{where}' must be {{\"type\": \"function_call\", \"call_id\", \"name\", \"arguments\"}} with "
                      "arguments as a JSON string.", where)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments or "{}"}}


def _tools(data):
    """The flat function tools as the chat completions' nested ones."""
    tools = data.get("tools")
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise invalid("'tools' must be a list of {\"type\": \"function\", \"name\", \"parameters\"} objects.", "tools")
    nested = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise invalid(f"'tools[{i}]' is a tool of type {json.dumps(kind)[:40]}: only function tools are supported "
                          "(this server runs no hosted tools).", f"tools[{i}]", "unsupported_parameter")
        if "function" in tool:  # the chat completions' shape, sent here by mistake
            raise invalid(f"'tools[{i}]' must be flat: {{\"type\": \"function\", \"name\", \"description\", "
                          "\"parameters\"}, not nested under 'function'.", f"tools[{i}]")
        nested.append({"type": "function", "function": {k: tool[k] for k in ("name", "description", "parameters")
                                                         if k in tool}})
        if tool.get("strict") not in (None, True, False):
            raise invalid(f"'tools[{i}].strict' must be true or false.", f"tools[{i}].strict")
    return nested


def _tool_choice(data):
    choice = data.get("tool_choice")
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise invalid("'tool_choice' must be none, auto, required or {\"type\": \"function\", \"name\": ...}.",
                  "tool_choice")


def _format(data):
    """``text.format`` as a response_format, and the format as the response echoes it."""
    text = data.get("text")
    if text is None:
        return None, {"type": "text"}
    if not isinstance(text, dict):
        raise invalid("'text' must be an object like {\"format\": {\"type\": \"json_schema\", ...}}.", "text")
    fmt = text.get("format")
    if fmt is None:
        return None, {"type": "text"}
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise invalid("'text.format.type' must be text, json_object or json_schema.", "text.format")
    if fmt["type"] != "json_schema":
        return {"type": fmt["type"]}, {"type": fmt["type"]}
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise invalid("'text.format.schema' must be a JSON Schema object.", "text.format.schema")
    name = fmt.get("name", "response")
    if not isinstance(name, str):
        raise invalid("'text.format.name' must be a string.", "text.format.name")
    echo = {"type": "json_schema", "name": name, "schema": schema, "strict": fmt.get("strict", True) is not False}
    if isinstance(fmt.get("description"), str):
        echo["description"] = fmt["description"]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}, echo


def _metadata(data):
    metadata = data.get("metadata")
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or len(metadata) > 16 or any(
            not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > 512
            for k, v in metadata.items()):
        raise invalid("'metadata' must be an object of at most 16 string pairs (keys up to 64, values up to 512 "
                      "characters).", "metadata")
    return metadata


def _flag(data, name, default):
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"'{name}' must be true or false.", name)
    return value


def _reasoning(data):
    reasoning = data.get("reasoning")
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise invalid("'reasoning' must be an object like {\"effort\": \"none\"}.", "reasoning")
    effort = reasoning.get("effort")
    if effort is not None and effort not in params.EFFORTS:
        raise invalid(f"'reasoning.effort' must be one of {', '.join(sorted(params.EFFORTS))}.", "reasoning.effort")
    return effort


# A refusal's param from parse_chat, as the Responses field it came from.
RENAMES = [
    (re.compile(r"^tools\[(\d+)\]\.function\."), r"tools[\1]."),
    (re.compile(r"^response_format"), "text.format"),
    (re.compile(r"^max_tokens$"), "max_output_tokens"),
    (re.compile(r"^reasoning_effort$"), "reasoning.effort"),
    (re.compile(r"^messages$"), "input"),
]


def renamed(exc, origin, offset):
    """``exc`` with its param (and the message's mentions of it) naming the Responses field."""
    param = exc.param or ""
    message = exc.message

    def index(match):
        k = int(match.group(1)) - offset
        return f"input[{origin[k]}]" if 0 <= k < len(origin) else "previous_response_id"

    new = re.sub(r"^messages\[(\d+)\]", index, param)
    new = new.replace(".tool_call_id", ".call_id")
    for pattern, replacement in RENAMES:
        new = pattern.sub(replacement, new)
    message = re.sub(r"messages\[(\d+)\]", index, message).replace("tool_call_id", "call_id")
    if param and new != param:
        message = message.replace(f"'{param}'", f"'{new}'")
    return ApiError(exc.status, message, exc.type, new or None, exc.code, exc.retry_after)


def measure(plan):
    """api.prompt_size.check, its refusals naming 'input'."""
    try:
        return prompt_size.check(plan)
    except ApiError as exc:
        raise renamed(exc, [], 0) from None


def parse(data, previous=None, history=()):
    """The ResponseRequest of body ``data``; ``previous``/``history``: what load_previous returned."""
    for name, bad in UNSUPPORTED.items():
        if name in data and bad(data[name]):
            raise invalid(f"'{name}' is not supported by this server (see docs/api.md).", name, "unsupported_parameter")
    instructions = data.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise invalid("'instructions' must be a string.", "instructions")
    messages, origin, items = input_messages(data.get("input"))
    response_format, echo_format = _format(data)
    effort = _reasoning(data)
    store, background = _flag(data, "store", True), _flag(data, "background", False)
    stream = _flag(data, "stream", False)
    if background and not store:
        raise invalid("'background' needs 'store': a background response is kept to be polled.", "background")
    if background and stream:
        raise invalid("'background' with 'stream' is not supported by this server: poll GET /v1/responses/{id}.",
                      "stream", "unsupported_parameter")
    head = [{"role": "system", "content": instructions}] if instructions else []
    body = {"model": data.get("model"), "messages": head + list(history) + messages, "stream": stream,
            "temperature": data.get("temperature"), "top_p": data.get("top_p"),
            "max_tokens": data.get("max_output_tokens"), "response_format": response_format,
            "tools": _tools(data), "tool_choice": _tool_choice(data),
            "parallel_tool_calls": data.get("parallel_tool_calls"), "reasoning_effort": effort,
            "user": data.get("user")}
    try:
        plan = params.check_plan(params.parse_chat({k: v for k, v in body.items() if v is not None}))
    except ApiError as exc:
        raise renamed(exc, origin, len(head) + len(history)) from None
    if previous is not None and plan.model != previous.conversation.model:
        raise invalid(f"The previous response was made with model '{previous.conversation.model}': a chain keeps "
                      f"its model, so send that one (or start a new chain).", "model", "model_mismatch")
    plan.include_usage = False
    # Rows hold user, assistant and tool turns (chat.store.history_for rebuilds them); only a
    # system turn in the middle needs the exact turns in the answer's options.
    plan.exact_messages = plan.turns if any(t["role"] == "system" for t in plan.turns) else None
    meta = {"instructions": instructions, "metadata": _metadata(data), "store": store, "background": background,
            "text": {"format": echo_format}, "tool_choice": _echo_choice(data.get("tool_choice"), plan),
            "tools": [{"type": "function", "name": t["name"], "description": t["description"] or None,
                       "parameters": t["parameters"], "strict": True}
                      for t in params.tools.parse_tools({"tools": body["tools"]})],
            "parallel_tool_calls": plan.parallel_tool_calls,
            "previous_response_id": data.get("previous_response_id"),
            "reasoning": {"effort": effort, "summary": None}, "max_output_tokens": data.get("max_output_tokens"),
            "temperature": plan.temperature, "top_p": plan.top_p, "user": plan.user or None, "input": items}
    return ResponseRequest(plan=plan, history=len(history), previous=previous, meta=meta, background=background,
                           store=store)


def _echo_choice(given, plan):
    if isinstance(given, dict):
        return {"type": "function", "name": given.get("name")}
    return given or ("auto" if plan.tools else "none")
