"""Metrics of a real Celery device worker over Redis: what it counted reaches the site's /metrics
(the same host's multiprocess directory) exactly once, also across a worker restart, and its own
endpoint (SMOLSITE_METRICS_PORT, for workers on other hosts) serves the same numbers."""
import time
import urllib.request

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from browser_support import free_port
from chat import actions
from chat.models import Conversation, Message
from inference import dispatch
from test_metrics import counts, delta, expected_from_rows, parse, scrape
from test_redis import WorkerProcess, _clear_cache, _fresh_channel_layer, redis_db  # noqa: F401 (fixtures)

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (run `make test-redis`)"),
]

MODEL = "smollm2-135m"
LABELS = {"model": MODEL, "device": "cpu", "source": "chat"}
GEN_TIMEOUT = 180


def answer_all(conversation, prompts):
    """Each prompt sent as a chat turn (the consumer's action), answered by the Celery worker."""
    rows = []
    for prompt in prompts:
        reply = actions.send(conversation.pk, prompt)
        dispatch.enqueue(str(reply.pk), reply.model_name)
        reply_id = reply.pk
        deadline = time.monotonic() + GEN_TIMEOUT
        while Message.objects.filter(pk=reply_id, status__in=Message.ACTIVE).exists():
            assert time.monotonic() < deadline, f"answer {reply_id} not finished"
            time.sleep(0.1)
        rows.append(Message.objects.get(pk=reply_id))
    return rows


def scrape_worker(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse(response.read().decode())[0]


@pytest.mark.django_db(transaction=True)
def test_celery_worker_counts_reach_metrics_once_across_a_restart(redis_db, tmp_path):  # noqa: F811
    port = free_port()
    worker = WorkerProcess("metrics", "device.cpu", tmp_path, SMOLSITE_METRICS_PORT=str(port))
    user = get_user_model().objects.create_user("measured", password="pw-123456789")
    conv = Conversation.objects.create(owner=user, model=MODEL, temperature=0.0, max_tokens=10, thinking=False)
    before = counts(scrape(), **LABELS)
    try:
        worker.start().wait_ready()
        first = answer_all(conv, ["Name a colour.", "Name a fruit."])
        assert [r.status for r in first] == ["done", "done"], [r.error for r in first]
        assert all(r.worker_id == worker.worker_id for r in first)
        assert delta(counts(scrape(), **LABELS), before) == expected_from_rows(first)
        # The worker's own endpoint reads the same host directory: the same counts.
        assert delta(counts(scrape_worker(port), **LABELS), before) == expected_from_rows(first)

        # A clean stop (its live gauges marked dead), then a new worker process: the first one's
        # counts stay, the second's are added, nothing twice.
        first_pid = worker.pid
        assert worker.stop() == 0, worker.logs()
        worker.start().wait_ready()
        assert worker.pid != first_pid
        second = answer_all(conv, ["Name a city."])
        assert second[0].status == "done", second[0].error
        assert delta(counts(scrape(), **LABELS), before) == expected_from_rows(first + second)
        assert delta(counts(scrape_worker(port), **LABELS), before) == expected_from_rows(first + second)
    finally:
        worker.stop()
