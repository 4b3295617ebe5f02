"""Conversations as JSON and Markdown, and a zip of many: a user's own export (account page) and
the admin's export action use the same functions.

``include_text=False`` leaves out what people wrote and what models answered (message text,
reasoning, system prompt, error text that may quote it, the title when it was made from the first
message): the admin privacy switch being off must hold on the export path too."""
import io
import json
import re
import unicodedata
import zipfile

from django.utils import timezone

from .models import Conversation, Message, ToolCall

FORMAT_VERSION = 1
# Placeholder for text left out of an export made without message text.
WITHHELD = "[message text not included]"
METRIC_FIELDS = ("prompt_tokens", "completion_tokens", "cached_tokens", "ttft", "tokens_per_second",
                 "reasoning_seconds", "dropped_turns", "finish_reason")


def _ts(value):
    return value.isoformat() if value else None


def _messages(conv):
    """All the conversation's messages, oldest first (one query)."""
    return list(Message.objects.filter(conversation_id=conv.pk).order_by("created_at", "id"))


def _calls(messages):
    """{message id: [ToolCall]} for these messages (one query)."""
    out = {}
    for call in ToolCall.objects.filter(message_id__in=[m.id for m in messages]).order_by("message_id", "index"):
        out.setdefault(call.message_id, []).append(call)
    return out


def call_json(call, include_text=True):
    """A tool call as exports show it; without text, its name, status and times only (its arguments
    and result are what the user and the model wrote, like message text)."""
    return {
        "id": call.call_id,
        "name": call.name,
        "status": call.status,
        "arguments": call.arguments if include_text else None,
        "output": call.output if include_text else None,
        "duration": call.duration,
        "finished_at": _ts(call.finished_at),
    }


def _current_branch_ids(conv, messages):
    by_id = {m.id: m for m in messages}
    path, node = [], by_id.get(conv.current_leaf_id)
    while node is not None:
        path.append(node.id)
        node = by_id.get(node.parent_id)
    return path[::-1]


def _title(conv, include_text):
    return conv.title if include_text else f"Conversation {conv.pk}"


def conversation_json(conv, include_text=True, messages=None):
    """Everything about one conversation as a JSON-ready dict: its settings, every message of every
    branch (with its parent, so the tree can be rebuilt), and which branch is current."""
    messages = _messages(conv) if messages is None else messages
    children = {}
    for m in messages:
        children.setdefault(m.parent_id, []).append(m.id)
    current = _current_branch_ids(conv, messages)
    calls = _calls(messages)
    out_messages = []
    for m in messages:
        item = {
            "id": m.id,
            "parent_id": m.parent_id,
            "role": m.role,
            "status": m.status,
            "model": m.model_name,
            "content": m.content if include_text else None,
            "reasoning": m.reasoning if include_text else None,
            "error": m.error if include_text else ("" if not m.error else WITHHELD),
            "metrics": {name: getattr(m, name) for name in METRIC_FIELDS},
            "tool_calls": [call_json(c, include_text) for c in calls.get(m.id, [])],
            "children": children.get(m.id, []),
            "on_current_branch": m.id in current,
            "created_at": _ts(m.created_at),
            "updated_at": _ts(m.updated_at),
            "finished_at": _ts(m.finished_at),
        }
        out_messages.append(item)
    return {
        "format": "smolsite.conversation",
        "version": FORMAT_VERSION,
        "id": conv.pk,
        "title": _title(conv, include_text),
        "owner": conv.owner.get_username(),
        "source": conv.source,
        "kept": conv.kept,
        "created_at": _ts(conv.created_at),
        "updated_at": _ts(conv.updated_at),
        "settings": {
            "model": conv.model,
            "system_prompt": conv.system_prompt if include_text else None,
            "temperature": conv.temperature,
            "top_p": conv.top_p,
            "max_tokens": conv.max_tokens,
            "thinking": conv.thinking,
            "tools": list(conv.tools or []),
            "tool_choice": conv.tool_choice,
            "tools_ask": conv.tools_ask,
        },
        "text_included": include_text,
        "current_leaf_id": conv.current_leaf_id,
        "current_branch": current,
        "roots": children.get(None, []),
        "messages": out_messages,
    }


def _quote(text):
    return "\n".join("> " + line if line else ">" for line in text.splitlines()) or ">"


