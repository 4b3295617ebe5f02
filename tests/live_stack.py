"""Real served stacks for fault and load tests: daphne (restartable), an embedded device worker or a
Celery one over Redis, on SQLite or PostgreSQL, plus private Redis and PostgreSQL servers that a test
may stop and start without touching the machine's own. And the websocket client helpers that
tests/test_worker_process.py, tests/test_concurrent_users.py and tests/test_faults.py share.

Nothing here waits for a time: every wait polls a condition under a deadline that only bounds a
hang."""
import asyncio
import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from websockets.asyncio.client import connect

import browser_support
from browser_support import REPO, free_port

MODEL = "smollm2-135m"
READY_SECONDS = 240  # loading the model on a busy 2-core machine
CELERY = str(Path(sys.executable).with_name("celery"))
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


def wait_for(predicate, timeout, what, interval=0.2):
    """Poll ``predicate`` until it returns something truthy; fail saying ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(interval)


def foreign_plugins():
    """Entry-point plugins of other distributions (the suite installs one that rewrites system
    prompts): blocked in served processes, as a user would not have them."""
    return sorted({ep.name for dist in importlib.metadata.distributions() for ep in dist.entry_points
                   if ep.group == "smolsite" and dist.metadata["Name"] != "smolsite"})


def http(url, headers=None, timeout=10):
    """(status, body) of a GET, whatever the status; (None, error text) when nothing answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return None, str(exc)


# ---- private servers --------------------------------------------------------------------------------

class PrivateRedis:
    """A redis-server of the test's own on a free port, without persistence: a restart loses
    everything, as a crashed Redis without a dump does."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.proc = None

    def url(self, db=0):
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=open(self.workdir / "redis.log", "ab"), stderr=subprocess.STDOUT)
        wait_for(self.ping, 30, f"redis-server on port {self.port}")
        return self

    def ping(self):
        import redis

        try:
            return redis.Redis(port=self.port, socket_timeout=1).ping()
        except redis.RedisError:
            return False

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def restart(self):
        self.stop()
        return self.start()


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb into a temporary directory as the postgres
    user, served on another port), so a test can stop and start it; the machine's server is never
    touched."""

    def __init__(self):
        if PG_BIN is None or os.geteuid() != 0:
            raise RuntimeError("needs PostgreSQL's server binaries and root (to run them as postgres)")
        self.dir = Path(tempfile.mkdtemp(prefix="smolsite-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()

    def _as_postgres(self, *argv, timeout=120):
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True,
                              text=True, timeout=timeout)

    def url(self, name="smolsite"):
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def init(self):
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                          "--no-sync", "-E", "UTF8")
        return self

    def start(self):
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w",
                          "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off", "start")
        return self

    def stop(self):
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_database(self, name="smolsite"):
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self):
        try:
            self.stop()
        except subprocess.SubprocessError:
            pass  # not running
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- a served stack ------------------------------------------------------------------------------

