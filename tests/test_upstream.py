"""The openai_upstream plugin against a real upstream: llama-cpp-python's OpenAI-compatible server
(``python -m llama_cpp.server``) on the bundled SmolLM2 GGUF, behind a served smolsite (daphne, the
embedded workers, its own database). Chat over the site's websocket (what the page's script does),
the API with the official client, batches, billing, and the upstream stopped and continued."""
import asyncio
import json
import signal
import time
import urllib.request

import openai
import pytest

from live_stack import assembled_text, http, open_socket, saved_partial_text, send, until_final, wait_for
# site, upstream: fixtures. tests/test_upstream_failover.py and test_upstream_smolsite.py import
# STORY, served and start_site from here.
from upstream_support import ALIAS, STORY, TOKEN, served, site, start_site, upstream  # noqa: F401

pytestmark = pytest.mark.model

DEADLINE = 150


def unavailable(site):
    """/readyz's detail (for the metrics token): models no healthy upstream serves now, with why."""
    status, body = http(site.url + "/readyz", headers={"Authorization": f"Bearer {TOKEN}"})
    return json.loads(body)["checks"]["workers"].get("unavailable", {}) if status else {}


def client_for(site, who="alice"):
    return openai.OpenAI(base_url=site.url + "/v1", api_key=site.people[who]["key"], max_retries=0, timeout=120)


def page(site, path, who="alice", timeout=30):
    request = urllib.request.Request(site.url + path, headers={"Cookie": f"sessionid={site.people[who]['session']}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read().decode()


def message_id(completion_id):
    return int(completion_id.rsplit("-", 1)[1])


def test_discovered_model_is_listed_with_where_it_is_served(site, upstream):
    models = {m.id: m for m in client_for(site).models.list().data}
    assert ALIAS in models and "echo" in models
    extra = models[ALIAS].model_extra["smolsite"]
    assert extra["device"] == "upstream" and extra["backend"] == "openai_upstream"
    assert extra["served_by"] == ["llama-a"]
    status, html = page(site, f"/c/{site.people['alice']['conversation']}/")
    assert status == 200 and ALIAS in html and "on llama-a" in html
    assert "model-unavailable" not in html


def test_api_streams_and_bills_through_the_upstream(site, upstream):
    client = client_for(site)
    seen = upstream.requests_seen()
    done = client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "Say hello."}],
                                          max_tokens=16, temperature=0)
    assert done.choices[0].message.content.strip()
    assert done.usage.completion_tokens > 0 and done.usage.prompt_tokens > 0
    pieces = []
    for chunk in client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "Count to five."}],
                                                max_tokens=24, temperature=0, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(pieces) > 1 and usage.completion_tokens > 0
    assert upstream.requests_seen() == seen + 2  # both went to the upstream
    ids = [message_id(done.id)]
    rows = site.query("SELECT backend_name, status FROM chat_message WHERE id = ?", ids[0])
    assert rows == [{"backend_name": "openai_upstream:llama-a", "status": "done"}]
    ledger = site.query("SELECT source, model, completion_tokens, prompt_tokens FROM usage_usagerecord "
                        "WHERE message_id = ?", ids[0])
    assert ledger[0]["source"] == "api" and ledger[0]["model"] == ALIAS
    assert ledger[0]["completion_tokens"] == done.usage.completion_tokens > 0 and ledger[0]["prompt_tokens"] > 0
    status, text = http(site.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    lines = [line for line in text.splitlines() if line.startswith("smolsite_upstream_completion_tokens_total{")]
    assert any('upstream="llama-a"' in line and 'model="smollm2-up"' in line and float(line.split()[-1]) > 0
               for line in lines), lines


def test_structured_output_reaches_the_upstream_as_a_grammar(site):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    done = client_for(site).chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": "Give a number."}], max_tokens=24, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}})
    if done.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(done.choices[0].message.content)["n"], int)


