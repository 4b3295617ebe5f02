"""A second smolsite as an upstream of the first (its /v1 with an API key of its own): model names
that clash are namespaced, usage comes from the upstream's own report, Stop reaches the upstream
(its answer ends stopped), and each user's request carries only the gateway's key and that user's
own turns."""
import asyncio
import json
import subprocess
import sys

import openai
import pytest

from browser_support import ARTIFACTS, REPO
from live_stack import LiveServer, open_socket, saved_partial_text, send, until_final, wait_for
from smollm3_tiny import write_tiny_smollm3
from test_upstream import served, start_site

pytestmark = pytest.mark.model

MODEL = "smolsite-b/echo"  # "echo" clashes with the first site's own model
GATEWAY = """
import json
from django.contrib.auth import get_user_model
from api.models import ApiKey
user = get_user_model().objects.create_user("gateway", password="pw-123456789")
key, raw = ApiKey.create_for(user, "site A")
print(json.dumps({"key": raw, "id": key.pk}))
"""


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    ARTIFACTS.mkdir(exist_ok=True)
    workdir = tmp_path_factory.mktemp("site-b")
    # A tiny SmolLM3's metadata with the echo backend: "<think>…</think>…" comes back from the second
    # site as reasoning_content and content.
    tiny = write_tiny_smollm3(workdir / "tiny-smollm3.gguf")
    b = LiveServer(workdir, {"echo": {"path": "", "backend": "echo", "delay": 0.05},
                             "thinker": {"path": str(tiny), "backend": "echo"}},
                   ARTIFACTS / "upstream-site-b.log").start()
    try:
        out = subprocess.run([sys.executable, "manage.py", "shell", "-c", GATEWAY], cwd=REPO, env=b.env, check=True,
                             capture_output=True, text=True, timeout=120).stdout
        b.gateway = json.loads(out.strip().splitlines()[-1])
        a = start_site(tmp_path_factory.mktemp("site-a"), [
            {"name": "smolsite-b", "base_url": b.url + "/v1", "api_key": b.gateway["key"], "n_ctx": 4096}],
            "upstream-site-a", model=MODEL, max_tokens=400)
        try:
            wait_for(lambda: served(a, MODEL), 60, "the second site's model to be discovered")
            yield a, b
        finally:
            a.stop()
    finally:
        b.stop()


def client(site, who):
    return openai.OpenAI(base_url=site.url + "/v1", api_key=site.people[who]["key"], max_retries=0, timeout=60)


def test_names_clash_namespaced_usage_from_upstream_and_isolation(sites):
    a, b = sites
    ids = [m.id for m in client(a, "alice").models.list().data]
    assert "echo" in ids and MODEL in ids
    answers = {}
    for who in ("alice", "bob"):
        stream = client(a, who).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"secret of {who} is {who}-42"}], max_tokens=32,
            stream=True, stream_options={"include_usage": True})
        text, usage = "", None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            usage = chunk.usage or usage
        assert text == f"secret of {who} is {who}-42"
        answers[who] = usage
    rows = b.query("SELECT c.id, c.api_key_id, c.owner_id FROM chat_conversation c WHERE c.source = 'api'")
    assert len(rows) == 2 and {r["api_key_id"] for r in rows} == {b.gateway["id"]}
    for row in rows:
        texts = " ".join(m["content"] for m in b.query("SELECT content FROM chat_message WHERE conversation_id = ?",
                                                        row["id"]))
        assert ("alice-42" in texts) != ("bob-42" in texts), texts  # one user's turns, never both
    # The upstream's own usage is what the first site bills.
    upstream_usage = b.query("SELECT prompt_tokens, completion_tokens FROM usage_usagerecord ORDER BY id")
    billed = a.query("SELECT prompt_tokens, completion_tokens FROM usage_usagerecord WHERE model = ? ORDER BY id",
                     MODEL)
    assert billed == upstream_usage and billed[0]["completion_tokens"] == 5


def test_stop_in_the_first_site_stops_the_answer_in_the_second(sites):
    a, b = sites
    carol = a.people["alice"]
    words = " ".join(f"w{i}" for i in range(300))  # the echo upstream types one word every 50 ms

    async def scenario():
        async with open_socket(a, carol) as ws:
            reply = await send(ws, words)
            await saved_partial_text(a, reply)
            await ws.send(json.dumps({"action": "stop"}))
            await until_final(ws, reply)
            return reply

    row = a.message(asyncio.run(scenario()))
    assert row["status"] == "stopped" and row["content"].startswith("w0 w1")
    wait_for(lambda: b.query("SELECT status FROM chat_message WHERE role = 'assistant' AND content LIKE 'w0 w1%' "
                             "ORDER BY id DESC LIMIT 1") == [{"status": "stopped"}], 30,
             "the second site's answer to end stopped")


def test_reasoning_content_from_the_upstream_reaches_the_thinking_panel(sites):
    a, _ = sites
    wait_for(lambda: served(a, "thinker"), 60, "the second site's thinker model")
    answer = client(a, "bob").chat.completions.create(
        model="thinker", messages=[{"role": "user", "content": "<think>plan it</think>The answer"}], max_tokens=32)
    message = answer.choices[0].message
    assert message.content == "The answer" and message.model_extra["reasoning_content"] == "plan it"
    row = a.message(int(answer.id.rsplit("-", 1)[1]))
    assert (row["reasoning"], row["content"]) == ("plan it", "The answer")  # the chat's Thinking panel reads these
