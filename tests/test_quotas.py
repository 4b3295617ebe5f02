"""Quotas, rate limits, the usage ledger and API keys, in-process with a clock the tests control:
the checks made before anything is enqueued (chat page and API alike), the ledger written when a
generation finishes, and two requests racing for the last tokens."""
import io
import threading
import time
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import close_old_connections, connection, transaction

from api.models import ApiKey, hash_key
from chat import actions
from chat.models import Conversation, Message
from chat.store import MessageStore
from inference.service import GenerationResult
from usage import quotas
from usage.models import SiteQuota, UsageRecord, UserQuota

pytestmark = pytest.mark.django_db

NOON = datetime(2026, 3, 15, 12, 0, tzinfo=dt_timezone.utc)


@pytest.fixture
def clock(monkeypatch):
    """Sets usage.quotas' "now" (day and month windows) and django-ratelimit's time."""

    class Clock:
        now = NOON

        def set(self, when):
            self.now = when

        def advance(self, **delta):
            self.now += timedelta(**delta)

    c = Clock()
    monkeypatch.setattr(quotas, "clock", lambda: c.now)

    class FakeTime:
        @staticmethod
        def time():
            return c.now.timestamp()

    import django_ratelimit.core as ratelimit_core

    monkeypatch.setattr(ratelimit_core, "time", FakeTime)
    return c


def make_user(name="ann"):
    return get_user_model().objects.create_user(name, password="pw-123456789")


def set_quota(user, **limits):
    UserQuota.objects.update_or_create(user=user, defaults=limits)


def conversation(user, max_tokens=100, **extra):
    return Conversation.objects.create(owner=user, model="smollm2-135m", max_tokens=max_tokens, **extra)


def used(user, tokens, when, model="smollm2-135m", source="chat"):
    return UsageRecord.objects.create(user=user, model=model, source=source, prompt_tokens=tokens,
                                      total_tokens=tokens, created_at=when)


def test_user_limits_override_the_site_default():
    user = make_user()
    SiteQuota.objects.create(tokens_per_day=1000, requests_per_minute=10, tokens_per_month=None)
    set_quota(user, tokens_per_day=50)
    limits = quotas.effective_limits(UserQuota.objects.get(user=user))
    assert limits.tokens_per_day == 50
    assert limits.requests_per_minute == 10  # not set on the user: the site's
    assert limits.tokens_per_month is None  # set nowhere: no limit


def test_daily_token_quota_counts_today_only_and_resets_at_midnight_utc(clock):
    user = make_user()
    set_quota(user, tokens_per_day=1000)
    used(user, 900, NOON - timedelta(days=1))  # yesterday: not counted
    used(user, 850, NOON - timedelta(hours=1))
    conv = conversation(user, max_tokens=100)
    actions.send(conv.pk, "hello")  # 850 + 100 <= 1000
    Message.objects.filter(conversation=conv).update(status="done")
    conv2 = conversation(user, max_tokens=100)
    used(user, 100, NOON)
    with pytest.raises(actions.ActionError, match="Token quota reached") as err:
        actions.send(conv2.pk, "again")
    assert "2026-03-16 00:00 UTC" in str(err.value)
    assert not conv2.messages.exists()  # refused before anything was written
    clock.set(datetime(2026, 3, 16, 0, 0, 1, tzinfo=dt_timezone.utc))
    actions.send(conv2.pk, "a new day")


def test_monthly_token_quota(clock):
    user = make_user()
    set_quota(user, tokens_per_month=5000)
    used(user, 4950, datetime(2026, 3, 1, 0, 0, tzinfo=dt_timezone.utc))
    used(user, 10_000, datetime(2026, 2, 28, 23, 59, tzinfo=dt_timezone.utc))  # last month
    with pytest.raises(actions.ActionError, match="this month"):
        actions.send(conversation(user, max_tokens=100).pk, "hi")
    actions.send(conversation(user, max_tokens=50).pk, "hi")  # exactly what is left
    clock.set(datetime(2026, 4, 1, 0, 0, tzinfo=dt_timezone.utc))
    actions.send(conversation(user, max_tokens=100).pk, "next month")


