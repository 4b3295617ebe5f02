"""Hand a generation job to its model's device: a Celery queue when REDIS_URL is set, the
embedded device worker otherwise (inference.embedded). Callers do no inference themselves."""
import asyncio

from django.conf import settings

from .models import get_model
from .stop import request_stop


def enqueue(job_id, model_name, loop=None, affinity=""):
    """Queue the job; scaled out, ``affinity`` names the worker that holds the conversation's
    tokens. Returns the worker id the job was pinned to, or "" (any worker of the device)."""
    model = get_model(model_name)
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


def stop(job_id):
    request_stop(job_id)
    if not settings.REDIS_URL:
        from .embedded import forward_stop

        # A worker in a child process has a cache (and stop flags) of its own.
        forward_stop(job_id)
