"""Metrics of a served site in the default embedded mode: its device worker is a child process
(inference.worker_process) that counts into the host's multiprocess directory. Counts survive the
child being killed and replaced, a killed child's in-progress gauge goes away, and the staff
dashboard draws its charts in a real browser (screenshot in test-artifacts/). On SQLite, and in the
PostgreSQL run on a PostgreSQL database of its own."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from types import SimpleNamespace

import pytest

from browser_support import ARTIFACTS, REPO, launch
from live_stack import LiveServer, live_database
from test_metrics import counts, delta, expected_from_rows, parse
from test_worker_process import (DEADLINE, STORY, open_socket, saved_partial_text, send, set_max_tokens,
                                 until_final)

pytestmark = pytest.mark.model

TOKEN = "served-metrics-token"
LABELS = {"model": "smollm2-135m", "device": "cpu", "source": "chat"}

SETUP = """
import json
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from chat.models import Conversation

user = get_user_model().objects.create_user({name!r}, password="pw-123456789", is_staff={staff!r})
conv = Conversation.objects.create(owner=user, model="smollm2-135m", temperature=0.0, max_tokens=12)
client = Client()
client.force_login(user)
print(json.dumps({{"conversation": conv.pk, "session": client.cookies[settings.SESSION_COOKIE_NAME].value}}))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_path):
    ARTIFACTS.mkdir(exist_ok=True)
    workdir = tmp_path_factory.mktemp("metrics-served")
    models = {"smollm2-135m": {"path": default_model_path, "n_ctx": 4096, "threads": 2, "device": "cpu"}}
    with live_database("metrics") as database_url:
        live = LiveServer(workdir, models, ARTIFACTS / "metrics-server.log", database_url=database_url,
                          env={"SMOLSITE_WORKER_MODE": "process", "SMOLSITE_METRICS_TOKEN": TOKEN,
                               "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus")}).start()
        try:
            yield live
        finally:
            live.stop()


def make_person(server, name, staff=False):
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP.format(name=name, staff=staff)],
                         cwd=REPO, env=server.env, check=True, capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def scrape(server):
    request = urllib.request.Request(server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return counts(parse(response.read().decode())[0], **LABELS)


def row(server, message_id):
    return SimpleNamespace(**server.message(message_id))


async def short_answer(ws, server, content):
    reply = await send(ws, content)
    await until_final(ws, reply)
    return row(server, reply)


def test_counts_survive_a_killed_worker_process(server):
    person = make_person(server, "counted")
    before = scrape(server)

    async def scenario():
        async with open_socket(server, person) as ws:
            async with asyncio.timeout(DEADLINE * 3):
                done = [await short_answer(ws, server, "Name a colour."),
                        await short_answer(ws, server, "Name a fruit.")]
                assert [r.status for r in done] == ["done", "done"], [r.error for r in done]
                assert delta(await asyncio.to_thread(scrape, server), before) == expected_from_rows(done)

                # Killed mid-answer: its start (and queue wait) was counted, its end never happens, and once it is
                # gone its in-progress share is dropped at the next scrape.
                set_max_tokens(server, person["conversation"], 2000)
                killed = await send(ws, STORY)
                await saved_partial_text(server, killed)
                assert (await asyncio.to_thread(scrape, server))["in_progress"] - before["in_progress"] == 1
                pid = server.worker_pid()
                os.kill(pid, signal.SIGKILL)
                await until_final(ws, killed)
                assert row(server, killed).status == "interrupted"
                after_kill = delta(await asyncio.to_thread(scrape, server), before)
                assert after_kill == {**expected_from_rows(done), "started": 3, "queue": 3}

                # The replacement process adds to what the dead one counted.
                set_max_tokens(server, person["conversation"], 12)
                done.append(await short_answer(ws, server, "Name a city."))
                assert done[-1].status == "done", done[-1].error
                assert server.worker_pid() not in (None, pid)
                assert delta(await asyncio.to_thread(scrape, server), before) == \
                    {**expected_from_rows(done), "started": 4, "queue": 4}

    asyncio.run(scenario())


@pytest.mark.browser
def test_dashboard_draws_its_charts_in_a_browser(server):
    from playwright.sync_api import sync_playwright

    staff = make_person(server, "operator", staff=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            context.add_cookies([{"name": "sessionid", "value": staff["session"], "url": server.url}])
            page = context.new_page()
            page.set_default_timeout(DEADLINE * 1000)
            problems = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.goto(server.url + "/metrics/dashboard/?days=7")
            page.wait_for_selector('#metrics-dashboard[data-ready="1"]')
            drawn = page.evaluate("""() => ["chart-tps", "chart-ttft", "chart-messages", "chart-errors",
                "chart-queue", "chart-users"].map((id) => {
                    const chart = Chart.getChart(id);
                    return chart ? chart.data.datasets.reduce((n, d) => n + d.data.filter((v) => v !== null).length, 0) : -1;
                })""")
            # The other test's answers are in the database: every chart has points.
            assert all(n > 0 for n in drawn), drawn
            users = page.locator("#top-users tbody tr")
            assert users.count() >= 1 and "counted" in users.first.inner_text()
            page.screenshot(path=ARTIFACTS / "metrics-dashboard.png", full_page=True)
            assert not problems, problems  # no script error, no CSP violation
        finally:
            browser.close()
