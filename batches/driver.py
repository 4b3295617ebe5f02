"""The thread of a served process that advances batches every SMOLSITE_BATCH_TICK_SECONDS (the
reaper's pattern). Each step is a few queries; every state lives in the database."""
import logging
import threading

from django.conf import settings
from django.db import close_old_connections

from api.response_store import revive_all

from . import service

logger = logging.getLogger(__name__)


def start_driver():
    def loop():
        stop = threading.Event()
        while not stop.wait(settings.SMOLSITE_BATCH_TICK_SECONDS):
            try:
                close_old_connections()
                service.tick()
                revive_all()  # background responses a dead worker cut run again, as batch lines do
            except Exception:
                logger.exception("batch driver failed")

    thread = threading.Thread(target=loop, name="smolsite-batches", daemon=True)
    thread.start()
    return thread
