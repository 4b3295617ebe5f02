"""A real smolsite server for browser tests: daphne in a subprocess, embedded worker, its own
SQLite file, and Debian's chromium driven through Playwright."""
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
READY_SECONDS = 180  # loading the model on a busy 2-core machine


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, workdir, models, log_path, env=None):
        self.workdir = Path(workdir)
        self.db_path = self.workdir / "db.sqlite3"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        self.env.update({
            "DJANGO_SETTINGS_MODULE": "smolsite.settings",
            "SQLITE_PATH": str(self.db_path),
            "SMOLSITE_VAR_DIR": str(self.workdir),
            "SMOLSITE_EMBEDDED_WORKER": "1",
            "SMOLSITE_SIGNUP_OPEN": "1",
            "SMOLSITE_MODELS": json.dumps(models),
            # The suite installs a demo plugin that rewrites system prompts; users would not have it.
            "SMOLSITE_BLOCKED_PLUGINS": "hello",
        })
        self.env.update(env or {})
        self.proc = None
        self._log = None

    def start(self):
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=REPO, env=self.env,
                       check=True, timeout=300)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "smolsite.asgi:application"],
            cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the server was not ready within {READY_SECONDS} s: see {self.log_path}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()

    def message(self, message_id):
        """The stored row of a message, read straight from the server's database."""
        with sqlite3.connect(self.db_path, timeout=20) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM chat_message WHERE id = ?", (message_id,)).fetchone()
        return dict(row) if row else None

    def worker_pid(self, device="cpu"):
        """The pid of the device's worker process (process mode), or None between processes."""
        try:
            return int((self.workdir / f"worker-{device}.pid").read_text())
        except (OSError, ValueError):
            return None

    def user(self, username):
        with sqlite3.connect(self.db_path, timeout=20) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM auth_user WHERE username = ?", (username,)).fetchone()
        return dict(row) if row else None


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def browser(server):
    """One Chromium for a test module, started once its module's ``server`` fixture is up. Import
    it into the module (``from browser_support import browser``) beside a ``server`` fixture."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


# ---- page helpers (a Playwright page of the chat) ----------------------------------------------

# Records, page-side, every length each answer has while it is streaming (window.__lengths[id]) and
# its raw streamed text (window.__raw[id]); run with page.evaluate before sending.
RECORD_STREAMING = """() => {
    window.__lengths = {}; window.__raw = {};
    new MutationObserver(() => {
        for (const el of document.querySelectorAll('.msg-assistant')) {
            const c = el.querySelector('.content.streaming');
            if (!c) continue;
            window.__raw[el.dataset.message] = c.textContent;
            if (el.dataset.status === 'streaming') {
                (window.__lengths[el.dataset.message] ||= []).push(c.textContent.length);
            }
        }
    }).observe(document.getElementById('thread-region'), {subtree: true, childList: true, characterData: true});
}"""


def new_chat(page, model):
    page.click(".new-chat button")
    page.wait_for_url(re.compile(r"/c/\d+/$"))
    page.wait_for_selector("#composer-input")
    if page.input_value("#model-select") != model:
        with page.expect_response(lambda r: r.url.endswith("/model/") and r.request.method == "POST") as info:
            page.select_option("#model-select", model)
        assert info.value.status == 200
    return int(re.search(r"/c/(\d+)/$", page.url).group(1))


def save_settings(page, temperature, max_tokens):
    """Set the chat's temperature and max tokens in its settings panel, and close it."""
    page.click("[data-settings-toggle]")
    page.fill("#id_max_tokens", str(max_tokens))
    page.fill("#id_temperature", str(temperature))
    page.click("#settings-form button[type=submit]")
    page.wait_for_selector("#settings-form .saved:text('Saved.')")
    page.click("[data-settings-close]")


def assistant_ids(page):
    return page.eval_on_selector_all(".msg-assistant", "els => els.map(e => Number(e.dataset.message))")


def wait_new_answer(page, before):
    """The id of the assistant message that appears after an action (the thread frame)."""
    handle = page.wait_for_function(
        """before => {
            const el = [...document.querySelectorAll('.msg-assistant')]
                .find(e => !before.includes(Number(e.dataset.message)));
            return el ? Number(el.dataset.message) : null;
        }""", arg=before)
    return handle.json_value()


def send(page, text):
    before = assistant_ids(page)
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")
    return wait_new_answer(page, before)


def wait_final(page, message_id):
    """Wait for the final frame (rendered Markdown) and return the message's status."""
    selector = f"#msg-{message_id}:not([data-status=pending]):not([data-status=streaming]) .content.markdown"
    page.wait_for_selector(selector, state="attached")
    return page.get_attribute(f"#msg-{message_id}", "data-status")


def content_text(page, message_id):
    """The answer's text as shown (the Markdown render adds a trailing newline)."""
    return page.eval_on_selector(f"#msg-{message_id} .content", "el => el.textContent").rstrip("\n")
