"""Many users at once against a real served process: daphne with the embedded worker and its
own SQLite file, driven over real websockets. Sixteen users send at the same moment while the
worker claims, saves and finishes answers; every message must be answered, no socket may die
with 1011 and SQLite must never refuse a write ("database is locked")."""
import asyncio
import json
import subprocess
import sys

import pytest
from browser_support import ARTIFACTS, REPO, LiveServer
from live_stack import open_socket, until_answered

pytestmark = pytest.mark.model

USERS = 16
ANSWER_SECONDS = 150  # all answers, served one at a time, on two possibly busy cores

# Users, their chats (short answers: the worker serves one at a time) and logged-in sessions,
# made inside the server's own environment and database.
SETUP = f"""
import json
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from chat.models import Conversation

people = []
for i in range({USERS}):
    user = get_user_model().objects.create_user(f"user{{i:02d}}", password="pw-123456789")
    conv = Conversation.objects.create(owner=user, model="smollm2-135m", temperature=0.0, max_tokens=8)
    client = Client()
    client.force_login(user)
    people.append({{"conversation": conv.pk, "session": client.cookies[settings.SESSION_COOKIE_NAME].value}})
print(json.dumps(people))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_path):
    ARTIFACTS.mkdir(exist_ok=True)
    models = {"smollm2-135m": {"path": default_model_path, "n_ctx": 2048, "threads": 2, "device": "cpu"}}
    live = LiveServer(tmp_path_factory.mktemp("concurrent"), models,
                      ARTIFACTS / "concurrent-users-server.log").start()
    yield live
    live.stop()


def make_people(server):
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP], cwd=REPO, env=server.env,
                         check=True, capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


async def everyone_sends_at_once(server, people):
    sockets = [await open_socket(server, person) for person in people]
    try:
        await asyncio.gather(*(ws.send(json.dumps({"action": "send", "content": f"Say hello to user {i}."}))
                               for i, ws in enumerate(sockets)))
        async with asyncio.timeout(ANSWER_SECONDS):
            results = await asyncio.gather(*(until_answered(ws) for ws in sockets))
        # Still open: nothing closed them (a crashed consumer closes with 1011).
        codes = [ws.close_code for ws in sockets]
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
    return results, codes


def test_sixteen_users_send_at_the_same_moment(server):
    people = make_people(server)
    results, codes = asyncio.run(everyone_sends_at_once(server, people))

    assert codes == [None] * USERS, f"sockets closed: {codes}"
    errors = [f for _, frames in results for f in frames if f["type"] == "error"]
    assert not errors, errors
    for reply, frames in results:
        assert reply is not None and frames[-1]["type"] == "final"
        row = server.message(reply)
        assert row["status"] == "done", row
        assert row["content"].strip()
    log = server.log_path.read_text()
    assert "database is locked" not in log
    assert "Traceback" not in log