def test_in_flight_answers_hold_their_max_tokens_until_the_ledger_has_them(clock):
    user = make_user()
    set_quota(user, tokens_per_day=250)
    first = actions.send(conversation(user, max_tokens=200).pk, "one")
    assert first.reserved_tokens == 200
    with pytest.raises(actions.ActionError, match="held by answers in progress"):
        actions.send(conversation(user, max_tokens=100).pk, "two")
    # It finishes having used 30 tokens: the ledger has 30, nothing is held any more.
    Message.objects.filter(pk=first.pk).update(status="streaming")
    MessageStore().finish(first.pk, GenerationResult(status="done", prompt_tokens=20, completion_tokens=10,
                                                     text="ok", finish_reason="stop"))
    assert quotas.summary(user.pk)["tokens_today"] == 30
    actions.send(conversation(user, max_tokens=200).pk, "three")  # 30 + 200 <= 250


def test_concurrent_generation_limit(clock):
    user = make_user()
    set_quota(user, concurrent_generations=1)
    actions.send(conversation(user).pk, "one")
    with pytest.raises(actions.ActionError, match="Too many answers at once"):
        actions.send(conversation(user).pk, "two")


def test_requests_per_minute_with_a_controlled_clock(clock):
    user = make_user()
    set_quota(user, requests_per_minute=2)

    def attempt():
        with transaction.atomic():
            quotas.reserve(user.pk, 10)

    attempt()
    attempt()
    with pytest.raises(quotas.QuotaExceeded) as err:
        attempt()
    assert err.value.kind == "requests" and 1 <= err.value.retry_after <= 60
    clock.advance(seconds=61)  # the next window
    attempt()


def test_rate_limit_refuses_a_chat_message_with_a_clear_error(clock):
    user = make_user()
    set_quota(user, requests_per_minute=1)
    conv = conversation(user)
    actions.send(conv.pk, "one")
    Message.objects.filter(conversation=conv).update(status="done")
    with pytest.raises(actions.ActionError, match="Rate limit reached: 1 requests per minute"):
        actions.send(conv.pk, "two")


def test_ledger_is_written_once_per_generation_with_source_and_key():
    user = make_user()
    key, _ = ApiKey.create_for(user, "scripts")
    conv = conversation(user, source="api", api_key=key)
    reply = Message.objects.create(conversation=conv, role="assistant", status="streaming", model_name=conv.model,
                                   options={"source": "api"})
    result = GenerationResult(status="done", prompt_tokens=12, completion_tokens=5, cached_tokens=4, text="x",
                              finish_reason="stop")
    MessageStore().finish(reply.pk, result)
    MessageStore().finish(reply.pk, result)  # idempotent
    row = UsageRecord.objects.get()
    assert (row.user, row.api_key, row.key_name, row.source, row.model) == (user, key, "scripts", "api",
                                                                            "smollm2-135m")
    assert (row.prompt_tokens, row.cached_tokens, row.completion_tokens, row.total_tokens) == (12, 4, 5, 17)
    conv.delete()  # the ledger outlives the conversation
    assert UsageRecord.objects.get().message is None


def test_chat_answers_are_in_the_ledger_as_chat():
    user = make_user()
    reply = actions.send(conversation(user).pk, "hello")
    MessageStore().claim(str(reply.pk), "cpu@test:1")  # a worker ends only what it claimed
    MessageStore().finish(reply.pk, GenerationResult(status="stopped", prompt_tokens=3, completion_tokens=1))
    row = UsageRecord.objects.get()
    assert (row.source, row.key_name, row.status, row.total_tokens) == ("chat", "", "stopped", 4)


# ---- the race for the last tokens -------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_two_requests_racing_for_the_last_tokens_never_both_pass(monkeypatch):
    user = make_user("racer")
    set_quota(user, tokens_per_day=150)
    convs = [conversation(user, max_tokens=100).pk for _ in range(2)]
    # Widen the window between reading the in-flight tokens and writing the reply: without the
    # row lock both requests would read "nothing in flight" and pass.
    real = quotas.in_flight

    def slow_in_flight(user_id):
        value = real(user_id)
        time.sleep(0.5)
        return value

    monkeypatch.setattr(quotas, "in_flight", slow_in_flight)
    barrier = threading.Barrier(2)
    outcomes = []

    def request(conv_id):
        try:
            barrier.wait()
            actions.send(conv_id, "the last tokens")
            outcomes.append("passed")
        except actions.ActionError as exc:
            outcomes.append(f"refused: {exc}")
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=request, args=(c,)) for c in convs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(o.split(":")[0] for o in outcomes) == ["passed", "refused"], outcomes
    assert Message.objects.filter(conversation__owner=user, role="assistant").count() == 1


# ---- API keys -----------------------------------------------------------------------------------

