"""The admin transcript in a real browser against a real server (daphne, the embedded worker and
SmolLM2-135M) with SMOLSITE_ADMIN_READ_MESSAGES on: a chat with a regenerated answer, read by the
administrator through the reason form, both versions reachable, each view audited. Screenshots go
to test-artifacts/."""
import re
import sqlite3

import pytest

from browser_support import ARTIFACTS, LiveServer, launch

pytestmark = [pytest.mark.browser, pytest.mark.model]

USERNAME, PASSWORD = "ada", "correct-horse-battery-9"
WAIT_MS = 150_000  # generous: the two cores may be shared with other work
REASON = "Quality review of regenerated answers"


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_path):
    ARTIFACTS.mkdir(exist_ok=True)
    workdir = tmp_path_factory.mktemp("live-review")
    models = {"smollm2-135m": {"path": default_model_path, "n_ctx": 4096, "threads": 2, "device": "cpu"}}
    live = LiveServer(workdir, models, ARTIFACTS / "browser-review-server.log",
                      env={"SMOLSITE_ADMIN_READ_MESSAGES": "1"}).start()
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


def wait_final(page, message_id):
    selector = f"#msg-{message_id}:not([data-status=pending]):not([data-status=streaming]) .content.markdown"
    page.wait_for_selector(selector, state="attached")
    return page.get_attribute(f"#msg-{message_id}", "data-status")


def new_answer(page, before):
    return page.wait_for_function(
        """before => {
            const el = [...document.querySelectorAll('.msg-assistant')]
                .find(e => !before.includes(Number(e.dataset.message)));
            return el ? Number(el.dataset.message) : null;
        }""", arg=before).json_value()


def assistant_ids(page):
    return page.eval_on_selector_all(".msg-assistant", "els => els.map(e => Number(e.dataset.message))")


def same_text(a, b):
    """The same rendered answer (the chat page and the admin lay out whitespace differently)."""
    return " ".join(a.split()) == " ".join(b.split()) != ""


def audit_rows(server):
    with sqlite3.connect(server.db_path, timeout=20) as db:
        return db.execute("SELECT username, action, conversation_id, reason, with_text FROM review_auditrecord "
                          "ORDER BY id").fetchall()


def test_admin_reads_a_transcript_with_its_branches(page, server):
    # The first account is the administrator; it chats, then regenerates the answer.
    page.goto(server.url + "/accounts/signup/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/c/\d+/$"))
    conv_id = int(re.search(r"/c/(\d+)/$", page.url).group(1))
    page.fill("#composer-input", "Name one colour of the sky.")
    page.press("#composer-input", "Enter")
    first = new_answer(page, [])
    assert wait_final(page, first) == "done"
    first_text = page.inner_text(f"#msg-{first} .content")
    page.click(f"#msg-{first} [data-regenerate]")
    second = new_answer(page, [first])
    assert wait_final(page, second) == "done"
    second_text = page.inner_text(f"#msg-{second} .content")

    # Admin: the conversation list links the transcript, which first asks why.
    page.goto(server.url + "/admin/chat/conversation/")
    page.click(f"a.transcript-link[href='/admin/chat/conversation/{conv_id}/transcript/']")
    page.wait_for_selector("#reason-form")
    assert page.query_selector(".turn") is None and audit_rows(server) == []
    page.fill("#id_reason", REASON)
    page.click("#reason-form input[type=submit]")
    page.wait_for_selector("#transcript")

    # The current branch: the question, then the regenerated answer (version 2 of 2), its metrics.
    turns = page.eval_on_selector_all("#transcript .turn", "els => els.map(e => Number(e.dataset.message))")
    assert len(turns) == 2 and turns[1] == second
    assert page.inner_text(f"#msg-{turns[0]} .turn-content") == "Name one colour of the sky."
    assert same_text(page.inner_text(f"#msg-{second} .turn-content"), second_text)
    assert page.inner_text(f"#msg-{second} .version-pos") == "2/2"
    stored = server.message(second)
    assert page.inner_text(f"#msg-{second} .metric-worker") == stored["worker_id"] != ""
    assert page.inner_text(f"#msg-{second} .metric-ttft") == f"{stored['ttft']:.2f} s"
    assert re.fullmatch(r"\d+\.\d\d s", page.inner_text(f"#msg-{second} .metric-queue"))
    assert f"{stored['completion_tokens']} completion" in page.inner_text(f"#msg-{second} .metric-tokens")
    page.screenshot(path=ARTIFACTS / "review-transcript.png", full_page=True)

    # The other version, one click away; no second reason asked.
    page.click(f"#msg-{second} a.version-prev")
    page.wait_for_url(re.compile(rf"\?leaf={first}$"))
    page.wait_for_selector(f"#msg-{first}")
    assert page.inner_text(f"#msg-{first} .version-pos") == "1/2"
    assert page.query_selector(f"#msg-{second}") is None
    assert same_text(page.inner_text(f"#msg-{first} .turn-content"), first_text)
    page.screenshot(path=ARTIFACTS / "review-transcript-version-1.png", full_page=True)

    # Each view is in the audit log, with the reason given once.
    assert audit_rows(server) == [(USERNAME, "view", conv_id, REASON, 1), (USERNAME, "view", conv_id, REASON, 1)]
    page.goto(server.url + "/admin/review/auditrecord/")
    assert page.inner_text("#result_list tbody").count(REASON) == 2
    assert page.query_selector("select[name=action] option[value=delete_selected]") is None
