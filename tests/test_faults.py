"""Faults against real processes: daphne, device workers (a Celery worker over Redis, or the
embedded worker child), Redis and PostgreSQL. Each fault happens mid-answer where it can; the
checks are what a user would notice: the answer ends visibly (or finishes), its saved text is kept,
open or reconnecting tabs are told, and the site recovers without a manual step.

The scaled-out tests (``redis``) run a private redis-server on a free port, so that restarting it
touches nothing else; their database is a private database on the PostgreSQL server of
DATABASE_URL when that is set (the PostgreSQL run), else a SQLite file. The PostgreSQL-outage test
runs a private PostgreSQL cluster (initdb as the postgres user) that it stops and starts.

Every wait is for a condition; the deadlines only bound a hang on a busy machine."""
import asyncio
import json
import os
import signal
import uuid

import pytest
from websockets.exceptions import ConnectionClosed

from live_stack import (MODEL, PrivatePostgres, PrivateRedis, Stack, assembled_text, http, open_socket,
                        saved_partial_text, send, until_final, wait_for)

pytestmark = pytest.mark.faults

DEADLINE = 240  # one answer, or a reaped one, on two possibly busy cores (bounds a hang only)
STORY = "Tell me a long story about a dragon who learns to bake bread, with many chapters."


def pg_server_url():
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith(("postgres://", "postgresql://")) else ""


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory):
    redis = PrivateRedis(tmp_path_factory.mktemp("redis")).start()
    yield redis
    redis.stop()


@pytest.fixture(scope="module")
def scaled_database():
    """A database of the module's own: on DATABASE_URL's PostgreSQL server when set, else SQLite."""
    server = pg_server_url()
    if not server:
        yield None
        return
    import psycopg

    base, _, _ = server.rpartition("/")
    name = f"smolsite_faults_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    yield f"{base}/{name}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def scaled(tmp_path_factory, private_redis, scaled_database, default_model_path):
    """daphne + one Celery device worker over the private Redis. Tests that kill a process leave
    it for ``scaled_up`` to bring back."""
    stack = Stack(tmp_path_factory.mktemp("scaled"), default_model_path, database_url=scaled_database,
                  redis_url=private_redis.url(0)).start()
    yield stack
    stack.stop()


@pytest.fixture
def scaled_up(scaled, private_redis):
    if not private_redis.ping():
        private_redis.start()
    if scaled.worker.poll() is not None:
        scaled.start_worker()
    if scaled.web.poll() is not None:
        scaled.start_web(ready=False)
    scaled.wait_ready()
    # The stack outlives each test: a test reads only what its processes logged while it ran (a Redis
    # restart in an earlier test logs channels_redis' reconnect traceback, say).
    scaled.log_marks = {name: len(scaled.log(name)) for name in ("web", "worker")}
    return scaled


def no_tracebacks(stack, *names):
    for name in names:
        text = stack.log(name)[getattr(stack, "log_marks", {}).get(name, 0):]
        assert "Traceback" not in text, text[-4000:]


# ---- a device worker killed mid-stream ----------------------------------------------------------------

@pytest.mark.redis
@pytest.mark.model
def test_celery_worker_killed_mid_stream_ends_interrupted_and_retry_answers(scaled_up):
    """Scaled out (the embedded child's SIGKILL is tests/test_worker_process.py): the web process's
    reaper ends the answer once the worker's heartbeat expires; the open tab is told; Retry on a
    new worker answers."""
    stack = scaled_up
    person = stack.make_person("killed-worker", max_tokens=2000)

    async def scenario():
        async with open_socket(stack, person) as ws:
            async with asyncio.timeout(DEADLINE):
                reply = await send(ws, STORY)
                partial = await saved_partial_text(stack, reply)
                assert (await asyncio.to_thread(stack.kill_worker)) == -signal.SIGKILL
                frames = await until_final(ws, reply)
            row = stack.message(reply)
            assert row["status"] == "interrupted", row
            assert row["content"].startswith(partial) and "worker stopped" in row["error"], row
            # The tab is told how it ended: by the reaper's done event, or (when that was numbered
            # behind what the tab had streamed, or the tab's own check found the end first) by a
            # snapshot of the saved answer; then the final frame.
            told = []  # statuses in the order the tab received them
            for f in frames:
                if f["type"] == "snapshot":
                    told.append(f["status"])
                elif f["type"] == "events":
                    told += [e["status"] for e in f["events"] if e["kind"] == "done"]
            assert told and told[-1] == "interrupted", frames[-3:]
            assert frames[-1]["type"] == "final", frames[-3:]
            assert not [f for f in frames if f["type"] == "error"], frames

            # Retry (a new answer beside the interrupted one) on a worker started after the crash.
            stack.execute("UPDATE chat_conversation SET max_tokens = 8 WHERE id = %s", (person["conversation"],))
            await asyncio.to_thread(stack.start_worker)
            async with asyncio.timeout(DEADLINE):
                again = await send(ws, None, action="regenerate", message=reply)
                await until_final(ws, again)
        retried = stack.message(again)
        assert retried["status"] == "done" and retried["content"].strip(), retried
        assert retried["parent_id"] == row["parent_id"]  # the same question answered again
        assert retried["worker_id"].endswith(f":{stack.worker.pid}")
        assert stack.message(reply)["status"] == "interrupted"  # the old branch stays as it ended

    asyncio.run(scenario())
    no_tracebacks(stack, "web")


