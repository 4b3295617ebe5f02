"""Files in var/ are the owner's only (issue 16 §3): the SQLite database and its -wal/-shm hold every
chat, password hash and session. After `make run`'s first start on a fresh SMOLSITE_VAR_DIR, as
`make run` does it (manage.py migrate, then daphne with its embedded device worker child), var/
and every directory in it is 0700 and every file 0600, even when started from a shell whose umask
(022, the usual) would make them readable to every local account."""
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from browser_support import REPO, free_port
from live_stack import READY_SECONDS, foreign_plugins, http, wait_for


def shell_umask():
    os.umask(0o022)


def served_env(var_dir):
    env = {k: v for k, v in os.environ.items()
           if k not in {"DATABASE_URL", "REDIS_URL", "SQLITE_PATH", "SMOLSITE_MODELS", "SMOLSITE_DEFAULT_MODEL",
                        "SMOLSITE_WORKER_MODE", "SMOLSITE_EMBEDDED_WORKER", "PROMETHEUS_MULTIPROC_DIR", "SECRET_KEY"}}
    env.update(DJANGO_SETTINGS_MODULE="smolsite.settings", SMOLSITE_VAR_DIR=str(var_dir), PYTHONUNBUFFERED="1",
               SMOLSITE_BLOCKED_PLUGINS=",".join(foreign_plugins()))
    return env


def modes(var_dir):
    """{path relative to var/: (kind, permission bits)} for var/ and everything in it."""
    found = {".": ("dir", stat.S_IMODE(var_dir.stat().st_mode))}
    for root, dirs, files in os.walk(var_dir):
        for name in dirs + files:
            path = Path(root) / name
            st = path.lstat()
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
            found[str(path.relative_to(var_dir))] = (kind, stat.S_IMODE(st.st_mode))
    return found


def wrong_modes(var_dir):
    return {path: f"{kind} {mode:o}" for path, (kind, mode) in modes(var_dir).items()
            if mode != (0o700 if kind == "dir" else 0o600)}


@pytest.fixture
def workdir():
    with tempfile.TemporaryDirectory(prefix="smolsite-modes-") as path:
        yield Path(path)


def test_first_start_makes_var_and_everything_in_it_owner_only(workdir, default_model_path):
    var_dir = workdir / "var"  # does not exist yet: the first start makes it
    env = served_env(var_dir)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=REPO, env=env, check=True,
                   timeout=300, preexec_fn=shell_umask)
    port = free_port()
    with open(workdir / "web.log", "wb") as log:
        web = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                "smolsite.asgi:application"], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT, preexec_fn=shell_umask)
    try:
        def ready():
            assert web.poll() is None, (workdir / "web.log").read_text(errors="replace")[-3000:]
            # /readyz: the database was opened (-wal, -shm) and the worker child holds the model.
            return http(f"http://127.0.0.1:{port}/readyz", timeout=5)[0] == 200
        wait_for(ready, READY_SECONDS, "/readyz to say ready")
        assert http(f"http://127.0.0.1:{port}/healthz")[0] == 200
        found = modes(var_dir)
        for name in ("db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm", "secret_key", "prometheus",
                     "worker-cpu.pid"):
            assert name in found, sorted(found)
        assert wrong_modes(var_dir) == {}
    finally:
        web.terminate()
        web.wait(60)


def test_an_existing_var_readable_by_others_is_made_owner_only(workdir):
    var_dir = workdir / "var"
    var_dir.mkdir(mode=0o755)
    var_dir.chmod(0o755)
    subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO, env=served_env(var_dir), check=True,
                   timeout=300, preexec_fn=shell_umask, capture_output=True)
    assert stat.S_IMODE(var_dir.stat().st_mode) == 0o700
