"""Sockets the server ends for good (signed out, chat deleted) in a real browser: the page says why
and does not reconnect; and the page works under the Content-Security-Policy."""
import json
import re
import sqlite3
import subprocess
import sys
import time

import pytest

from browser_support import ARTIFACTS, REPO, LiveServer, browser  # noqa: F401 (browser: a fixture)

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

    def __init__(self, browser, server, storage_state=None, username=USERNAME):
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
            self.page.fill("#id_username", username)
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


# ---- stored XSS: whatever users and models write is shown as text -------------------------------

# Each piece would run script or load something if it reached the DOM as markup. They set
# window.__xss, call alert() or load "x"; the page's Content-Security-Policy would also block most,
# so the checks look at the DOM itself (defence in depth), not only at what ran.
XSS = ('<img src=x onerror="window.__xss=1"> <script>window.__xss=2</script> '
       '[link](javascript:window.__xss=3) <svg onload="window.__xss=4"></svg> '
       '<iframe src="javascript:window.__xss=5"></iframe> <a href="javascript:alert(6)">a</a> '
       '![i](x" onerror="window.__xss=7) <details open ontoggle="alert(8)"> `<b>code</b>` '
       '</textarea></title><p onclick=alert(9)>p</p> {{7*7}} <style>body{display:none}</style>')
EVIL_USERNAME = '<img src=x onerror=alert(1)>'
EVIL_FILENAME = '<img src=x onerror=alert(2)>".jsonl'

# Markup that could only be there if user or model text had been parsed as HTML.
DANGER_JS = """() => {
    const bad = [];
    for (const el of document.querySelectorAll('*')) {
        for (const a of el.attributes) {
            if (a.name.startsWith('on')) bad.push(`${el.tagName} ${a.name}`);
            if (/^\\s*javascript:/i.test(a.value)) bad.push(`${el.tagName} ${a.name}=${a.value}`);
        }
        if (['IFRAME', 'OBJECT', 'EMBED'].includes(el.tagName)) bad.push(el.tagName);  // (the page's icons are inline SVG)
        if (el.tagName === 'SCRIPT' && !(el.src && new URL(el.src).origin === location.origin)
            && el.type !== 'application/json') bad.push('inline SCRIPT');
        if (el.tagName === 'IMG' && el.getAttribute('src') === 'x') bad.push('IMG src=x');
        if (el.tagName === 'STYLE' && el.textContent.includes('display:none')) bad.push('STYLE');
        if (el.tagName === 'DETAILS' && el.hasAttribute('ontoggle')) bad.push('DETAILS');
    }
    if (window.__xss !== undefined) bad.push(`window.__xss=${window.__xss}`);
    return bad;
}"""


def assert_inert(tab, where):
    bad = tab.page.evaluate(DANGER_JS)
    assert not bad, f"{where}: user or model text became markup: {bad}"
    assert not tab.dialogs, f"{where}: a dialog opened: {tab.dialogs}"
    # A policy violation would mean injected markup reached the page (and only the policy stopped it).
    assert not tab.problems, f"{where}: {tab.problems}"


def watch_dialogs(tab):
    tab.dialogs = []

    def on_dialog(dialog):
        tab.dialogs.append(dialog.message)
        dialog.dismiss()

    tab.page.on("dialog", on_dialog)
    return tab


def test_the_detector_sees_injected_markup(browser, server, account):
    """The control: the same checks flag markup that did get in (added here by the test itself)."""
    tab = watch_dialogs(Tab(browser, server))
    try:
        tab.page.evaluate("""() => { const d = document.createElement('div');
            d.innerHTML = '<img src="x" onerror="1"><a href="javascript:1">a</a>'; document.body.append(d); }""")
        bad = tab.page.evaluate(DANGER_JS)
        assert "IMG onerror" in bad and "IMG src=x" in bad and "A href=javascript:1" in bad
    finally:
        tab.close()


