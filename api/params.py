"""Reading and checking request bodies: every wrong field is a 400 naming the parameter."""
import json
import math
from dataclasses import dataclass, field
from typing import Optional

from django.conf import settings

from inference import structured as schemas
from inference.model_configs import UnknownModel, get_model

from . import tools
from .errors import ApiError, invalid

ROLES = {"system", "developer", "user", "assistant", "tool"}
EFFORTS = {"none", "minimal", "low", "medium", "high"}
MAX_STOP = 4
# The engine looks for every stop string at every token, in the step all answers share: a
# 100,000-character stop the text keeps almost matching costs that step quadratic time.
MAX_STOP_CHARS = 256
MAX_MESSAGES = 2000  # more turns than any context here holds; each becomes a row


@dataclass
class Plan:
    """What one API request asks for, checked."""

    model: str
    kind: str  # "chat" or "completion"
    system_prompt: str = ""
    turns: list = field(default_factory=list)  # [{"role", "content", "reasoning"}] (chat)
    exact_messages: Optional[list] = None  # set when the turns alone cannot say it (see store.claim)
    prompts: list = field(default_factory=list)  # completion prompts
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 1024
    stop: list = field(default_factory=list)
    seed: Optional[int] = None
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    user: str = ""
    thinking: bool = True
    grammar: str = ""
    schema: Optional[dict] = None  # to validate answers against (json_schema)
    json_mode: bool = False  # json_object
    echo: bool = False
    tools: list = field(default_factory=list)  # [{"name", "description", "parameters"}] (api.tools)
    tool_choice: str = "none"  # "none", "auto", "required" or a tool's name
    parallel_tool_calls: bool = True
    # tool_choice "auto": the calls' grammar, which applies once the model opens a call.
    tool_grammar: str = ""

    @property
    def choices(self):
        return self.n * (len(self.prompts) if self.kind == "completion" else 1)


def parse_body(request):
    try:
        body = request.body
    except Exception:  # RequestDataTooBig and friends
        raise ApiError(413, "The request body is too large.", code="request_too_large") from None
    if not body:
        raise invalid("The request body is empty: send a JSON object.")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"We could not parse the JSON body of your request ({exc}).") from None
    except RecursionError:
        raise invalid("We could not parse the JSON body of your request (nested too deeply).") from None
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object.")
    if _has_nul(data):
        raise invalid("The request contains a NUL character (\\u0000), which text here cannot hold.")
    return data


def _has_nul(value, depth=0):
    if isinstance(value, str):
        return "\x00" in value
    if depth > 200:
        return False
    if isinstance(value, dict):
        return any(_has_nul(k, depth + 1) or _has_nul(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v, depth + 1) for v in value)
    return False


def _is_number(value):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer of hundreds of digits
        return False


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _number(data, name, default, low, high):
    value = data.get(name)
    if value is None:
        return default
    if not _is_number(value) or not low <= value <= high:
        raise invalid(f"'{name}' must be a number from {low} to {high}, not {json.dumps(value)[:40]}.", name)
    return float(value)


def _model(data):
    name = data.get("model")
    if not isinstance(name, str) or not name:
        raise invalid("'model' is required: one of the names GET /v1/models lists.", "model")
    try:
        return get_model(name).name
    except UnknownModel:
        raise ApiError(404, f"The model '{name[:100]}' does not exist on this server (GET /v1/models lists them).",
                       "invalid_request_error", "model", "model_not_found") from None


def _content(value, index):
    param = f"messages[{index}].content"
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise invalid(f"'{param}[{j}]' must be an object with a 'type'.", param)
            if part["type"] not in ("text", "input_text"):
                raise invalid(f"'{param}[{j}]' has type '{part['type'][:40]}': only text parts are supported "
                              "(these models read text only).", param)
            if not isinstance(part.get("text"), str):
                raise invalid(f"'{param}[{j}].text' must be a string.", param)
            parts.append(part["text"])
        return "\n".join(parts)
    raise invalid(f"'{param}' must be a string or a list of text parts.", param)


def _unsupported(data):
    checks = [
        ("functions", lambda v: v not in (None, [])),
        ("function_call", lambda v: v not in (None, "none", "auto")),
        ("logprobs", lambda v: v not in (None, False, 0)),
        ("top_logprobs", lambda v: v not in (None, 0)),
        ("logit_bias", lambda v: v not in (None, {})),
        ("frequency_penalty", lambda v: v not in (None, 0, 0.0)),
        ("presence_penalty", lambda v: v not in (None, 0, 0.0)),
        ("audio", lambda v: v is not None),
        ("prediction", lambda v: v is not None),
        ("suffix", lambda v: v not in (None, "")),
        ("best_of", lambda v: v not in (None, 1)),
        ("modalities", lambda v: v not in (None, ["text"])),
    ]
    for name, bad in checks:
        if name in data and bad(data[name]):
            raise invalid(f"'{name}' is not supported by this server.", name, "unsupported_parameter")


