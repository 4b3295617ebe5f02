"""The keep toggle, retention in a served process, and the account page's export and deletion, in a
real browser against a real server (daphne, embedded worker with the echo backend). The server
runs its retention timer every second with a 30-day policy; the test ages chats by writing their
last activity straight into the server's database. Screenshots go to test-artifacts/."""
import io
import json
import re
import sqlite3
import time
import zipfile
from datetime import datetime, timedelta, timezone

import pytest

from browser_support import ARTIFACTS, LiveServer, launch

pytestmark = [pytest.mark.browser]

PASSWORD = "correct-horse-battery-9"
WAIT_MS = 150_000  # generous: the two cores may be shared with other work


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ARTIFACTS.mkdir(exist_ok=True)
    workdir = tmp_path_factory.mktemp("live-account")
    models = {"echo": {"path": "", "backend": "echo", "n_ctx": 4096, "device": "cpu", "delay": 0.01}}
    env = {"SMOLSITE_RETENTION_DAYS": "30", "SMOLSITE_RETENTION_INTERVAL": "1", "SMOLSITE_WS_AUTH_SECONDS": "3600"}
    live = LiveServer(workdir, models, ARTIFACTS / "browser-account-server.log", env=env).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


def db(server):
    return sqlite3.connect(server.db_path, timeout=20)


def conversations_of(server, username):
    with db(server) as conn:
        rows = conn.execute("SELECT c.id FROM chat_conversation c JOIN auth_user u ON u.id = c.owner_id "
                            "WHERE u.username = ? ORDER BY c.id", (username,)).fetchall()
    return [r[0] for r in rows]


def conversation_row(server, pk):
    with db(server) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM chat_conversation WHERE id = ?", (pk,)).fetchone()
    return dict(row) if row else None


def age(server, pk, days):
    """Set a chat's last activity ``days`` back, as if nobody had touched it since."""
    then = (datetime.now(timezone.utc) - timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with db(server) as conn:
        conn.execute("UPDATE chat_conversation SET updated_at = ? WHERE id = ?", (then, pk))


def wait_until(predicate, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def sign_up(browser, server, username):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/accounts/signup/")
    page.fill("#id_username", username)
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/c/\d+/$"))
    page.wait_for_selector("#composer-input")
    page.errors = errors
    return context, page


def current_id(page):
    return int(re.search(r"/c/(\d+)/$", page.url).group(1))


def say(page, text):
    """Send a message and wait for the echoed answer to finish."""
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")
    page.wait_for_selector(".msg-assistant[data-status=done] .content.markdown", state="attached")


def new_chat(page, text):
    page.click(".new-chat button")
    page.wait_for_url(lambda url: re.search(r"/c/\d+/$", url) is not None)
    page.wait_for_selector("#composer-input")
    say(page, text)
    return current_id(page)


def test_keep_retention_export_and_delete(server, browser):
    # The first account is the administrator; ada and bob are ordinary users.
    admin_context, _ = sign_up(browser, server, "root")
    admin_context.close()
    bob_context, bob = sign_up(browser, server, "bob")
    say(bob, "bob private words")
    bob_context.close()

    context, page = sign_up(browser, server, "ada")
    say(page, "ada keeps this one")
    kept_id = current_id(page)
    gone_id = new_chat(page, "ada lets this one go")
    recent_id = new_chat(page, "ada talks here today")

    # Keep the first chat from the sidebar: the pin toggles, the row says so, and it is stored.
    item = page.locator(f"#conv-{kept_id}")
    item.hover()
    item.locator(".keep-toggle").click()
    page.wait_for_selector(f"#conv-{kept_id} .keep-toggle[aria-pressed=true]")
    page.wait_for_selector(f"#conv-{kept_id} .conv-kept")
    assert conversation_row(server, kept_id)["kept"] == 1
    page.screenshot(path=ARTIFACTS / "account-01-kept.png")
    page.reload()
    page.wait_for_selector(f"#conv-{kept_id} .keep-toggle[aria-pressed=true]", state="attached")

    # Retention in the served process: two chats fall 40 days idle; its timer deletes the one not kept.
    gone_tab = context.new_page()
    gone_tab.set_default_timeout(WAIT_MS)
    gone_tab.goto(f"{server.url}/c/{gone_id}/")
    gone_tab.wait_for_selector("#chat")
    gone_tab.wait_for_function("() => window.htmx !== undefined")
    age(server, kept_id, 40)
    age(server, gone_id, 40)
    wait_until(lambda: conversation_row(server, gone_id) is None, "the retention timer to delete the idle chat")
    assert conversation_row(server, kept_id) is not None and conversation_row(server, recent_id) is not None
    # The open tab of the deleted chat is told at once (the idle re-check is an hour away).
    gone_tab.wait_for_selector("#connection[data-closed='4404']")
    assert "deleted" in gone_tab.text_content("#connection")
    gone_tab.close()

    # Export: a zip of exactly ada's chats that still exist.
    page.goto(server.url + "/account/")
    page.wait_for_selector("#retention-note")
    assert "30 days" in page.text_content("#retention-note")
    page.screenshot(path=ARTIFACTS / "account-02-page.png", full_page=True)
    with page.expect_download() as info:
        page.click("#export-all")
    download = info.value
    assert re.fullmatch(r"smolsite-ada-\d{8}-\d{6}\.zip", download.suggested_filename)
    with zipfile.ZipFile(io.BytesIO(open(download.path(), "rb").read())) as zf:
        index = json.loads(zf.read("index.json"))
        everything = b"".join(zf.read(n) for n in zf.namelist()).decode()
    assert sorted(row["id"] for row in index["conversations"]) == sorted(conversations_of(server, "ada"))
    assert sorted(row["id"] for row in index["conversations"]) == sorted([kept_id, recent_id])
    assert "ada keeps this one" in everything and "ada talks here today" in everything
    assert "bob private words" not in everything and "ada lets this one go" not in everything

    # Delete the account: a chat tab stays open meanwhile.
    chat_tab = context.new_page()
    chat_tab.set_default_timeout(WAIT_MS)
    chat_tab.goto(f"{server.url}/c/{recent_id}/")
    chat_tab.wait_for_selector("#chat")
    page.click("#delete-account")
    page.wait_for_selector("#delete-account-form")
    page.fill("#id_password", "not my password")
    page.check("#id_confirm")
    page.click("#delete-account-form button[type=submit]")
    page.wait_for_selector("text=That is not your password.")
    assert server.user("ada") is not None
    page.fill("#id_password", PASSWORD)
    page.check("#id_confirm")
    page.screenshot(path=ARTIFACTS / "account-03-delete.png")
    page.click("#delete-account-form button[type=submit]")
    page.wait_for_selector("#account-deleted")
    page.screenshot(path=ARTIFACTS / "account-04-deleted.png")
    assert server.user("ada") is None
    assert conversations_of(server, "ada") == []
    with db(server) as conn:
        assert conn.execute("SELECT COUNT(*) FROM chat_conversation WHERE id IN (?, ?)", (kept_id, recent_id)).fetchone()[0] == 0
    # The open chat tab is signed out at once; the session is gone.
    chat_tab.wait_for_selector("#connection[data-closed='4401']")
    page.goto(server.url + "/account/")
    assert "/accounts/login/" in page.url
    assert conversations_of(server, "bob") and server.user("bob") is not None
    assert not page.errors, f"JavaScript errors on the page: {page.errors}"
    context.close()
