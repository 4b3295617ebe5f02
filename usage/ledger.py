"""Writes the usage ledger: one row per finished generation, from the job store's ``finish``
(every generation ends there, whether the chat page, the API or a batch started it)."""
from django.db import IntegrityError, transaction
from django.utils import timezone

from .models import Source, UsageRecord


def payer(message):
    """Who a generation charges, as its ledger row names them; kept by the worker from the claim
    so a row can still be written after the conversation is deleted mid-answer."""
    conv = message.conversation
    source = (message.options or {}).get("source") or Source.CHAT
    if source not in Source.values:
        source = Source.CHAT
    key = conv.api_key if source == Source.API else None
    return {"user_id": conv.owner_id, "api_key_id": key.pk if key else None, "key_name": key.name if key else "",
            "source": source, "model": message.model_name or conv.model}


def record(message_id, message, result, now=None, fallback=None):
    """The ledger row of message ``message_id`` (made once: calling again changes nothing);
    ``message`` is that row as the job store (chat.store) has it now, with its conversation and
    API key, or None. When the message is gone (its chat was deleted while it generated), the row
    is written without it from ``fallback`` (``payer()`` of the message, taken when it was
    claimed): the tokens were used all the same, and a quota that forgot them could be bypassed
    by deleting."""
    if message is None and fallback is None:
        return None
    who = payer(message) if message is not None else fallback
    prompt = result.prompt_tokens or 0
    completion = result.completion_tokens or 0
    defaults = dict(
        who, status=result.status, prompt_tokens=prompt, cached_tokens=result.cached_tokens or 0,
        completion_tokens=completion, total_tokens=prompt + completion, tool_calls=len(result.tool_calls or []),
        created_at=now or timezone.now())
    if message is None:
        from django.contrib.auth import get_user_model

        if not get_user_model().objects.filter(pk=who["user_id"]).exists():
            return None  # the whole account was deleted: nobody left to charge
        # The API key model (api.ApiKey) through the ledger's own relation: usage sits below api.
        keys = UsageRecord._meta.get_field("api_key").related_model.objects
        if defaults["api_key_id"] and not keys.filter(pk=defaults["api_key_id"]).exists():
            defaults["api_key_id"] = None  # the name stays
        try:
            with transaction.atomic():
                return UsageRecord.objects.create(message=None, **defaults)
        except IntegrityError:  # the account went between the check and the write
            return None
    try:
        with transaction.atomic():
            row, _ = UsageRecord.objects.get_or_create(message_id=message_id, defaults=defaults)
    except IntegrityError:  # a concurrent finish of the same message wrote it
        row = UsageRecord.objects.filter(message_id=message_id).first()
    return row
