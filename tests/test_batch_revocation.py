"""A batch whose API key is revoked or whose owner is deactivated stops at the driver's next step:
lines not started never run, running ones are stopped, and the batch ends ``cancelled`` saying
why. The driver's steps in-process with enqueueing replaced (no worker), as in
tests/test_batches_driver.py; on SQLite and PostgreSQL. (Through a served site: tests/test_batches.py.)"""
import json

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from api.models import ApiKey
from batches import service
from batches.models import BatchLine
from chat.models import Message
from test_batches_driver import enqueued  # noqa: F401 (the driver's enqueueing, recorded instead of sent)

pytestmark = pytest.mark.django_db
MODEL = "smollm2-135m"


def started_batch(settings, enqueued):
    settings.SMOLSITE_BATCH_IN_FLIGHT = 2
    user = get_user_model().objects.create_user("ann", password="pw-123456789")
    key, _ = ApiKey.create_for(user, "script")
    lines = "".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}],
                                         "max_tokens": 8}}) + "\n" for i in range(5))
    batch = service.create_batch(user, service.store_file(user, "in.jsonl", lines.encode()), api_key=key)
    service.advance(batch)
    assert len(enqueued) == 2
    # One answer has begun streaming (it keeps its text when stopped), one still waits.
    Message.objects.filter(pk=enqueued[0]).update(status="streaming", content="partial")
    return batch, user, key


@pytest.mark.parametrize("how", ["revoke the key", "deactivate the owner"])
def test_a_revoked_key_or_deactivated_owner_stops_the_batch_at_the_next_step(settings, enqueued, how):
    batch, user, key = started_batch(settings, enqueued)
    if how == "revoke the key":
        key.revoke()
    else:
        get_user_model().objects.filter(pk=user.pk).update(is_active=False)
    service.advance(batch)
    assert len(enqueued) == 2  # nothing more started
    batch.refresh_from_db()
    code = "api_key_revoked" if how == "revoke the key" else "user_deactivated"
    assert batch.status == "cancelling" and batch.errors[0]["code"] == code
    queued = BatchLine.objects.filter(batch=batch, index__gte=2)
    assert {(line.status, line.error["code"]) for line in queued} == {("cancelled", code)}
    # The waiting answer was stopped at once; the streaming one is stopped by its worker, which
    # ends it "stopped" with the text it has.
    assert Message.objects.get(pk=enqueued[1]).status == "stopped"
    Message.objects.filter(pk=enqueued[0]).update(status="stopped", finished_at=timezone.now())
    service.advance(batch)
    batch.refresh_from_db()
    assert batch.status == "cancelled" and batch.errors[0]["code"] == code
    assert Message.objects.get(pk=enqueued[0]).content == "partial"
    assert BatchLine.objects.filter(batch=batch, status="cancelled").count() == 5
