"""The openai_upstream plugin scaled out, for real: daphne serving smolsite with REDIS_URL and
SMOLSITE_UPSTREAMS, no model of its own in the web process, and one Celery worker for the device
"upstream" started as `make worker DEVICE=upstream` starts it (queues device.upstream and
maintenance, thread pool, SMOLSITE_DEVICE=upstream), in front of a real upstream:
llama-cpp-python's OpenAI-compatible server on the bundled SmolLM2 GGUF (tests/upstream_support.py).

The web process and the worker share this run's test database and its Redis database (as
tests/test_redis.py's workers do): the test reads rows with the ORM and heartbeats from the cache.
Marked ``redis``: `make test` runs it in its Redis runs (REDIS_URL set), the plain runs deselect it."""
import asyncio
import json
import signal
import subprocess
import sys
import time

import openai
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from api.models import ApiKey
from browser_support import ARTIFACTS, REPO, free_port
from chat.models import Conversation, Message
from live_stack import assembled_text, http, open_socket, send, until_final, wait_for
from redis_support import WorkerProcess, _clear_cache, redis_db, worker_env  # noqa: F401 (fixtures)
from upstream_support import ALIAS, LlamaServer
from usage.models import UsageRecord

pytestmark = [
    pytest.mark.redis, pytest.mark.model,
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (run `make test-redis`)"),
]

TOKEN = "metrics-token-for-scaled-upstream-tests"
STORY = "Write the numbers from 1 to 300, separated by commas."  # SmolLM2 at temperature 0: a long answer
DEADLINE = 150  # bounds a hang on two busy cores; nothing is asserted about how long anything takes
DISCONNECT = "Disconnected from client"  # what llama_cpp.server logs when a stream's client goes


# ---- the stack --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def upstream(tmp_path_factory, default_model_path):
    server = LlamaServer(tmp_path_factory.mktemp("llama-upstream"), default_model_path).start()
    yield server
    server.stop()


def stack_env(upstream):
    """What both processes are configured with, as one .env of a scaled-out site would be."""
    return {"SMOLSITE_UPSTREAMS": json.dumps([upstream.config()]), "SMOLSITE_UPSTREAM_PROBE_SECONDS": "1",
            # Generous: nothing here hangs the upstream, and a probe must not time out on a busy machine.
            "SMOLSITE_UPSTREAM_PROBE_TIMEOUT": "10", "SMOLSITE_METRICS_TOKEN": TOKEN, "SMOLSITE_REAPER_SECONDS": "1"}


@pytest.fixture(scope="module")
def upstream_worker(django_db_setup, redis_db, upstream, tmp_path_factory):  # noqa: F811
    """`make worker DEVICE=upstream`; restarted by ``worker`` after a test killed it."""
    worker = WorkerProcess("upstream", "device.upstream,maintenance", tmp_path_factory.mktemp("upstream-worker"),
                           SMOLSITE_DEVICE="upstream", **stack_env(upstream))
    yield worker
    worker.stop()  # before pytest-django drops the test database the worker is connected to


class Site:
    """daphne on the test database and Redis, as the web process of a scaled-out site."""

    def __init__(self, env, log_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env, self.log_path = env, log_path
        self.proc = None

    def start(self):
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                                          "smolsite.asgi:application"], cwd=REPO, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)

        def up():
            assert self.proc.poll() is None, f"the web process exited: {self.log()[-3000:]}"
            return http(self.url + "/healthz", timeout=5)[0] == 200
        wait_for(up, DEADLINE, "the web process to answer /healthz")
        return self

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def site(upstream_worker, upstream):
    ARTIFACTS.mkdir(exist_ok=True)
    env = worker_env(**stack_env(upstream))
    env.pop("SMOLSITE_DEVICE")  # the web process is no device worker
    web = Site(env, ARTIFACTS / "upstream-scaled-web.log")
    upstream_worker.start()  # both start at once: each imports Django on its own core
    try:
        web.start()
        yield web
    finally:
        web.stop()


