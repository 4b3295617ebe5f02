"""Which Celery queue a generation goes to when scaled out: the worker that holds the
conversation's cached tokens while it is alive and has room (a follow-up then prefills only its
new tokens), else the device queue that any worker of that device takes."""
from .workers import alive_workers


def direct_queue(worker_id):
    """The queue only this worker process consumes (next to its device queue)."""
    return f"worker.{worker_id}"


def choose_queue(model, affinity=""):
    """(queue name, worker id it pins the job to, or "" for the shared device queue)."""
    if affinity:
        for worker in alive_workers():
            if worker["id"] != affinity or model.name not in worker.get("models", []):
                continue
            # Saturated: someone already waits there for a running slot; another worker may serve sooner.
            if worker.get("queue") and worker.get("waiting", 0) == 0:
                return worker["queue"], worker["id"]
    return model.queue, ""
