"""Real upstream servers for the upstream plugin's tests and benchmark: llama-cpp-python's own
OpenAI-compatible server (``python -m llama_cpp.server``, its ``server`` extra) on the bundled
SmolLM2 GGUF, stopped, continued and killed by signals as a test needs. And the served smolsite in
front of one (``start_site``), with the module-scoped ``upstream`` and ``site`` fixtures that
tests/test_upstream.py and tests/test_browser_upstream.py share (import both into the module)."""
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from browser_support import ARTIFACTS, REPO, free_port
from live_stack import LiveServer, http, live_database, wait_for

ALIAS = "smollm2-up"
READY_SECONDS = 180
TOKEN = "metrics-token-for-upstream-tests"
STORY = "Write the numbers from 1 to 300, separated by commas."  # SmolLM2 at temperature 0: a long answer
SETUP = """
import json
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from api.models import ApiKey
from chat.models import Conversation
from usage.models import UserQuota

out = {}
for name, limits in (("alice", {}), ("bob", {}), ("spent", {"tokens_per_day": 1})):
    user = get_user_model().objects.create_user(name, password="pw-123456789")
    if limits:
        UserQuota.objects.create(user=user, **limits)
    conv = Conversation.objects.create(owner=user, model=%(model)r, temperature=0.0, max_tokens=%(max_tokens)d,
                                       thinking=False)
    client = Client()
    client.force_login(user)
    out[name] = {"key": ApiKey.create_for(user, f"{name}'s key")[1], "conversation": conv.pk, "name": name,
                 "session": client.cookies[settings.SESSION_COOKIE_NAME].value}
print(json.dumps(out))
"""


class LlamaServer:
    def __init__(self, workdir, model_path, name="llama-a", api_key="upstream-key", alias=ALIAS, n_ctx=2048,
                 threads=1):
        self.workdir, self.model_path, self.name = Path(workdir), model_path, name
        self.api_key, self.alias, self.n_ctx, self.threads = api_key, alias, n_ctx, threads
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = self.workdir / f"{name}.log"
        self.proc = None

    def config(self, **extra):
        """Its SMOLSITE_UPSTREAMS entry."""
        return {"name": self.name, "base_url": self.url, "api_key": self.api_key, "n_ctx": self.n_ctx,
                "tokenizer": self.model_path, "structured_output": "grammar", "connect_timeout": 2,
                "read_timeout": 20, **extra}

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", self.model_path, "--model_alias", self.alias,
             "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads), "--host", "127.0.0.1",
             "--port", str(self.port), "--api_key", self.api_key,
             # Its default ends a running stream whenever another request (a probe) arrives.
             "--interrupt_requests", "false"],
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_SECONDS
        while self.models() is None:
            assert self.proc.poll() is None, f"llama_cpp.server exited: {self.log()[-2000:]}"
            assert time.monotonic() < deadline, f"llama_cpp.server not up after {READY_SECONDS} s"
            time.sleep(0.3)
        return self

    def models(self):
        request = urllib.request.Request(self.url + "/models", headers={"Authorization": f"Bearer {self.api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return [m["id"] for m in json.loads(response.read())["data"]]
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def requests_seen(self):
        """Completions requests the upstream has received (uvicorn's access log)."""
        return self.log().count("POST /v1/chat/completions") + self.log().count("POST /v1/completions")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_site(workdir, upstreams, name, database_url=None, model=ALIAS, max_tokens=48):
    """A served smolsite (daphne, the embedded workers) whose models come from ``upstreams`` (and a
    local echo model), with the people alice, bob and spent (a daily quota of one token): each an
    API key, a logged-in session and a chat on ``model`` (``site.people``)."""
    models = {"echo": {"path": "", "backend": "echo", "device": "cpu"}}  # no local llama.cpp: CPU for upstreams
    site = LiveServer(workdir, models, ARTIFACTS / f"{name}.log", database_url=database_url, env={
        "SMOLSITE_UPSTREAMS": json.dumps(upstreams), "SMOLSITE_UPSTREAM_PROBE_SECONDS": "1",
        "SMOLSITE_UPSTREAM_PROBE_TIMEOUT": "1", "SMOLSITE_METRICS_TOKEN": TOKEN,
        "SMOLSITE_BATCH_TICK_SECONDS": "0.3"}).start()
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP % {"model": model, "max_tokens": max_tokens}],
                         cwd=REPO, env=site.env, check=True, capture_output=True, text=True, timeout=120).stdout
    site.people = json.loads(out.strip().splitlines()[-1])
    return site


def served(site, model=ALIAS):
    """The upstream worker's heartbeat lists the model (what pages and /v1 read for availability)."""
    status, body = http(site.url + "/readyz", headers={"Authorization": f"Bearer {TOKEN}"})
    if status is None:
        return False
    workers = json.loads(body)["checks"]["workers"].get("workers", [])
    return any(model in (w.get("models") or []) for w in workers)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, default_model_path):
    """llama_cpp.server on the bundled SmolLM2, named llama-a, serving it as ALIAS."""
    server = LlamaServer(tmp_path_factory.mktemp("llama-upstream"), default_model_path).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def site(request, tmp_path_factory, upstream):
    """start_site in front of ``upstream``, once its model is discovered; its log is
    test-artifacts/<module without test_>-site.log."""
    ARTIFACTS.mkdir(exist_ok=True)
    name = request.module.__name__.rpartition(".")[2].removeprefix("test_") + "-site"
    with live_database("upstream") as database_url:
        live = start_site(tmp_path_factory.mktemp(name), [upstream.config()], name, database_url)
        try:
            wait_for(lambda: served(live), 60, "the upstream's model to be discovered")
            yield live
        finally:
            live.stop()
