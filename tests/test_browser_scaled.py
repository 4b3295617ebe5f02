"""The chat UI in real Chromium on the scaled-out stack: daphne with no model of its own, one
Celery device worker over Redis holding SmolLM2-135M and the echo backend, and PostgreSQL. The
key flows (send and stream, Stop, reload mid-answer) as tests/test_browser.py checks them on the
embedded default, here through the Celery queue and the Redis channel layer.

Marked ``redis`` so that `make test`'s Redis runs select it; it runs in the PostgreSQL one (a
database of its own on DATABASE_URL's server, and a redis-server of its own on a free port)."""
import json
import os
import re

import pytest

from browser_support import ARTIFACTS, browser  # noqa: F401 (a fixture)
from live_stack import MODEL, Stack
from test_browser import PREFIX_WATCH, content_text, new_chat, send, wait_final, words
from test_faults import private_redis, scaled_database  # noqa: F401 (fixtures)

pytestmark = [
    pytest.mark.browser, pytest.mark.redis, pytest.mark.model,
    pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")),
                       reason="the scaled-out browser flows run on PostgreSQL (make test-postgres)"),
]
WAIT_MS = 150_000  # bounds a hang on two possibly busy cores


@pytest.fixture(scope="module")
def server(tmp_path_factory, private_redis, scaled_database, default_model_path):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    models = {
        MODEL: {"path": default_model_path, "n_ctx": 4096, "threads": 2, "device": "cpu"},
        # 50 ms a word: slow enough that a reload or a Stop lands mid-answer.
        "echo": {"path": "", "backend": "echo", "n_ctx": 4096, "device": "cpu", "delay": 0.05},
    }
    stack = Stack(tmp_path_factory.mktemp("browser-scaled"), default_model_path, database_url=scaled_database,
                  redis_url=private_redis.url(0), models=models).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def person(server):
    return server.make_person("grace", max_tokens=40)


@pytest.fixture
def page(browser, server, person):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_cookies([{"name": "sessionid", "value": person["session"], "url": server.url}])
    p = context.new_page()
    p.set_default_timeout(WAIT_MS)
    errors = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.goto(server.url + f"/c/{person['conversation']}/")
    p.wait_for_selector("#composer-input")
    yield p
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def answered_by_the_celery_worker(server, row):
    assert row["worker_id"].endswith(f":{server.worker.pid}"), row["worker_id"]


def test_real_model_streams_through_celery_and_redis(page, server):
    assert server.query("SELECT version() AS v")[0]["v"].startswith("PostgreSQL")
    page.evaluate("""() => {
        window.__lengths = {};
        new MutationObserver(() => {
            for (const el of document.querySelectorAll('.msg-assistant[data-status=streaming]')) {
                const c = el.querySelector('.content.streaming');
                if (c) (window.__lengths[el.dataset.message] ||= []).push(c.textContent.length);
            }
        }).observe(document.getElementById('thread-region'), {subtree: true, childList: true, characterData: true});
    }""")
    reply = send(page, "Write a story about a dragon who learns to bake bread.")
    page.wait_for_function(f"() => document.querySelector('#msg-{reply} .content').textContent.length > 0")
    assert wait_final(page, reply) == "done"
    page.screenshot(path=ARTIFACTS / "scaled-01-answered.png")
    row = server.message(reply)
    assert row["status"] == "done" and row["content"].strip()
    answered_by_the_celery_worker(server, row)
    assert content_text(page, reply).strip() and "tok/s" in page.inner_text(f"#msg-{reply} .stats")
    lengths = page.evaluate(f"window.__lengths['{reply}'] || []")
    assert len(set(lengths)) >= 2, f"the text never grew while streaming: {lengths}"


def test_stop_keeps_the_partial_answer(page, server):
    new_chat(page, "echo")
    expected = words(400, "s")
    reply = send(page, expected)
    page.wait_for_function(f"() => (document.querySelector('#msg-{reply} .content')?.textContent || '').length > 20")
    page.click("#stop-button")
    assert wait_final(page, reply) == "stopped"
    shown = content_text(page, reply)
    row = server.message(reply)
    assert row["status"] == "stopped" and shown == row["content"]
    assert shown and expected.startswith(shown) and shown != expected
    answered_by_the_celery_worker(server, row)
    assert page.is_visible("#send-button")


def test_reload_mid_stream_continues_without_duplicates(page, server):
    new_chat(page, "echo")
    expected = words(300, "r")
    reply = send(page, expected)
    page.wait_for_function(f"() => (document.querySelector('#msg-{reply} .content')?.textContent || '').length > "
                           f"{len(words(60))}")
    shown_before = len(content_text(page, reply))
    page.add_init_script(PREFIX_WATCH % {"id": reply, "expected": json.dumps(expected)})
    page.reload()
    page.wait_for_selector(f"#msg-{reply}")
    initial = page.evaluate("window.__initial")
    assert initial["status"] == "streaming", "the reload should land mid-answer"
    assert expected.startswith(initial["text"]) and initial["text"] != expected
    page.wait_for_function(f"() => document.querySelector('#msg-{reply} .content').textContent.length > {shown_before}")
    assert wait_final(page, reply) == "done"
    page.screenshot(path=ARTIFACTS / "scaled-02-after-reload.png")
    assert content_text(page, reply) == expected == server.message(reply)["content"]
    assert page.evaluate("window.__checks") > 0 and page.evaluate("window.__violations") == []
    assert re.search(r"/c/\d+/$", page.url)