def test_only_a_hash_of_a_key_is_stored_and_revoked_or_expired_keys_fail():
    user = make_user()
    key, raw = ApiKey.create_for(user, "laptop")
    assert raw.startswith("sk-smol-") and len(raw) > 40
    stored = ApiKey.objects.filter(pk=key.pk).values()[0]
    assert raw not in str(stored) and stored["hashed_key"] == hash_key(raw)
    assert ApiKey.authenticate(raw).pk == key.pk
    assert ApiKey.objects.get(pk=key.pk).last_used_at is not None
    assert ApiKey.authenticate(raw + "x") is None
    key.revoke()
    assert ApiKey.authenticate(raw) is None
    _, raw2 = ApiKey.create_for(user, "old", expires_at=datetime(2020, 1, 1, tzinfo=dt_timezone.utc))
    assert ApiKey.authenticate(raw2) is None


def test_create_api_key_command_prints_only_the_key():
    user = make_user("scripted")
    out = io.StringIO()
    call_command("create_api_key", "scripted", "--name", "ci", stdout=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sk-smol-")
    key = ApiKey.authenticate(lines[0])
    assert (key.user, key.name) == (user, "ci")


def test_account_page_shows_a_new_key_once_lists_and_revokes(client):
    user = make_user("pat")
    client.force_login(user)
    page = client.get("/account/")
    assert page.status_code == 200 and b"No keys yet" in page.content
    created = client.post("/account/keys/", {"name": "my tool", "expires_in_days": "30"})
    key = ApiKey.objects.get(user=user)
    raw = created.content.decode().split('id="new-key-value">')[1].split("<")[0]
    assert ApiKey.authenticate(raw).pk == key.pk and key.expires_at is not None
    again = client.get("/account/").content.decode()
    assert "my tool" in again and raw not in again  # listed, never shown again
    client.post(f"/account/keys/{key.pk}/revoke/")
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert "my tool" not in client.get("/account/").content.decode()


def test_someone_elses_key_cannot_be_revoked(client):
    owner, other = make_user("own"), make_user("oth")
    key, _ = ApiKey.create_for(owner, "mine")
    client.force_login(other)
    assert client.post(f"/account/keys/{key.pk}/revoke/").status_code == 404
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None


def test_account_page_shows_usage_and_what_is_left(client, clock):
    user = make_user("quin")
    set_quota(user, tokens_per_day=1000)
    used(user, 400, NOON)
    client.force_login(user)
    html = client.get("/account/").content.decode()
    assert "400" in html and "1,000" in html and "600" in html


def test_session_login_is_not_accepted_by_the_api(client):
    client.force_login(make_user("sess"))
    response = client.get("/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


def test_admin_shows_usage_totals_per_user_and_model(client):
    admin = get_user_model().objects.create_superuser("root", password="pw-123456789")
    used(admin, 7, NOON, model="m1")
    used(admin, 5, NOON, model="m1")
    used(admin, 3, NOON, model="m2")
    client.force_login(admin)
    html = client.get("/admin/usage/usagerecord/").content.decode()
    totals = html.split('id="usage-totals"')[1].split("</table>")[0]
    assert "<td>m1</td><td>2</td><td>12</td>" in totals and "<td>m2</td><td>1</td><td>3</td>" in totals
    assert client.get("/admin/usage/userquota/").status_code == 200
    assert client.get("/admin/usage/sitequota/add/").status_code == 200


# ---- the chat page's socket -------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_chat_socket_gets_a_clear_error_frame_and_nothing_is_queued(monkeypatch):
    import json

    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator

    from inference import dispatch
    from smolsite.asgi import application

    queued = []
    monkeypatch.setattr(dispatch, "enqueue", lambda *args, **kwargs: queued.append(args))

    @database_sync_to_async
    def setup():
        user = make_user("sock")
        set_quota(user, tokens_per_day=10)
        return user, conversation(user, max_tokens=100)

    user, conv = await setup()
    comm = WebsocketCommunicator(application, f"/ws/chat/{conv.pk}/", headers=[(b"origin", b"http://127.0.0.1")])
    comm.scope["user"] = user
    connected, _ = await comm.connect()
    assert connected
    await comm.send_to(text_data=json.dumps({"action": "send", "content": "hello"}))
    frame = json.loads(await comm.receive_from(timeout=10))
    assert frame["type"] == "error" and frame["action"] == "send"
    assert frame["error"].startswith("Token quota reached") and "Lower max tokens" in frame["error"]
    assert queued == []
    assert not await database_sync_to_async(conv.messages.exists)()
    await comm.disconnect()

