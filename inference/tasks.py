"""Celery tasks: thin wrappers over the generation service."""
from celery import shared_task

# Connects the device worker's start-up signals (load models or exit 3, heartbeat); without
# this import nothing in a Celery worker ever loads the models.
from . import celery_worker  # noqa: F401
from .service import run_job
from .worker_state import current_worker_id


@shared_task(name="smolsite.generate", ignore_result=True)
def generate(job_id):
    run_job(job_id, current_worker_id())
