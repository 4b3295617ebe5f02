"""What a user can do to a conversation (send, regenerate, edit, stop), as plain functions
shared by the websocket consumer and the HTTP views. Each returns the new assistant message
(to be enqueued) or raises ActionError with a message for the user."""
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from inference.models import UnknownModel, get_model
from usage.quotas import QuotaExceeded, reserve

from .models import Conversation, Message


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
    now = timezone.now()
    reply = Message.objects.create(conversation=conv, parent=parent, role=Message.Role.ASSISTANT,
                                   status=Message.Status.PENDING, model_name=conv.model, created_at=now,
                                   reserved_tokens=conv.max_tokens)
    conv.current_leaf = reply
    conv.updated_at = now
    conv.save(update_fields=["current_leaf", "updated_at"])
    return reply


def send(conversation_id, content):
    content = clean_content(content)
    with transaction.atomic():
        conv = _lock(conversation_id)
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


def cancel_pending(message_id):
    """Stop a message no worker has claimed yet; returns True when it was still pending."""
    now = timezone.now()
    return bool(Message.objects.filter(pk=message_id, status=Message.Status.PENDING).update(
        status=Message.Status.STOPPED, updated_at=now, finished_at=now))


def fail_pending(message_id, error):
    """End a message no worker has claimed as an error the user can Retry; True when it was still pending."""
    now = timezone.now()
    return bool(Message.objects.filter(pk=message_id, status=Message.Status.PENDING).update(
        status=Message.Status.ERROR, error=error, updated_at=now, finished_at=now))


def last_worker(conversation_id):
    """The worker that last answered in this conversation (it may still hold its tokens)."""
    return (Message.objects.filter(conversation_id=conversation_id, role=Message.Role.ASSISTANT)
            .exclude(worker_id="").exclude(status__in=Message.ACTIVE)
            .order_by("-finished_at", "-id").values_list("worker_id", flat=True).first() or "")


def mark_routed(message_id, worker_id):
    """Remember which worker's own queue a pending message went to, so the reaper can send it to
    the shared device queue if that worker dies before claiming it."""
    Message.objects.filter(pk=message_id, status=Message.Status.PENDING).update(worker_id=worker_id)
