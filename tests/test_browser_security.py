"""Sockets the server ends for good (signed out, chat deleted) in a real browser: the page says why
and does not reconnect; and the page works under the Content-Security-Policy."""
import re
import sqlite3
import time

import pytest

from browser_support import ARTIFACTS, LiveServer, launch

pytestmark = [pytest.mark.browser]

USERNAME, PASSWORD = "grace", "correct-horse-battery-9"
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ARTIFACTS.mkdir(exist_ok=True)
    workdir = tmp_path_factory.mktemp("live-security")
    models = {"echo": {"path": "", "backend": "echo", "n_ctx": 4096, "device": "cpu", "delay": 0.01}}
    live = LiveServer(workdir, models, ARTIFACTS / "browser-security-server.log",
                      env={"SMOLSITE_WS_AUTH_SECONDS": "1"}).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture(scope="module")
def account(server, browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(server.url + "/accounts/signup/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/c/\d+/$"))
    context.close()


class Tab:
    """A signed-in page of its own session, counting its websockets and policy violations."""

    def __init__(self, browser, server, storage_state=None):
        self.context = browser.new_context(storage_state=storage_state)
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.sockets = []
        self.problems = []
        self.page.on("websocket", lambda ws: self.sockets.append(ws.url))
        self.page.on("pageerror", lambda exc: self.problems.append(str(exc)))
        self.page.on("console", lambda msg: self.problems.append(msg.text)
                     if "Content Security Policy" in msg.text or "Refused to" in msg.text else None)
        if storage_state is None:
            self.page.goto(server.url + "/accounts/login/")
            self.page.fill("#id_username", USERNAME)
            self.page.fill("#id_password", PASSWORD)
            self.page.click("button[type=submit]")
            self.page.wait_for_url(re.compile(r"/c/\d+/$"))

    def open_new_chat(self):
        self.page.click(".new-chat button")
        self.page.wait_for_url(re.compile(r"/c/\d+/$"))
        self.wait_connected()
        return int(re.search(r"/c/(\d+)/$", self.page.url).group(1))

    def wait_connected(self):
        self.page.wait_for_selector("#composer-input")
        # The page resumes nothing and shows no banner once its socket is open.
        self.page.wait_for_function("() => document.getElementById('connection').hidden")
        deadline = time.monotonic() + 20
        while not self.sockets and time.monotonic() < deadline:
            self.page.wait_for_timeout(100)
        assert self.sockets

    def banner(self):
        return self.page.text_content("#connection") or ""

    def wait_banner(self, text):
        self.page.wait_for_function(
            "t => { const b = document.getElementById('connection'); return !b.hidden && b.textContent.includes(t); }",
            arg=text, timeout=20_000)

    def close(self):
        self.context.close()


def session_keys(server):
    with sqlite3.connect(server.db_path, timeout=20) as db:
        return [row[0] for row in db.execute("SELECT session_key FROM django_session")]


def delete_session(server, key):
    with sqlite3.connect(server.db_path, timeout=20) as db:
        db.execute("DELETE FROM django_session WHERE session_key = ?", (key,))


def session_of(tab):
    return next(c["value"] for c in tab.context.cookies() if c["name"] == "sessionid")


def assert_no_reconnect(tab, seconds=4):
    before = len(tab.sockets)
    tab.page.wait_for_timeout(seconds * 1000)
    assert len(tab.sockets) == before, f"the page reconnected: {tab.sockets}"


def test_session_deleted_server_side_says_signed_out_and_stops(browser, server, account):
    tab = Tab(browser, server)
    try:
        tab.open_new_chat()
        # The page works under the policy: an answer streams over the websocket.
        tab.page.fill("#composer-input", "hello under the policy")
        tab.page.press("#composer-input", "Enter")
        tab.page.wait_for_selector(".msg-assistant[data-status=done] .content.markdown", state="attached")
        assert "hello under the policy" in tab.page.text_content(".msg-assistant .content")
        sockets = len(tab.sockets)

        delete_session(server, session_of(tab))
        tab.wait_banner("Signed out — sign in again.")
        tab.page.screenshot(path=ARTIFACTS / "security-signed-out.png")
        assert tab.page.get_attribute("#connection a", "href").startswith("/accounts/login/?next=")
        assert "reconnecting" not in tab.banner()
        assert_no_reconnect(tab)
        assert len(tab.sockets) == sockets
        # Sending says why instead of queueing the frame for a socket that will never come back.
        tab.page.fill("#composer-input", "anyone there?")
        tab.page.press("#composer-input", "Enter")
        tab.page.wait_for_function(
            "() => document.getElementById('composer-error').textContent.includes('Signed out')")
        assert not tab.problems, tab.problems
    finally:
        tab.close()


def test_logging_out_in_another_page_signs_this_one_out(browser, server, account):
    tab = Tab(browser, server)
    try:
        tab.open_new_chat()
        other = Tab(browser, server, storage_state=tab.context.storage_state())  # the same session
        try:
            other.page.goto(server.url + "/")
            other.page.wait_for_selector("#composer-input")
            # A real click's actionability check can lose to the chat layout reflowing on a busy
            # machine (the composer momentarily over the sidebar); the click itself is the point.
            other.page.locator("form[action='/accounts/logout/'] button").dispatch_event("click")
            other.page.wait_for_url(re.compile(r"/accounts/login/"))
        finally:
            other.close()
        tab.wait_banner("Signed out — sign in again.")
        assert_no_reconnect(tab)
        assert not tab.problems, tab.problems
    finally:
        tab.close()


def test_chat_deleted_elsewhere_says_so_and_stops(browser, server, account):
    tab = Tab(browser, server)
    other = Tab(browser, server)  # another session of the same user
    try:
        conv = tab.open_new_chat()
        tab.page.fill("#composer-input", "a chat to delete")
        tab.page.press("#composer-input", "Enter")
        tab.page.wait_for_selector(".msg-assistant[data-status=done]", state="attached")
        other.page.goto(server.url + f"/c/{conv}/")
        other.page.once("dialog", lambda dialog: dialog.accept())
        other.page.click(f"#conv-{conv} button[title=Delete]")
        other.page.wait_for_url(re.compile(r"/c/\d+/$"))
        tab.wait_banner("This chat is not yours or was deleted.")
        tab.page.screenshot(path=ARTIFACTS / "security-chat-deleted.png")
        assert_no_reconnect(tab)
        assert not tab.problems, tab.problems
    finally:
        tab.close()
        other.close()