def conversation_markdown(conv, include_text=True, messages=None):
    """The current branch as readable Markdown; other versions of a turn are noted, not shown."""
    messages = _messages(conv) if messages is None else messages
    by_id = {m.id: m for m in messages}
    siblings = {}
    for m in messages:
        siblings.setdefault((m.parent_id, m.role), []).append(m.id)
    lines = [f"# {_title(conv, include_text)}", ""]
    lines.append(f"- Model: {conv.model}")
    lines.append(f"- Source: {conv.source}")
    lines.append(f"- Created: {_ts(conv.created_at)}")
    lines.append(f"- Last activity: {_ts(conv.updated_at)}")
    lines.append(f"- Settings: temperature {conv.temperature}, top_p {conv.top_p}, max tokens {conv.max_tokens}")
    if conv.kept:
        lines.append("- Kept (exempt from automatic deletion)")
    if not include_text:
        lines.append("- Message text is not included in this export.")
    elif conv.system_prompt:
        lines += ["", "**System prompt:**", "", _quote(conv.system_prompt)]
    branch = [by_id[i] for i in _current_branch_ids(conv, messages)]
    calls = _calls(branch)
    if not branch:
        lines += ["", "_No messages._"]
    others = 0
    for m in branch:
        versions = siblings.get((m.parent_id, m.role), [m.id])
        heading = "User" if m.role == Message.Role.USER else "Assistant"
        lines += ["", f"## {heading}"]
        if len(versions) > 1:
            others += len(versions) - 1
            lines.append(f"_Version {versions.index(m.id) + 1} of {len(versions)}; the other versions are in the JSON export._")
        facts = [_ts(m.created_at)]
        if m.role == Message.Role.ASSISTANT:
            if m.model_name:
                facts.append(m.model_name)
            if m.status != Message.Status.DONE:
                facts.append(m.status)
            if m.completion_tokens is not None:
                facts.append(f"{m.completion_tokens} tokens")
            if m.tokens_per_second:
                facts.append(f"{m.tokens_per_second:.1f} tokens/s")
            if m.ttft is not None:
                facts.append(f"first token after {m.ttft:.2f} s")
        lines += [f"_{' · '.join(f for f in facts if f)}_", ""]
        if not include_text:
            lines.append(WITHHELD)
            for c in calls.get(m.id, []):
                lines += ["", f"- Tool call **{c.name}**: {c.status}{_took(c)}"]
            continue
        if m.reasoning:
            lines += ["<details><summary>Thinking</summary>", "", m.reasoning, "", "</details>", ""]
        asked = calls.get(m.id, [])
        if m.content or not asked:
            lines.append(m.content if m.content else "_(empty)_")
        for c in asked:
            lines += ["", f"**Tool call: {c.name}** ({c.status}{_took(c)})", "", "Arguments:", "",
                      _fenced(c.arguments)]
            if c.output:
                lines += ["", "Result:", "", _fenced(c.output)]
        note = m.generation_options.tool_note
        if note:
            lines += ["", f"_{note}_"]
        if m.error:
            lines += ["", f"_Error: {m.error}_"]
    if others:
        lines += ["", "---", "", f"_{others} other version(s) of turns in this chat are not shown here; "
                                 "the JSON export holds every branch._"]
    return "\n".join(lines) + "\n"


def _took(call):
    return f", {call.duration:.2f} s" if call.duration is not None else ""


def _fenced(text):
    """``text`` in a code fence longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def safe_name(title, fallback="conversation", limit=60):
    """A filename stem from a title: ASCII letters, digits, dashes and underscores only."""
    text = unicodedata.normalize("NFKD", title or "").encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:limit].strip("-")
    return text or fallback


# A zip built in memory (export_zip, the admin's action) is capped: past this many bytes of message
# text it stops adding conversations and says so in its index. A user's own export streams
# (iter_zip without a cap), holding one conversation at a time.
MAX_EXPORT_BYTES = 256 * 1024 * 1024


class _Sink(io.RawIOBase):
    """A write-only, unseekable file: zipfile then streams (data descriptors after each entry),
    and what it wrote is taken out chunk by chunk."""

    def __init__(self):
        self._chunks = []

    def writable(self):
        return True

    def write(self, data):
        self._chunks.append(bytes(data))
        return len(data)

    def take(self):
        out, self._chunks = b"".join(self._chunks), []
        return out


def iter_zip(conversations, include_text=True, max_bytes=None):
    """The zip of ``conversations`` as chunks of bytes (one or more per conversation): for each,
    ``conversations/<id>-<title>.json`` and ``.md``; then ``index.json`` and ``README.md`` listing
    them. Names are unique (each starts with the conversation's id) and plain ASCII."""
    sink = _Sink()
    index, skipped, size = [], [], 0
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for conv in conversations:
            messages = _messages(conv)
            cost = sum(len(m.content) + len(m.reasoning) for m in messages)
            if max_bytes is not None and index and size + cost > max_bytes:
                skipped.append(conv.pk)
                continue
            size += cost
            stem = f"{conv.pk}-{safe_name(_title(conv, include_text))}"
            data = conversation_json(conv, include_text, messages=messages)
            archive.writestr(f"conversations/{stem}.json", json.dumps(data, indent=2, ensure_ascii=False))
            archive.writestr(f"conversations/{stem}.md", conversation_markdown(conv, include_text, messages=messages))
            index.append({"id": conv.pk, "title": data["title"], "source": conv.source, "model": conv.model,
                          "messages": len(messages), "updated_at": data["updated_at"],
                          "json": f"conversations/{stem}.json", "markdown": f"conversations/{stem}.md"})
            yield sink.take()
        summary = {"format": "smolsite.export", "version": FORMAT_VERSION, "exported_at": _ts(timezone.now()),
                   "text_included": include_text, "count": len(index), "conversations": index,
                   "left_out_for_size": skipped}
        archive.writestr("index.json", json.dumps(summary, indent=2, ensure_ascii=False))
        readme = [f"# smolsite export, {summary['exported_at']}", "", f"{len(index)} conversation(s).", ""]
        readme += [f"- {row['title']}: {row['markdown']} ({row['messages']} messages)" for row in index]
        if skipped:
            readme += ["", f"{len(skipped)} conversation(s) were left out: the export reached its size limit."]
        archive.writestr("README.md", "\n".join(readme) + "\n")
    yield sink.take()  # the central directory, written when the archive closes


def export_zip(conversations, include_text=True, max_bytes=MAX_EXPORT_BYTES):
    """The same zip as bytes, built in memory (capped at ``max_bytes`` of message text)."""
    return b"".join(iter_zip(conversations, include_text, max_bytes=max_bytes))


def user_conversations(user):
    """The conversations a user's own export holds: all of theirs (chat, API and batch)."""
    return Conversation.objects.filter(owner=user).select_related("owner").order_by("created_at", "id")
