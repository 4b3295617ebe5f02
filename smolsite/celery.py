import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smolsite.settings")

app = Celery("smolsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["inference", "chat"])

# `celery -A smolsite beat` (make beat): the retention pass (chat.retention) every
# SMOLSITE_RETENTION_INTERVAL seconds, on the maintenance queue every `make worker` also consumes.
# With SMOLSITE_RETENTION_DAYS unset a pass deletes nothing.
app.conf.beat_schedule = {
    "retention": {
        "task": "smolsite.retention",
        "schedule": float(os.environ.get("SMOLSITE_RETENTION_INTERVAL", "3600")),
        "options": {"queue": "maintenance"},
    },
}