# ---- Redis restarted mid-stream -----------------------------------------------------------------------

async def final_row(stack, person, reply):
    """The answer's final frame, read on a tab that reconnects whenever its socket closes; returns
    every frame the tabs received."""
    frames = []
    while True:
        try:
            async with open_socket(stack, person) as ws:
                await ws.send(json.dumps({"action": "resume", "message": reply}))
                frames += await until_final(ws, reply)
                return frames
        except (ConnectionClosed, OSError):
            await asyncio.sleep(0.5)  # the web process is coming back


@pytest.mark.redis
@pytest.mark.model
def test_redis_restarted_mid_stream_loses_no_message(scaled_up, private_redis):
    """Redis (broker, channel layer, cache) restarts empty while a worker streams: the answer
    finishes or ends visibly, with its text saved, the tab that was open hears the end (itself or
    after reconnecting), and the next message is answered without anyone restarting anything."""
    stack = scaled_up
    person = stack.make_person("redis-restart", max_tokens=600)

    async def scenario():
        async with asyncio.timeout(DEADLINE):
            async with open_socket(stack, person) as ws:
                reply = await send(ws, STORY)
                await saved_partial_text(stack, reply)
                await asyncio.to_thread(private_redis.restart)
                try:
                    frames = await until_final(ws, reply)
                except ConnectionClosed:  # the web process dropped the tab with its layer: it reconnects
                    frames = await final_row(stack, person, reply)
            row = stack.message(reply)
            assert row["status"] in ("done", "interrupted"), row
            assert row["content"].strip()
            assert row["finished_at"] is not None
            # The final frame carries the saved answer as the page shows it.
            assert frames[-1]["type"] == "final"
            # The question is there, once, and the answer is its only reply.
            assert len(stack.query("SELECT id FROM chat_message WHERE parent_id = %s", (row["parent_id"],))) == 1
            assert stack.message(row["parent_id"])["content"] == STORY

            # Recovery without a manual step: the worker and the web process find Redis again.
            stack.execute("UPDATE chat_conversation SET max_tokens = 8 WHERE id = %s", (person["conversation"],))
            await asyncio.to_thread(stack.wait_ready)
            async with open_socket(stack, person) as ws:
                again = await send(ws, "Say hello.")
                await until_final(ws, again)
        assert stack.message(again)["status"] == "done"

    asyncio.run(scenario())


# ---- the web process restarted mid-generation ---------------------------------------------------------

@pytest.mark.redis
@pytest.mark.model
def test_web_process_restarted_mid_generation_the_answer_finishes(scaled_up):
    """Scaled out, the answer runs on the device worker: killing the web process mid-answer does not
    stop it. It finishes and is saved, and a tab reconnecting to the restarted web process gets the
    whole answer with no gap and no duplicate."""
    stack = scaled_up
    person = stack.make_person("web-restart", max_tokens=600)

    async def scenario():
        async with asyncio.timeout(DEADLINE):
            ws = await open_socket(stack, person)
            reply = await send(ws, STORY)
            await saved_partial_text(stack, reply)
            await asyncio.to_thread(stack.kill_web)
            assert stack.message(reply)["status"] == "streaming"  # killed mid-generation
            with pytest.raises(ConnectionClosed):  # after the frames already on their way
                while True:
                    await ws.recv()
            await asyncio.to_thread(stack.start_web, False)
            frames = await final_row(stack, person, reply)
        return reply, frames

    reply, frames = asyncio.run(scenario())
    row = stack.message(reply)
    assert row["status"] == "done", row
    assert row["completion_tokens"] > 0 and row["content"].strip()
    assert assembled_text(frames, reply) == row["content"]
    assert row["worker_id"].endswith(f":{stack.worker.pid}")  # the one worker, never restarted
    no_tracebacks(stack, "web", "worker")


# ---- a model file missing or corrupt at worker start ---------------------------------------------------

