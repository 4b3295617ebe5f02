"""The device worker is a process of its own: when it dies mid-answer (SIGKILL, as the OOM killer
sends, or a real SIGSEGV, as a crash in llama.cpp raises) the site stays up, the answer ends
interrupted with its partial text, an open websocket is told, and a restarted worker answers
the next message; a stop reaches the worker process too. Against a real served daphne in the
default embedded mode, its worker process holding SmolLM2-135M."""
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from browser_support import ARTIFACTS, REPO
from live_stack import LiveServer, open_socket, saved_partial_text, send, until_final, wait_for

pytestmark = [
    pytest.mark.model,
    # What a dying worker process does is the same on either database (the API, batch and metrics
    # modules run on PostgreSQL too): the SQLite run covers it and the PostgreSQL run saves the minutes.
    pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="process faults, database-independent: "
                                                                     "the SQLite run covers them"),
]

DEADLINE = 150  # generous: model loads and answers on two possibly busy cores
METRICS_TOKEN = "worker-process-metrics-token"
STORY = "Tell me a long story about a dragon who learns to bake bread, with many chapters."

# A user, a chat whose answers run long (greedy decoding of a small model rambles on to
# max_tokens) and a logged-in session, made in the server's own environment and database.
SETUP = """
import json
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from chat.models import Conversation

user = get_user_model().objects.create_user({name!r}, password="pw-123456789")
conv = Conversation.objects.create(owner=user, model="smollm2-135m", temperature=0.0, max_tokens=2000)
client = Client()
client.force_login(user)
print(json.dumps({{"conversation": conv.pk, "session": client.cookies[settings.SESSION_COOKIE_NAME].value}}))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_path):
    ARTIFACTS.mkdir(exist_ok=True)
    models = {"smollm2-135m": {"path": default_model_path, "n_ctx": 4096, "threads": 2, "device": "cpu"}}
    live = LiveServer(tmp_path_factory.mktemp("worker-process"), models, ARTIFACTS / "worker-process-server.log",
                      env={"SMOLSITE_WORKER_MODE": "process", "SMOLSITE_METRICS_TOKEN": METRICS_TOKEN,
                           # its own count, not this test run's
                           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("worker-process-metrics"))}
                      ).start()
    yield live
    live.stop()


API_KEY = """
from django.contrib.auth import get_user_model
from api.models import ApiKey

user = get_user_model().objects.create_user({name!r}, password="pw-123456789")
print(ApiKey.create_for(user, "key")[1])
"""


def make_person(server, name):
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP.format(name=name)], cwd=REPO,
                         env=server.env, check=True, capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def set_max_tokens(server, conversation, max_tokens):
    server.execute("UPDATE chat_conversation SET max_tokens = ? WHERE id = ?", max_tokens, conversation)


def http_status(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status


def http_body(url, headers=None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
        return response.read()


async def crash_mid_answer_then_answer_again(server, person, signum):
    async with open_socket(server, person) as ws:
        async with asyncio.timeout(DEADLINE):
            reply = await send(ws, STORY)
            partial = await saved_partial_text(server, reply)
            pid = server.worker_pid()
            assert pid, "the worker process wrote no pid file"
            os.kill(pid, signum)
            frames = await until_final(ws, reply)

        # The site is still up, and the answer ended with what had been saved of it.
        assert await asyncio.to_thread(http_status, server.url + "/healthz") == 200
        row = server.message(reply)
        assert row["status"] == "interrupted", row
        assert row["content"].startswith(partial), row
        assert f"killed by {signal.Signals(signum).name}" in row["error"], row
        assert row["finished_at"] is not None
        assert not [f for f in frames if f["type"] == "error"], frames

        # A replacement worker process answers the next message.
        set_max_tokens(server, person["conversation"], 8)
        async with asyncio.timeout(DEADLINE):
            again = await send(ws, "Say hello.")
            await until_final(ws, again)
        row = server.message(again)
        assert row["status"] == "done" and row["content"].strip(), row
        assert server.worker_pid() not in (None, pid)
    # The web process beats for the new worker, and sees what it counted (its cache is the web process's).
    assert await asyncio.to_thread(http_status, server.url + "/readyz") == 200
    metrics = json.loads(await asyncio.to_thread(http_body, server.url + "/metrics.json",
                                                  {"Authorization": f"Bearer {METRICS_TOKEN}"}))
    assert metrics["generations_finished"].get("done", 0) >= 1, metrics
    return pid


def test_killed_worker_process_is_replaced_and_its_answer_interrupted(server):
    pid = asyncio.run(crash_mid_answer_then_answer_again(server, make_person(server, "killed"), signal.SIGKILL))
    log = server.log_path.read_text()
    assert f"(process {pid}) was killed by SIGKILL" in log
    assert "Traceback" not in log


def test_segfaulting_worker_process_is_replaced_and_its_answer_interrupted(server):
    pid = asyncio.run(crash_mid_answer_then_answer_again(server, make_person(server, "segv"), signal.SIGSEGV))
    log = server.log_path.read_text()
    assert f"(process {pid}) was killed by SIGSEGV" in log
    assert "Traceback" not in log


async def stop_mid_answer(server, person):
    async with open_socket(server, person) as ws:
        async with asyncio.timeout(DEADLINE):
            reply = await send(ws, STORY)
            await saved_partial_text(server, reply)
            await ws.send(json.dumps({"action": "stop"}))
            await until_final(ws, reply)
    return reply


def test_stop_reaches_the_worker_process(server):
    # The stop flag is set in the web process; the worker process polls a cache of its own.
    reply = asyncio.run(stop_mid_answer(server, make_person(server, "stopper")))
    row = server.message(reply)
    assert row["status"] == "stopped" and row["content"].strip(), row
    assert row["completion_tokens"] < 2000


# ---- the API when the worker dies under an answer ------------------------------------------------

def make_api_key(server, name):
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", API_KEY.format(name=name)], cwd=REPO,
                         env=server.env, check=True, capture_output=True, text=True, timeout=120).stdout
    return out.strip().splitlines()[-1]


def wait_ready(server):
    """Until a worker process holds the model again (an earlier test may have killed the last one):
    the API answers 503 model_not_available meanwhile."""
    wait_for(lambda: http_status_or_none(server.url + "/readyz") == 200, DEADLINE, "a ready worker process")


def api_request(server, key, **fields):
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": STORY}], "max_tokens": 2000,
            "temperature": 0, **fields}
    return urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                  headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})


def answer_of(server, username):
    """The API answer row of ``username``'s only request, once the worker has saved some of its text."""
    rows = server.query("SELECT m.* FROM chat_message m JOIN chat_conversation c ON m.conversation_id = c.id "
                        "JOIN auth_user u ON c.owner_id = u.id WHERE u.username = ? AND m.role = 'assistant'",
                        username)
    return rows[0] if rows and rows[0]["content"] else None


