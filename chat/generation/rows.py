"""A generation's row: as the door changes it (where it was queued, ended before any worker took
it because it could not be queued or was stopped), which worker answered the chat last, and as
the API's follower and batches read it back."""
from django.utils import timezone

from ..models import Message, ToolCall

ROW_FIELDS = ("status", "content", "reasoning", "error", "finish_reason", "prompt_tokens", "completion_tokens",
              "cached_tokens", "stream_seq")


def answer_rows(ids):
    """{id: the answer's ROW_FIELDS and its "tool_calls" (id, name, arguments)} of those that exist."""
    rows = {r["id"]: {**r, "tool_calls": []} for r in Message.objects.filter(pk__in=ids).values("id", *ROW_FIELDS)}
    for call in ToolCall.objects.filter(message_id__in=list(rows)).order_by("message_id", "index"):
        rows[call.message_id]["tool_calls"].append({"id": call.call_id, "name": call.name,
                                                    "arguments": call.arguments})
    return rows


def mark_routed(message_id, worker_id):
    """Remember which worker's own queue a pending message went to, so the reaper can send it to
    the shared device queue if that worker dies before claiming it."""
    Message.objects.filter(pk=message_id, status=Message.Status.PENDING).update(worker_id=worker_id)


def fail_pending(message_id, error):
    """End a message no worker has claimed as an error the user can Retry; True when it was still pending."""
    now = timezone.now()
    return bool(Message.objects.filter(pk=message_id, status=Message.Status.PENDING).update(
        status=Message.Status.ERROR, error=error, updated_at=now, finished_at=now))


def cancel_pending(message_id):
    """Stop a message no worker has claimed yet; returns True when it was still pending."""
    now = timezone.now()
    return bool(Message.objects.filter(pk=message_id, status=Message.Status.PENDING).update(
        status=Message.Status.STOPPED, updated_at=now, finished_at=now))


def last_worker(conversation_id):
    """The worker that last answered in this conversation (it may still hold its tokens)."""
    return (Message.objects.filter(conversation_id=conversation_id, role=Message.Role.ASSISTANT)
            .exclude(worker_id="").exclude(status__in=Message.ACTIVE)
            .order_by("-finished_at", "-id").values_list("worker_id", flat=True).first() or "")


def conversation_of(message_id):
    return Message.objects.filter(pk=message_id).values_list("conversation_id", flat=True).first()
