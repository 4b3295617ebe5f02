"""/healthz and /readyz, and the reaper that ends generations whose worker died."""
import pytest
from django.contrib.auth import get_user_model

from chat.models import Conversation, Message
from chat.reaper import reap, reap_embedded_leftovers
from inference.workers import beat

pytestmark = pytest.mark.django_db


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_is_503_without_a_worker(admin_client):
    # Staff see each check's detail (anonymous callers only ok: tests/test_metrics.py).
    response = admin_client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"]["ok"] and body["checks"]["channel_layer"]["ok"]
    assert body["checks"]["workers"]["ok"] is False
    assert "no device worker" in body["checks"]["workers"]["error"]


def test_readyz_is_200_with_an_embedded_worker_holding_the_real_model(client, admin_client, loaded_registry):
    """A real device worker (the embedded one, as a served process runs it) with SmolLM2 loaded
    makes the site ready; once it stops, it is not."""
    from inference.embedded import EmbeddedWorker

    worker = EmbeddedWorker("cpu")
    worker.worker_id += ":readyz-test"  # not the id of the embedded worker other tests may have started
    worker.start()
    try:
        assert worker.ready.wait(180) and worker.error is None
        response = admin_client.get("/readyz")
        assert response.status_code == 200
        listed = response.json()["checks"]["workers"]["workers"]
        assert [w["models"] for w in listed if w["id"] == worker.worker_id] == [["smollm2-135m"]]
        assert client.get("/readyz").status_code == 200
    finally:
        worker.stop()
    assert not worker.thread.is_alive()
    assert worker.worker_id not in [w["id"] for w in admin_client.get("/readyz").json()["checks"]["workers"]["workers"]]


def test_worker_without_models_does_not_make_the_site_ready(client):
    beat("cpu@empty:2", "cpu", [])
    assert client.get("/readyz").status_code == 503


def _streaming(worker_id, content="half an answer"):
    user = get_user_model().objects.create_user(f"u{worker_id}", password="pw-123456789")
    conv = Conversation.objects.create(owner=user, model="smollm2-135m")
    q = Message.objects.create(conversation=conv, role="user", content="hi")
    return Message.objects.create(conversation=conv, parent=q, role="assistant", status="streaming",
                                  content=content, worker_id=worker_id, stream_seq=9)


def test_reaper_interrupts_a_generation_whose_worker_is_gone():
    orphan = _streaming("cpu@dead:1")
    beat("cpu@alive:2", "cpu", ["smollm2-135m"])
    healthy = _streaming("cpu@alive:2")
    assert reap() == 1
    orphan.refresh_from_db()
    healthy.refresh_from_db()
    assert orphan.status == "interrupted" and orphan.content == "half an answer"
    assert "worker stopped" in orphan.error and orphan.finished_at is not None
    assert healthy.status == "streaming"


def test_reaper_interrupts_a_silent_generation_even_if_its_worker_beats():
    beat("cpu@stuck:3", "cpu", ["smollm2-135m"])
    stuck = _streaming("cpu@stuck:3")
    assert reap(stale_seconds=30) == 0
    assert reap(stale_seconds=-1) == 1
    stuck.refresh_from_db()
    assert stuck.status == "interrupted" and stuck.content == "half an answer"


def test_embedded_restart_ends_what_the_old_process_left_active():
    left = _streaming("cpu@old:4", content="partial")
    pending = Message.objects.create(conversation=left.conversation, role="assistant", status="pending")
    assert reap_embedded_leftovers() == 2
    left.refresh_from_db()
    pending.refresh_from_db()
    assert left.status == pending.status == "interrupted"
    assert left.content == "partial" and "restarted" in left.error


def test_model_that_failed_to_load_ends_its_jobs_with_the_reason(tmp_path, settings):
    from inference.registry import ModelRegistry
    from inference.testing import make_request, run_request

    bad = tmp_path / "broken.gguf"
    bad.write_text("not a model")
    settings.SMOLSITE_MODELS = {
        "broken": {"path": str(bad), "device": "cpu"},
        "echo": {"path": "", "backend": "echo", "device": "cpu"},
    }
    registry = ModelRegistry()
    with pytest.raises(Exception, match="not a GGUF file"):
        registry.load_device("cpu", keep_going=True)
    assert registry.loaded_models() == ["echo"]  # the good model still loaded
    result, events = run_request(registry, make_request("broken", "hello"))
    assert result.status == "error"
    assert "could not be loaded" in result.error and "not a GGUF file" in result.error
    assert events[-1]["kind"] == "done" and events[-1]["status"] == "error"


def test_queued_message_without_any_worker_for_its_model_fails_clearly():
    left = _streaming("cpu@x:5")
    left.status = "done"
    left.save()
    waiting = Message.objects.create(conversation=left.conversation, role="assistant", status="pending",
                                     model_name="smollm2-135m")
    assert reap(queue_seconds=60) == 0  # young: a worker may still pick it up
    beat("cpu@other:6", "cpu", ["another-model"])
    assert reap(queue_seconds=-1) == 1
    waiting.refresh_from_db()
    assert waiting.status == "error" and "No device worker is serving model 'smollm2-135m'" in waiting.error


def test_queued_message_is_left_alone_while_a_worker_holds_its_model():
    left = _streaming("cpu@y:7")
    waiting = Message.objects.create(conversation=left.conversation, role="assistant", status="pending",
                                     model_name="smollm2-135m")
    beat("cpu@y:7", "cpu", ["smollm2-135m"])
    assert reap(queue_seconds=-1) == 0
    waiting.refresh_from_db()
    assert waiting.status == "pending"
