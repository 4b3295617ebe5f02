"""The device workers of the embedded mode (no REDIS_URL): one per device, run by the web process.

A served process runs each as its own supervised child process by default
(SMOLSITE_WORKER_MODE=process, inference.supervisor), so a native crash in llama.cpp takes down
the worker, not the site. ``thread`` runs it as a thread of the web process instead, holding the
process's own model registry; that is also what code that enqueues without a served start-up gets (the
in-process tests, the benchmark). Either way jobs run the same ``run_job`` as the Celery
workers, many at once, because the backend batches and queues fairly across sequences.
"""
import logging
import queue
import threading

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from .registry import get_registry
from .publish import set_thread_loop
from .workers import EngineReporter, Heartbeat, make_worker_id, plugin_devices
from .worker_state import set_thread_worker_id

logger = logging.getLogger(__name__)

MODES = ("process", "thread")

_workers = {}
_lock = threading.Lock()


def run_embedded_job(job_id, worker_id, loop=None):
    """One job on a pool thread; ``loop`` is where its events are published (the web server's
    loop in thread mode, None in a child process, whose layer sends them down its pipe)."""
    from .service import run_job

    set_thread_worker_id(worker_id)
    set_thread_loop(loop)
    try:
        run_job(job_id, worker_id)
    except Exception:
        logger.exception("embedded job %s failed", job_id)
    finally:
        # A pool thread may wait long for its next job: it holds no database connection meanwhile.
        connections.close_all()


class JobPool:
    """A fixed number of threads running jobs as they come. Daemon threads: unlike those of a
    ThreadPoolExecutor they do not hold up the process's exit while a generation has minutes to go."""

    def __init__(self, size, name):
        self.size = max(1, size)
        self._jobs = queue.SimpleQueue()
        for i in range(self.size):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    def submit(self, fn, *args):
        self._jobs.put((fn, args))

    def _work(self):
        while True:
            fn, args = self._jobs.get()
            if fn is None:
                return
            try:
                fn(*args)
            except Exception:
                logger.exception("job %s failed", args)

    def shutdown(self):
        """Each thread ends once the jobs queued before this are taken."""
        for _ in range(self.size):
            self._jobs.put((None, ()))


def job_pool(device):
    return JobPool(settings.SMOLSITE_WORKER_THREADS, f"smolsite-job-{device}")


class EmbeddedWorker:
    """Thread mode: loads the device's models into this process's model registry, then runs jobs."""

    def __init__(self, device, plugin=None):
        self.device = device
        self.plugin = plugin  # an inference.workers.PluginDevice: its models come from a plugin
        self.worker_id = make_worker_id(device) + ":embedded"
        self.jobs = queue.Queue()
        self.ready = threading.Event()
        self.error = None
        self.heartbeat = None
        self.thread = threading.Thread(target=self._run, name=f"smolsite-worker-{device}", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def submit(self, job_id, loop):
        self.jobs.put((job_id, loop))

    def forward_stop(self, job_id):
        pass  # the stop flag is in this process's cache already

    def _run(self):
        if self.plugin is not None:
            return self._run_plugin()
        try:
            get_registry().load_device(self.device, keep_going=True)
        except Exception as exc:
            # Keep serving the queue: each job then ends as an error that says why.
            self.error = exc
            logger.critical("embedded worker %s cannot load its models: %s", self.device, exc)
        self.heartbeat = Heartbeat(self.worker_id, self.device, get_registry().loaded_models).start()
        EngineReporter(self.worker_id, get_registry().stats, get_registry().forget_users).start()
        self.ready.set()
        self._serve_jobs(job_pool(self.device))

    def _run_plugin(self):
        """A plugin's device (hook ``register_devices``): nothing to load; its threads wait on I/O."""
        spec = self.plugin
        try:
            if spec.start is not None:
                spec.start()
        except Exception:
            logger.exception("device %s: the plugin's start failed", self.device)
        self.heartbeat = Heartbeat(self.worker_id, self.device, spec.serving, spec.details,
                                   interval=spec.beat_seconds).start()
        self.ready.set()
        self._serve_jobs(JobPool(spec.threads or settings.SMOLSITE_WORKER_THREADS, f"smolsite-job-{self.device}"))

    def _serve_jobs(self, pool):
        """Hand each queued job to ``pool`` until stop(), then wind down."""
        while True:
            job_id, loop = self.jobs.get()
            if job_id is None:
                break
            pool.submit(run_embedded_job, job_id, self.worker_id, loop)
        pool.shutdown()
        self.heartbeat.stop()

    def stop(self):
        self.jobs.put((None, None))
        self.thread.join(timeout=30)


def get_worker(device, start=True):
    """The device's worker; without a served start-up, a thread worker started on first use."""
    with _lock:
        worker = _workers.get(device)
    if worker is None and start:
        plugin = plugin_devices().get(device)
        with _lock:
            worker = _workers.get(device)
            if worker is None:
                worker = _workers[device] = EmbeddedWorker(device, plugin).start()
    return worker


def forward_stop(job_id):
    """A stop flag set in this process must reach a child process running the job."""
    with _lock:
        workers = list(_workers.values())
    for worker in workers:
        worker.forward_stop(job_id)


def start_all(mode=None, on_worker_lost=None):
    """A served process's workers, one per configured device. ``on_worker_lost(worker_id, reason)``
    ends the generations of a child process that died (process mode)."""
    from .model_configs import all_models

    mode = mode or settings.SMOLSITE_WORKER_MODE
    if mode not in MODES:
        raise ImproperlyConfigured(f"SMOLSITE_WORKER_MODE must be one of {', '.join(MODES)}, not {mode!r}")
    plugins = plugin_devices()
    for device, spec in sorted(plugins.items()):
        with _lock:  # I/O only (hook register_devices): a thread pool here, in either mode
            if device not in _workers:
                _workers[device] = EmbeddedWorker(device, spec).start()
    for device in sorted({m.device for m in all_models()} - set(plugins)):
        with _lock:
            if device in _workers:
                continue
            if mode == "process":
                from .supervisor import DeviceWorkerProcess

                _workers[device] = DeviceWorkerProcess(device, on_worker_lost).start()
            else:
                _workers[device] = EmbeddedWorker(device).start()


def stop_all():
    with _lock:
        workers = list(_workers.values())
        _workers.clear()
    for worker in workers:
        worker.stop()