@pytest.fixture
def worker(site, upstream_worker, transactional_db):
    """The upstream worker, up with the discovered model in its heartbeat (WorkerProcess.wait_ready)."""
    if upstream_worker.running and not upstream_worker.worker_id:
        upstream_worker.wait_ready()
    upstream_worker.ensure_running()
    yield upstream_worker


def person(name, max_tokens=48):
    """An account with an API key, a chat on the upstream's model and a logged-in session."""
    user = get_user_model().objects.create_user(name, password="pw-123456789")
    conversation = Conversation.objects.create(owner=user, model=ALIAS, temperature=0.0, max_tokens=max_tokens,
                                               thinking=False)
    client = Client()
    client.force_login(user)
    return {"name": name, "key": ApiKey.create_for(user, f"{name}'s key")[1], "conversation": conversation.pk,
            "session": client.cookies[settings.SESSION_COOKIE_NAME].value}


def api(site, who):
    return openai.OpenAI(base_url=site.url + "/v1", api_key=who["key"], max_retries=0, timeout=DEADLINE)


def message_id(completion_id):
    return int(completion_id.rsplit("-", 1)[1])


def readyz_workers(site):
    status, body = http(site.url + "/readyz", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status is not None, body
    return status, json.loads(body)["checks"]["workers"]


def models_probes(upstream):
    """``GET /v1/models`` requests the upstream has received (the probes, beside LlamaServer's own)."""
    return upstream.log().count("GET /v1/models")


# ---- 1. discovery in the worker ------------------------------------------------------------------------

def test_the_worker_discovers_the_model_and_the_site_lists_it(site, worker, upstream):
    def listed():
        status, workers = readyz_workers(site)
        mine = [w for w in workers.get("workers", []) if w["id"] == worker.worker_id]
        return status == 200 and mine and ALIAS in mine[0]["models"] and mine
    mine = wait_for(listed, 60, "/readyz to list the upstream worker serving the model")
    assert mine[0]["device"] == "upstream" and mine[0]["models"] == [ALIAS], mine
    assert mine[0]["upstreams"] == [{"name": "llama-a", "up": True, "error": "", "models": [ALIAS]}], mine
    assert worker.worker_id.endswith(f":{worker.pid}")  # the Celery process's heartbeat

    models = {m.id: m for m in api(site, person("alice")).models.list().data}
    assert ALIAS in models, list(models)
    extra = models[ALIAS].model_extra["smolsite"]
    assert extra["device"] == "upstream" and extra["backend"] == "openai_upstream"
    assert extra["served_by"] == ["llama-a"]


# ---- 2. a streamed completion answered through the worker -------------------------------------------------

def test_a_streamed_completion_is_answered_by_the_upstream_through_the_worker(site, worker, upstream):
    who = person("bob")
    seen = upstream.requests_seen()
    pieces, usage, completion_id = [], None, None
    for chunk in api(site, who).chat.completions.create(
            model=ALIAS, messages=[{"role": "user", "content": "Count to five."}], max_tokens=24, temperature=0,
            stream=True, stream_options={"include_usage": True}):
        completion_id = chunk.id
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(pieces) > 1 and usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert upstream.requests_seen() == seen + 1

    message = Message.objects.get(pk=message_id(completion_id))
    assert message.status == "done", message.error
    assert message.backend_name == "openai_upstream:llama-a"
    assert message.worker_id == worker.worker_id  # the Celery worker ran it, not the web process
    assert message.content == "".join(pieces)
    assert message.completion_tokens == usage.completion_tokens
    record = UsageRecord.objects.get(message_id=message.pk)
    assert record.source == "api" and record.model == ALIAS
    assert record.completion_tokens == usage.completion_tokens and record.prompt_tokens == usage.prompt_tokens


# ---- 3. Stop and a client that goes away stop the upstream's stream --------------------------------------

def test_stop_mid_stream_stops_the_upstream_request(site, worker, upstream):
    who = person("carol", max_tokens=1500)
    disconnects = upstream.log().count(DISCONNECT)

    async def scenario():
        async with open_socket(site, who) as ws, asyncio.timeout(DEADLINE):
            reply = await send(ws, STORY)
            frames = []
            while not any(e["kind"] == "text" for f in frames if f["type"] == "events" for e in f["events"]):
                frames.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"action": "stop"}))
            return reply, frames + await until_final(ws, reply)

    reply, frames = asyncio.run(scenario())
    message = Message.objects.get(pk=reply)
    assert message.status == "stopped" and message.content.strip()
    assert assembled_text(frames, reply) == message.content
    assert message.completion_tokens < 1500 and message.worker_id == worker.worker_id
    wait_for(lambda: upstream.log().count(DISCONNECT) > disconnects, 30, "the upstream to log the disconnect")


