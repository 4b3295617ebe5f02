"""What the scaled-out tests share (tests/test_redis.py and the modules beside it): a real Celery
device worker subprocess on this run's test database and Redis, the Redis database flushed once per
module, and conftest's cache.clear() switched off (here the cache is that Redis database)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from django.conf import settings
from django.db import connection

from inference.plugins import OWN_DISTRIBUTION, _entry_points
from inference.workers import alive_workers

BASE_DIR = Path(settings.BASE_DIR)
CELERY = str(Path(sys.executable).with_name("celery"))
START_TIMEOUT = 180  # a worker imports Django and loads the model; the machine is shared


# ---- the Celery worker subprocess ---------------------------------------------------------------

def worker_env(**extra):
    """The environment of a worker sharing this test process's database and Redis."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"DATABASE_URL", "SQLITE_PATH", "SMOLSITE_MODELS", "SMOLSITE_BLOCKED_PLUGINS"}}
    db = connection.settings_dict  # pytest-django has switched NAME to the test database
    if db["ENGINE"] == "django.db.backends.sqlite3":
        env["SQLITE_PATH"] = str(db["NAME"])
    elif db["ENGINE"] == "django.db.backends.postgresql":
        auth = quote(db["USER"] or "", safe="")
        if db.get("PASSWORD"):
            auth += ":" + quote(db["PASSWORD"], safe="")
        host = db["HOST"] or "127.0.0.1"
        port = f":{db['PORT']}" if db.get("PORT") else ""
        env["DATABASE_URL"] = f"postgres://{auth}{'@' if auth else ''}{host}{port}/{db['NAME']}"
    else:  # pragma: no cover
        raise AssertionError(f"no worker environment for database engine {db['ENGINE']}")
    # As in this process (see inference.plugins): only this distribution's plugins, so an installed
    # third-party plugin cannot change what the worker generates.
    foreign = sorted({ep.name for dist, ep in _entry_points() if dist.metadata["Name"] != OWN_DISTRIBUTION})
    env.update(REDIS_URL=settings.REDIS_URL, SMOLSITE_DEVICE="cpu", SMOLSITE_BLOCKED_PLUGINS=",".join(foreign),
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class WorkerProcess:
    """``celery -A smolsite worker -Q <queue> --pool threads``, as `make worker` starts it."""

    def __init__(self, name, queue, log_dir, **env):
        self.name, self.queue, self.log_dir, self.extra_env = name, queue, Path(log_dir), env
        self.proc = None
        self.worker_id = ""
        self.starts = 0

    @property
    def pid(self):
        return self.proc.pid

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        self.starts += 1
        self.stdout_path = self.log_dir / f"{self.name}-{self.starts}.out"
        self.stderr_path = self.log_dir / f"{self.name}-{self.starts}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [CELERY, "-A", "smolsite", "worker", "-Q", self.queue, "--pool", "threads", "--concurrency", "8",
                 "-n", f"{self.name}@%h",
                 "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
                cwd=BASE_DIR, env=worker_env(**self.extra_env), stdout=out, stderr=err)
        self.worker_id = ""
        return self

    def logs(self):
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in (self.stdout_path, self.stderr_path)
                         if p.exists())

    def wait_ready(self, timeout=START_TIMEOUT):
        """Until this process's heartbeat shows a loaded model (read from Redis, as /readyz does)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.running, f"worker {self.name} exited with {self.proc.returncode}:\n{self.logs()}"
            mine = [w for w in alive_workers() if w["id"].rsplit(":", 1)[-1] == str(self.pid)]
            if mine and mine[0]["models"]:
                self.worker_id = mine[0]["id"]
                return self
            time.sleep(0.2)
        raise AssertionError(f"worker {self.name} showed no heartbeat in {timeout}s:\n{self.logs()}")

    def ensure_running(self):
        if not self.running:
            self.start().wait_ready()
        return self

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def redis_db():
    import redis

    url = settings.REDIS_URL
    db = int((urlsplit(url).path or "/0").lstrip("/") or 0)
    assert db != 0, f"REDIS_URL={url}: these tests flush its database; give them a dedicated one (e.g. /13)"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _clear_cache():
    """Replaces conftest's cache.clear(): here the cache is the Redis database that also holds the
    broker's queues and the workers' heartbeats."""
    yield