class Stack:
    """daphne serving smolsite on loopback. Embedded (no ``redis_url``): its own device worker child.
    Scaled (``redis_url``): plus one Celery device worker. The database is a SQLite file in
    ``workdir`` unless ``database_url`` names a PostgreSQL database."""

    def __init__(self, workdir, model_path, *, database_url=None, redis_url=None, models=None, n_ctx=4096,
                 env=None, worker_env=None):
        self.workdir = Path(workdir)
        self.database_url, self.redis_url = database_url, redis_url
        self.db_path = self.workdir / "db.sqlite3"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.web = self.worker = None
        self.web_starts = self.worker_starts = 0
        models = models or {MODEL: {"path": model_path, "n_ctx": n_ctx, "threads": 2, "device": "cpu"}}
        self.env = {k: v for k, v in os.environ.items()
                    if k not in {"DATABASE_URL", "REDIS_URL", "SQLITE_PATH", "SMOLSITE_MODELS",
                                 "SMOLSITE_DEFAULT_MODEL", "SMOLSITE_WORKER_MODE", "SMOLSITE_EMBEDDED_WORKER"}}
        self.env.update(DJANGO_SETTINGS_MODULE="smolsite.settings", SMOLSITE_VAR_DIR=str(self.workdir),
                        SMOLSITE_SIGNUP_OPEN="1", SMOLSITE_MODELS=json.dumps(models), PYTHONUNBUFFERED="1",
                        SMOLSITE_BLOCKED_PLUGINS=",".join(foreign_plugins()),
                        SMOLSITE_EMBEDDED_WORKER="0" if redis_url else "1")
        if database_url:
            self.env["DATABASE_URL"] = database_url
        else:
            self.env["SQLITE_PATH"] = str(self.db_path)
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.env.update(env or {})
        self.worker_env = dict(self.env, SMOLSITE_DEVICE="cpu", **(worker_env or {}))

    @property
    def scaled(self):
        return bool(self.redis_url)

    def log(self, name):
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def _spawn(self, name, argv, env):
        out = open(self.workdir / f"{name}.log", "ab")
        try:
            return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        finally:
            out.close()

    def migrate(self):
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=REPO, env=self.env,
                       check=True, timeout=300)
        return self

    def start(self, ready=True):
        self.migrate()
        if self.scaled:
            self.start_worker()
        self.start_web(ready=ready)
        return self

    # -- the web process
    def start_web(self, ready=True):
        self.web_starts += 1
        self.web = self._spawn("web", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                                       "smolsite.asgi:application"], self.env)
        if ready:
            self.wait_ready()
        else:
            self.wait_serving()
        return self

    def wait_serving(self):
        """Until the web process answers /healthz."""
        def up():
            assert self.web.poll() is None, f"the web process exited with {self.web.returncode}:\n{self.log('web')[-3000:]}"
            return http(self.url + "/healthz", timeout=5)[0] == 200
        wait_for(up, READY_SECONDS, "the web process to answer /healthz")

    def wait_ready(self):
        """Until /readyz says ready: database, channel layer and a worker holding the model."""
        def ready():
            for name, proc in (("web", self.web), ("worker", self.worker)):
                assert proc is None or proc.poll() is None, \
                    f"the {name} process exited with {proc.returncode}:\n{self.log(name)[-3000:]}"
            return http(self.url + "/readyz", timeout=5)[0] == 200
        wait_for(ready, READY_SECONDS, "/readyz to say ready")

    def kill_web(self, sig=signal.SIGKILL):
        self.web.send_signal(sig)
        self.web.wait(60)

    # -- the Celery device worker (scaled)
    def start_worker(self):
        self.worker_starts += 1
        self.worker = self._spawn(
            "worker", [CELERY, "-A", "smolsite", "worker", "-Q", "device.cpu", "--pool", "threads", "--concurrency",
                       "8", "-n", f"faults{self.worker_starts}@%h", "--loglevel", "INFO", "--without-gossip",
                       "--without-mingle"], self.worker_env)
        return self.worker

    def kill_worker(self, sig=signal.SIGKILL):
        self.worker.send_signal(sig)
        return self.worker.wait(60)

    def worker_pid(self):
        """The device worker's pid: the Celery worker, or the embedded worker child (its pid file)."""
        if self.scaled:
            return self.worker.pid if self.worker and self.worker.poll() is None else None
        try:
            return int((self.workdir / "worker-cpu.pid").read_text())
        except (OSError, ValueError):
            return None

    def stop(self):
        for proc in (self.web, self.worker):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    # -- the database, read as the test sees it
    def manage(self, code, timeout=120):
        out = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, env=self.env, check=True,
                             capture_output=True, text=True, timeout=timeout).stdout
        return json.loads(out.strip().splitlines()[-1])

    def make_people(self, names, max_tokens=64, staff=False, **conversation):
        """Accounts, one chat each and logged-in sessions, made in the site's own database."""
        fields = {"model": MODEL, "temperature": 0.0, "max_tokens": max_tokens, "thinking": False, **conversation}
        return self.manage(PEOPLE.format(names=list(names), fields=fields, staff=staff))

    def make_person(self, name, max_tokens=64, staff=False, **conversation):
        return self.make_people([name], max_tokens, staff, **conversation)[0]

    def query(self, sql, params=()):
        """Rows as dicts; ``sql`` uses %s placeholders."""
        if self.database_url:
            import psycopg
            from psycopg.rows import dict_row

            with psycopg.connect(self.database_url, row_factory=dict_row, connect_timeout=10) as db:
                return list(db.execute(sql, params).fetchall())
        with sqlite3.connect(self.db_path, timeout=20) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(sql.replace("%s", "?"), params).fetchall()]

    def message(self, message_id):
        rows = self.query("SELECT * FROM chat_message WHERE id = %s", (message_id,))
        return rows[0] if rows else None

    def execute(self, sql, params=()):
        if self.database_url:
            import psycopg

            with psycopg.connect(self.database_url, connect_timeout=10) as db:
                db.execute(sql, params)
            return
        with sqlite3.connect(self.db_path, timeout=20) as db:
            db.execute(sql.replace("%s", "?"), params)


PEOPLE = """
import json
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from chat.models import Conversation

people = []
for name in {names!r}:
    user = get_user_model().objects.create_user(name, password="pw-123456789", is_staff={staff!r})
    conv = Conversation.objects.create(owner=user, **{fields!r})
    client = Client()
    client.force_login(user)
    people.append({{"name": name, "conversation": conv.pk,
                    "session": client.cookies[settings.SESSION_COOKIE_NAME].value}})
print(json.dumps(people))
"""