def test_an_api_client_that_goes_away_mid_stream_stops_the_upstream_request(site, worker, upstream):
    who = person("dave")
    disconnects = upstream.log().count(DISCONNECT)
    stream = api(site, who).chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": STORY}],
                                                    max_tokens=1500, temperature=0, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()  # the client hangs up mid-answer
    message = wait_for(lambda: (m := Message.objects.get(pk=message_id(chunk.id))).status not in Message.ACTIVE and m,
                       DEADLINE, "the answer to end after the client left")
    assert message.status == "stopped", (message.status, message.error)
    assert message.completion_tokens < 1500 and message.worker_id == worker.worker_id
    wait_for(lambda: upstream.log().count(DISCONNECT) > disconnects, 30, "the upstream to log the disconnect")


# ---- 4. the worker killed mid-answer; no worker at all -------------------------------------------------

def test_a_killed_worker_leaves_the_answer_interrupted_and_the_model_unavailable(site, worker, upstream):
    who = person("erin", max_tokens=1500)
    disconnects = upstream.log().count(DISCONNECT)

    async def scenario():
        async with open_socket(site, who) as ws, asyncio.timeout(DEADLINE):
            reply = await send(ws, STORY)
            while not (row := await asyncio.to_thread(lambda: Message.objects.get(pk=reply))).content:
                assert row.status in Message.ACTIVE, row.status
                await asyncio.sleep(0.1)
            worker.stop(signal.SIGKILL)
            assert worker.proc.returncode == -signal.SIGKILL
            killed = await asyncio.to_thread(lambda: Message.objects.get(pk=reply))
            # The web process's reaper ends it once the worker's heartbeat has expired; open tabs are told.
            frames = await until_final(ws, reply)
            return killed, frames, models_probes(upstream)

    killed, frames, probes = asyncio.run(scenario())
    assert killed.status == "streaming" and killed.worker_id == worker.worker_id
    message = Message.objects.get(pk=killed.pk)
    assert message.status == "interrupted", (message.status, message.error)
    assert message.content == killed.content and message.content.strip()  # the partial text is kept
    assert "worker stopped" in message.error and message.finished_at is not None
    assert assembled_text(frames, killed.pk) == message.content
    # The worker's socket closed with it: the upstream's stream ended too.
    wait_for(lambda: upstream.log().count(DISCONNECT) > disconnects, 30, "the upstream to log the disconnect")

    # No upstream worker now: nobody probes (the web process never does), /readyz says so, and an
    # answer is refused at once instead of waiting in a queue nobody reads.
    status, workers = readyz_workers(site)
    assert status == 503 and workers["workers"] == [], workers
    with pytest.raises(openai.APIStatusError) as refused:
        api(site, who).chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
    assert refused.value.status_code == 503 and "model_not_available" in str(refused.value.body), refused.value.body
    status, page = http(site.url + f"/c/{who['conversation']}/",
                        headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={who['session']}"})
    assert status == 200 and "model-unavailable" in page, page[-2000:]
    time.sleep(3)  # three probe periods
    assert models_probes(upstream) == probes, "something other than the upstream worker probes the upstream"
