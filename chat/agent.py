"""Tools in the chat: the server's agent loop.

1. An answer of a chat with tools on asks for calls (its ToolCall rows, saved by
   chat.store.MessageStore.finish as ``pending``, or ``awaiting`` when the chat asks first).
2. The server runs them (``advance``, on the worker's thread after the answer finished, or on a
   thread of the web process after the user's last Approve or Deny), saving each result.
3. The results go back as tool messages (chat.store.history_for) of the next answer, a child of
   the one that asked (``continue_after``), queued like any answer.
4. The model continues; after SMOLSITE_MAX_TOOL_ROUNDS rounds of calls the turn ends with a note.

Stop ends any phase (chat.actions.stop_tools); nothing in here runs on the engine's thread.
"""
import logging
import threading

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from inference.publish import publish_loop
from inference.structured import SchemaError, tool_call_grammar
from inference.tool_runner import ToolContext, registered_tools, run_tool, tool_specs
from usage.quotas import QuotaExceeded, reserve

from .generation import start_from_thread
from .generation.announce import tell
from .generation_options import GenerationOptions, given
from .models import Conversation, Message, ToolCall, conversation_group

logger = logging.getLogger(__name__)


class ToolsUnavailable(ValueError):
    pass


def available_tools():
    """{name: Tool} of the tools the server has (inference.tool_runner)."""
    return registered_tools()


def enabled_names(conv):
    """The chat's tools that the server still has, in the server's order."""
    wanted = set(conv.tools or [])
    return [name for name in available_tools() if name in wanted]


def round_after(parent):
    """The round of an answer to ``parent``: 0 for a user's message, one more than an answer's."""
    if parent is not None and parent.role == Message.Role.ASSISTANT:
        return int(given(parent.generation_options.tool_round, 0)) + 1
    return 0


def options_for(conv, round_):
    """The options of an answer of ``conv`` in round ``round_``: the tools, and the grammar that
    keeps every call well formed ({} when the chat has no tools on)."""
    names = enabled_names(conv)
    if not names:
        return {}
    specs = tool_specs(names)
    required = round_ == 0 and conv.tool_choice == "required"
    try:
        # "required": the first answer of a turn is one call from its first token (and ends with
        # it); otherwise the grammar switches on when the model opens a call, and holds one or more.
        text = (tool_call_grammar(specs, "required", False) if required
                else tool_call_grammar(specs, "auto", True))
    except SchemaError as exc:
        raise ToolsUnavailable(f"This chat's tools cannot be used together: {exc}") from None
    return GenerationOptions(tools=specs, grammar=text, grammar_waits_for_call=not required,
                             tool_round=round_).to_dict()


def is_loop_answer(message):
    return message.generation_options.tool_round is not None


# ---- telling the tabs ------------------------------------------------------------------------

def announce_calls(conversation_id, message_id):
    """Every tab redraws the answer's cards (consumer ``tool_update``)."""
    tell(conversation_group(conversation_id), {"type": "tool.update", "message": message_id})


# ---- running calls -------------------------------------------------------------------------

def _context(conv):
    return ToolContext(user_id=conv.owner_id, conversation_id=conv.pk, time_zone=conv.time_zone or "UTC")


def run_call(call, context):
    """Run one pending call (if it is still pending: another thread or a Stop may have taken it);
    True when this thread ran it."""
    if not ToolCall.objects.filter(pk=call.pk, status=ToolCall.Status.PENDING).update(
            status=ToolCall.Status.RUNNING, updated_at=timezone.now()):
        return False
    announce_calls(context.conversation_id, call.message_id)
    outcome = run_tool(call.name, call.arguments, context)
    now = timezone.now()
    fields = {"output": outcome.output, "duration": outcome.duration, "finished_at": now, "updated_at": now}
    if not ToolCall.objects.filter(pk=call.pk, status=ToolCall.Status.RUNNING).update(
            status=outcome.status, **fields):
        # Stopped while it ran (or ended by the reaper): it stays so, with what it returned.
        ToolCall.objects.filter(pk=call.pk, status=ToolCall.Status.STOPPED, output="").update(**fields)
    announce_calls(context.conversation_id, call.message_id)
    return True


