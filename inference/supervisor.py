"""The web process's side of a device-worker child process (inference.worker_process).

One supervisor thread per device starts the child, replays its events on the web server's
in-memory channel layer, answers its cache calls from this process's cache (the shared one) and
beats its heartbeat (``/readyz`` and the reaper read this cache). When the child dies for any
reason it ends the generations the child had claimed as interrupted, starts another (backing off
when children keep dying) and hands it the jobs that were still queued, so nothing waits forever.
"""
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache
from django.db import connections

from .parent_link import CACHE_METHODS
from .publish import remember_server_loop, server_loop
from .workers import Heartbeat

logger = logging.getLogger(__name__)

RESTART_MIN_SECONDS = 1
RESTART_MAX_SECONDS = 60
# A child that served this long was healthy: its successor starts without waiting long.
STABLE_SECONDS = 60
RELAY_DRAIN_SECONDS = 5


def describe_exit(returncode):
    if returncode is None:
        return "is not responding"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def pid_file(device):
    """Where the current child's pid is written, for operators (and the crash tests)."""
    return settings.VAR_DIR / f"worker-{device}.pid"


class DeviceWorkerProcess:
    def __init__(self, device, on_worker_lost=None):
        self.device = device
        self.on_worker_lost = on_worker_lost
        self.ready = threading.Event()
        self.worker_id = ""
        self.pid = None
        self.models = []
        self.error = ""
        self._lock = threading.Lock()  # guards the fields below and writes to the socket
        self._conn = None  # the current child's socket, once it said it is ready
        self._proc = None
        self._jobs = {}  # job id -> None: queued or running, in order; the child says when each ends
        self._stops = set()  # stops asked for jobs in _jobs, re-sent to a replacement child
        self._heartbeat = None
        self._closing = threading.Event()
        self._relay_lock = None  # (loop, asyncio.Lock): one order for every replayed message
        self._last_relay = None
        self._thread = threading.Thread(target=self._supervise, name=f"smolsite-supervisor-{device}",
                                        daemon=True)

    def start(self):
        self._thread.start()
        return self

    # ---- called from the web process's threads ---------------------------------------------
    def submit(self, job_id, loop=None):
        if loop is not None:
            remember_server_loop(loop)
        with self._lock:
            self._jobs[job_id] = None
            self._send(("job", job_id))

    def forward_stop(self, job_id):
        with self._lock:
            if job_id in self._jobs:
                self._stops.add(job_id)
                self._send(("stop", job_id))

    def _send(self, message):
        if self._conn is None:
            return  # no child ready: it gets the message when one is
        try:
            self._conn.send(message)
        except OSError:
            pass  # the child just died; its successor gets every job still in _jobs

    def stop(self):
        self._closing.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._thread.join(timeout=15)

    # ---- the supervisor thread ------------------------------------------------------------
    def _supervise(self):
        delay = 0
        while not self._closing.is_set():
            started = time.monotonic()
            try:
                how = describe_exit(self._run_child())
            except Exception as exc:
                logger.exception("device worker %s: could not run its process", self.device)
                how = f"could not be run ({type(exc).__name__}: {exc})"
            if self._closing.is_set():
                break
            lived = time.monotonic() - started
            delay = RESTART_MIN_SECONDS if lived >= STABLE_SECONDS else min(
                RESTART_MAX_SECONDS, max(RESTART_MIN_SECONDS, delay * 2))
            self._lost(how, delay)
            if self._closing.wait(delay):
                break
        self._forget_child()

    def _run_child(self):
        """Start a child and serve it until it dies; returns its exit status."""
        ours, theirs = socket.socketpair()
        env = dict(os.environ, SMOLSITE_WORKER_CHILD="1", SMOLSITE_EMBEDDED_WORKER="0",
                   DJANGO_SETTINGS_MODULE=settings.SETTINGS_MODULE,
                   # The project may be run from its checkout rather than installed.
                   PYTHONPATH=os.pathsep.join(filter(None, [str(settings.BASE_DIR),
                                                            os.environ.get("PYTHONPATH")])))
        command = [sys.executable, "-m", "inference.worker_process",
                   "--device", self.device, "--fd", str(theirs.fileno())]
        try:
            proc = subprocess.Popen(command, env=env, pass_fds=[theirs.fileno()])
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        with self._lock:
            self._proc, self.pid = proc, proc.pid
        try:
            pid_file(self.device).write_text(f"{proc.pid}\n")
        except OSError:
            logger.warning("could not write %s", pid_file(self.device))
        logger.info("device worker %s: started process %d, loading its models", self.device, proc.pid)
        try:
            self._serve(conn)
        except Exception:  # closing the socket below ends the child, which then gets replaced
            logger.exception("device worker %s: lost track of process %d", self.device, proc.pid)
        finally:
            with self._lock:
                self._conn = None
            self.ready.clear()
            conn.close()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # it closed its socket but lives on: it is of no use
            proc.kill()
            proc.wait()
            return None

    def _serve(self, conn):
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            kind = message[0]
            if kind == "group_send":
                self._relay(message[1], message[2])
            elif kind == "finished":
                with self._lock:
                    self._jobs.pop(message[1], None)
                    self._stops.discard(message[1])
            elif kind == "call":
                self._answer(conn, message[1], message[2])
            elif kind == "enqueue":  # a job the child made (a chat's tool loop continuing)
                self._enqueue(message[1], message[2])
            elif kind == "ready":
                self._on_ready(conn, message[1])

    def _enqueue(self, job_id, model_name):
        from .dispatch import enqueue

        try:
            enqueue(str(job_id), model_name, loop=server_loop())
        except Exception:  # the reaper fails or re-queues a pending row nobody took
            logger.exception("could not queue job %s for a worker process", job_id)

    def _answer(self, conn, call_id, request):
        """The child's cache is this process's (inference.parent_link.ParentCache)."""
        try:
            what, method, args, kwargs = request
            if what != "cache" or method not in CACHE_METHODS:
                raise ValueError(f"a worker process may not ask for {what} {method}")
            reply = ("reply", call_id, True, getattr(cache, method)(*args, **kwargs))
        except Exception as exc:
            reply = ("reply", call_id, False, exc)
        with self._lock:
            try:
                try:
                    conn.send(reply)
                except OSError:
                    raise
                except Exception:  # a value or exception that does not pickle
                    conn.send(("reply", call_id, False, f"{type(reply[3]).__name__}: {reply[3]}"))
            except OSError:
                pass  # the child is gone

    def _on_ready(self, conn, info):
        self.worker_id, self.models, self.error = info["worker_id"], info["models"], info["error"]
        if self.error:
            logger.critical("device worker %s cannot load its models: %s", self.worker_id, self.error)
        models = list(self.models)
        # A worker that could not load its models says why (/readyz lists it for staff).
        error = {"error": self.error} if self.error else {}
        self._heartbeat = Heartbeat(self.worker_id, self.device, lambda: models, lambda: error).start()
        with self._lock:
            self._conn = conn
            waiting = list(self._jobs)
            for job_id in waiting:
                if job_id in self._stops:
                    self._send(("stop", job_id))
            for job_id in waiting:
                self._send(("job", job_id))
        self.ready.set()
        logger.info("device worker %s ready with %s; %d queued job(s) handed to it",
                    self.worker_id, models, len(waiting))

    def _relay(self, group, payload):
        loop = server_loop()
        if loop is None:
            return  # no websocket has connected yet, so nobody is listening
        self._last_relay = asyncio.run_coroutine_threadsafe(self._group_send(group, payload), loop)

    async def _group_send(self, group, payload):
        loop = asyncio.get_running_loop()
        if self._relay_lock is None or self._relay_lock[0] is not loop:
            self._relay_lock = (loop, asyncio.Lock())
        async with self._relay_lock[1]:
            try:
                await get_channel_layer().group_send(group, payload)
            except Exception:  # a lost flush is recoverable from the database snapshot
                logger.exception("could not relay events to %s", group)

    def _lost(self, how, delay):
        """The child is gone: end what it was generating, after every event it sent went out."""
        last, self._last_relay = self._last_relay, None
        if last is not None:
            try:
                last.result(RELAY_DRAIN_SECONDS)
            except Exception:
                pass
        worker_id = self.worker_id
        self._forget_child()
        ended = 0
        if worker_id and self.on_worker_lost is not None:
            try:
                ended = self.on_worker_lost(
                    worker_id, f"The device worker process {how} before the answer was finished.")
            except Exception:
                logger.exception("device worker %s: could not end its generations", worker_id)
            finally:
                connections.close_all()
        with self._lock:
            queued = len(self._jobs)
        # Its unfinished jobs all go to the replacement, which skips those that were not queued any more.
        logger.error("device worker %s (process %s) %s: %s generation(s) ended interrupted; a new process "
                     "starts in %.0f s and gets the %d unfinished job(s)",
                     worker_id or self.device, self.pid, how, ended or 0, delay, queued)

    def _forget_child(self):
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        self.worker_id = ""
        try:
            pid_file(self.device).unlink(missing_ok=True)
        except OSError:
            pass
