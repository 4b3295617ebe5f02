"""A batch scaled out: its lines go to a real Celery device worker over Redis (``make
test-redis`` runs it with REDIS_URL set; skipped without). This process is the driver."""
import json
import time

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from batches import service
from batches.models import BatchLine
from usage.models import UsageRecord

from test_redis import _clear_cache, _fresh_channel_layer, cpu_worker, redis_db, worker  # noqa: F401 (fixtures)

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (run `make test-redis`)"),
]
MODEL = "smollm2-135m"


def test_batch_lines_run_on_a_celery_worker(worker):
    user = get_user_model().objects.create_user("batcher", password="pw-123456789")
    data = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": MODEL, "messages": [{"role": "user", "content": f"Say {i}."}],
                                        "max_tokens": 6, "temperature": 0}}) + "\n" for i in range(2))
    batch = service.create_batch(user, service.store_file(user, "in.jsonl", data.encode()))
    deadline = time.monotonic() + 120
    while batch.is_active:
        assert time.monotonic() < deadline, list(BatchLine.objects.filter(batch=batch).values("status", "error"))
        service.advance(batch)
        batch.refresh_from_db()
        time.sleep(0.3)
    assert batch.status == "completed" and batch.completed == 2, batch.errors
    out = [json.loads(x) for x in bytes(batch.output_file.data).decode().splitlines()]
    assert [r["custom_id"] for r in out] == ["r0", "r1"]
    assert all(r["response"]["body"]["choices"][0]["message"]["content"] for r in out)
    assert set(UsageRecord.objects.filter(user=user).values_list("source", flat=True)) == {"batch"}