def create_user_directly(server, username):
    """A user whose name the sign-up form would refuse, as an admin script or another sign-up
    path could make one: the pages must still show the name as text."""
    code = ("from django.contrib.auth import get_user_model; "
            f"get_user_model().objects.create_user({username!r}, password={PASSWORD!r})")
    subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, env=server.env, check=True,
                   timeout=120)


def test_stored_xss_through_model_output_titles_usernames_and_batch_names_is_inert(browser, server, account):
    create_user_directly(server, EVIL_USERNAME)
    tab = watch_dialogs(Tab(browser, server, username=EVIL_USERNAME))
    admin = None
    try:
        # Model output (the echo model answers with the user's words) and the title made from them.
        conv = tab.open_new_chat()
        tab.page.fill("#composer-input", XSS)
        tab.page.press("#composer-input", "Enter")
        tab.page.wait_for_selector(".msg-assistant[data-status=done] .content.markdown", state="attached")
        answer = tab.page.text_content(".msg-assistant .content")
        assert "<b>code</b>" in answer  # the code span shows its markup as text: the answer is rendered
        assert_inert(tab, "the streamed answer")
        # Reloaded: the server's Markdown rendering, the sidebar's title, the heading, the username.
        tab.page.goto(server.url + f"/c/{conv}/")
        tab.wait_connected()
        assert "<img src=x" in tab.page.text_content(f"#conv-{conv}")
        assert EVIL_USERNAME in tab.page.text_content(".whoami")
        assert "<img src=x" in tab.page.title()
        assert_inert(tab, "the reloaded chat")
        # Search: the sidebar's snippets of matching messages.
        tab.page.fill("#search-input", "ontoggle")  # in the text, not in the title: a snippet shows
        tab.page.wait_for_selector(".conv-snippet")
        assert_inert(tab, "search snippets")
        # Renamed (the inline rename redraws the sidebar item with the new title).
        token = next(c["value"] for c in tab.context.cookies() if c["name"] == "csrftoken")
        response = tab.page.request.post(server.url + f"/c/{conv}/rename/", form={"title": XSS[:190]},
                                          headers={"X-CSRFToken": token, "Referer": server.url + "/"})
        assert response.ok
        tab.page.goto(server.url + f"/c/{conv}/")
        tab.wait_connected()
        assert_inert(tab, "a renamed chat")

        # A batch file's name and its results (the echo model answers with the payload again).
        line = json.dumps({"custom_id": XSS[:60], "method": "POST", "url": "/v1/chat/completions",
                           "body": {"model": "echo", "messages": [{"role": "user", "content": XSS}]}})
        tab.page.goto(server.url + "/batches/")
        tab.page.set_input_files("input[type=file]", files=[{"name": EVIL_FILENAME, "mimeType": "application/jsonl",
                                                             "buffer": line.encode()}])
        tab.page.click("form[enctype] button[type=submit]")
        tab.page.wait_for_selector(".batch-preview dd", state="attached")  # finished: its first results are listed
        assert EVIL_FILENAME.split('"')[0] in tab.page.text_content(".batch-name")  # (Chromium sends " as %22)
        assert "<b>code</b>" in tab.page.text_content(".batch-preview dd")
        assert_inert(tab, "the Batches page")

        # The administrator's views of all of it.
        admin = watch_dialogs(Tab(browser, server))
        for path in ("/admin/", "/admin/auth/user/", "/admin/chat/conversation/", f"/admin/chat/conversation/{conv}/change/",
                     "/admin/chat/message/", "/admin/batches/batch/", "/admin/batches/batchfile/"):
            admin.page.goto(server.url + path)
            assert admin.page.locator("#content").count() == 1, path
            assert_inert(admin, path)
        admin.page.goto(server.url + "/admin/auth/user/")
        assert EVIL_USERNAME in admin.page.text_content("#result_list")
        assert_inert(admin, "the user list")
    finally:
        tab.close()
        if admin:
            admin.close()