def test_a_worker_dying_under_a_whole_api_answer_is_a_503_worker_lost(server):
    key = make_api_key(server, "api-whole")
    wait_ready(server)
    reply = {}

    def whole_answer():
        try:
            with urllib.request.urlopen(api_request(server, key), timeout=DEADLINE) as response:
                reply.update(status=response.status, body=json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            reply.update(status=exc.code, retry_after=exc.headers["Retry-After"], body=json.loads(exc.read()))

    waiting = threading.Thread(target=whole_answer)
    waiting.start()
    row = wait_for(lambda: answer_of(server, "api-whole"), DEADLINE, "the answer's first saved text")
    os.kill(server.worker_pid(), signal.SIGKILL)
    waiting.join(DEADLINE)
    assert reply["status"] == 503, reply
    assert reply["body"]["error"]["code"] == "worker_lost" and reply["retry_after"], reply
    assert "killed by SIGKILL" in reply["body"]["error"]["message"], reply
    assert server.message(row["id"])["status"] == "interrupted"


def test_a_worker_dying_under_a_streamed_api_answer_ends_the_stream_with_an_error_event(server):
    key = make_api_key(server, "api-stream")
    wait_ready(server)
    events, killed = [], None
    with urllib.request.urlopen(api_request(server, key, stream=True), timeout=DEADLINE) as response:
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data: "):
                continue  # blank separators and ": ..." comments
            events.append(line[6:])
            if killed is None and '"content": "' in line and answer_of(server, "api-stream"):
                killed = server.worker_pid()
                os.kill(killed, signal.SIGKILL)
    assert killed
    error = json.loads(events[-1])["error"]  # OpenAI's error shape, inside the stream, and the end of it
    assert error["code"] == "worker_lost" and "killed by SIGKILL" in error["message"], error
    assert "[DONE]" not in events
    streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    row = server.message(int(json.loads(events[0])["id"].rsplit("-", 1)[1]))
    assert row["status"] == "interrupted" and streamed and row["content"].startswith(streamed), row


# ---- the supervisor backs off a worker that keeps dying young ----------------------------------------

def test_a_worker_process_that_keeps_dying_young_is_restarted_later_each_time(tmp_path, default_model_path):
    models = {"smollm2-135m": {"path": default_model_path, "n_ctx": 512, "threads": 2, "device": "cpu"}}
    live = LiveServer(tmp_path, models, tmp_path / "server.log", env={"SMOLSITE_WORKER_MODE": "process"}).start()
    try:
        killed, waited = [], []
        for _ in range(3):
            pid = wait_for(lambda: next_pid(live, killed), DEADLINE, "the next worker process")
            if killed:
                waited.append(time.monotonic() - died)
            os.kill(pid, signal.SIGKILL)
            died = time.monotonic()
            killed.append(pid)
        wait_for(lambda: next_pid(live, killed), DEADLINE, "the fourth worker process")
        waited.append(time.monotonic() - died)
        log = live.log_path.read_text()
        delays = [int(re.search(rf"\(process {pid}\) was killed by SIGKILL: .* starts in (\d+) s", log).group(1))
                  for pid in killed]
        assert delays == [1, 2, 4], log[-3000:]
        # Each successor came no sooner than its delay said.
        assert all(w >= d for w, d in zip(waited, delays)), (waited, delays)
        wait_ready(live)
    finally:
        live.stop()


def next_pid(live, killed):
    pid = live.worker_pid()
    return pid if pid not in killed else None


def http_status_or_none(url):
    try:
        return http_status(url)
    except (urllib.error.URLError, OSError):
        return None
