"""The load test's short form (bench/load.py --quick: 8 people chatting, 20 idle sockets, 20 s)
against a served site: every message sent is answered, with no error and nothing lost. No timing
thresholds: the figures are reported, not judged (bench/README.md)."""
import json
import os
import subprocess
import sys

import pytest

from browser_support import REPO

pytestmark = pytest.mark.model

RUN_SECONDS = 280  # start, 20 s of load, and every answer still running, on two possibly busy cores


def run_quick(*extra):
    proc = subprocess.run([sys.executable, "bench/load.py", "--quick", *extra], cwd=REPO, capture_output=True,
                          text=True, timeout=RUN_SECONDS)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout
    return lines[0], proc.stderr


def check(line, log):
    assert line["sent"] > 0, log[-3000:]
    assert line["sent"] == line["answered"], log[-3000:]
    assert line["errors"] == 0 and line["lost"] == 0, log[-3000:]
    assert line["idle_sockets_dropped"] == 0 and line["left_active"] == 0
    assert line["web_rss_mb_start"] and line["web_rss_mb_end"]


@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="the embedded stack runs on SQLite: the SQLite run")
def test_quick_load_embedded():
    check(*run_quick("--stack", "embedded"))


@pytest.mark.redis
@pytest.mark.skipif(not (os.environ.get("DATABASE_URL", "").startswith("postgres") and os.environ.get("REDIS_URL")),
                    reason="the scaled stack needs DATABASE_URL (PostgreSQL) and REDIS_URL: the PostgreSQL Redis run")
def test_quick_load_scaled():
    server = os.environ["DATABASE_URL"].rpartition("/")[0]
    # Its own database on that server (made and dropped by the bench) and the run's Redis database.
    check(*run_quick("--stack", "scaled", "--database-url", f"{server}/smolsite_loadbench_test",
                     "--redis-url", os.environ["REDIS_URL"]))