def test_chat_streams_survives_a_reload_and_stop_closes_the_upstream_stream(site, upstream):
    alice = site.people["alice"]

    async def scenario():
        async with open_socket(site, alice) as ws:
            reply = await send(ws, "Write one short sentence about the sea.")
            frames = await until_final(ws, reply)
        assert site.message(reply)["status"] == "done", site.message(reply)
        text = assembled_text(frames, reply)
        row = site.message(reply)
        assert row["content"] == text and text.strip()
        assert row["backend_name"] == "openai_upstream:llama-a" and row["ttft"] is not None
        # A long answer: a second tab opened mid-answer (a reload) gets all of it; Stop ends it.
        bob = site.people["bob"]  # a chat with no history: the long answer is SmolLM2's own
        site.execute("UPDATE chat_conversation SET max_tokens = 1500 WHERE id = ?", bob["conversation"])
        disconnects = upstream.log().count("Disconnected from client")
        async with open_socket(site, bob) as ws, asyncio.timeout(DEADLINE):
            reply = await send(ws, STORY)
            await saved_partial_text(site, reply)
            async with open_socket(site, bob) as reloaded:  # sends a snapshot of the answer so far
                assert site.message(reply)["status"] == "streaming", "the answer ended before the reload"
                await ws.send(json.dumps({"action": "stop"}))
                frames = await until_final(reloaded, reply)
        row = site.message(reply)
        assert row["status"] == "stopped" and row["content"]
        assert assembled_text(frames, reply) == row["content"]
        assert row["completion_tokens"] < 1500
        # The upstream saw the client go (llama_cpp.server logs it when a stream's client disconnects).
        wait_for(lambda: upstream.log().count("Disconnected from client") > disconnects, 30,
                 "the upstream to log the disconnect")
        site.execute("UPDATE chat_conversation SET max_tokens = 48 WHERE id = ?", bob["conversation"])

    asyncio.run(scenario())


def test_a_user_over_quota_never_reaches_the_upstream(site, upstream):
    seen = upstream.requests_seen()
    with pytest.raises(openai.RateLimitError):
        client_for(site, "spent").chat.completions.create(
            model=ALIAS, messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
    assert upstream.requests_seen() == seen


def test_batch_lines_target_an_upstream_model_and_are_billed(site):
    client = client_for(site, "bob")
    lines = [{"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": ALIAS, "messages": [{"role": "user", "content": f"Say {word}."}], "max_tokens": 8}}
             for i, word in enumerate(("yes", "no"))]
    upload = client.files.create(file=("in.jsonl", "".join(json.dumps(l) + "\n" for l in lines).encode()),
                                 purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = wait_for(lambda: (b := client.batches.retrieve(batch.id)).status in ("completed", "failed") and b,
                     180, "the batch to end")
    assert batch.status == "completed" and batch.request_counts.completed == 2, batch
    out = [json.loads(l) for l in client.files.content(batch.output_file_id).text.splitlines() if l.strip()]
    ids = [message_id(r["response"]["body"]["id"]) for r in out]
    rows = site.query(f"SELECT source, model FROM usage_usagerecord WHERE message_id IN ({','.join('?' * len(ids))})",
                      *ids)
    assert sorted((r["source"], r["model"]) for r in rows) == [("batch", ALIAS)] * 2


def test_a_hung_upstream_is_marked_down_pages_answer_and_messages_fail_fast(site, upstream):
    alice = site.people["bob"]
    upstream.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: not served(site), 30, "the stopped upstream's model to be marked down")
        assert "llama-a" in unavailable(site)[ALIAS]
        status, html = page(site, f"/c/{alice['conversation']}/", who="bob", timeout=10)
        assert status == 200 and "model-unavailable" in html and "on llama-a: unavailable" in html
        assert "the server that runs it is not answering" in html and "no device worker" not in html
        models = [m.id for m in client_for(site, "bob").models.list().data]
        assert ALIAS in models
        with pytest.raises(openai.APIStatusError) as refused:
            client_for(site, "bob").chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "Hi"}],
                                                            max_tokens=8)
        assert refused.value.status_code == 503

        async def chat():
            async with open_socket(site, alice) as ws:
                reply = await send(ws, "Are you there?")
                await until_final(ws, reply)
                return reply

        row = site.message(asyncio.run(chat()))
        assert row["status"] == "error" and "unavailable" in row["error"], row
    finally:
        upstream.signal(signal.SIGCONT)
    wait_for(lambda: served(site), 30, "the continued upstream's model to come back")
    assert ALIAS not in unavailable(site)
    done = client_for(site, "bob").chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "Hi"}],
                                                           max_tokens=8)
    assert done.choices[0].message.content is not None
