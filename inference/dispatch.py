"""Hand a generation job to its model's device: a Celery queue when REDIS_URL is set, the
in-process worker otherwise. Callers do no inference themselves."""
import asyncio

from django.conf import settings

from .models import get_model
from .stop import request_stop


def enqueue(job_id, model_name, loop=None):
    model = get_model(model_name)
    if settings.REDIS_URL:
        from .tasks import generate

        generate.apply_async(args=[job_id], queue=model.queue)
    else:
        from .embedded import get_worker

        if loop is None:
            loop = asyncio.get_running_loop()
        get_worker(model.device).submit(job_id, loop)


def stop(job_id):
    request_stop(job_id)