def _common(data, plan):
    plan.temperature = _number(data, "temperature", 0.7, 0.0, 2.0)
    plan.top_p = _number(data, "top_p", 0.95, 0.0, 1.0)
    limit = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = data.get(name)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise invalid(f"'{name}' must be a positive integer, not {json.dumps(value)[:40]}.", name)
        limit = value
    plan.max_tokens = min(limit or settings.SMOLSITE_API_DEFAULT_MAX_TOKENS, 10_000_000)
    stop = data.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > MAX_STOP or any(not isinstance(s, str) for s in stop):
        raise invalid(f"'stop' must be a string or a list of up to {MAX_STOP} strings.", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise invalid(f"Each 'stop' string may be at most {MAX_STOP_CHARS} characters.", "stop")
    plan.stop = [s for s in stop if s]
    seed = data.get("seed")
    if seed is not None and (not _is_int(seed) or abs(seed) >= 2 ** 63):
        raise invalid("'seed' must be an integer.", "seed")
    plan.seed = seed
    n = data.get("n", 1)
    n = 1 if n is None else n
    cap = settings.SMOLSITE_API_MAX_N
    if not _is_int(n) or not 1 <= n <= cap:
        raise invalid(f"'n' must be an integer from 1 to {cap} on this server.", "n")
    plan.n = n
    stream = data.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise invalid("'stream' must be true or false.", "stream")
    plan.stream = bool(stream)
    options = data.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise invalid("'stream_options' must be an object like {\"include_usage\": true}.", "stream_options")
        plan.include_usage = bool(options.get("include_usage"))
    user = data.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > 256):
        raise invalid("'user' must be a string of at most 256 characters.", "user")
    plan.user = user or ""
    _unsupported(data)


