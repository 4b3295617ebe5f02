"""The device worker is a process of its own: when it dies mid-answer (SIGKILL, as the OOM killer
sends, or a real SIGSEGV, as a crash in llama.cpp raises) the site stays up, the answer ends
interrupted with its partial text, an open websocket is told, and a restarted worker answers
the next message; a stop reaches the worker process too. Against a real served daphne in the
default embedded mode, its worker process holding SmolLM2-135M."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from browser_support import ARTIFACTS, REPO
from live_stack import LiveServer, open_socket, saved_partial_text, send, until_final

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
