"""Two real upstreams (llama-cpp-python's server on the bundled SmolLM2) serving the same model name
behind one served smolsite: the load is shared by least in-flight requests, and when one is
SIGKILLed mid-answer the answer ends ``interrupted`` with its text and the next goes to the other."""
import asyncio
import signal
import threading

import pytest

from browser_support import ARTIFACTS
from live_stack import live_database, open_socket, saved_partial_text, send, until_final, wait_for
from test_upstream import STORY, client_for, served, start_site
from upstream_support import ALIAS, LlamaServer

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def pair(tmp_path_factory, default_model_path):
    a = LlamaServer(tmp_path_factory.mktemp("up-a"), default_model_path, name="llama-a").start()
    b = LlamaServer(tmp_path_factory.mktemp("up-b"), default_model_path, name="llama-b").start()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with live_database("upstream_pair") as database_url:
            site = start_site(tmp_path_factory.mktemp("pair-site"), [a.config(), b.config()], "upstream-pair-site",
                              database_url)
            try:
                wait_for(lambda: served(site), 60, "the upstreams' model to be discovered")
                yield site, a, b
            finally:
                site.stop()
    finally:
        a.stop()
        b.stop()


def test_one_model_name_on_two_upstreams_is_one_model_sharing_its_load(pair):
    site, a, b = pair
    model = next(m for m in client_for(site).models.list().data if m.id == ALIAS)
    assert sorted(model.model_extra["smolsite"]["served_by"]) == ["llama-a", "llama-b"]
    before = (a.requests_seen(), b.requests_seen())
    first_token = threading.Event()

    def stream(who):
        for chunk in client_for(site, who).chat.completions.create(
                model=ALIAS, messages=[{"role": "user", "content": "Count from 1 to 30."}], max_tokens=48,
                temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                first_token.set()

    first = threading.Thread(target=stream, args=("alice",))
    first.start()
    assert first_token.wait(120), "the first request never streamed"
    second = threading.Thread(target=stream, args=("bob",))
    second.start()
    first.join(180)
    second.join(180)
    # The second went to the upstream with nothing in flight, not where chance sent it.
    assert (a.requests_seen() - before[0], b.requests_seen() - before[1]) == (1, 1)


def test_an_upstream_killed_mid_answer_interrupts_it_and_the_next_goes_to_the_other(pair):
    site, a, b = pair
    alice = site.people["alice"]
    site.execute("UPDATE chat_conversation SET max_tokens = 1500 WHERE id = ?", alice["conversation"])
    seen = {"llama-a": a.requests_seen(), "llama-b": b.requests_seen()}

    async def scenario():
        async with open_socket(site, alice) as ws:
            reply = await send(ws, STORY)
            partial = await saved_partial_text(site, reply)
            serving = a if a.requests_seen() > seen["llama-a"] else b
            serving.signal(signal.SIGKILL)
            await until_final(ws, reply)
            return reply, partial, serving

    reply, partial, killed = asyncio.run(scenario())
    row = site.message(reply)
    assert row["status"] == "interrupted", row
    assert row["content"].startswith(partial) and row["content"]
    assert killed.name in row["error"]
    other = b if killed is a else a
    site.execute("UPDATE chat_conversation SET max_tokens = 16 WHERE id = ?", alice["conversation"])

    async def next_message():
        async with open_socket(site, alice) as ws:
            reply = await send(ws, "Say hi.")
            await until_final(ws, reply)
            return reply

    row = site.message(asyncio.run(next_message()))
    assert row["status"] == "done" and row["backend_name"] == f"openai_upstream:{other.name}", row