def _response_format(data, plan):
    fmt = data.get("response_format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise invalid("'response_format' must be an object with a 'type'.", "response_format")
    kind = fmt["type"]
    if kind == "text":
        return
    if kind == "json_object":
        plan.grammar, plan.json_mode = schemas.json_object_grammar(), True
        return
    if kind != "json_schema":
        raise invalid(f"'response_format.type' must be text, json_object or json_schema, not '{kind[:40]}'.",
                      "response_format")
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise invalid("'response_format.json_schema' must be an object with a 'name' and a 'schema'.",
                      "response_format")
    schema = spec.get("schema") or {}
    try:
        plan.grammar = schemas.grammar_for_schema(schema)
    except schemas.SchemaTooLarge as exc:
        raise invalid(f"This JSON schema is too large to enforce: {exc}", "response_format",
                      "schema_too_large") from None
    except schemas.SchemaError as exc:
        raise invalid(f"This JSON schema cannot be enforced: {exc}", "response_format",
                      "unsupported_schema") from None
    plan.schema = schema


def parse_chat(data):
    model = _model(data)
    plan = Plan(model=model, kind="chat")
    messages = data.get("messages")
    if messages is None:
        raise invalid("'messages' is required: a list of {\"role\", \"content\"} objects.", "messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty list.", "messages")
    if len(messages) > MAX_MESSAGES:
        raise invalid(f"'messages' has {len(messages):,} messages; at most {MAX_MESSAGES:,} are accepted.", "messages")
    turns, exact = [], False
    open_calls = {}  # call id -> name, for calls no tool message has answered yet
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise invalid(f"'messages[{i}]' must be an object.", f"messages[{i}]")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise invalid(f"'messages[{i}].role' must be one of system, developer, user, assistant or tool, not "
                          f"{json.dumps(role)[:40]}.", f"messages[{i}].role")
        calls = tools.assistant_calls(m, i) if role == "assistant" else []
        if role != "assistant" and (m.get("tool_calls") or m.get("function_call")):
            raise invalid(f"'messages[{i}]' is a {role} message: only assistant messages have tool calls.",
                          f"messages[{i}].tool_calls")
        content = _content(m.get("content"), i)
        reasoning = m.get("reasoning_content")
        if reasoning is not None and not isinstance(reasoning, str):
            raise invalid(f"'messages[{i}].reasoning_content' must be a string.", f"messages[{i}].reasoning_content")
        role = "system" if role == "developer" else role
        if open_calls and role != "tool":
            raise _unanswered(open_calls, i)
        if role == "system" and not turns:  # the leading system message(s): the system prompt
            plan.system_prompt = f"{plan.system_prompt}\n\n{content}" if plan.system_prompt else content
            continue
        turn = {"role": role, "content": content, "reasoning": reasoning or ""}
        if calls:
            turn["tool_calls"] = calls
            open_calls.update((c["id"], c["name"]) for c in calls)
        if role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in open_calls:
                raise invalid(f"'messages[{i}].tool_call_id' must be the id of a call an earlier assistant message "
                              f"made and no tool message answered yet, not {json.dumps(call_id)[:80]}.",
                              f"messages[{i}].tool_call_id")
            turn["tool_call_id"], turn["name"] = call_id, open_calls.pop(call_id)
        if role in ("system", "tool") or calls or (role == "assistant" and not content):
            exact = True  # rows cannot carry these (see chat.store.history_for)
        turns.append(turn)
    if not turns:
        raise invalid("'messages' has only system messages: add a user message.", "messages")
    if open_calls:
        raise _unanswered(open_calls)
    plan.turns = turns
    plan.exact_messages = turns if exact else None
    _common(data, plan)
    _response_format(data, plan)
    _tools(data, plan)
    effort = data.get("reasoning_effort")
    if effort is not None and (not isinstance(effort, str) or effort not in EFFORTS):
        raise invalid(f"'reasoning_effort' must be one of {', '.join(sorted(EFFORTS))}.", "reasoning_effort")
    kwargs = data.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise invalid("'chat_template_kwargs' must be an object.", "chat_template_kwargs")
    enable = (kwargs or {}).get("enable_thinking")
    if enable is not None and not isinstance(enable, bool):
        raise invalid("'chat_template_kwargs.enable_thinking' must be true or false.", "chat_template_kwargs")
    # Thinking is on unless switched off; a grammar constrains the answer from its first token,
    # so reasoning (which would not follow it) is off with one.
    plan.thinking = not (effort == "none" or enable is False or plan.grammar)
    return plan


def _unanswered(open_calls, index=None):
    """OpenAI's rule: an assistant message's calls are each answered by a tool message right after
    it (a model shown a call with no result would answer as if it had one)."""
    ids = ", ".join(sorted(open_calls))[:200]
    if index is None:
        return invalid(f"The last assistant message's 'tool_calls' must each be answered by a tool message; none "
                       f"answered {ids}.", "messages", "tool_call_unanswered")
    return invalid(f"An assistant message with 'tool_calls' must be followed by tool messages answering each call "
                   f"before 'messages[{index}]'; none answered {ids}.", f"messages[{index}]", "tool_call_unanswered")


def _tools(data, plan):
    plan.tools = tools.parse_tools(data)
    plan.tool_choice = tools.parse_tool_choice(data, plan.tools)
    plan.parallel_tool_calls = tools.parse_parallel(data)
    if plan.tool_choice == "none":
        plan.tools = []  # not offered: the model answers in text (earlier calls still render)
        return
    if plan.grammar:
        raise invalid("'response_format' cannot be combined with 'tools' unless 'tool_choice' is 'none': the answer "
                      "is either a tool call or text in that format.", "response_format")
    # A named function is called once (as OpenAI does); "required" and "auto" may call several
    # unless parallel_tool_calls is false.
    parallel = plan.parallel_tool_calls and plan.tool_choice in ("auto", "required")
    calls = tools.grammar(plan.tools, plan.tool_choice, parallel)
    if plan.tool_choice == "auto":
        plan.tool_grammar = calls
    else:
        plan.grammar = calls


def check_plan(plan):
    """Checks across parameters, after parsing (the endpoints and batch lines alike)."""
    if plan.stop and plan.grammar:
        what = "a JSON response_format" if not plan.tools else "a forced tool call"
        raise invalid(f"'stop' cannot be combined with {what}: a stop string could cut the JSON short.", "stop")
    return plan


def parse_completion(data):
    model = _model(data)
    plan = Plan(model=model, kind="completion", thinking=False)
    prompt = data.get("prompt")
    if prompt is None:
        raise invalid("'prompt' is required: a string or a list of strings.", "prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or any(not isinstance(p, str) for p in prompts):
        raise invalid("'prompt' must be a string or a non-empty list of strings (token ids are not supported).",
                      "prompt")
    plan.prompts = prompts
    echo = data.get("echo", False)
    if echo not in (None, True, False):
        raise invalid("'echo' must be true or false.", "echo")
    plan.echo = bool(echo)
    _common(data, plan)
    _response_format(data, plan)
    if plan.choices > settings.SMOLSITE_API_MAX_N:
        raise invalid(f"{len(prompts)} prompts × n={plan.n} is more than the {settings.SMOLSITE_API_MAX_N} "
                      "completions one request may ask for on this server.", "n")
    return plan
