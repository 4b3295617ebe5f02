"""The batch driver's steps in-process, with enqueueing replaced (no worker): the completion
window, the room left for the owner's own chats, interrupted lines run again and finished ones
never, and the results written from the rows. Runs on SQLite and PostgreSQL."""
import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from batches import service
from batches.models import Batch, BatchLine
from chat.models import Message
from usage.models import UsageRecord, UserQuota

pytestmark = pytest.mark.django_db
MODEL = "smollm2-135m"


@pytest.fixture
def enqueued(monkeypatch):
    calls = []
    monkeypatch.setattr(service, "_enqueue", lambda message_id, model: calls.append(message_id) or "")
    return calls


def make(user, n, **body):
    lines = "".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}],
                                         "max_tokens": 8, **body}}) + "\n" for i in range(n))
    batch = service.create_batch(user, service.store_file(user, "in.jsonl", lines.encode()))
    assert batch.status == "in_progress"
    return batch


def finish(message_id, status="done", text="answer", tokens=3):
    Message.objects.filter(pk=message_id).update(status=status, content=text, prompt_tokens=5,
                                                 completion_tokens=tokens, finish_reason="stop",
                                                 finished_at=timezone.now())


@pytest.fixture
def user():
    return get_user_model().objects.create_user("ann", password="pw-123456789")


def test_lines_run_as_background_batch_messages_and_results_are_chat_completions(user, enqueued, settings):
    settings.SMOLSITE_BATCH_IN_FLIGHT = 2
    batch = make(user, 3)
    service.advance(batch)
    assert len(enqueued) == 2
    message = Message.objects.select_related("conversation").get(pk=enqueued[0])
    assert message.options["priority"] == "background" and message.options["source"] == "batch"
    assert message.conversation.source == "batch" and message.conversation.owner == user
    finish(enqueued[0])
    service.advance(batch)
    assert len(enqueued) == 3 and batch.completed == 1
    finish(enqueued[1], status="error")
    Message.objects.filter(pk=enqueued[1]).update(error="the backend failed")
    finish(enqueued[2])
    service.advance(batch)
    batch.refresh_from_db()
    assert batch.status == "completed" and (batch.completed, batch.failed) == (2, 1)
    out = [json.loads(x) for x in bytes(batch.output_file.data).decode().splitlines()]
    assert [r["custom_id"] for r in out] == ["c0", "c2"]
    body = out[0]["response"]["body"]
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "answer"
    assert body["usage"]["total_tokens"] == 8
    err = json.loads(bytes(batch.error_file.data))
    assert err["custom_id"] == "c1" and err["response"]["status_code"] == 503
    assert err["error"]["code"] == "generation_failed"


def test_an_interrupted_line_runs_again_and_a_finished_one_never(user, enqueued, settings):
    settings.SMOLSITE_BATCH_ATTEMPTS = 2
    batch = make(user, 2)
    service.advance(batch)
    first, second = enqueued
    finish(first)
    finish(second, status="interrupted")  # its worker died
    service.advance(batch)
    assert enqueued[2:] and len(enqueued) == 3  # only the cut line again
    finish(enqueued[2], status="interrupted")  # and again: out of attempts
    service.advance(batch)
    batch.refresh_from_db()
    assert batch.status == "completed" and (batch.completed, batch.failed) == (1, 1)
    assert list(BatchLine.objects.filter(batch=batch).order_by("index").values_list("attempts", flat=True)) == [1, 2]
    assert json.loads(bytes(batch.error_file.data))["error"]["code"] == "worker_lost"


def test_expiry_cancels_what_did_not_run(user, enqueued, settings):
    settings.SMOLSITE_BATCH_IN_FLIGHT = 1
    batch = make(user, 3)
    service.advance(batch)
    finish(enqueued[0])
    service.advance(batch)
    assert len(enqueued) == 2
    Batch.objects.filter(pk=batch.pk).update(expires_at=timezone.now())
    batch.refresh_from_db()
    service.advance(batch)  # the running line's message was still pending: stopped at once
    batch.refresh_from_db()
    assert batch.status == "expired" and batch.expired_at and batch.completed == 1
    assert Message.objects.get(pk=enqueued[1]).status == "stopped"
    errors = [json.loads(x) for x in bytes(batch.error_file.data).decode().splitlines()]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("c1", "batch_expired"), ("c2", "batch_expired")]


