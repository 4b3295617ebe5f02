"""Hand a generation job to its model's device: a Celery queue when REDIS_URL is set, the
embedded device worker otherwise (inference.embedded). Callers do no inference themselves."""
import asyncio
import os

from django.conf import settings

from .model_configs import get_model
from .stop import request_stop


def enqueue(job_id, model_name, loop=None, affinity=""):
    """Queue the job; scaled out, ``affinity`` names the worker that holds the conversation's
    tokens. Returns the worker id the job was pinned to, or "" (any worker of the device)."""
    model = get_model(model_name)
    if os.environ.get("SMOLSITE_WORKER_CHILD") == "1" and not settings.REDIS_URL:
        # A device worker's child process (a chat's tool loop continuing): the web process queues
        # it (inference.supervisor), so its stops reach whichever child runs it.
        from . import parent_link

        parent_link.send(("enqueue", job_id, model_name))
        return ""
    if settings.REDIS_URL:
        from .routing import choose_queue
        from .tasks import generate

        queue, pinned = choose_queue(model, affinity)
        generate.apply_async(args=[job_id], queue=queue)
        return pinned
    else:
        from .embedded import get_worker

        if loop is None:
            loop = asyncio.get_running_loop()
        get_worker(model.device).submit(job_id, loop)
        return ""


def enqueue_from_thread(job_id, model_name):
    """``enqueue`` from a thread with no event loop of its own (the batch driver, a background
    response queued again): the server's loop when there is one, else the publishers' own."""
    from .publish import _own_loop, server_loop

    loop = server_loop()
    if loop is None and not settings.REDIS_URL:
        from .embedded import EmbeddedWorker, get_worker

        worker = get_worker(get_model(model_name).device)
        if not isinstance(worker, EmbeddedWorker):  # a child process: events come back over its pipe
            worker.submit(str(job_id), None)
            return ""
        loop = _own_loop()
    return enqueue(str(job_id), model_name, loop)


def stop(job_id):
    request_stop(job_id)
    if not settings.REDIS_URL:
        from .embedded import forward_stop

        # A worker in a child process has a cache (and stop flags) of its own.
        forward_stop(job_id)
