"""The metrics plugin in-process: /metrics parsed with prometheus_client's own parser, its counters
equal to the generations run through the embedded worker (the consumer enqueues, the in-process
device worker of inference.embedded generates with the real SmolLM2-135M), who may read /metrics,
/metrics.json, /readyz's detail and the dashboard, the dashboard's figures, and blocking the plugin."""
import asyncio
import importlib
import threading
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from django.urls import clear_url_caches
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from chat.models import Conversation, Message
from inference.workers import Heartbeat
from usage.models import UsageRecord

TOKEN = "metrics-token-for-tests-0123456789"
MODEL = "smollm2-135m"


# ---- reading /metrics ---------------------------------------------------------------------------

def parse(text):
    """{(sample name, frozenset of labels): value}, and {family name: type}."""
    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def total(samples, name, **labels):
    """The sum of a sample over every series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@override_settings(SMOLSITE_METRICS_TOKEN=TOKEN)
def scrape(client=None):
    response = (client or Client()).get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return parse(response.content.decode())[0]


def counts(samples, **labels):
    return {
        "started": total(samples, "smolsite_generations_total", **labels),
        "done": total(samples, "smolsite_generations_finished_total", status="done", **labels),
        "finished": total(samples, "smolsite_generations_finished_total", **labels),
        "prompt": total(samples, "smolsite_prompt_tokens_total", **labels),
        "completion": total(samples, "smolsite_completion_tokens_total", **labels),
        "cached": total(samples, "smolsite_cached_tokens_total", **labels),
        "ttft": total(samples, "smolsite_time_to_first_token_seconds_count", **labels),
        "tpot": total(samples, "smolsite_time_per_output_token_seconds_count", **labels),
        "queue": total(samples, "smolsite_queue_wait_seconds_count", **labels),
        "in_progress": total(samples, "smolsite_generations_in_progress", **labels),
    }


def delta(after, before):
    return {k: after[k] - before[k] for k in after}


def expected_from_rows(rows):
    """What the counters must have grown by for these finished answers (done, with tokens)."""
    return {
        "started": len(rows), "done": len(rows), "finished": len(rows),
        "prompt": sum(r.prompt_tokens for r in rows), "completion": sum(r.completion_tokens for r in rows),
        "cached": sum(r.cached_tokens or 0 for r in rows), "ttft": len(rows),
        "tpot": sum(1 for r in rows if r.tokens_per_second), "queue": len(rows), "in_progress": 0,
    }


def staff_client(username="ops"):
    client = Client()
    client.force_login(get_user_model().objects.create_user(username, password="pw-123456789", is_staff=True))
    return client


def user_client(username="pat"):
    client = Client()
    client.force_login(get_user_model().objects.create_user(username, password="pw-123456789"))
    return client


# ---- who may read ------------------------------------------------------------------------------

@pytest.mark.django_db
@override_settings(SMOLSITE_METRICS_TOKEN=TOKEN)
@pytest.mark.parametrize("path", ["/metrics", "/metrics.json"])
def test_metrics_need_the_token_or_a_staff_session(client, path):
    anonymous = client.get(path)
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"].startswith("Bearer ")
    wrong = client.get(path, HTTP_AUTHORIZATION="Bearer not-the-token")
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong["WWW-Authenticate"]
    assert client.get(path, HTTP_AUTHORIZATION="Basic b3BzOnB3").status_code == 401
    assert user_client().get(path).status_code == 403
    # A non-staff user with a wrong token is still refused; the right token is enough on its own.
    assert user_client("pat2").get(path, HTTP_AUTHORIZATION="Bearer nope").status_code == 401
    assert client.get(path, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert staff_client().get(path).status_code == 200


@pytest.mark.django_db
@override_settings(SMOLSITE_METRICS_TOKEN="")
def test_no_token_configured_means_no_bearer_is_accepted(client):
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer x").status_code == 401
    assert staff_client().get("/metrics").status_code == 200


# ---- /readyz -----------------------------------------------------------------------------------

@pytest.mark.django_db
@override_settings(SMOLSITE_METRICS_TOKEN=TOKEN)
def test_readyz_shows_anonymous_callers_no_worker_ids_or_hosts(client):
    worker_id = "cpu@secret-host-7:4242"
    heartbeat = Heartbeat(worker_id, "cpu", lambda: [MODEL]).start()
    try:
        for caller, headers in ((client, {}), (user_client(), {}),
                                (client, {"HTTP_AUTHORIZATION": "Bearer wrong"})):
            response = caller.get("/readyz", **headers)
            assert response.status_code == 200  # load balancers still get their answer
            body = response.content.decode()
            assert "secret-host" not in body and "4242" not in body and worker_id not in body
            assert response.json() == {"status": "ready", "checks": {
                "database": {"ok": True}, "channel_layer": {"ok": True}, "workers": {"ok": True}}}
        for caller, headers in ((staff_client(), {}), (client, {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"})):
            detail = caller.get("/readyz", **headers).json()["checks"]["workers"]["workers"]
            assert [w["id"] for w in detail] == [worker_id]
    finally:
        heartbeat.stop()
    # Not ready: 503, and still no error text for anonymous callers.
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["workers"] == {"ok": False}
    assert "no device worker" in staff_client("ops2").get("/readyz").json()["checks"]["workers"]["error"]


# ---- counting generations of the embedded worker -----------------------------------------------

async def answer(user, conversation, content):
    """Send through the websocket consumer; the in-process embedded worker answers. The answer's row."""
    from channels.testing import WebsocketCommunicator
    from smolsite.asgi import application
    import json

    comm = WebsocketCommunicator(application, f"/ws/chat/{conversation.pk}/", headers=[(b"origin", b"http://127.0.0.1")])
    comm.scope["user"] = user
    connected, _ = await comm.connect()
    assert connected
    await comm.send_json_to({"action": "send", "content": content})
    reply = None
    async with asyncio.timeout(180):
        while True:
            frame = json.loads(await comm.receive_from(timeout=180))
            if frame["type"] == "thread":
                reply = reply or frame["active"]
            if frame["type"] == "final" and frame["message"] == reply:
                break
    await comm.disconnect()
    return await database_sync_to_async(Message.objects.get)(pk=reply)


