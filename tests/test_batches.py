"""Batches against a real served process (daphne, the embedded device worker in its child
process, the batch driver thread, its own SQLite file or, in the PostgreSQL run, a PostgreSQL database of
its own), with the official ``openai`` client's
files and batches methods; and ``manage.py batch run`` on its own database. Answers are kept
short; the slow echo model makes cancelling and killing the worker mid-batch deterministic."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import jsonschema
import openai
import pytest

from browser_support import ARTIFACTS, REPO
from live_stack import LiveServer, live_database

pytestmark = pytest.mark.model

SMOL = "smollm2-135m"
SLOW = "echo-slow"
SETUP = """
import json
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from api.models import ApiKey
from usage.models import UserQuota

out = {}
for name, limits in (("alice", {}), ("bob", {}), ("tight", {"tokens_per_day": 60}), ("dora", {})):
    user = get_user_model().objects.create_user(name, password="pw-123456789")
    if limits:
        UserQuota.objects.create(user=user, **limits)
    client = Client()
    client.force_login(user)
    out[name] = {"key": ApiKey.create_for(user, f"{name}'s key")[1],
                 "second_key": ApiKey.create_for(user, f"{name}'s second key")[1],
                 "session": client.cookies[settings.SESSION_COOKIE_NAME].value}
print(json.dumps(out))
"""
SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
          "additionalProperties": False}
TIMEOUT = 120


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_path):
    ARTIFACTS.mkdir(exist_ok=True)
    workdir = tmp_path_factory.mktemp("batches")
    models = {
        SMOL: {"path": default_model_path, "n_ctx": 2048, "threads": 2, "device": "cpu", "slots": 2},
        SLOW: {"path": default_model_path, "backend": "echo", "delay": 0.05, "device": "cpu"},
    }
    with live_database("batches") as database_url:
        live = LiveServer(workdir, models, ARTIFACTS / "batches-server.log", database_url=database_url, env={
            "SMOLSITE_BATCH_IN_FLIGHT": "4", "SMOLSITE_BATCH_TICK_SECONDS": "0.3", "SMOLSITE_BATCH_MAX_ACTIVE": "10"}
        ).start()
        try:
            out = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP], cwd=REPO, env=live.env,
                                 check=True, capture_output=True, text=True, timeout=120).stdout
            live.keys = json.loads(out.strip().splitlines()[-1])
            yield live
        finally:
            live.stop()


def client_for(server, who="alice"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.keys[who]["key"], max_retries=0, timeout=60)


def page(server, path, who="alice"):
    """(status, text) of a page with the user's session."""
    request = urllib.request.Request(server.url + path, headers={"Cookie": f"sessionid={server.keys[who]['session']}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def query(server, sql, *args):
    return server.query(sql, *args)


def request_line(custom_id, model=SMOL, text="Say hello.", **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], **body}}


def submit(client, lines):
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = client.files.create(file=("requests.jsonl", data), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes == len(data)
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
                                 metadata={"test": "yes"})


def wait_for(client, batch_id, done=lambda b: b.status in ("completed", "failed", "cancelled", "expired")):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} still {batch.status} {batch.request_counts} after {TIMEOUT} s")


def records(client, file_id):
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line.strip()]


def words(n, tag):
    return " ".join(f"{tag}{i}" for i in range(n))


