"""A Responses chain made through the API, seen and continued by its owner in a real browser,
and read by the administrator in the admin transcript (SMOLSITE_ADMIN_READ_MESSAGES on): daphne
with the embedded worker and the echo backend (its answer is the user's words, so the page can
be checked word for word), Debian's Chromium through Playwright, the official ``openai`` client.
Screenshots go to test-artifacts/."""
import re
import subprocess
import sys

import openai
import pytest

from browser_support import ARTIFACTS, REPO, LiveServer, launch

pytestmark = [pytest.mark.browser, pytest.mark.model]

USERNAME, PASSWORD = "ada", "correct-horse-battery-9"
WAIT_MS = 150_000  # generous: the two cores may be shared with other work


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_path):
    ARTIFACTS.mkdir(exist_ok=True)
    workdir = tmp_path_factory.mktemp("live-responses")
    models = {"echo": {"path": "", "backend": "echo", "n_ctx": 4096, "device": "cpu"},
              "smollm2-135m": {"path": default_model_path, "n_ctx": 4096, "threads": 2, "device": "cpu"}}
    live = LiveServer(workdir, models, ARTIFACTS / "browser-responses-server.log",
                      env={"SMOLSITE_ADMIN_READ_MESSAGES": "1", "SMOLSITE_DEFAULT_MODEL": "echo"}).start()
    yield live
    live.stop()


@pytest.fixture
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        pg.set_default_timeout(WAIT_MS)
        errors = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        yield pg
        browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


def messages_shown(page):
    return [tuple(pair) for pair in page.eval_on_selector_all(
        "#thread .msg", "els => els.map(e => [e.classList.contains('msg-user') ? 'user' : 'assistant', "
                          "e.querySelector('.content').textContent.trim()])")]


def test_an_api_chain_is_in_the_chat_list_continues_in_the_browser_and_is_in_the_transcript(page, server):
    # The first account is the administrator; it makes a key for its agent.
    page.goto(server.url + "/accounts/signup/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/c/\d+/$"))
    key = subprocess.run([sys.executable, "manage.py", "create_api_key", USERNAME, "--name", "agent"], cwd=REPO,
                         env=server.env, check=True, capture_output=True, text=True, timeout=120).stdout.split()[-1]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)
    first = client.responses.create(model="echo", input="alpha bravo")
    second = client.responses.create(model="echo", input="charlie delta", previous_response_id=first.id)
    assert second.output_text == "charlie delta"
    answer_id = int(second.id.removeprefix("resp_"))
    conversation = server.message(answer_id)["conversation_id"]

    # The owner's chat list has it, marked API, titled from its first question.
    page.goto(server.url + "/")
    item = page.wait_for_selector(f"#conv-{conversation}")
    assert item.inner_text().startswith("alpha bravo") and item.query_selector(".conv-badge").inner_text() == "API"
    page.click(f"#conv-{conversation} a.conv-link")
    page.wait_for_url(re.compile(rf"/c/{conversation}/$"))
    page.wait_for_selector(f"#msg-{answer_id}")
    assert messages_shown(page) == [("user", "alpha bravo"), ("assistant", "alpha bravo"),
                                    ("user", "charlie delta"), ("assistant", "charlie delta")]

    # Continued in the browser: the next turn hangs under the chain's last answer.
    before = page.eval_on_selector_all(".msg-assistant", "els => els.map(e => Number(e.dataset.message))")
    page.fill("#composer-input", "echo foxtrot")
    page.press("#composer-input", "Enter")
    reply = page.wait_for_function(
        """before => {
            const el = [...document.querySelectorAll('.msg-assistant')]
                .find(e => !before.includes(Number(e.dataset.message)));
            return el ? Number(el.dataset.message) : null;
        }""", arg=before).json_value()
    page.wait_for_selector(f"#msg-{reply}:not([data-status=pending]):not([data-status=streaming]) .content.markdown",
                           state="attached")
    assert page.get_attribute(f"#msg-{reply}", "data-status") == "done"
    assert page.inner_text(f"#msg-{reply} .content").strip() == "echo foxtrot"
    question = server.message(server.message(reply)["parent_id"])
    assert (question["content"], question["parent_id"], question["conversation_id"]) == (
        "echo foxtrot", answer_id, conversation)
    page.screenshot(path=ARTIFACTS / "responses-continued.png", full_page=True)

    # The administrator reads the whole chain in the transcript, after giving a reason.
    page.goto(server.url + f"/admin/chat/conversation/{conversation}/transcript/")
    page.wait_for_selector("#reason-form")
    page.fill("#id_reason", "Review of an agent's chain")
    page.click("#reason-form input[type=submit]")
    page.wait_for_selector("#transcript")
    turns = page.eval_on_selector_all("#transcript .turn", "els => els.map(e => Number(e.dataset.message))")
    texts = [page.inner_text(f"#msg-{t} .turn-content").strip() for t in turns]
    assert texts == ["alpha bravo", "alpha bravo", "charlie delta", "charlie delta", "echo foxtrot", "echo foxtrot"]
    assert turns[3] == answer_id
    page.screenshot(path=ARTIFACTS / "responses-transcript.png", full_page=True)
