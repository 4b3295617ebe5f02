"""The in-process device worker for the embedded mode (no REDIS_URL): a thread per device that
runs the same Celery task body the scaled-out workers run, with events published on the web
server's event loop, where the in-memory channel layer lives."""
import logging
import queue
import threading

from django.db import connections

from .engine import get_engine
from .publish import set_thread_loop
from .workers import Heartbeat, make_worker_id
from .worker_state import set_thread_worker_id

logger = logging.getLogger(__name__)

_workers = {}
_lock = threading.Lock()


class EmbeddedWorker:
    def __init__(self, device):
        self.device = device
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

    def _run(self):
        try:
            get_engine().load_device(self.device, keep_going=True)
        except Exception as exc:
            # Keep serving the queue: each job then ends as an error that says why.
            self.error = exc
            logger.critical("embedded worker %s cannot load its models: %s", self.device, exc)
        self.heartbeat = Heartbeat(self.worker_id, self.device, get_engine().loaded_models).start()
        self.ready.set()
        set_thread_worker_id(self.worker_id)
        from .tasks import generate

        while True:
            job_id, loop = self.jobs.get()
            if job_id is None:
                break
            set_thread_loop(loop)
            try:
                generate.apply(args=[job_id], throw=False)
            except Exception:
                logger.exception("embedded job %s failed", job_id)
            finally:
                # Between jobs this thread holds no database connection (as Celery does per task).
                connections.close_all()
                self.jobs.task_done()
        self.heartbeat.stop()

    def stop(self):
        self.jobs.put((None, None))
        self.thread.join(timeout=30)


def get_worker(device, start=True):
    with _lock:
        worker = _workers.get(device)
        if worker is None and start:
            worker = _workers[device] = EmbeddedWorker(device).start()
        return worker


def start_all():
    from .models import all_models

    for device in sorted({m.device for m in all_models()}):
        get_worker(device)
