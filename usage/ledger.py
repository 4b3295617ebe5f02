"""Writes the usage ledger: one row per finished generation, from the job store's ``finish``
(every generation ends there, whether the chat page, the API or a batch started it)."""
from django.db import IntegrityError, transaction
from django.utils import timezone

from .models import Source, UsageRecord


def record(message_id, result, now=None):
    """The ledger row of message ``message_id`` (made once: calling again changes nothing)."""
    from chat.models import Message

    message = (Message.objects.select_related("conversation", "conversation__api_key")
               .filter(pk=message_id).first())
    if message is None:  # deleted while it generated
        return None
    conv = message.conversation
    source = (message.options or {}).get("source") or Source.CHAT
    if source not in Source.values:
        source = Source.CHAT
    key = conv.api_key if source == Source.API else None
    prompt = result.prompt_tokens or 0
    completion = result.completion_tokens or 0
    defaults = dict(
        user_id=conv.owner_id, api_key=key, key_name=key.name if key else "", source=source,
        model=message.model_name or conv.model, status=result.status, prompt_tokens=prompt,
        cached_tokens=result.cached_tokens or 0, completion_tokens=completion,
        total_tokens=prompt + completion, created_at=now or timezone.now())
    try:
        with transaction.atomic():
            row, _ = UsageRecord.objects.get_or_create(message_id=message_id, defaults=defaults)
    except IntegrityError:  # a concurrent finish of the same message wrote it
        row = UsageRecord.objects.filter(message_id=message_id).first()
    return row
