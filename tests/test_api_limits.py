"""What the API refuses before it writes a row, and what its quotas hold back, in-process through
Django's test client (real HTTP handling, no served process): prompts longer than the context,
too many messages, the prompt's tokens held against the quota, the site's default limits, the
rate limit with a clock the test controls, N requests racing for room for one (on SQLite and, in
the PostgreSQL run, on PostgreSQL), parsing off the event loop, and the ledger of an answer whose
chat was deleted while it generated."""
import asyncio
import json
import threading
import time
from datetime import datetime, timezone as dt_timezone

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import close_old_connections, connection
from django.test import AsyncClient

from api import params, prompt_size
from inference import structured as schemas
from api.models import ApiKey
from api.runner import create_rows
from chat.models import Conversation, Message
from chat.store import MessageStore
from inference.service import GenerationResult
from usage import quotas
from usage.models import DEFAULTS, SiteQuota, UsageRecord, UserQuota

MODEL = "smollm2-135m"
NOON = datetime(2026, 3, 15, 12, 0, tzinfo=dt_timezone.utc)


@pytest.fixture
def clock(monkeypatch):
    """A fixed "now" for django-ratelimit's windows (and the quota's days), moved by the test."""

    class Clock:
        now = NOON.timestamp()

    import django_ratelimit.core as ratelimit_core

    monkeypatch.setattr(ratelimit_core, "time", type("FakeTime", (), {"time": staticmethod(lambda: Clock.now)}))
    monkeypatch.setattr(quotas, "clock", lambda: datetime.fromtimestamp(Clock.now, dt_timezone.utc))
    return Clock


@pytest.fixture
def no_worker_here():
    """No embedded worker left in this process by an earlier test module (the autouse cache clear
    drops its heartbeat, so the API would answer 503 "not served"): with none, the API takes the
    model as served, a worker starting on first use, which these refused requests never reach."""
    from inference import embedded

    embedded.stop_all()


def make_key(name="ann", **limits):
    user = get_user_model().objects.create_user(name, password="pw-123456789")
    if limits:
        UserQuota.objects.create(user=user, **limits)
    key, raw = ApiKey.create_for(user, f"{name}'s key")
    return key, raw


def post(client, raw, body):
    return client.post("/v1/chat/completions", json.dumps(body), content_type="application/json",
                       HTTP_AUTHORIZATION=f"Bearer {raw}")


def ask(text, **extra):
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def rows_written():
    return Conversation.objects.count(), Message.objects.count()


# ---- refused before any row ---------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)  # the view's database_sync_to_async needs it
def test_a_prompt_longer_than_the_context_is_400_before_any_row(client):
    _, raw = make_key()
    n_ctx = 8192  # the bundled model's context in the test settings
    response = post(client, raw, ask("hello " * (n_ctx + 100), max_tokens=5))
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("messages", "context_length_exceeded")
    assert f"{n_ctx:,} tokens" in error["message"]
    assert rows_written() == (0, 0)


@pytest.mark.django_db(transaction=True)  # the view's database_sync_to_async needs it
def test_too_many_messages_is_400_before_any_row(client):
    _, raw = make_key()
    limit = prompt_size.max_messages()
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(limit + 1)]
    response = post(client, raw, {"model": MODEL, "messages": turns, "max_tokens": 1})
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("messages", "too_many_messages")
    assert f"at most {limit:,}" in error["message"]
    assert rows_written() == (0, 0)


# ---- the prompt's tokens count against the quota --------------------------------------------------

@pytest.mark.django_db
def test_twenty_long_prompts_with_max_tokens_1_cannot_pass_a_nearly_spent_quota():
    key, _ = make_key(tokens_per_day=1000)
    plan = params.check_plan(params.parse_chat(ask("word " * 600, max_tokens=1)))
    passed, refused = 0, []
    for _ in range(20):  # each still in flight: nothing finished, nothing in the ledger yet
        try:
            create_rows(plan, key)
            passed += 1
        except quotas.QuotaExceeded as exc:
            refused.append(exc)
    # Each holds ~600 prompt tokens + 1: one fits in 1,000, a second does not.
    assert passed == 1 and len(refused) == 19
    assert all(e.kind == "tokens" for e in refused)
    held = Message.objects.get(role="assistant").reserved_tokens
    assert 600 < held <= 1000


