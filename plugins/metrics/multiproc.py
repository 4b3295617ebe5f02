"""prometheus_client's multiprocess mode: every process on a host that counts (the embedded worker
child, a Celery device worker, the web process in thread mode) writes its own files into one
directory, and whoever serves /metrics sums them, so nothing is lost or counted twice.

The library picks its storage when it is imported, so PROMETHEUS_MULTIPROC_DIR must be in the
environment before that: smolsite.settings sets it (SMOLSITE_VAR_DIR/prometheus by default) and
``configure()`` repeats it for a process that imported this package without our settings.
"""
import glob
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
# The library's file names: counter_<pid>.db, histogram_<pid>.db, gauge_livesum_<pid>.db, ...
_LIVE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


def configure():
    """The directory, made if missing; set in the environment if nothing set it yet."""
    path = os.environ.get(ENV)
    if not path:
        from django.conf import settings

        path = str(Path(settings.VAR_DIR) / "prometheus")
        os.environ[ENV] = path
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def directory():
    return os.environ[ENV]


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def forget_dead_processes(path=None):
    """Live gauges (generations in progress) of processes that are gone, removed as the library
    documents (``mark_process_dead``). Counters and histograms of dead processes stay: they are
    counts that happened. Run before each collection, so an embedded child killed by the OOM
    killer or a Celery worker that got SIGKILL (neither runs any shutdown code) stops showing its
    in-progress generations at the next scrape. The directory is per host, so a pid is one of ours."""
    from prometheus_client import multiprocess

    path = path or directory()
    dead = set()
    for name in os.listdir(path) if os.path.isdir(path) else ():
        match = _LIVE_FILE.match(name)
        if match and not _pid_alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)
    return dead


def mark_this_process_dead():
    """For a process ending cleanly (a Celery worker's shutdown)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid(), directory())


def file_count(path=None):
    return len(glob.glob(os.path.join(path or directory(), "*.db")))