# ---- a live server on the run's database ---------------------------------------------------------

def pg_server_url():
    """DATABASE_URL when it names PostgreSQL (the PostgreSQL run of `make test`), else ""."""
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith(("postgres://", "postgresql://")) else ""


@contextlib.contextmanager
def live_database(prefix):
    """A database of the caller's own for a served process: on DATABASE_URL's PostgreSQL server
    when that is set (created empty, dropped after; never pytest-django's test database, which
    the test process holds), else None (the server then uses a SQLite file of its own)."""
    server = pg_server_url()
    if not server:
        yield None
        return
    import psycopg

    base = server.rpartition("/")[0]
    name = f"smolsite_{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class LiveServer(browser_support.LiveServer):
    """browser_support's served site (daphne, the embedded worker) on ``database_url`` when given
    (see live_database), else its own SQLite file; ``query`` reads either with "?" placeholders."""

    def __init__(self, workdir, models, log_path, env=None, database_url=None):
        super().__init__(workdir, models, log_path, env=env)
        self.database_url = database_url
        if database_url:
            self.env.pop("SQLITE_PATH", None)
            self.env["DATABASE_URL"] = database_url

    def query(self, sql, *args):
        """Rows as dicts."""
        if self.database_url:
            import psycopg
            from psycopg.rows import dict_row

            with psycopg.connect(self.database_url, row_factory=dict_row, connect_timeout=10) as db:
                return list(db.execute(sql.replace("?", "%s") if args else sql, args or None).fetchall())
        with sqlite3.connect(self.db_path, timeout=20) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(sql, args).fetchall()]

    def execute(self, sql, *args):
        if self.database_url:
            import psycopg

            with psycopg.connect(self.database_url, connect_timeout=10) as db:
                db.execute(sql.replace("?", "%s") if args else sql, args or None)
            return
        with sqlite3.connect(self.db_path, timeout=20) as db:
            db.execute(sql, args)

    def message(self, message_id):
        rows = self.query("SELECT * FROM chat_message WHERE id = ?", message_id)
        return rows[0] if rows else None

    def user(self, username):
        rows = self.query("SELECT * FROM auth_user WHERE username = ?", username)
        return rows[0] if rows else None


# ---- websocket clients ------------------------------------------------------------------------------

def open_socket(server, person, conversation=None):
    """A tab of ``person``'s chat (``server``: a Stack or a browser_support.LiveServer)."""
    return connect(f"ws://127.0.0.1:{server.port}/ws/chat/{conversation or person['conversation']}/",
                   origin=server.url, additional_headers={"Cookie": f"sessionid={person['session']}"},
                   open_timeout=60, max_size=2**24)


async def send(ws, content, action="send", **extra):
    """Send a message (or another action starting an answer); returns the id of the answer."""
    await ws.send(json.dumps({"action": action, "content": content, **extra}))
    while True:
        frame = json.loads(await ws.recv())
        assert frame["type"] != "error", frame
        if frame["type"] == "thread":
            return frame["active"]


async def until_final(ws, reply):
    """Frames up to the final frame of ``reply``."""
    frames = []
    while True:
        frame = json.loads(await ws.recv())
        frames.append(frame)
        if frame["type"] == "final" and frame["message"] == reply:
            return frames


async def until_answered(ws):
    """Frames up to the final frame of this socket's new answer (or its first error)."""
    frames, reply = [], None
    while True:
        frame = json.loads(await ws.recv())
        frames.append(frame)
        if frame["type"] == "thread":
            reply = frame["active"]
        if frame["type"] == "error" or (frame["type"] == "final" and frame["message"] == reply):
            return reply, frames


async def saved_partial_text(server, reply):
    """Until the worker has saved some of the answer (it saves at least once a second)."""
    while True:
        row = await asyncio.to_thread(server.message, reply)
        assert row["status"] in ("pending", "streaming"), f"the answer ended before the fault: {row}"
        if row["content"]:
            return row["content"]
        await asyncio.sleep(0.1)


def assembled_text(frames, message_id):
    """The answer's text as a client assembles it from snapshots and numbered events, checking that
    no event is missing or repeated."""
    text, last = "", 0
    for f in frames:
        if f.get("message") != message_id:
            continue
        if f["type"] == "snapshot":
            text, last = f["content"], f["seq"]
        elif f["type"] == "events":
            for e in f["events"]:
                assert e["seq"] == last + 1, f"event {e['seq']} after {last}"
                last = e["seq"]
                text += e.get("text", "") if e["kind"] == "text" else ""
    return text
