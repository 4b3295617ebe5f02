"""Tools in the chat, in a real browser against a real server (daphne, the embedded worker in its
own process, SmolLM2-135M, Debian's chromium): the Tools setting, a calculator call shown as a
card and followed by the answer, a reload mid-loop, and Approve, Deny and Stop.

The chats use "Call a tool: before every answer", so the turn's first answer is a call (written
under the tools' grammar, so well formed); what the model does after the result is its own
choice, and the tests hold the page to the stored rows whatever it is."""
import re
import sqlite3

import pytest

from browser_support import ARTIFACTS, LiveServer, browser, send  # noqa: F401 (browser: a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.model]

USERNAME, PASSWORD = "tove", "correct-horse-battery-9"
WAIT_MS = 150_000


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_path):
    ARTIFACTS.mkdir(exist_ok=True)
    workdir = tmp_path_factory.mktemp("live-tools")
    models = {"smollm2-135m": {"path": default_model_path, "n_ctx": 8192, "threads": 2, "device": "cpu"}}
    # Two rounds at most: every turn ends soon, with an answer or the limit's note.
    live = LiveServer(workdir, models, ARTIFACTS / "browser-tools-server.log",
                      env={"SMOLSITE_MAX_TOOL_ROUNDS": "2"}).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def account(server, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(server.url + "/accounts/signup/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
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


def rows(server, sql, *args):
    with sqlite3.connect(server.db_path, timeout=20) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(sql, args).fetchall()]


def calls_of(server, message_id):
    return rows(server, "SELECT * FROM chat_toolcall WHERE message_id = ? ORDER BY \"index\"", message_id)


def answers(server, conv_id):
    return rows(server, "SELECT * FROM chat_message WHERE conversation_id = ? AND role = 'assistant' ORDER BY id",
                conv_id)


def tools_chat(page, ask=False):
    """A new chat with the calculator on, a call before every answer, and Ask before running as given."""
    page.click(".new-chat button")
    page.wait_for_url(re.compile(r"/c/\d+/$"))
    page.wait_for_selector("#composer-input")
    page.click("[data-settings-toggle]")
    page.fill("#id_temperature", "0")
    page.fill("#id_max_tokens", "48")
    page.check("#tools-settings input[value=calculator]")
    page.select_option("#id_tool_choice", "required")
    if ask:
        page.check("#id_tools_ask")
    page.click("#settings-form button[type=submit]")
    page.wait_for_selector("#settings-form .saved:text('Saved.')")
    assert page.is_checked("#tools-settings input[value=calculator]")
    page.click("[data-settings-close]")
    return int(re.search(r"/c/(\d+)/$", page.url).group(1))


def card(page, call_id):
    return f"#call-{call_id}"


def wait_card_status(page, call_id, status):
    page.wait_for_selector(f"#call-{call_id}[data-status={status}]", state="attached")


def wait_card_ran(page, server, call_id):
    """The card shows the call's result (ok, or the tool's error on what the model wrote), as stored."""
    page.wait_for_selector(f"#call-{call_id}:is([data-status=ok], [data-status=error])", state="attached")
    stored = rows(server, "SELECT * FROM chat_toolcall WHERE id = ?", call_id)[0]
    assert page.get_attribute(f"#call-{call_id}", "data-status") == stored["status"]
    return stored


def wait_turn_over(page, server, conv_id, after=0):
    """The loop's last answer (one made after message ``after``: the loop's next answer is made a
    moment after a decision) is final on the page, and the page no longer shows Stop."""
    page.wait_for_function("""after => {
        const chat = document.getElementById('chat');
        const msgs = [...document.querySelectorAll('#thread .msg-assistant')];
        const last = msgs[msgs.length - 1];
        return last && Number(last.dataset.message) > after && !chat.hasAttribute('data-generating')
            && last.querySelector('.content.markdown');
    }""", arg=after)
    stored = answers(server, conv_id)
    assert all(r["status"] == "done" for r in stored)
    return stored


def test_calculator_card_final_answer_and_reload_mid_loop(page, server):
    conv_id = tools_chat(page)
    first = send(page, "What is 12 * 7?")
    # The first card appears (the call the answer asked for): reload there, whatever the loop
    # is doing by then (running the tool, writing the next answer, or done).
    page.wait_for_selector(f"#msg-{first} .tool-call", state="attached")
    page.reload()
    page.wait_for_selector(f"#msg-{first} .tool-call", state="attached")
    stored = wait_turn_over(page, server, conv_id, after=first)
    page.screenshot(path=ARTIFACTS / "tools-01-answer.png")
    calls = calls_of(server, first)
    assert calls and calls[0]["name"] == "calculator" and calls[0]["status"] in ("ok", "error")
    # The card: collapsed, with the tool's name, arguments, status and time; open, the result.
    selector = card(page, calls[0]["id"])
    assert page.get_attribute(selector, "data-status") == calls[0]["status"]
    assert page.inner_text(f"{selector} .tool-name") == "calculator"
    assert not page.is_visible(f"{selector} .tool-output")
    assert page.is_visible(f"{selector} .tool-time")
    page.click(f"{selector} summary")
    assert page.inner_text(f"{selector} .tool-output") == calls[0]["output"]
    assert page.inner_text(f"{selector} .tool-args") == calls[0]["arguments"]
    # The answer went on from the result: the next answer, a child of the call's, is on the page
    # as the model wrote it (or ends with the round limit's note).
    assert len(stored) >= 2 and stored[1]["parent_id"] == first
    last = stored[-1]
    shown = page.eval_on_selector(f"#msg-{last['id']} .content", "el => el.textContent").strip()
    assert shown == last["content"].strip() or "round" in page.inner_text(f"#msg-{last['id']}")
    assert page.is_visible("#send-button") and not page.is_visible("#stop-button")
    page.screenshot(path=ARTIFACTS / "tools-02-card-open.png")


def test_approve_deny_and_stop(page, server):
    conv_id = tools_chat(page, ask=True)

    # Approve: the call waits, survives a reload, then runs and the answer goes on.
    first = send(page, "What is 6 * 7?")
    page.wait_for_selector(f"#msg-{first} [data-approve]")
    assert page.is_visible("#stop-button")  # the turn goes on: Stop is offered
    call = calls_of(server, first)[0]
    assert call["status"] == "awaiting"
    page.screenshot(path=ARTIFACTS / "tools-03-awaiting.png")
    page.reload()
    page.wait_for_selector(f"#msg-{first} [data-approve]")
    page.click(f"[data-approve='{call['id']}']")
    ran = wait_card_ran(page, server, call["id"])
    assert ran["duration"] is not None and ran["output"]
    stored = wait_turn_over(page, server, conv_id, after=first)
    assert any(r["parent_id"] == first for r in stored)

    # Deny: recorded as denied, and the model is told and goes on.
    second = send(page, "And 9 * 9?")
    page.wait_for_selector(f"#msg-{second} [data-deny]")
    call = calls_of(server, second)[0]
    page.click(f"[data-deny='{call['id']}']")
    wait_card_status(page, call["id"], "denied")
    stored = wait_turn_over(page, server, conv_id, after=second)
    assert calls_of(server, second)[0]["status"] == "denied"
    assert any(r["parent_id"] == second for r in stored)

    # Stop while waiting: the call ends stopped, the turn ends, the chat takes a new message.
    third = send(page, "And 3 + 4?")
    page.wait_for_selector(f"#msg-{third} [data-approve]")
    call = calls_of(server, third)[0]
    page.click("#stop-button")
    wait_card_status(page, call["id"], "stopped")
    page.wait_for_selector("#send-button", state="visible")
    assert not page.is_visible("#stop-button")
    assert "Stopped" in page.inner_text(f"#msg-{third}")
    assert not page.is_visible(f"#msg-{third} [data-approve]")
    page.screenshot(path=ARTIFACTS / "tools-04-stopped.png")
    assert calls_of(server, third)[0]["status"] == "stopped"
    assert not rows(server, "SELECT id FROM chat_message WHERE parent_id = ?", third)
    fourth = send(page, "Thanks.")
    page.wait_for_selector(f"#msg-{fourth} [data-approve]")  # a new turn, asking again
    page.click("#stop-button")
    page.wait_for_selector("#send-button", state="visible")
