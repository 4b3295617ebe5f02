"""What a served process starts besides the ASGI app."""
import logging

from django.conf import settings
from django.db.utils import OperationalError, ProgrammingError

logger = logging.getLogger(__name__)


def start_services():
    from chat.reaper import reap_embedded_leftovers, start_reaper

    if settings.SMOLSITE_EMBEDDED_WORKER and not settings.REDIS_URL:
        from inference.embedded import start_all

        try:
            reap_embedded_leftovers()
        except (OperationalError, ProgrammingError):
            logger.warning("database not migrated yet: run `python manage.py migrate`")
        start_all()
    start_reaper()