def test_openai_client_files_and_batches_end_to_end(server):
    client = client_for(server)
    lines = [request_line("plain", max_tokens=8, temperature=0),
             request_line("system", max_tokens=8, messages=None) | {
                 "body": {"model": SMOL, "max_tokens": 8, "messages": [
                     {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}]}},
             request_line("schema", text="Give a number.", max_tokens=24, response_format={
                 "type": "json_schema", "json_schema": {"name": "n", "strict": True, "schema": SCHEMA}})]
    batch = submit(client, lines)
    assert batch.status == "in_progress" and batch.request_counts.total == 3 and batch.metadata == {"test": "yes"}
    batch = wait_for(client, batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts.completed == 3 and batch.request_counts.failed == 0 and batch.error_file_id is None
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    out = {r["custom_id"]: r for r in records(client, batch.output_file_id)}
    assert set(out) == {"plain", "system", "schema"}
    for record in out.values():
        assert record["error"] is None and record["response"]["status_code"] == 200
        body = record["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == SMOL
        assert body["choices"][0]["message"]["content"].strip()
        assert 0 < body["usage"]["completion_tokens"] <= 24
    answer = out["schema"]["response"]["body"]["choices"][0]
    if answer["finish_reason"] == "stop":
        jsonschema.validate(json.loads(answer["message"]["content"]), SCHEMA)
    # Rows: background priority, source batch, in the ledger as batch.
    ids = [int(r["response"]["body"]["id"].rsplit("-", 1)[1]) for r in out.values()]
    marks = ",".join("?" * len(ids))
    rows = query(server, f"SELECT m.options, c.source FROM chat_message m JOIN chat_conversation c "
                         f"ON c.id = m.conversation_id WHERE m.id IN ({marks})", *ids)
    # A JSON column: text from SQLite, already decoded from PostgreSQL.
    options = [json.loads(r["options"]) if isinstance(r["options"], str) else r["options"] for r in rows]
    assert all(o["priority"] == "background" for o in options) and all(r["source"] == "batch" for r in rows)
    ledger = query(server, f"SELECT source FROM usage_usagerecord WHERE message_id IN ({marks})", *ids)
    assert [r["source"] for r in ledger] == ["batch"] * 3
    # Listing, with the client's own paging.
    assert batch.id in [b.id for b in client.batches.list(limit=1)]
    assert client.files.retrieve(batch.output_file_id).filename.endswith("_output.jsonl")


def test_cancel_keeps_finished_lines(server):
    client = client_for(server)
    lines = [request_line(f"line-{i}", model=SLOW, text=words(30, f"w{i}-"), max_tokens=100) for i in range(12)]
    batch = submit(client, lines)
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 2)
    assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    batch = wait_for(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelling_at and batch.cancelled_at
    done = records(client, batch.output_file_id)
    assert 2 <= len(done) == batch.request_counts.completed < 12
    for record in done:
        i = record["custom_id"].split("-")[1]
        assert record["response"]["body"]["choices"][0]["message"]["content"] == words(30, f"w{i}-")
    stopped = records(client, batch.error_file_id)
    assert {r["custom_id"] for r in stopped} | {r["custom_id"] for r in done} == {f"line-{i}" for i in range(12)}
    assert {r["error"]["code"] for r in stopped} == {"batch_cancelled"}
    assert not query(server, "SELECT id FROM chat_message m WHERE status IN ('pending', 'streaming')")


def test_the_batches_page_shows_live_progress(server):
    client = client_for(server)
    batch = submit(client, [request_line(f"p{i}", model=SLOW, text=words(20, f"p{i}-"), max_tokens=100)
                            for i in range(6)])
    status, running = page(server, "/batches/list/")
    assert status == 200 and 'hx-trigger="every 2s"' in running and "<progress" in running and batch.id in running
    assert "tokens/s" in running or "0 done of 6" in running
    wait_for(client, batch.id)
    status, finished = page(server, "/batches/list/")
    assert "hx-trigger" not in finished and "6 done of 6" in finished and "Results" in finished
    assert "p0-0 p0-1" in finished  # the first results' preview
    status, output = page(server, f"/batches/{batch.id}/output/")
    assert status == 200 and len(output.splitlines()) == 6
    assert page(server, f"/batches/{batch.id}/output/", "bob")[0] == 404
    assert batch.id not in page(server, "/batches/", "bob")[1]


def test_another_user_cannot_see_or_download(server):
    batch = submit(client_for(server), [request_line("mine", model=SLOW, text="secret words")])
    batch = wait_for(client_for(server), batch.id)
    bob = client_for(server, "bob")
    for call in (lambda: bob.batches.retrieve(batch.id), lambda: bob.batches.cancel(batch.id),
                 lambda: bob.files.retrieve(batch.input_file_id), lambda: bob.files.content(batch.output_file_id),
                 lambda: bob.files.delete(batch.input_file_id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in [b.id for b in bob.batches.list()]
    with pytest.raises(openai.NotFoundError):
        bob.batches.create(input_file_id=batch.input_file_id, endpoint="/v1/chat/completions",
                           completion_window="24h")
    assert "secret words" in client_for(server).files.content(batch.output_file_id).text


def test_validation_failure_runs_nothing(server):
    client = client_for(server)
    before = query(server, "SELECT count(*) AS n FROM chat_message")[0]["n"]
    batch = submit(client, [request_line("a", model=SLOW), request_line("a", model=SLOW),
                            request_line("b", model="no-such-model")])
    assert batch.status == "failed"
    assert {(e.line, e.code) for e in batch.errors.data} == {(2, "duplicate_custom_id"), (3, "model_not_found")}
    assert query(server, "SELECT count(*) AS n FROM chat_message")[0]["n"] == before


def test_token_quota_fails_the_line_with_its_message(server):
    client = client_for(server, "tight")
    batch = wait_for(client, submit(client, [request_line("first", model=SLOW, text="one two", max_tokens=30),
                                             request_line("second", model=SLOW, text="three", max_tokens=50)]).id)
    assert batch.status == "completed" and batch.request_counts.completed == 1 and batch.request_counts.failed == 1
    failed = records(client, batch.error_file_id)
    assert failed[0]["custom_id"] == "second" and failed[0]["error"]["code"] == "insufficient_quota"
    assert "Token quota reached" in failed[0]["error"]["message"]


def test_a_key_revoked_mid_batch_stops_the_batch_at_the_next_line(server):
    client = client_for(server, "dora")
    lines = [request_line(f"v{i}", model=SLOW, text=words(30, f"v{i}-"), max_tokens=100) for i in range(12)]
    batch = submit(client, lines)
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 1)
    server.execute("UPDATE api_apikey SET revoked_at = CURRENT_TIMESTAMP WHERE name = ?", "dora's key")
    other = openai.OpenAI(base_url=server.url + "/v1", api_key=server.keys["dora"]["second_key"], max_retries=0,
                          timeout=60)
    batch = wait_for(other, batch.id)
    assert batch.status == "cancelled", batch
    assert batch.errors.data[0].code == "api_key_revoked" and "revoked" in batch.errors.data[0].message
    assert 1 <= batch.request_counts.completed < 12
    cut = records(other, batch.error_file_id)
    assert cut and all(r["error"]["code"] in ("api_key_revoked", "batch_cancelled") for r in cut)
    # Nothing of it runs on, and what was stopped kept its text.
    assert not query(server, "SELECT id FROM chat_message WHERE status IN ('pending', 'streaming')")
    stopped = query(server, "SELECT content FROM chat_message WHERE status = 'stopped' AND content LIKE ?", "v%")
    assert all(row["content"] for row in stopped)


def test_worker_killed_mid_batch_answers_each_line_once(server):
    client = client_for(server)
    lines = [request_line(f"k{i}", model=SLOW, text=words(40, f"k{i}-"), max_tokens=100) for i in range(8)]
    batch = submit(client, lines)
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 1)
    pid = server.worker_pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    batch = wait_for(client, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 8, batch
    out = records(client, batch.output_file_id)
    assert sorted(r["custom_id"] for r in out) == sorted(f"k{i}" for i in range(8))
    for record in out:
        i = record["custom_id"][1:]
        assert record["response"]["body"]["choices"][0]["message"]["content"] == words(40, f"k{i}-")
    attempts = query(server, "SELECT attempts FROM batches_batchline WHERE batch_id = ?", batch.id)
    assert max(r["attempts"] for r in attempts) == 2  # the cut lines ran again, once


def test_chat_jumps_ahead_of_a_batch_that_fills_the_slots(server):
    """The priority proof: with the model's 2 slots running batch lines and 2 more waiting in the
    engine, a chat's first token comes before the waiting lines' (background yields to
    interactive). Times to first token are printed as a report, not asserted (a shared 2-core
    machine makes absolute times noisy)."""
    client = client_for(server)

    def chat(text):
        answer = client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": text}],
                                                max_tokens=4, temperature=0)
        return query(server, "SELECT ttft FROM chat_message WHERE id = ?", int(answer.id.rsplit("-", 1)[1]))[0]["ttft"]

    chat("Say hi to Ann.")  # warm
    idle = chat("Say hi to Cy.")
    batch = submit(client, [request_line(f"bg{i}", text=f"Write a long story about cat number {i}.", max_tokens=32,
                                         temperature=0) for i in range(4)])
    wait_for(client, batch.id, lambda b: b.status != "in_progress" or query(
        server, "SELECT count(*) AS n FROM chat_message WHERE status = 'streaming'")[0]["n"] >= 4)
    busy = chat("Say hi to Bob.")
    assert wait_for(client, batch.id).status == "completed"
    background = [r["ttft"] for r in query(
        server, "SELECT m.ttft FROM chat_message m JOIN chat_conversation c ON c.id = m.conversation_id "
                "JOIN batches_batchline l ON l.batch_id = ? AND l.conversation_id = c.id "
                "WHERE m.role = 'assistant' AND m.ttft IS NOT NULL", batch.id)]
    print(f"\nchat time to first token: idle {idle * 1000:.0f} ms, with a batch filling the slots "
          f"{busy * 1000:.0f} ms ({busy / idle:.1f}x); batch lines' times to first token "
          f"{', '.join(f'{t * 1000:.0f}' for t in sorted(background))} ms")
    assert len(background) == 4 and busy < max(background)


def test_a_server_restart_mid_batch_loses_nothing(server):
    """Last of the module's server tests: the web process (and its worker) stops mid-batch; the
    restarted one's driver goes on, re-running only what was cut."""
    client = client_for(server)
    lines = [request_line(f"r{i}", model=SLOW, text=words(30, f"r{i}-"), max_tokens=100) for i in range(8)]
    batch = submit(client, lines)
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 2)
    server.stop()
    server.start()
    batch = wait_for(client, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 8, batch
    out = records(client, batch.output_file_id)
    assert sorted(r["custom_id"] for r in out) == sorted(f"r{i}" for i in range(8))
    assert all(r["response"]["body"]["choices"][0]["message"]["content"] == words(30, r["custom_id"] + "-")
               for r in out)


# The command line drives batches with the same service code the served driver runs (which the
# PostgreSQL run covers above); its own SQLite file keeps it to the SQLite run.
@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="the command line's own database is SQLite")
def test_command_line_runs_a_file_and_ctrl_c_cancels(tmp_path, default_model_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"SQLITE_PATH": str(tmp_path / "db.sqlite3"), "SMOLSITE_VAR_DIR": str(tmp_path),
                "SMOLSITE_BLOCKED_PLUGINS": "hello", "SMOLSITE_EMBEDDED_WORKER": "0",
                "SMOLSITE_MODELS": json.dumps({
                    SMOL: {"path": default_model_path, "n_ctx": 2048, "threads": 2, "device": "cpu"},
                    SLOW: {"path": default_model_path, "backend": "echo", "delay": 0.05, "device": "cpu"}}),
                "SMOLSITE_BATCH_IN_FLIGHT": "2"})
    manage = [sys.executable, "manage.py"]
    subprocess.run(manage + ["migrate", "-v0"], cwd=REPO, env=env, check=True, timeout=120)
    subprocess.run(manage + ["shell", "-c", "from django.contrib.auth import get_user_model as g; "
                                            "g().objects.create_user('carol', password='pw-123456789')"],
                   cwd=REPO, env=env, check=True, timeout=60, capture_output=True)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(request_line(f"c{i}", model="whatever", max_tokens=6)) + "\n"
                              for i in range(3)))
    out = tmp_path / "out.jsonl"
    done = subprocess.run(manage + ["batch", "run", str(source), "--user", "carol", "--model", SMOL, "--out", str(out)],
                          cwd=REPO, env=env, timeout=180, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "completed, 3 completed, 0 failed of 3" in done.stderr and "line" in done.stderr  # tqdm's bar
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["custom_id"] for r in results] == ["c0", "c1", "c2"]
    assert all(r["response"]["body"]["choices"][0]["message"]["content"] for r in results)
    # Ctrl-C: running lines stop, finished ones are kept in OUT.
    slow = tmp_path / "slow.jsonl"
    slow.write_text("".join(json.dumps(request_line(f"s{i}", model=SLOW, text=words(30, "x"), max_tokens=100)) + "\n"
                            for i in range(8)))
    out = tmp_path / "slow-out.jsonl"
    proc = subprocess.Popen(manage + ["batch", "run", str(slow), "--user", "carol", "--out", str(out), "--no-progress"],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    with sqlite3.connect(tmp_path / "db.sqlite3", timeout=20) as db:
        while db.execute("SELECT count(*) FROM batches_batchline WHERE status = 'done' AND custom_id LIKE 's%'"
                         ).fetchone()[0] < 2:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert 2 <= len(kept) < 8 and all(r["response"]["body"]["choices"][0]["message"]["content"] == words(30, "x")
                                      for r in kept)
    assert "cancelled" in err
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        assert not db.execute("SELECT count(*) FROM chat_message WHERE status IN ('pending', 'streaming')").fetchone()[0]