def bad_model(tmp_path, kind):
    """A model path that cannot load: no file, or a file that is not a GGUF model."""
    path = tmp_path / f"{kind}.gguf"
    if kind == "corrupt":
        path.write_bytes(b"GGUF" + os.urandom(4096))
    return path


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["corrupt"])  # a missing file: tests/test_redis.py (d)
def test_celery_worker_refuses_a_corrupt_model(tmp_path, private_redis, kind):
    path = bad_model(tmp_path, kind)
    stack = Stack(tmp_path, str(path), redis_url=private_redis.url(1))
    stack.migrate()
    worker = stack.start_worker()
    try:
        code = worker.wait(180)
    finally:
        stack.stop()
    log = stack.log("worker")
    assert code == 3, log[-3000:]
    assert f"smolsite: device worker 'cpu' cannot load its models: model '{MODEL}': " in log, log[-3000:]
    assert str(path) in log


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_embedded_worker_without_its_model_says_so_everywhere(tmp_path, kind):
    """The site starts, but its worker holds no model: the log says why, /readyz is 503 (staff see
    why), the chat page says the model is unavailable and a message sent anyway ends with an error
    naming the problem instead of waiting forever."""
    path = bad_model(tmp_path, kind)
    stack = Stack(tmp_path, str(path)).start(ready=False)
    try:
        wait_for(lambda: "cannot load its models" in stack.log("web"), 180, "the worker to report its models")
        log = stack.log("web")
        assert f"model '{MODEL}'" in log and str(path) in log, log[-3000:]

        status, _ = http(stack.url + "/readyz")
        assert status == 503
        staff = stack.make_person("admin-of-broken", staff=True)
        cookie = {"Cookie": f"sessionid={staff['session']}"}
        status, body = http(stack.url + "/readyz", headers=cookie)
        assert status == 503
        workers = json.loads(body)["checks"]["workers"]
        assert not workers["ok"], workers
        assert str(path) in json.dumps(workers), workers  # why: the worker's load error

        status, page = http(f"{stack.url}/c/{staff['conversation']}/", headers=cookie)
        assert status == 200
        assert f"{MODEL} is unavailable" in page, page

        async def ask():
            async with open_socket(stack, staff) as ws:
                async with asyncio.timeout(DEADLINE):
                    reply = await send(ws, "Hello?")
                    await until_final(ws, reply)
            return reply

        row = stack.message(asyncio.run(ask()))
        assert row["status"] == "error", row
        assert f"model '{MODEL}' could not be loaded" in row["error"] and str(path) in row["error"], row
        assert "Traceback" not in stack.log("web")
    finally:
        stack.stop()


# ---- PostgreSQL unavailable for a few seconds ----------------------------------------------------------

@pytest.fixture
def private_postgres():
    try:
        pg = PrivatePostgres().init().start()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"no private PostgreSQL cluster: {exc}")
    yield pg
    pg.destroy()


@pytest.mark.model
@pytest.mark.skipif(not pg_server_url(), reason="PostgreSQL faults run in the PostgreSQL run (DATABASE_URL)")
def test_postgres_unavailable_for_a_few_seconds(tmp_path, private_postgres, default_model_path):
    """The database stops mid-answer and comes back: requests meanwhile get clear errors (503, an
    error frame; no 500, no socket closed with 1011), nothing half-written is left, the answer that
    was streaming is saved whole, and everything works again without a manual step."""
    pg = private_postgres
    stack = Stack(tmp_path, default_model_path, database_url=pg.create_database()).start()
    try:
        person = stack.make_person("outage", max_tokens=600)
        cookie = {"Cookie": f"sessionid={person['session']}"}

        async def scenario():
            async with asyncio.timeout(DEADLINE):
                async with open_socket(stack, person) as ws:
                    reply = await send(ws, STORY)
                    await saved_partial_text(stack, reply)
                    await asyncio.to_thread(pg.stop)

                    # Meanwhile: clear errors.
                    status, body = await asyncio.to_thread(http, stack.url + "/readyz")
                    assert status == 503 and "database" in body, body
                    status, page = await asyncio.to_thread(http, f"{stack.url}/c/{person['conversation']}/",
                                                           cookie)
                    assert status == 503 and "database is unavailable" in page.lower(), (status, page[:2000])
                    await ws.send(json.dumps({"action": "send", "content": "Are you there?"}))
                    while (frame := json.loads(await ws.recv()))["type"] != "error":
                        pass
                    assert "database" in frame["error"].lower(), frame

                    await asyncio.to_thread(pg.start)
                    # Back without a manual step; the answer that streamed through it ends saved.
                    await asyncio.to_thread(stack.wait_ready)
                    while (row := await asyncio.to_thread(stack.message, reply))["status"] in ("pending", "streaming"):
                        await asyncio.sleep(0.2)
                    # The socket that got the error is still open and works.
                    again = await send(ws, "Say hello.")
                    await until_final(ws, again)
            return row, again

        row, again = asyncio.run(scenario())
        assert row["status"] == "done", row
        assert row["completion_tokens"] > 0 and row["content"].strip()
        assert stack.message(again)["status"] == "done"
        # Nothing half-written: the refused send left no question without an answer.
        questions = stack.query("SELECT content FROM chat_message WHERE role = 'user' AND conversation_id = %s "
                                "ORDER BY id", (person["conversation"],))
        assert [q["content"] for q in questions] == [STORY, "Say hello."]
        assert not stack.query("SELECT id FROM chat_message WHERE status IN ('pending', 'streaming')")
        log = stack.log("web")
        assert "Internal Server Error" not in log, log[-4000:]
    finally:
        stack.stop()