@pytest.mark.model
@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_counters_equal_the_generations_of_the_embedded_worker(loaded_registry):
    labels = {"model": MODEL, "device": "cpu", "source": "chat"}
    before = await asyncio.to_thread(lambda: counts(scrape(), **labels))
    user = await database_sync_to_async(get_user_model().objects.create_user)("counted", password="pw-123456789")
    conv = await database_sync_to_async(Conversation.objects.create)(owner=user, model=MODEL, temperature=0.0,
                                                                    max_tokens=12)
    rows = [await answer(user, conv, prompt) for prompt in ("Name a colour.", "Name a fruit.", "Name a city.")]
    assert [r.status for r in rows] == ["done"] * 3, [r.error for r in rows]
    after = await asyncio.to_thread(lambda: counts(scrape(), **labels))
    assert delta(after, before) == expected_from_rows(rows)

    # A row from the API is labelled so; /metrics.json sums the same files.
    from inference.service import run_job

    api_conv = await database_sync_to_async(Conversation.objects.create)(owner=user, model=MODEL, source="api",
                                                                        temperature=0.0)
    api_row = await database_sync_to_async(Message.objects.create)(
        conversation=api_conv, role="assistant", status="pending", model_name=MODEL,
        options={"source": "api", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]})
    api_before = await asyncio.to_thread(lambda: counts(scrape(), model=MODEL, source="api"))
    await asyncio.to_thread(run_job, api_row.pk, "cpu@test:1")
    api_row = await database_sync_to_async(Message.objects.get)(pk=api_row.pk)
    api_after = await asyncio.to_thread(lambda: counts(scrape(), model=MODEL, source="api"))
    assert delta(api_after, api_before) == expected_from_rows([api_row])

    def json_view():
        with override_settings(SMOLSITE_METRICS_TOKEN=TOKEN):
            return Client().get("/metrics.json", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").json()

    data = await asyncio.to_thread(json_view)
    samples = await asyncio.to_thread(scrape)
    assert_documented_types(await asyncio.to_thread(lambda: parse(staff_text())[1]))
    assert data["completion_tokens"] == total(samples, "smolsite_completion_tokens_total")
    assert data["generations_finished"]["done"] == total(samples, "smolsite_generations_finished_total", status="done")


def staff_text():
    return staff_client("types").get("/metrics").content.decode()


def assert_documented_types(types):
    for name in ("smolsite_generations", "smolsite_generations_finished", "smolsite_prompt_tokens",
                 "smolsite_cached_tokens", "smolsite_completion_tokens"):
        assert types.get(name) == "counter", (name, types)
    for name in ("smolsite_time_to_first_token_seconds", "smolsite_time_per_output_token_seconds",
                 "smolsite_queue_wait_seconds"):
        assert types.get(name) == "histogram", (name, types)
    for name in ("smolsite_generations_in_progress", "smolsite_workers_alive", "smolsite_engine_running_sequences",
                 "smolsite_engine_waiting_requests", "smolsite_engine_batch_fill_ratio",
                 "smolsite_engine_kv_usage_ratio", "smolsite_engine_prefix_hit_ratio"):
        assert types.get(name) == "gauge", (name, types)


# ---- the dashboard -----------------------------------------------------------------------------

@pytest.mark.django_db
def test_dashboard_is_for_staff_only(client):
    response = client.get("/metrics/dashboard/")
    assert response.status_code == 302 and "/login" in response["Location"]
    assert client.get("/metrics/dashboard/data.json").status_code == 302
    assert user_client().get("/metrics/dashboard/").status_code == 403
    assert user_client("pat2").get("/metrics/dashboard/data.json").status_code == 403
    page = staff_client().get("/metrics/dashboard/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "vendor/chartjs/chart.umd.min.js" in html and 'id="chart-tps"' in html
    assert "cdn" not in html.lower() and "<script>" not in html  # vendored, no inline script (CSP)
    # Staff find it from the chat sidebar; others get no link.
    assert 'href="/metrics/dashboard/"' in staff_client("ops3").get("/", follow=True).content.decode()
    assert "/metrics/dashboard/" not in user_client("pat3").get("/", follow=True).content.decode()


@pytest.mark.django_db
def test_vendored_chart_library_is_served_with_its_license(client):
    js = client.get("/static/vendor/chartjs/chart.umd.min.js")
    assert js.status_code == 200
    assert b"Chart.js v4" in b"".join(js.streaming_content if js.streaming else [js.content])
    lic = client.get("/static/vendor/chartjs/LICENSE.md")
    assert lic.status_code == 200


@pytest.mark.django_db
def test_dashboard_figures_come_from_the_database():
    now = timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)
    users = [get_user_model().objects.create_user(n, password="pw-123456789") for n in ("ann", "ben")]
    conv = Conversation.objects.create(owner=users[0], model="a")

    def answer(model, status, created, tps=None, ttft=None, completion=0, queued=0.0):
        generating = (ttft or 0) + ((completion - 1) / tps if tps and completion > 1 else 0)
        return Message.objects.create(
            conversation=conv, role="assistant", status=status, model_name=model, tokens_per_second=tps,
            ttft=ttft, completion_tokens=completion, created_at=created,
            finished_at=created + timedelta(seconds=queued + generating))

    yesterday = now - timedelta(days=1)
    answer("a", "done", yesterday, tps=10.0, ttft=0.5, completion=11, queued=2.0)
    answer("a", "done", yesterday, tps=30.0, ttft=1.5, completion=31, queued=4.0)
    answer("b", "done", yesterday, tps=50.0, ttft=0.2, completion=6, queued=0.0)
    answer("a", "error", now, queued=1.0)
    answer("a", "done", now, tps=20.0, ttft=1.0, completion=3, queued=0.0)
    answer("a", "interrupted", now, queued=3.0)
    answer("a", "done", now - timedelta(days=40), tps=99.0, ttft=9.0, completion=2)  # outside the range
    for user, tokens in ((users[0], 100), (users[1], 300), (users[1], 50)):
        UsageRecord.objects.create(user=user, model="a", total_tokens=tokens, created_at=now)

    data = staff_client().get("/metrics/dashboard/data.json?days=14").json()
    day, today = yesterday.strftime("%Y-%m-%d"), now.strftime("%Y-%m-%d")
    assert data["bucket"] == "day"
    assert data["tokens_per_second"] == {"a": {day: 20.0, today: 20.0}, "b": {day: 50.0}}
    assert data["ttft_seconds"] == {"a": {day: 1.0, today: 1.0}, "b": {day: 0.2}}
    assert data["messages_per_day"] == {day: 3, today: 3}
    assert data["error_rate"] == {day: 0.0, today: round(2 / 3, 4)}
    assert data["queue_wait_seconds"][day]["mean"] == 2.0
    assert data["queue_wait_seconds"][today]["mean"] == round(4 / 3, 3)
    assert data["top_users"] == [{"user": "ben", "tokens": 350, "requests": 2},
                                 {"user": "ann", "tokens": 100, "requests": 1}]
    # Bad input gets the default range, never a 500.
    assert staff_client("ops2").get("/metrics/dashboard/data.json?days=lots").json()["days"] == 14


# ---- blocking the plugin -----------------------------------------------------------------------

@pytest.fixture
def metrics_blocked(plugin_manager_reset):
    import smolsite.urls
    from inference.plugins import build_plugin_manager

    plugin_manager_reset.reset(build_plugin_manager(blocked=["metrics", "hello"]))
    importlib.reload(smolsite.urls)
    clear_url_caches()
    yield
    plugin_manager_reset.reset(None)
    importlib.reload(smolsite.urls)
    clear_url_caches()


@pytest.mark.model
@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_blocked_plugin_removes_metrics_and_dashboard_but_chat_works(loaded_registry, metrics_blocked):
    paths = ("/metrics", "/metrics.json", "/metrics/dashboard/", "/metrics/dashboard/data.json")

    def statuses():
        with override_settings(SMOLSITE_METRICS_TOKEN=TOKEN):
            client = staff_client()
            return [client.get(p, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code for p in paths]

    def sidebar():
        return staff_client("ops-sidebar").get("/", follow=True).content.decode()

    assert await database_sync_to_async(statuses)() == [404] * len(paths)
    page = await database_sync_to_async(sidebar)()
    assert "Sign out" in page and "/metrics/dashboard/" not in page  # the chat page, without the link
    before = counts(await asyncio.to_thread(_scrape_files))
    user = await database_sync_to_async(get_user_model().objects.create_user)("chatter", password="pw-123456789")
    conv = await database_sync_to_async(Conversation.objects.create)(owner=user, model=MODEL, temperature=0.0,
                                                                    max_tokens=8)
    row = await answer(user, conv, "Say hello.")
    assert row.status == "done" and row.content.strip()
    # Nothing observed the generation: the plugin's hooks are gone with its routes.
    assert counts(await asyncio.to_thread(_scrape_files)) == before


def _scrape_files():
    """The counters straight from the multiprocess files (the route is blocked)."""
    from prometheus_client import generate_latest

    from plugins.metrics import exposition

    return parse(generate_latest(exposition.registry(engines=False)).decode())[0]


@pytest.mark.model
@pytest.mark.django_db
def test_metrics_show_the_engines_of_live_workers(loaded_registry, admin_client):
    from inference.workers import EngineReporter, Heartbeat

    beat = Heartbeat("cpu@test:1", "cpu", loaded_registry.loaded_models).start()
    reporter = EngineReporter("cpu@test:1", loaded_registry.stats).start()
    try:
        for _ in range(100):
            body = admin_client.get("/metrics").content.decode()
            if "smolsite_engine_slots" in body and 'worker="cpu@test:1"' in body:
                break
            threading.Event().wait(0.05)
        slots = loaded_registry.backend("smollm2-135m").slots
        samples, types = parse(body)
        labels = frozenset({"worker": "cpu@test:1", "device": "cpu", "model": "smollm2-135m"}.items())
        assert samples[("smolsite_engine_slots", labels)] == slots
        assert samples[("smolsite_engine_kv_usage_ratio", labels)] == 0
        assert types["smolsite_engine_prefix_hits"] == "counter"
        assert types["smolsite_engine_preemptions"] == "counter"
        assert samples[("smolsite_engine_preemptions_total", labels)] == 0
        engines = admin_client.get("/metrics.json").json()["engines"]
        assert engines["cpu@test:1"]["smollm2-135m"]["running"] == 0
    finally:
        reporter.stop()
        beat.stop()
