"""Stored responses in the database: they are conversations. A response is its answer row (its
request's fields in the row's ``options["response"]``), under the rows of its input, in a
conversation of its own (source "api") or, with ``previous_response_id``, as the next turn of
that response's conversation."""
import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from chat import generation
from chat.generation_options import GenerationOptions, given
from chat.models import Conversation, Message, ToolCall

from . import prompt_size
from .response_params import find_response, message_id_of, not_found
from .runner import create_rows

logger = logging.getLogger(__name__)
ROW_FIELDS = ("id", "status", "content", "reasoning", "error", "finish_reason", "prompt_tokens", "completion_tokens",
              "cached_tokens", "model_name", "created_at", "finished_at", "options", "conversation_id", "parent_id")


def create(req, key, prompt_tokens):
    """The rows of a Responses request: (conversation id, answer id, the worker to prefer)."""
    plan = req.plan
    after = req.previous.pk if req.previous is not None else None
    try:
        conversation_id, ids = create_rows(
            plan, key, priority="background" if req.background else None, prompt_tokens=prompt_tokens, after=after,
            turns=plan.turns[req.history:] if after is not None else None, response=req.meta, move_leaf=req.store)
    except Message.DoesNotExist:  # the previous response was deleted meanwhile
        raise not_found(req.meta["previous_response_id"], "previous_response_id") from None
    affinity = generation.preferred_worker(conversation_id) if after is not None else ""
    return conversation_id, ids[0], affinity


def row(message_id):
    """The answer's fields (chat.models.Message's) with its "tool_calls", or None."""
    found = Message.objects.filter(pk=message_id).values(*ROW_FIELDS).first()
    if found is None:
        return None
    found["tool_calls"] = [{"id": c.call_id, "name": c.name, "arguments": c.arguments}
                           for c in ToolCall.objects.filter(message_id=message_id).order_by("index")]
    return found


def load(user_id, rid):
    """The row of ``user_id``'s response ``rid``, or None."""
    message = find_response(user_id, rid)
    return row(message.pk) if message is not None else None


def reasoning_tokens(model, found):
    """The answer's reasoning tokens (the worker counts them with the answer's): counted with the
    model's tokenizer, or without one (plugin backends) its share of the output by characters."""
    text = found.get("reasoning") or ""
    completion = found.get("completion_tokens") or 0
    if not text or not completion:
        return 0
    try:
        vocab = prompt_size.vocab_for(model)
    except Exception:
        vocab = None
    if vocab is not None:
        return min(completion, vocab.count(text))
    rest = len(found.get("content") or "") + sum(len(c["arguments"]) + len(c["name"]) for c in found["tool_calls"])
    return round(completion * len(text) / (len(text) + rest))


def _new_rows_top(message):
    """The first row the response's request wrote: its answer's ancestor just under the previous
    response's answer (or the root)."""
    after = message_id_of((message.generation_options.response or {}).get("previous_response_id"))
    node = message
    while node.parent_id is not None and node.parent_id != after:
        node = Message.objects.get(pk=node.parent_id)
    return node, after


def delete(message_id):
    """Delete a response: the rows its request wrote (and so the turns that went on from them),
    and its conversation once nothing is left in it."""
    with transaction.atomic():
        message = Message.objects.select_related("conversation").filter(pk=message_id).first()
        if message is None:
            return
        top, after = _new_rows_top(message)
        conversation = message.conversation
        top.delete()
        if not Message.objects.filter(conversation=conversation).exists():
            conversation.delete()
            return
        Conversation.objects.filter(pk=conversation.pk, current_leaf__isnull=True).update(current_leaf_id=after)


def revive(message_id):
    """A background response whose worker died under it (the server restarted, say) runs again, as
    a batch line does, up to SMOLSITE_BATCH_ATTEMPTS runs: its row goes back to pending, keeping
    its id. Returns True when it was queued again."""
    message = Message.objects.filter(pk=message_id, status=Message.Status.INTERRUPTED).first()
    options = message.generation_options if message is not None else GenerationOptions()
    if not (options.response or {}).get("background"):
        return False
    runs = int(given(options.runs, 1))
    if runs >= settings.SMOLSITE_BATCH_ATTEMPTS:
        return False
    options.runs = runs + 1
    options.requeued_at = None
    with transaction.atomic():
        if not Message.objects.filter(pk=message_id, status=Message.Status.INTERRUPTED).update(
                status=Message.Status.PENDING, content="", reasoning="", error="", finish_reason="", stream_seq=0,
                worker_id="", finished_at=None, prompt_tokens=None, completion_tokens=None, cached_tokens=None,
                options=options.to_dict(), updated_at=timezone.now()):
            return False
        ToolCall.objects.filter(message_id=message_id).delete()
    logger.warning("background response %s was cut by its worker's end: queued again (run %d)", message_id, runs + 1)
    generation.start_from_thread(message_id, message.model_name)
    return True


def revive_all():
    """Every background response a dead worker cut, queued again (a periodic pass)."""
    ids = list(Message.objects.filter(status=Message.Status.INTERRUPTED, role=Message.Role.ASSISTANT,
                                      options__response__background=True).values_list("pk", flat=True)[:100])
    return sum(1 for pk in ids if revive(pk))


def input_items(found, limit, order, after_id):
    """A page of the response's input items: (items, has_more)."""
    items = [{**item, "id": f"in_{found['id']}_{i}", "status": "completed"}
             for i, item in enumerate(found["options"]["response"].get("input") or [])]
    if order == "desc":
        items.reverse()
    if after_id is not None:
        ids = [i["id"] for i in items]
        items = items[ids.index(after_id) + 1:] if after_id in ids else []
    return items[:limit], len(items) > limit
