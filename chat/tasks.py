"""Celery tasks of the chat app: the retention pass, run by Celery beat in the scaled-out mode."""
from celery import shared_task

# The queue the beat schedule sends maintenance tasks to; `make worker` consumes it beside its device queue.
MAINTENANCE_QUEUE = "maintenance"


@shared_task(name="smolsite.retention", ignore_result=True)
def enforce_retention():
    from .retention import run_once

    result = run_once()
    return list(result) if result else None