def test_a_batch_leaves_the_owner_room_for_chats(user, enqueued):
    UserQuota.objects.create(user=user, concurrent_generations=3)
    batch = make(user, 8)
    service.advance(batch)
    assert len(enqueued) == 2  # one concurrent answer stays free
    UserQuota.objects.filter(user=user).update(concurrent_generations=None, requests_per_minute=5)
    service.advance(batch)
    assert len(enqueued) == 2 + 4  # 5 a minute (none counted yet), 1 kept free
    service.advance(batch)
    assert len(enqueued) == 6  # 4 of 5 used this minute: the batch waits


def test_a_token_quota_fails_the_line_and_the_ledger_says_batch(user, enqueued):
    from api import params, prompt_size

    # Room for one line's hold (its prompt's tokens and max_tokens 8), not two.
    plan = params.parse_chat({"model": MODEL, "messages": [{"role": "user", "content": "q0"}], "max_tokens": 8})
    hold = 8 + prompt_size.check(plan)[0]
    UserQuota.objects.create(user=user, tokens_per_day=hold + hold // 2)
    batch = make(user, 2)
    service.advance(batch)
    assert len(enqueued) == 1
    line = BatchLine.objects.get(batch=batch, index=1)
    assert line.status == "failed" and line.error["code"] == "insufficient_quota"
    from types import SimpleNamespace
    from chat.store import MessageStore

    Message.objects.filter(pk=enqueued[0]).update(status="streaming")
    MessageStore().finish(enqueued[0], SimpleNamespace(
        text="hi", reasoning="", status="done", error="", prompt_tokens=4, completion_tokens=2, cached_tokens=0,
        ttft=0.1, tokens_per_second=10.0, reasoning_seconds=None, dropped_turns=0, finish_reason="stop",
        backend="echo", seq=2, tool_calls=[]))
    assert UsageRecord.objects.get(message_id=enqueued[0]).source == "batch"
    service.advance(batch)
    batch.refresh_from_db()
    assert batch.status == "completed" and (batch.completed, batch.failed) == (1, 1)


def test_the_site_adopts_the_batch_of_a_command_that_went_away(user, enqueued):
    batch = service.create_batch(user, service.store_file(user, "in.jsonl", (json.dumps({
        "custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": "q"}]}}) + "\n").encode()), driver="cli:h:1")
    service.advance(batch, "cli:h:1")
    assert len(enqueued) == 1
    service.tick()  # the command was seen just now: not the site's
    assert len(enqueued) == 1
    Batch.objects.filter(pk=batch.pk).update(driver_seen=timezone.now() - timedelta(minutes=5))
    service.tick()  # adopted: the answer queued in the gone process runs again here
    service.tick()
    assert len(enqueued) == 2 and Message.objects.get(pk=enqueued[0]).status == "interrupted"
    assert Batch.objects.get(pk=batch.pk).driver == ""


def test_batch_lines_are_queued_apart_from_their_owners_chats(user, enqueued):
    """The engine caps running generations per user key; a batch line's key is the owner's with
    ':batch', so a person's chat never waits behind their own batch for that cap."""
    from chat.models import Conversation
    from chat.store import MessageStore

    batch = make(user, 1)
    service.advance(batch)
    request = MessageStore().claim(enqueued[0], "w1")
    assert (request.priority, request.user_key) == ("background", f"user-{user.pk}:batch")
    conv = Conversation.objects.create(owner=user, model=MODEL)
    ask = Message.objects.create(conversation=conv, role="user", content="hi")
    reply = Message.objects.create(conversation=conv, parent=ask, role="assistant", status="pending", model_name=MODEL)
    chat = MessageStore().claim(reply.pk, "w1")
    assert (chat.priority, chat.user_key) == ("interactive", f"user-{user.pk}")
