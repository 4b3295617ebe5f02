"""A user chats in Chromium with a model an upstream engine serves: llama-cpp-python's
OpenAI-compatible server (``python -m llama_cpp.server``) on the bundled SmolLM2 GGUF, behind a
served smolsite (daphne, the embedded workers) whose openai_upstream plugin discovered it. The
model picker says where it runs; its answers stream into the page, survive a reload, and Stop ends
the upstream's stream, which the upstream's own log shows. Screenshots go to test-artifacts/."""
import re

import pytest

from browser_support import browser  # noqa: F401 (a fixture)
from browser_support import (ARTIFACTS, RECORD_STREAMING, content_text, new_chat, save_settings, send,
                             wait_final)
from live_stack import wait_for
from upstream_support import ALIAS, STORY, site, upstream  # noqa: F401 (site, upstream: fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.model]

WAIT_MS = 150_000  # generous: the two cores may be shared with other work
BACKEND = "openai_upstream:llama-a"  # the row's backend_name: the plugin, and the upstream that answered
# llama_cpp.server prints its timings when a generation ends (not when its client goes first):
# "llama_perf_context_print:        eval time =  250.13 ms /    15 runs ...", a run a token after the first.
FINISHED = re.compile(r"llama_perf_context_print:\s+eval time =.*?/\s*(\d+) runs")
DISCONNECTED = "Disconnected from client"
# The state the server rendered the answer in, read before the page's script or socket changes it.
RECORD_INITIAL = """
document.addEventListener('DOMContentLoaded', () => {
  const el = document.querySelector('#msg-%d');
  window.__initial = el ? {status: el.dataset.status, text: el.querySelector('.content').textContent} : null;
});
"""


@pytest.fixture(scope="module")
def server(site):
    """browser_support's ``browser`` starts once the module's ``server`` is up."""
    return site


@pytest.fixture
def page(browser, site):  # noqa: F811 (browser: the fixture imported above)
    """alice's chat in a fresh browser context, logged in with her session."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_cookies([{"name": "sessionid", "value": site.people["alice"]["session"], "url": site.url}])
    p = context.new_page()
    p.set_default_timeout(WAIT_MS)
    errors = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.goto(site.url + "/")
    p.wait_for_selector("#composer-input")
    yield p
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def upstream_chat(page, max_tokens):
    """A new chat, switched to the upstream's model in the picker, at temperature 0."""
    new_chat(page, ALIAS)
    assert page.eval_on_selector("#model-select", "s => s.selectedOptions[0].textContent") == f"{ALIAS} (on llama-a)"
    save_settings(page, 0, max_tokens)


def test_the_picker_says_where_the_model_runs_and_its_answer_streams_in(page, site, upstream):
    page.wait_for_selector(f"#model-select option[value='{ALIAS}']", state="attached")
    assert page.inner_text(f"#model-select option[value='{ALIAS}']") == f"{ALIAS} (on llama-a)"
    upstream_chat(page, 96)
    seen, mark = upstream.requests_seen(), len(upstream.log())
    page.evaluate(RECORD_STREAMING)
    reply = send(page, "Write a short story about a lighthouse keeper.")
    page.wait_for_selector(f"#msg-{reply}[data-status=streaming]")
    page.wait_for_function(f"() => document.querySelector('#msg-{reply} .content').textContent.length > 0")
    assert page.is_visible("#stop-button") and not page.is_visible("#send-button")
    page.screenshot(path=ARTIFACTS / "upstream-01-streaming.png")

    assert wait_final(page, reply) == "done"
    page.screenshot(path=ARTIFACTS / "upstream-02-answered.png")
    row = site.message(reply)
    assert row["status"] == "done" and row["content"].strip()
    lengths = page.evaluate(f"window.__lengths['{reply}']")
    assert len(set(lengths)) >= 2, f"the text never grew while streaming: {lengths}"
    assert lengths == sorted(lengths)
    assert page.evaluate(f"window.__raw['{reply}']") == row["content"]
    stats = page.inner_text(f"#msg-{reply} .stats")
    assert "tok/s" in stats and "to first token" in stats, stats
    assert row["tokens_per_second"] and row["ttft"] is not None
    assert page.is_visible("#send-button") and not page.is_visible("#stop-button")
    # The upstream answered it: one completions request, a generation it ran to its end, and the row says so.
    assert upstream.requests_seen() == seen + 1
    assert row["backend_name"] == BACKEND and row["model_name"] == ALIAS
    runs = [int(n) for n in FINISHED.findall(upstream.log()[mark:])]
    assert len(runs) == 1 and runs[0] <= row["completion_tokens"] <= 96, (runs, row["completion_tokens"])


def test_a_reload_mid_answer_shows_the_text_so_far_and_streams_to_the_end(page, site):
    upstream_chat(page, 600)
    reply = send(page, STORY)
    # The server has saved part of the answer, so the reloaded page starts from saved text.
    wait_for(lambda: site.message(reply)["content"], 60, "the first part of the answer to be saved")
    page.wait_for_function(f"() => document.querySelector('#msg-{reply} .content').textContent.length > 0")
    shown_before = len(content_text(page, reply))
    page.add_init_script(RECORD_INITIAL % reply)
    page.reload()
    page.wait_for_selector(f"#msg-{reply}")
    initial = page.evaluate("window.__initial")
    assert initial and initial["status"] == "streaming", f"the reload should land mid-answer: {initial}"
    assert initial["text"].strip(), "the reloaded page showed none of the answer so far"
    page.evaluate(RECORD_STREAMING)
    # The text keeps growing past what the page showed before the reload, still streaming.
    page.wait_for_function(f"() => document.querySelector('#msg-{reply} .content').textContent.length > "
                           f"{max(shown_before, len(initial['text']))} && "
                           f"document.querySelector('#msg-{reply}').dataset.status === 'streaming'")
    page.screenshot(path=ARTIFACTS / "upstream-03-after-reload.png")

    assert wait_final(page, reply) == "done"
    row = site.message(reply)
    assert row["status"] == "done" and row["backend_name"] == BACKEND
    streamed = page.evaluate(f"window.__raw['{reply}']")
    assert streamed == row["content"]
    assert row["content"].startswith(initial["text"].rstrip())


def test_stop_keeps_the_partial_answer_and_the_upstream_sees_the_disconnect(page, site, upstream):
    upstream_chat(page, 1500)
    seen, mark = upstream.requests_seen(), len(upstream.log())
    reply = send(page, STORY)
    page.wait_for_function(f"() => document.querySelector('#msg-{reply} .content').textContent.length > 20")
    page.click("#stop-button")
    assert wait_final(page, reply) == "stopped"
    page.screenshot(path=ARTIFACTS / "upstream-04-stopped.png")
    row = site.message(reply)
    shown = content_text(page, reply)
    assert row["status"] == "stopped" and row["content"].strip() and shown.strip() == row["content"].strip()
    assert page.is_visible(f"#msg-{reply} .msg-note:text('Stopped.')")
    assert page.is_visible("#send-button") and not page.is_visible("#stop-button")
    assert row["backend_name"] == BACKEND
    assert row["completion_tokens"] < 1500
    # On the upstream's side: the one request this answer made saw its client go, and its generation
    # never reached its end (the limit of 1500 tokens), where llama_cpp.server would print its count.
    wait_for(lambda: DISCONNECTED in upstream.log()[mark:], 30, "the upstream to log the disconnect")
    assert upstream.requests_seen() == seen + 1
    since = upstream.log()[mark:]
    assert since.count(DISCONNECTED) == 1 and not FINISHED.search(since), since[-3000:]
