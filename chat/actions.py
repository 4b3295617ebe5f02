"""What a user can do to a conversation (send, regenerate, edit, stop), as plain functions
shared by the websocket consumer and the HTTP views. Each returns the new assistant message
(to be enqueued) or raises ActionError with a message for the user."""
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from inference.model_configs import UnknownModel, get_model
from usage.quotas import QuotaExceeded, reserve

from . import agent
from .models import Conversation, Message, ToolCall


class ActionError(ValueError):
    pass


def clean_content(content):
    if not isinstance(content, str):
        raise ActionError("The message must be text.")
    content = content.strip()
    if not content:
        raise ActionError("Type a message first: an empty message cannot be sent.")
    if len(content) > settings.SMOLSITE_MAX_MESSAGE_CHARS:
        raise ActionError(f"That message is {len(content):,} characters; the limit is "
                          f"{settings.SMOLSITE_MAX_MESSAGE_CHARS:,}.")
    return content


def title_from(content, limit=60):
    line = " ".join(content.split())
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0] or line[:limit]
    return cut.rstrip(".,;:") + "…"


def _lock(conversation_id):
    conv = Conversation.objects.select_for_update().get(pk=conversation_id)
    if conv.messages.filter(status__in=Message.ACTIVE).exists():
        raise ActionError("An answer is still being generated: wait for it or press Stop.")
    busy = set(ToolCall.objects.filter(message__conversation_id=conversation_id, status__in=ToolCall.BUSY)
               .values_list("status", flat=True))
    if ToolCall.Status.AWAITING in busy:
        raise ActionError("A tool call is waiting for you: approve or deny it first, or press Stop.")
    if busy:
        raise ActionError("A tool is still running: wait for it or press Stop.")
    try:
        get_model(conv.model)
    except UnknownModel:
        raise ActionError(f"This chat's model {conv.model!r} is no longer configured on the server: "
                          "pick another model.") from None
    return conv


def _reply(conv, parent):
    # Quotas and rate limits, checked in the transaction that creates the reply (it rolls back
    # the user's message too when refused).
    try:
        reserve(conv.owner_id, conv.max_tokens, count=1)
    except QuotaExceeded as exc:
        raise ActionError(str(exc)) from None
    try:
        options = agent.options_for(conv, agent.round_after(parent))
    except agent.ToolsUnavailable as exc:
        raise ActionError(str(exc)) from None
    now = timezone.now()
    reply = Message.objects.create(conversation=conv, parent=parent, role=Message.Role.ASSISTANT,
                                   status=Message.Status.PENDING, model_name=conv.model, created_at=now,
                                   reserved_tokens=conv.max_tokens, options=options)
    conv.current_leaf = reply
    conv.updated_at = now
    conv.save(update_fields=["current_leaf", "updated_at"])
    return reply


def clean_time_zone(name):
    """An IANA time zone name the server knows, or None."""
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        return None
    try:
        ZoneInfo(name)
    except (ValueError, ZoneInfoNotFoundError):
        return None
    return name


def send(conversation_id, content, time_zone=None):
    content = clean_content(content)
    time_zone = clean_time_zone(time_zone)
    with transaction.atomic():
        conv = _lock(conversation_id)
        if time_zone and time_zone != conv.time_zone:  # the browser's, for tools such as current_time
            conv.time_zone = time_zone
            conv.save(update_fields=["time_zone"])
        parent = conv.current_leaf
        user = Message.objects.create(conversation=conv, parent=parent, role=Message.Role.USER, content=content)
        if parent is None and conv.title in ("", "New chat"):
            conv.title = title_from(content)
            conv.save(update_fields=["title"])
        return _reply(conv, user)


def regenerate(conversation_id, message_id=None):
    """A new answer beside an existing one (the last answer by default); the old stays a branch."""
    with transaction.atomic():
        conv = _lock(conversation_id)
        if message_id is None:
            target = conv.current_leaf
        else:
            target = conv.messages.filter(pk=message_id).first()
        if target is None or target.role != Message.Role.ASSISTANT or target.parent_id is None:
            raise ActionError("There is no answer to regenerate.")
        return _reply(conv, target.parent)


def edit(conversation_id, message_id, content):
    """Editing a user message starts a new branch beside it; the old branch stays reachable."""
    content = clean_content(content)
    with transaction.atomic():
        conv = _lock(conversation_id)
        original = conv.messages.filter(pk=message_id, role=Message.Role.USER).first()
        if original is None:
            raise ActionError("That message cannot be edited.")
        user = Message.objects.create(conversation=conv, parent=original.parent, role=Message.Role.USER,
                                      content=content)
        return _reply(conv, user)


def switch_branch(conversation_id, message_id):
    """Show the branch through ``message_id``: follow its newest descendants to a leaf."""
    conv = Conversation.objects.get(pk=conversation_id)
    node = conv.messages.filter(pk=message_id).first()
    if node is None:
        raise ActionError("No such message.")
    while True:
        child = node.children.order_by("-created_at", "-id").first()
        if child is None:
            break
        node = child
    conv.current_leaf = node
    conv.save(update_fields=["current_leaf"])
    return node


def active_message(conversation_id):
    return Message.objects.filter(conversation_id=conversation_id, status__in=Message.ACTIVE).order_by("-id").first()


def stop_tools(conversation_id):
    """Stop a tool loop between answers: calls waiting for approval, queued or running end as
    ``stopped``, and the loop's latest answer gets no next answer. Returns the ids of the answers
    whose cards need redrawing, or None when there was no loop to stop."""
    with transaction.atomic():
        conv = Conversation.objects.select_for_update().get(pk=conversation_id)
        busy = ToolCall.objects.filter(message__conversation_id=conversation_id, status__in=ToolCall.BUSY)
        changed = sorted(set(busy.values_list("message_id", flat=True)))
        # Between the last result and the next answer's row, nothing is busy: that answer must not start.
        leaf = conv.current_leaf
        options = leaf.generation_options if leaf is not None else None
        open_loop = (leaf is not None and leaf.role == Message.Role.ASSISTANT and options.tool_round is not None
                     and leaf.status == Message.Status.DONE and not options.tool_note
                     and not options.tool_stopped and leaf.tool_calls.exists()
                     and not leaf.tool_calls.filter(status=ToolCall.Status.STOPPED).exists()
                     and not leaf.children.exists())
        if not changed and not open_loop:
            return None
        now = timezone.now()
        busy.update(status=ToolCall.Status.STOPPED, updated_at=now, finished_at=now)
        if open_loop:
            options.tool_stopped = True
            Message.objects.filter(pk=leaf.pk).update(options=options.to_dict())
            if leaf.pk not in changed:
                changed.append(leaf.pk)
        return changed
