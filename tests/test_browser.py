"""The chat UI in a real browser against a real server: daphne with the embedded worker holding
SmolLM2-135M and the echo backend (whose answer is exactly the user's words, so the page text
can be checked word for word). Screenshots go to test-artifacts/."""
import json
import re

import pytest

from browser_support import browser  # noqa: F401 (a fixture)
from browser_support import (ARTIFACTS, RECORD_STREAMING, LiveServer, assistant_ids, content_text, new_chat, send,
                             wait_final, wait_new_answer)
from smollm3_tiny import write_tiny_smollm3

pytestmark = [pytest.mark.browser, pytest.mark.model]

USERNAME, PASSWORD = "ada", "correct-horse-battery-9"
WAIT_MS = 150_000  # generous: the two cores may be shared with other work


def words(count, prefix="w"):
    return " ".join(f"{prefix}{i:03d}" for i in range(1, count + 1))


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_path):
    ARTIFACTS.mkdir(exist_ok=True)
    workdir = tmp_path_factory.mktemp("live")
    models = {
        "smollm2-135m": {"path": default_model_path, "n_ctx": 8192, "threads": 2, "device": "cpu"},
        # 50 ms a word: slow enough that a reload or a Stop lands mid-answer.
        "echo": {"path": "", "backend": "echo", "n_ctx": 4096, "device": "cpu", "delay": 0.05},
        # The echo backend reading a SmolLM3 file's metadata: the thinking plugin sees SmolLM3's
        # template and splits <think>…</think> out of the echoed words, as it would a real reply.
        "thinker": {"path": str(write_tiny_smollm3(workdir / "tiny-smollm3.gguf")), "backend": "echo",
                    "n_ctx": 4096, "device": "cpu", "delay": 0.05},
    }
    live = LiveServer(workdir, models, ARTIFACTS / "browser-server.log").start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def account(server, browser):
    """Sign up through the page as the first user of the fresh install; returns the session."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(server.url + "/")
    assert "/accounts/login/" in page.url
    page.click("text=Create an account")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.screenshot(path=ARTIFACTS / "01-signup.png")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/c/\d+/$"))
    state = context.storage_state()
    context.close()
    return state


@pytest.fixture
def page(browser, account, server):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, storage_state=account)
    p = context.new_page()
    p.set_default_timeout(WAIT_MS)
    errors = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.goto(server.url + "/")
    p.wait_for_selector("#composer-input")
    yield p
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


# A page-side check run on every DOM change: the answer shown is always a prefix of what the
# echo model will say, so a duplicated or skipped batch shows up the moment it is drawn.
PREFIX_WATCH = """
(() => {
  const target = %(id)d, expected = %(expected)s;
  window.__violations = [];
  window.__checks = 0;
  const check = () => {
    const el = document.querySelector('#msg-' + target + ' .content');
    if (!el) return;
    window.__checks++;
    const text = el.textContent.replace(/\s+$/, '');  // the Markdown render ends with a newline
    if (!expected.startsWith(text)) window.__violations.push(text.slice(-120));
  };
  const start = () => {
    const el = document.querySelector('#msg-' + target);
    window.__initial = el ? {status: el.dataset.status, text: el.querySelector('.content').textContent} : null;
    new MutationObserver(check).observe(document.body, {subtree: true, childList: true, characterData: true});
  };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
"""


# ---- tests ------------------------------------------------------------------------------

def test_first_account_is_the_administrator(page, server):
    assert server.user(USERNAME)["is_superuser"] == 1 and server.user(USERNAME)["is_staff"] == 1
    page.click("text=Admin")
    page.wait_for_selector("#site-name")
    assert page.is_visible("a[href='/admin/chat/conversation/']")


def test_real_model_streams_tokens_into_the_page(page, server):
    new_chat(page, "smollm2-135m")
    page.click("[data-settings-toggle]")
    page.fill("#id_max_tokens", "40")
    page.fill("#id_temperature", "0")
    page.click("#settings-form button[type=submit]")
    page.wait_for_selector("#settings-form .saved:text('Saved.')")
    page.screenshot(path=ARTIFACTS / "02-settings.png")
    page.click("[data-settings-close]")

    page.evaluate(RECORD_STREAMING)
    question = "Write a story about a dragon who learns to bake bread."
    reply = send(page, question)
    page.wait_for_selector(f"#msg-{reply}[data-status=streaming]")
    page.wait_for_function(f"() => document.querySelector('#msg-{reply} .content').textContent.length > 0")
    page.screenshot(path=ARTIFACTS / "03-streaming.png")
    assert page.is_visible("#stop-button") and not page.is_visible("#send-button")

    assert wait_final(page, reply) == "done"
    page.screenshot(path=ARTIFACTS / "04-answered.png")
    row = server.message(reply)
    assert row["status"] == "done" and row["content"].strip()
    lengths = page.evaluate(f"window.__lengths['{reply}']")
    assert len(set(lengths)) >= 2, f"the text never grew while streaming: {lengths}"
    assert lengths == sorted(lengths)
    assert page.evaluate(f"window.__raw['{reply}']") == row["content"]
    # Stats under the answer, and the auto-title everywhere.
    assert re.search(r"tok/s", page.inner_text(f"#msg-{reply} .stats"))
    assert "to first token" in page.inner_text(f"#msg-{reply} .stats")
    title = page.inner_text("#conversation-title")
    assert title.startswith("Write a story about a dragon")
    assert page.title().startswith(title)
    assert page.inner_text(".conv-item.current .conv-title") == title
    assert page.is_visible("#send-button") and not page.is_visible("#stop-button")


def test_reload_mid_stream_continues_without_duplicates(page, server):
    new_chat(page, "echo")
    expected = words(400)
    reply = send(page, expected)
    # A quarter of the answer (about 5 s at 50 ms a word): the server has saved part of it, so
    # the reloaded page starts from saved text and the live snapshot, not from nothing.
    page.wait_for_function(f"() => (document.querySelector('#msg-{reply} .content')?.textContent || '').length > "
                           f"{len(words(100))}")

    shown_before = len(content_text(page, reply))

    page.add_init_script(PREFIX_WATCH % {"id": reply, "expected": json.dumps(expected)})
    page.reload()
    page.wait_for_selector(f"#msg-{reply}")
    initial = page.evaluate("window.__initial")
    assert initial["status"] == "streaming", "the reload should land mid-answer"
    # The server renders what it last saved (about once a second), which the stream continues.
    assert initial["text"] and expected.startswith(initial["text"]) and initial["text"] != expected
    # The text keeps growing past what the page showed before the reload.
    page.wait_for_function(f"() => document.querySelector('#msg-{reply} .content').textContent.length > {shown_before}"
                           f" && document.querySelector('#msg-{reply}').dataset.status === 'streaming'")
    page.screenshot(path=ARTIFACTS / "05-after-reload.png")

    assert wait_final(page, reply) == "done"
    assert content_text(page, reply) == expected
    assert server.message(reply)["content"] == expected
    assert page.evaluate("window.__checks") > 0
    assert page.evaluate("window.__violations") == []


def test_reconnect_mid_stream_continues_without_duplicates(page, server):
    # Every chat socket goes through Playwright, so the test can drop one like a flaky network.
    sockets = []

    def relay(ws):
        ws.connect_to_server()
        sockets.append(ws)

    page.route_web_socket(re.compile(r"/ws/chat/\d+/$"), relay)
    new_chat(page, "echo")
    expected = words(400, "x")
    reply = send(page, expected)
    page.evaluate(PREFIX_WATCH % {"id": reply, "expected": json.dumps(expected)})
    page.evaluate("""() => {
        const banner = document.getElementById('connection');
        new MutationObserver(() => { if (!banner.hidden) window.__bannerShown = banner.textContent; })
            .observe(banner, {attributes: true, childList: true});
    }""")
    page.wait_for_function(f"() => (document.querySelector('#msg-{reply} .content')?.textContent || '').length > "
                           f"{len(words(60))}")
    # 1012 ("service restart") is a close the ws extension answers by reconnecting.
    sockets[-1].close(code=1012, reason="test drops the connection")
    # The page says it lost the connection, then hides that once a new socket is open.
    page.wait_for_function("() => window.__bannerShown && document.getElementById('connection').hidden")
    assert "reconnecting" in page.evaluate("window.__bannerShown")
    assert len(sockets) == 2
    at_reconnect = len(content_text(page, reply))
    page.wait_for_function(f"() => document.querySelector('#msg-{reply} .content').textContent.length > {at_reconnect}")
    assert wait_final(page, reply) == "done"
    assert content_text(page, reply) == expected == server.message(reply)["content"]
    assert page.evaluate("window.__checks") > 0
    assert page.evaluate("window.__violations") == []


def test_stop_keeps_the_partial_answer(page, server):
    new_chat(page, "echo")
    expected = words(400, "s")
    reply = send(page, expected)
    page.wait_for_function(f"() => (document.querySelector('#msg-{reply} .content')?.textContent || '').length > 20")
    page.click("#stop-button")
    assert wait_final(page, reply) == "stopped"
    page.screenshot(path=ARTIFACTS / "06-stopped.png")
    shown = content_text(page, reply)
    row = server.message(reply)
    assert row["status"] == "stopped"
    assert shown == row["content"]
    assert shown and expected.startswith(shown) and shown != expected
    assert page.is_visible(f"#msg-{reply} .msg-note:text('Stopped.')")
    assert page.is_visible("#send-button")


def test_regenerate_and_edit_make_reachable_branches(page, server):
    new_chat(page, "echo")
    first = send(page, "alpha one")
    assert wait_final(page, first) == "done"
    second = send(page, "bravo two")
    assert wait_final(page, second) == "done"

    before = assistant_ids(page)
    page.click(f"#msg-{second} [data-regenerate]")
    third = wait_new_answer(page, before)
    assert third != second and wait_final(page, third) == "done"
    assert page.inner_text(f"#msg-{third} .branch-pos") == "2/2"
    page.screenshot(path=ARTIFACTS / "07-regenerated.png")

    page.click(f"#msg-{third} .branch-prev")
    page.wait_for_selector(f"#msg-{second}")
    assert page.inner_text(f"#msg-{second} .branch-pos") == "1/2"
    assert not page.query_selector(f"#msg-{third}")

    # Edit the first question: a new branch replaces everything after it.
    question = page.get_attribute(".msg-user", "data-message")
    page.click(f"#msg-{question} [data-edit]")
    page.fill(f"#edit-{question}", "charlie three")
    before = assistant_ids(page)
    page.press(f"#edit-{question}", "Enter")
    edited = wait_new_answer(page, before)
    assert wait_final(page, edited) == "done"
    thread = page.inner_text("#thread")
    assert "charlie three" in thread and "alpha one" not in thread and "bravo two" not in thread
    new_question = page.get_attribute(".msg-user", "data-message")
    assert page.inner_text(f"#msg-{new_question} .branch-pos") == "2/2"
    page.screenshot(path=ARTIFACTS / "08-edited.png")

    page.click(f"#msg-{new_question} .branch-prev")
    page.wait_for_selector(f"#msg-{question}")
    thread = page.inner_text("#thread")
    assert "alpha one" in thread and "bravo two" in thread and "charlie three" not in thread
    assert page.inner_text(f"#msg-{question} .branch-pos") == "1/2"


def test_model_output_cannot_inject_markup(page, server):
    new_chat(page, "echo")
    probes = ['<img src=x onerror="window.__xss=1">', "<script>window.__xss=2</script>"]
    for probe in probes:
        reply = send(page, probe)
        assert wait_final(page, reply) == "done"
        assert content_text(page, reply) == probe
        assert server.message(reply)["content"] == probe
    page.screenshot(path=ARTIFACTS / "09-xss-probe.png")
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.query_selector_all("#thread img, #thread script") == []
    # Still inert after a reload renders everything from the server.
    page.reload()
    page.wait_for_selector(".msg-assistant")
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.query_selector_all("#thread img, #thread script") == []


def test_thinking_panel_opens_while_reasoning_and_folds_for_the_answer(page, server):
    new_chat(page, "smollm2-135m")
    page.click("[data-settings-toggle]")
    assert not page.query_selector("#settings-form input[name=thinking]")  # SmolLM2 cannot think
    with page.expect_response(lambda r: r.url.endswith("/model/")):
        page.select_option("#model-select", "thinker")
    page.wait_for_selector("#settings-form input[name=thinking]:checked")
    page.click("[data-settings-close]")

    # Page-side record of the panel at every change: open?, reasoning length, answer length.
    page.evaluate("""() => {
        window.__panel = [];
        new MutationObserver(() => {
            const el = [...document.querySelectorAll('.msg-assistant')].pop();
            const d = el && el.querySelector('.thinking');
            if (!d || d.hidden || !el.querySelector('.content.streaming')) return;
            window.__panel.push({open: d.open, reasoning: d.querySelector('.reasoning').textContent.length,
                                 answer: el.querySelector('.content').textContent.length,
                                 timer: d.querySelector('.thinking-time').textContent});
        }).observe(document.getElementById('thread-region'),
                   {subtree: true, childList: true, characterData: true, attributes: true});
    }""")
    reasoning, answer = words(40, "r"), words(20, "a")
    reply = send(page, f"<think> {reasoning} </think> {answer}")
    page.wait_for_selector(f"#msg-{reply} .thinking[open]:not([hidden])")
    page.screenshot(path=ARTIFACTS / "13-thinking.png")
    assert wait_final(page, reply) == "done"
    page.screenshot(path=ARTIFACTS / "14-thought.png")

    seen = page.evaluate("window.__panel")
    while_thinking = [s for s in seen if s["reasoning"] and not s["answer"]]
    while_answering = [s for s in seen if s["answer"]]
    assert while_thinking and all(s["open"] for s in while_thinking)
    assert any(re.fullmatch(r"\d+\.\d s", s["timer"]) for s in while_thinking)  # the running timer
    assert while_answering and not any(s["open"] for s in while_answering)

    row = server.message(reply)
    assert row["content"] == answer and row["reasoning"].strip() == reasoning
    assert content_text(page, reply) == answer
    assert not page.get_attribute(f"#msg-{reply} .thinking", "open")
    summary = page.inner_text(f"#msg-{reply} .thinking summary")
    assert re.fullmatch(r"Thought\s+for \d+\.\d s", summary), summary
    page.click(f"#msg-{reply} .thinking summary")
    assert page.inner_text(f"#msg-{reply} .reasoning").strip() == reasoning


def test_composer_keys(page, server):
    new_chat(page, "echo")
    page.click("#composer-input")
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#composer-input") == "first line\nsecond line"
    assert assistant_ids(page) == []
    before = assistant_ids(page)
    page.keyboard.press("Enter")
    reply = wait_new_answer(page, before)
    assert page.input_value("#composer-input") == ""
    assert wait_final(page, reply) == "done"
    assert page.inner_text(".msg-user .content") == "first line\nsecond line"
    # An empty message is not sent.
    page.press("#composer-input", "Enter")
    assert page.inner_text("#composer-error") == ""
    assert assistant_ids(page) == [reply]


def test_sidebar_rename_search_and_delete(page, server):
    keep = new_chat(page, "echo")
    assert wait_final(page, send(page, "yellow submarine")) == "done"
    other = new_chat(page, "echo")
    assert wait_final(page, send(page, "zebra crossing")) == "done"

    page.click(f"#conv-{other} [aria-label^=Rename]")
    page.fill(f"#rename-{other}", "Stripes")
    page.press(f"#rename-{other}", "Enter")
    page.wait_for_selector(f"#conv-{other} .conv-title:text-is('Stripes')")

    page.fill("#search-input", "submarine")
    page.wait_for_function(
        f"() => !document.querySelector('#conv-{other}') && !!document.querySelector('#conv-{keep}')")
    page.screenshot(path=ARTIFACTS / "10-search.png")
    page.fill("#search-input", "")
    page.wait_for_selector(f"#conv-{other}")

    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"#conv-{keep} [aria-label^=Delete]")
    page.wait_for_selector(f"#conv-{keep}", state="detached")
    page.reload()
    assert not page.query_selector(f"#conv-{keep}")


def test_phone_width_and_keyboard(browser, account, server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, storage_state=account, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(server.url + "/")
    page.wait_for_selector("#composer-input")
    assert not page.is_visible("#sidebar")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=ARTIFACTS / "11-phone.png")
    page.click("[data-sidebar-toggle]")
    page.wait_for_selector("#sidebar", state="visible")
    assert page.get_attribute("[data-sidebar-toggle]", "aria-expanded") == "true"
    page.screenshot(path=ARTIFACTS / "12-phone-sidebar.png", animations="disabled")
    page.keyboard.press("Escape")
    page.wait_for_selector("#sidebar", state="hidden")
    context.close()

    # Keyboard: the skip link shows when focused and leads to the message box.
    context = browser.new_context(viewport={"width": 1280, "height": 800}, storage_state=account)
    page = context.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("#composer-input")
    assert page.evaluate("document.activeElement.id") == "composer-input"  # ready to type on arrival
    page.focus(".skip-link")
    assert page.eval_on_selector(".skip-link", "el => el.getBoundingClientRect().top >= 0")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "composer-input"
    # Settings open and close from the keyboard, focus returning to the button.
    page.focus("[data-settings-toggle]")
    page.keyboard.press("Enter")
    page.wait_for_selector("#settings-panel", state="visible")
    assert page.evaluate("document.activeElement.id") == "id_system_prompt"
    page.keyboard.press("Escape")
    page.wait_for_selector("#settings-panel", state="hidden")
    assert page.evaluate("document.activeElement.hasAttribute('data-settings-toggle')")
    context.close()


# Page-side record of every frame the socket delivers, before static/chat/ handles it.
RECORD_FRAMES = """
window.__frames = [];
document.addEventListener('htmx:wsBeforeMessage', (evt) => {
  try { window.__frames.push(JSON.parse(evt.detail.message)); } catch (err) {}
});
"""


def test_answer_started_in_another_tab_ends_here_even_if_it_ends_while_the_thread_loads(page, browser, account,
                                                                                       server):
    conv = new_chat(page, "echo")
    url = page.url
    before_answer = page.request.get(url).text()  # this tab's page, rendered just before the answer exists
    other = browser.new_context(viewport={"width": 1280, "height": 800}, storage_state=account).new_page()
    other.set_default_timeout(WAIT_MS)
    other.goto(url)
    other.wait_for_selector("#composer-input")
    expected = words(120, "t")
    reply = send(other, expected)

    # The page arrives without the answer; its socket opens while the answer streams, so the server
    # sends a snapshot of a message the page does not show and the page fetches the thread. Those
    # responses are rendered mid-answer but arrive (a slow network) only after the answer has ended.
    page.context.grant_permissions(["local-network-access"], origin=server.url)  # a routed document's socket
    page.route(url, lambda route: route.fulfill(status=200, content_type="text/html; charset=utf-8",
                                                body=before_answer))
    held = []
    page.route(re.compile(rf"/c/{conv}/thread/"), lambda route: held.append((route, route.fetch())))
    page.add_init_script(RECORD_FRAMES + PREFIX_WATCH % {"id": reply, "expected": json.dumps(expected)})
    page.goto(url)
    page.wait_for_function("() => window.__frames.some(f => f.type === 'final' && f.message === %d)" % reply)
    assert server.message(reply)["status"] == "done"
    assert held and all(f'id="msg-{reply}"' in response.text() for _, response in held)
    assert f'data-message="{reply}" data-role="assistant" data-status="streaming"' in held[0][1].text()
    for route, response in held:
        route.fulfill(response=response)

    assert wait_final(page, reply) == "done"
    assert content_text(page, reply) == expected
    assert page.is_visible("#send-button") and not page.is_visible("#stop-button")
    assert page.evaluate("window.__violations") == []
    other.context.close()



def test_reconnect_never_shows_a_gap_while_the_redrawn_answer_waits_for_its_snapshot(page, server):
    # Every chat socket goes through Playwright, which can hold the page's frames back like a slow uplink.
    sockets, held_resumes = [], []

    def relay(ws):
        upstream = ws.connect_to_server()

        def from_page(message):
            if len(sockets) > 1 and '"resume"' in message:
                held_resumes.append(message)
            else:
                upstream.send(message)

        ws.on_message(from_page)
        sockets.append((ws, upstream))

    def wait_until(condition):
        while not condition():
            page.wait_for_timeout(20)

    page.route_web_socket(re.compile(r"/ws/chat/\d+/$"), relay)
    conv = new_chat(page, "echo")
    expected = words(400, "g")
    reply = send(page, expected)
    page.evaluate(RECORD_FRAMES + PREFIX_WATCH % {"id": reply, "expected": json.dumps(expected)})
    page.wait_for_function(f"() => (document.querySelector('#msg-{reply} .content')?.textContent || '').length > "
                           f"{len(words(40))}")

    # The thread the page fetches after reconnecting is rendered at once, from the text saved so far,
    # and arrives once the page has shown more than that.
    held_threads = []

    def hold_first(route):
        if held_threads:
            route.continue_()
        else:
            held_threads.append((route, route.fetch()))

    page.route(re.compile(rf"/c/{conv}/thread/"), hold_first)
    sockets[-1][0].close(code=1012, reason="test drops the connection")
    wait_until(lambda: held_threads)
    route, response = held_threads[0]
    saved_seq = int(re.search(rf'id="msg-{reply}"[^>]*data-seq="(\d+)"', response.text()).group(1))
    page.wait_for_function(
        f"() => window.__frames.some(f => f.type === 'events' && f.message === {reply} && "
        f"f.events.some(e => e.seq > {saved_seq + 1}))")
    route.fulfill(response=response)

    # The redrawn answer, behind what the page had shown, asks for a snapshot. Events that reach the
    # page before the snapshot does must not be drawn onto the older text.
    wait_until(lambda: held_resumes)
    seen = page.evaluate("window.__frames.length")
    page.wait_for_function(
        f"() => window.__frames.slice({seen}).some(f => f.type === 'events' && f.message === {reply})")
    for message in held_resumes:
        sockets[-1][1].send(message)
    held_resumes.clear()
    assert wait_final(page, reply) == "done"
    assert content_text(page, reply) == expected == server.message(reply)["content"]
    assert page.evaluate("window.__violations") == []


def test_snapshot_of_a_version_on_another_branch_redraws_the_thread_once(page, server):
    sockets, from_page = [], []

    def relay(ws):
        upstream = ws.connect_to_server()

        def forward(message):
            from_page.append(json.loads(message))
            upstream.send(message)

        ws.on_message(forward)
        sockets.append(upstream)

    page.route_web_socket(re.compile(r"/ws/chat/\d+/$"), relay)
    conv = new_chat(page, "echo")
    first = send(page, "alpha one")
    assert wait_final(page, first) == "done"
    before = assistant_ids(page)
    page.click(f"#msg-{first} [data-regenerate]")
    second = wait_new_answer(page, before)
    assert wait_final(page, second) == "done"
    assert not page.query_selector(f"#msg-{first}")

    # A snapshot of the version this page does not show (what a page that was catching up on it gets
    # after another tab switched versions): the page redraws the thread, which still does not show it.
    fetches = []
    page.route(re.compile(rf"/c/{conv}/thread/"), lambda route: (fetches.append(route.request.url), route.continue_()))
    page.evaluate("document.getElementById('thread').dataset.mark = 'before'")
    sockets[-1].send(json.dumps({"action": "resume", "message": first}))
    page.wait_for_function("() => !document.querySelector('#thread[data-mark=before]')")
    # Anything the page sent after the redraw reaches the server before this Stop does.
    page.evaluate("document.getElementById('stop-button').click()")
    while not any(f.get("action") == "stop" for f in from_page):
        page.wait_for_timeout(20)
    assert [f for f in from_page if f.get("action") == "resume"] == []
    assert len(fetches) == 1
    assert page.query_selector(f"#msg-{second}") and not page.query_selector(f"#msg-{first}")