@pytest.mark.django_db
def test_the_site_default_quota_is_not_unlimited():
    assert not SiteQuota.objects.exists()  # a fresh install: no row saved by an admin
    limits = quotas.effective_limits(None)
    assert limits.tokens_per_day == DEFAULTS["tokens_per_day"] and limits.requests_per_minute
    assert limits.concurrent_generations == DEFAULTS["concurrent_generations"]
    key, _ = make_key()
    plan = params.check_plan(params.parse_chat(ask("hi", max_tokens=1, n=4)))
    for _ in range(DEFAULTS["concurrent_generations"] // 4):
        create_rows(plan, key)
    with pytest.raises(quotas.QuotaExceeded) as err:
        create_rows(plan, key)
    assert err.value.kind == "concurrency"


@pytest.mark.django_db(transaction=True)  # the view's database_sync_to_async needs it
def test_rate_limit_is_429_with_retry_after_and_the_next_minute_is_free_again(client, clock, no_worker_here):
    # Each request is counted before its tokens are checked: a quota too small for any answer
    # refuses them all without starting one, so no device worker is needed here.
    _, raw = make_key(requests_per_minute=1, tokens_per_day=1)
    first = post(client, raw, ask("one", max_tokens=5))
    assert first.status_code == 429 and first.json()["error"]["code"] == "insufficient_quota"
    second = post(client, raw, ask("two", max_tokens=5))
    assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(second["Retry-After"]) <= 60
    clock.now += 61  # the next window
    third = post(client, raw, ask("three", max_tokens=5))
    assert third.json()["error"]["code"] == "insufficient_quota"
    assert rows_written() == (0, 0)


# ---- N requests racing for room for one ------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
@pytest.mark.parametrize("room", ["tokens", "concurrency"])
def test_concurrent_requests_against_room_for_one_let_exactly_one_through(monkeypatch, room):
    plan = params.check_plan(params.parse_chat(ask("the last tokens", max_tokens=50)))
    hold = plan.max_tokens + prompt_size.check(plan)[0]
    limits = {"tokens_per_day": hold} if room == "tokens" else {"concurrent_generations": 1}
    key, _ = make_key("racer", **limits)
    # Widen the window between reading what is in flight and writing the rows: without the quota
    # row's lock every request would read "nothing in flight" and pass.
    real = quotas.in_flight

    def slow_in_flight(user_id):
        value = real(user_id)
        time.sleep(0.3)
        return value

    monkeypatch.setattr(quotas, "in_flight", slow_in_flight)
    n = 6
    barrier = threading.Barrier(n)
    outcomes = []

    def request():
        try:
            barrier.wait()
            create_rows(plan, key)
            outcomes.append("passed")
        except quotas.QuotaExceeded as exc:
            outcomes.append(exc.kind)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=request) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert sorted(outcomes) == sorted(["passed"] + [room] * (n - 1)), outcomes
    assert Message.objects.filter(role="assistant").count() == 1


# ---- parsing off the event loop ------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_parsing_a_request_runs_off_the_event_loop_and_a_bad_schema_is_still_400(monkeypatch, no_worker_here):
    _, raw = await sync_to_async(make_key)(tokens_per_day=1)  # refused after parsing: nothing runs
    on_loop = []
    real = schemas.grammar_for_schema

    def recording(schema):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(schema)

    monkeypatch.setattr(schemas, "grammar_for_schema", recording)
    client = AsyncClient()
    headers = {"Authorization": f"Bearer {raw}"}
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}
    response = await client.post("/v1/chat/completions", ask("hi", max_tokens=5, response_format=fmt),
                                 content_type="application/json", headers=headers)
    assert response.status_code == 429 and on_loop == [False]
    bad = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"oneOf": [{"type": "string"}]}}}
    response = await client.post("/v1/chat/completions", ask("hi", response_format=bad),
                                 content_type="application/json", headers=headers)
    assert response.status_code == 400
    assert (response.json()["error"]["param"], response.json()["error"]["code"]) == ("response_format",
                                                                                    "unsupported_schema")


# ---- the ledger whatever happens to the chat -------------------------------------------------------

@pytest.mark.django_db
def test_an_answer_whose_chat_was_deleted_while_it_generated_is_still_in_the_ledger():
    key, _ = make_key(tokens_per_day=10_000)
    plan = params.check_plan(params.parse_chat(ask("hello there", max_tokens=50)))
    conversation_id, (reply,) = create_rows(plan, key)
    store = MessageStore()
    assert store.claim(str(reply), "cpu@test:1") is not None  # a worker took it
    Conversation.objects.filter(pk=conversation_id).delete()  # the owner deleted the chat mid-answer
    result = GenerationResult(status="done", prompt_tokens=40, completion_tokens=30, text="partial",
                              finish_reason="stop")
    assert store.finish(str(reply), result) is False
    row = UsageRecord.objects.get()
    assert (row.user_id, row.api_key_id, row.key_name, row.source, row.model) == (
        key.user_id, key.pk, "ann's key", "api", MODEL)
    assert (row.total_tokens, row.message) == (70, None)
    assert quotas.summary(key.user_id)["tokens_today"] == 70
