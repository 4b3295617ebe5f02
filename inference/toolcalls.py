"""Tool calls as model text: how tools and earlier calls are written into a prompt, and how the
calls a model writes are told apart from its answer, streamed and parsed.

One format for every model, SmolLM3's (and Hermes'):

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A template that knows tools (SmolLM3's ``xml_tools``) describes them itself; any other gets the
same description in its system turn (``tool_block``), so tools work on every model. The grammar
that makes a call well formed is built in ``inference.structured.tool_call_grammar``; the sampler switches it on when
the model opens a call (``plugins.llama_cpp.sampling.CallTrigger``).
"""
import json
import re

from .tags import partial_tag

OPEN, CLOSE = "<tool_call>", "</tool_call>"
THINK_CLOSE = "</think>"

INSTRUCTIONS = (
    "You may call one or more functions to assist with the user query.\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n\n<tools>\n{tools}</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}}\n</tool_call>"
)


def call_id(message_id, index):
    """The id of the ``index``th call of an answer: known while it streams, the same in its row."""
    return f"call_{message_id}_{index}"


def tool_json(tool):
    """One tool as the prompt shows it: OpenAI's function shape, as JSON (never a Python repr)."""
    return json.dumps({"type": "function", "function": {
        "name": tool["name"], "description": tool.get("description", ""),
        "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}}, ensure_ascii=False)


def tool_block(tools):
    """The description of ``tools`` for a model whose template has no place for them."""
    return "# Tools\n\n" + INSTRUCTIONS.format(tools="".join(tool_json(t) + "\n" for t in tools))


def template_knows_tools(source):
    return "xml_tools" in (source or "")


def call_text(name, arguments):
    """A call as the model writes it; ``arguments`` is a JSON string (or an object)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            arguments = {}
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CLOSE}"


def template_messages(messages, native):
    """Turns with ``tool_calls`` and ``role: "tool"`` results in the shape chat templates read:
    calls become the assistant's own ``<tool_call>`` text; results stay ``tool`` turns for a
    template that knows them (SmolLM3 renders them as user turns itself), and become one user
    turn of ``<tool_response>`` blocks per run of results otherwise."""
    out = []
    for m in messages:
        role = m["role"]
        if role == "assistant" and m.get("tool_calls"):
            calls = "\n".join(call_text(c["name"], c["arguments"]) for c in m["tool_calls"])
            out.append({**m, "content": f"{m['content']}\n{calls}" if m.get("content") else calls})
        elif role == "tool" and not native:
            block = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_results": True})
        else:
            out.append(dict(m))
    for m in out:
        m.pop("_tool_results", None)
        m.pop("tool_calls", None)
        m.pop("tool_call_id", None)
    return out


class CallSplitter:
    """A stream filter: answer text up to the first ``<tool_call>`` stays "text"; from there on
    everything is "tool" (the calls, raw), which ``parse`` and ``CallStream`` read. So no
    ``<tool_call>`` text ever reaches the answer, however the stream is cut."""

    def __init__(self):
        self.calling = False
        self.held = ""

    def feed(self, text):
        if self.calling:
            return [("tool", text)] if text else []
        buf, self.held = self.held + text, ""
        at = buf.find(OPEN)
        if at >= 0:
            self.calling = True
            return [(kind, part) for kind, part in (("text", buf[:at]), ("tool", buf[at:])) if part]
        keep = partial_tag(buf, OPEN)
        self.held = buf[len(buf) - keep:] if keep else ""
        return [("text", buf[:len(buf) - keep])] if len(buf) > keep else []

    def finish(self):
        held, self.held = self.held, ""
        return [("text", held)] if held else []


def parse(tool_text):
    """The complete calls in ``tool_text`` (what CallSplitter sent as "tool"): a list of
    {"name", "arguments"}, ``arguments`` being the JSON text exactly as the model wrote it (so
    streamed fragments concatenate to it). A block cut short, or one that is not a JSON object
    of a string name and an object of arguments, is left out whole."""
    calls = []
    pos = 0
    while True:
        start = tool_text.find(OPEN, pos)
        if start < 0:
            return calls
        end = tool_text.find(CLOSE, start)
        if end < 0:
            return calls
        pos = end + len(CLOSE)
        call = _call(tool_text[start + len(OPEN):end])
        if call is not None:
            calls.append(call)


def _call(body):
    head = _head(body)
    if head is None:
        return None
    name, at = head
    try:
        arguments, after = json.JSONDecoder().raw_decode(body, at)
    except ValueError:
        return None
    if not isinstance(arguments, dict) or body[after:].strip() != "}":
        return None
    return {"name": name, "arguments": body[at:after]}


class CallStream:
    """Reads streamed tool text into OpenAI's streaming deltas: for each call its name, once,
    then fragments of its ``arguments`` that concatenate to exactly what ``parse`` returns for
    it. ``feed`` returns [(index, name or None, fragment)]."""

    def __init__(self):
        self.text = ""
        self.index = 0  # the call being written
        self.sent = {}  # index -> arguments text sent so far (present once the name is sent)

    def sent_for(self, index):
        return self.sent.get(index)

    def feed(self, piece):
        self.text += piece
        out = []
        while True:
            start = self.text.find(OPEN)
            if start < 0:
                return out
            body_at = start + len(OPEN)
            end = self.text.find(CLOSE, body_at)
            body = self.text[body_at:end if end >= 0 else len(self.text)]
            if end >= 0:
                call = _call(body)
                if call is not None:
                    self._send(out, call["name"], call["arguments"])
                    self.index += 1
                self.text = self.text[end + len(CLOSE):]
                continue
            head = _head(body)
            if head is not None:
                # What the model has written of the arguments, and nothing after their end.
                self._send(out, head[0], _value_so_far(body[head[1]:]))
            return out

    def _send(self, out, name, arguments):
        if self.index not in self.sent:
            self.sent[self.index] = ""
            out.append((self.index, name, ""))
        sent = self.sent[self.index]
        if arguments.startswith(sent) and len(arguments) > len(sent):
            out.append((self.index, None, arguments[len(sent):]))
            self.sent[self.index] = arguments


_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*(?=\S)')


def _head(body):
    """(name, where the arguments start in ``body``) once ``body`` has written both."""
    match = _HEAD.match(body)
    if match is None:
        return None
    try:
        name = json.loads(match.group(1))
    except ValueError:
        return None
    return name, match.end()


def _value_so_far(text):
    """The start of ``text`` that belongs to the JSON object it begins with: all of it while the
    object is open (less trailing whitespace), up to its closing brace once closed."""
    depth, in_string, escaped = 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return text[:i + 1]
    return text.rstrip()


class Trigger:
    """Watches what a sequence writes for the opening of a call, outside its reasoning (which,
    as the thinking plugin reads it, is a ``<think>`` block at the very start). ``feed`` returns
    None until the call opens, then once the text from ``<tool_call>`` on: what the call's
    grammar must accept before it takes over. Holds only a tag's length of text."""

    THINK_OPEN = "<think>"

    def __init__(self):
        self.state = "start"  # start | thinking | answer | fired
        self.tail = ""

    @property
    def fired(self):
        return self.state == "fired"

    def feed(self, text):
        if self.state == "fired":
            return None
        buf, self.tail = self.tail + text, ""
        if self.state == "start":
            body = buf.lstrip()
            if body.startswith(self.THINK_OPEN):
                self.state, buf = "thinking", body[len(self.THINK_OPEN):]
            elif self.THINK_OPEN.startswith(body):  # only whitespace, or the tag still arriving
                self.tail = buf
                return None
            else:
                self.state = "answer"
        if self.state == "thinking":
            at = buf.find(THINK_CLOSE)
            if at < 0:
                self.tail = buf[len(buf) - partial_tag(buf, THINK_CLOSE):]
                return None
            self.state, buf = "answer", buf[at + len(THINK_CLOSE):]
        at = buf.find(OPEN)
        if at >= 0:
            self.state = "fired"
            return buf[at:]
        self.tail = buf[len(buf) - partial_tag(buf, OPEN):]
        return None
