"""What a served process starts besides the ASGI app."""
import atexit
import logging

from django.conf import settings
from django.db.utils import OperationalError, ProgrammingError

from batches.driver import start_driver
from chat.reaper import reap_embedded_leftovers, reap_worker, start_reaper
from chat.retention import start_retention
from inference.embedded import start_all, stop_all

logger = logging.getLogger(__name__)


def start_services():
    if settings.SMOLSITE_EMBEDDED_WORKER and not settings.REDIS_URL:
        try:
            reap_embedded_leftovers()
        except (OperationalError, ProgrammingError):
            logger.warning("database not migrated yet: run `python manage.py migrate`")
        start_all(settings.SMOLSITE_WORKER_MODE, on_worker_lost=reap_worker)
        # Worker processes also end on their own when this one dies (their socket closes).
        atexit.register(stop_all)
    start_reaper()
    if not settings.REDIS_URL:
        # Embedded, the retention pass runs on a timer here; scaled out, Celery beat runs it (make beat).
        start_retention()
    if settings.SMOLSITE_BATCH_DRIVER:
        start_driver()