def advance(message_id, worker_id=""):
    """After an answer of a chat's tool loop: run its pending calls, then queue the next answer.
    Calls awaiting the user's decision hold the loop until ``decide`` (nothing happens here)."""
    answer = Message.objects.select_related("conversation").filter(pk=message_id).first()
    if answer is None or answer.role != Message.Role.ASSISTANT or not is_loop_answer(answer):
        return None
    calls = list(answer.tool_calls.all())
    if not calls or any(c.status == ToolCall.Status.AWAITING for c in calls):
        return None
    context = _context(answer.conversation)
    for call in calls:
        if call.status == ToolCall.Status.PENDING:
            run_call(call, context)
    return continue_after(answer.pk, worker_id)


def continue_after(message_id, worker_id=""):
    """The next answer of the loop, once every call of ``message_id`` has ended; None when the turn
    ends here (stopped, the round limit, a quota, or another thread continued it already)."""
    with transaction.atomic():
        answer = Message.objects.filter(pk=message_id).first()
        if answer is None:
            return None
        conv = Conversation.objects.select_for_update().get(pk=answer.conversation_id)
        answer.refresh_from_db()
        options = answer.generation_options
        calls = list(answer.tool_calls.all())
        if (not calls or any(c.is_busy for c in calls) or options.tool_stopped
                or any(c.status == ToolCall.Status.STOPPED for c in calls) or answer.children.exists()
                or options.tool_note):
            return None
        round_ = round_after(answer)
        limit = settings.SMOLSITE_MAX_TOOL_ROUNDS
        note = ""
        if round_ >= limit:
            note = (f"Stopped after {limit} round{'s' if limit != 1 else ''} of tool calls, this server's limit: "
                    "send a message to go on.")
        else:
            try:
                next_options = options_for(conv, round_)
                reserve(conv.owner_id, conv.max_tokens, count=1)
            except (QuotaExceeded, ToolsUnavailable) as exc:
                note = f"The answer could not go on after the tools: {exc}"
        if note:
            options.tool_note = note
            Message.objects.filter(pk=answer.pk).update(options=options.to_dict())
            reply = None
        else:
            now = timezone.now()
            reply = Message.objects.create(
                conversation=conv, parent=answer, role=Message.Role.ASSISTANT, status=Message.Status.PENDING,
                model_name=conv.model, created_at=now, reserved_tokens=conv.max_tokens,
                options=next_options or GenerationOptions(tool_round=round_).to_dict())
            fields = ["updated_at"]
            conv.updated_at = now
            if conv.current_leaf_id == answer.pk:  # unless the user looked at another branch meanwhile
                conv.current_leaf = reply
                fields.append("current_leaf")
            conv.save(update_fields=fields)
    if reply is None:
        announce_calls(conv.pk, answer.pk)
        return None
    tell(conv.group_name, {"type": "thread.changed", "message": reply.pk})
    enqueue(reply, affinity=worker_id)
    return reply


def enqueue(reply, affinity=""):
    """Queue an answer the loop made, as the consumer queues a new one; a failure ends it as an
    error every tab shows, with Retry."""
    # Embedded, on the loop this thread publishes on (a worker's thread, or the web process's).
    if settings.REDIS_URL:
        start_from_thread(reply.pk, reply.model_name, affinity)
    else:
        start_from_thread(reply.pk, reply.model_name, loop=publish_loop())


# ---- the user's decisions ----------------------------------------------------------------------

class DecisionError(ValueError):
    pass


def decide(conversation_id, call_pk, approve):
    """Approve (it will run) or deny a call awaiting approval in this conversation; returns
    (the answer's id, whether every call of that answer is decided now)."""
    with transaction.atomic():
        Conversation.objects.select_for_update().get(pk=conversation_id)
        call = ToolCall.objects.filter(pk=call_pk, message__conversation_id=conversation_id).first()
        if call is None:
            raise DecisionError("No such tool call in this chat.")
        if call.status != ToolCall.Status.AWAITING:
            raise DecisionError(f"That call is {call.status} already: nothing to decide.")
        now = timezone.now()
        if approve:
            ToolCall.objects.filter(pk=call.pk).update(status=ToolCall.Status.PENDING, updated_at=now)
        else:
            ToolCall.objects.filter(pk=call.pk).update(status=ToolCall.Status.DENIED, updated_at=now, finished_at=now)
        ready = not ToolCall.objects.filter(message_id=call.message_id, status=ToolCall.Status.AWAITING).exists()
    return call.message_id, ready


def advance_in_background(message_id):
    """``advance`` on a thread of its own (the web process, after the user's last decision): tools
    may take seconds, and the socket that asked must stay free for Stop."""
    def run():
        try:
            advance(message_id)
        except Exception:
            logger.exception("the tool loop after message %s failed", message_id)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name=f"smolsite-tools-{message_id}", daemon=True)
    thread.start()
    return thread
