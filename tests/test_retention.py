"""Retention (chat.retention): what a pass deletes and keeps, the keep toggle, and the periodic
runners (the embedded timer here; Celery beat with a real worker over Redis below)."""
import logging
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from batches import retention as batch_retention
from chat import retention
from chat.models import Conversation, Message

DAY = timedelta(days=1)


def make_user(name="alice"):
    return get_user_model().objects.create_user(name, password="pw-retention-1")


def make_chat(owner, age, *statuses, kept=False, title="chat"):
    """A chat last active ``age`` ago with a user message and one assistant message per status."""
    then = timezone.now() - age
    conv = Conversation.objects.create(owner=owner, title=title, model="smollm2-135m", kept=kept,
                                       created_at=then, updated_at=then)
    parent = Message.objects.create(conversation=conv, role="user", content="hi", created_at=then)
    for status in statuses:
        parent = Message.objects.create(conversation=conv, parent=parent, role="assistant", status=status,
                                        content="hello", created_at=then)
    conv.current_leaf = parent
    conv.save(update_fields=["current_leaf"])
    return conv


def exists(conv):
    return Conversation.objects.filter(pk=conv.pk).exists()


@pytest.mark.django_db
def test_a_pass_deletes_old_chats_with_their_messages_and_nothing_else(caplog):
    from usage.models import UsageRecord

    alice, bob = make_user("alice"), make_user("bob")
    old = make_chat(alice, 40 * DAY, "done", "done")
    old_other_user = make_chat(bob, 31 * DAY, "error")
    recent = make_chat(alice, 29 * DAY, "done")
    kept = make_chat(alice, 400 * DAY, "done", kept=True)
    streaming = make_chat(alice, 40 * DAY, "done", "streaming")
    pending = make_chat(bob, 40 * DAY, "pending")
    ledger = UsageRecord.objects.create(user=alice, model="smollm2-135m",
                                        message=old.messages.filter(role="assistant").first(), total_tokens=5)
    old_messages = list(Message.objects.filter(conversation__in=[old, old_other_user]).values_list("pk", flat=True))

    with caplog.at_level(logging.INFO, logger="chat.retention"):
        assert retention.purge_expired(days=30) == (2, 5)
    assert "deleted 2 conversation(s) and 5 message(s)" in caplog.text
    assert not exists(old) and not exists(old_other_user)
    assert not Message.objects.filter(pk__in=old_messages).exists()
    for conv in (recent, kept, streaming, pending):
        assert exists(conv) and conv.messages.count() == Message.objects.filter(conversation=conv).count() > 0
    # The usage ledger outlives the conversation (quotas and admins' usage keep their numbers).
    ledger.refresh_from_db()
    assert ledger.message_id is None and ledger.total_tokens == 5
    # Once the streaming answer ends, the next pass deletes that chat too.
    streaming.messages.filter(status="streaming").update(status="done")
    assert retention.purge_expired(days=30) == (1, 3)
    assert not exists(streaming) and exists(pending) and exists(kept) and exists(recent)


@pytest.mark.django_db
def test_off_by_default_and_when_zero(settings):
    conv = make_chat(make_user(), 10_000 * DAY, "done")
    assert settings.SMOLSITE_RETENTION_DAYS == 0
    assert retention.purge_expired() == (0, 0)
    assert retention.purge_expired(days=0) == (0, 0)
    assert batch_retention.purge_batches() == (0, 0, 0)
    # (The timer itself still starts: stored files expire whatever this setting.)
    assert exists(conv)


@pytest.mark.django_db
def test_a_chat_with_a_running_batch_line_stays():
    from batches.models import Batch, BatchLine

    alice = make_user()
    conv = make_chat(alice, 40 * DAY, "done")
    batch = Batch.objects.create(owner=alice, status="in_progress", total=1)
    line = BatchLine.objects.create(batch=batch, index=0, custom_id="a", body={}, status="running",
                                    conversation_id=conv.pk)
    assert retention.purge_expired(days=30) == (0, 0) and exists(conv)
    BatchLine.objects.filter(pk=line.pk).update(status="done")
    assert retention.purge_expired(days=30) == (1, 2) and not exists(conv)


@pytest.mark.django_db
def test_activity_is_what_counts():
    """A new message moves updated_at (chat.actions), so a chat people still use is not deleted."""
    from chat import actions

    conv = make_chat(make_user(), 40 * DAY, "done")
    reply = actions.send(conv.pk, "Still here")
    Message.objects.filter(pk=reply.pk).update(status="done")
    assert retention.purge_expired(days=30) == (0, 0) and exists(conv)
    assert retention.purge_expired(days=30, now=timezone.now() + 31 * DAY) == (1, 4)


@pytest.mark.django_db
def test_the_keep_toggle(client):
    alice, bob = make_user("alice"), make_user("bob")
    conv = make_chat(alice, 40 * DAY, "done")
    client.force_login(alice)
    url = reverse("chat:keep", args=[conv.pk])
    response = client.post(url, {"kept": "1"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and 'aria-pressed="true"' in response.content.decode()
    conv.refresh_from_db()
    assert conv.kept
    assert retention.purge_expired(days=30) == (0, 0)
    assert client.post(url, {"kept": "maybe"}).status_code == 400
    assert client.get(url).status_code == 405
    client.force_login(bob)
    assert client.post(url, {"kept": "0"}).status_code == 404  # not bob's
    conv.refresh_from_db()
    assert conv.kept
    client.force_login(alice)
    assert client.post(url, {"kept": "0"}).status_code == 302
    conv.refresh_from_db()
    assert not conv.kept
    assert retention.purge_expired(days=30) == (1, 2)


@pytest.mark.django_db(transaction=True)
def test_the_embedded_timer_runs_passes_by_itself(settings):
    """The web process's timer (started by smolsite.startup when embedded) deletes an old chat
    without anyone calling purge_expired, and keeps running pass after pass."""
    settings.SMOLSITE_RETENTION_DAYS = 30
    settings.SMOLSITE_RETENTION_INTERVAL = 0.05
    alice = make_user()
    old, recent = make_chat(alice, 40 * DAY, "done"), make_chat(alice, DAY, "done")
    from batches.models import BatchFile

    expired = BatchFile.objects.create(owner=alice, filename="x.jsonl", data=b"{}",
                                       expires_at=timezone.now() - DAY)
    old_batch, _ = make_batch(alice, 40 * DAY, "completed", "old")
    timer = retention.start_retention()
    try:
        deadline = time.monotonic() + 60
        while exists(old) or timer.passes < 3 or BatchFile.objects.filter(pk=expired.pk).exists() \
                or type(old_batch).objects.filter(pk=old_batch.pk).exists():
            assert time.monotonic() < deadline, "the timer did not delete the old chat"
            assert timer.thread.is_alive()
            time.sleep(0.05)
        # A chat that falls idle after the first passes (made whole, then aged): a later pass takes it.
        late = make_chat(alice, DAY, "done")
        Conversation.objects.filter(pk=late.pk).update(updated_at=timezone.now() - 50 * DAY)
        while exists(late):
            assert time.monotonic() < deadline, "the timer stopped running passes"
            time.sleep(0.05)
    finally:
        timer.stop()
    assert exists(recent)


# ---- scaled out: Celery beat sends the pass to a real worker over Redis --------------------------

@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (run `make test-redis`)")
def test_celery_beat_runs_retention_on_a_worker(tmp_path, redis_db):
    from test_redis import CELERY, WorkerProcess, worker_env

    alice = make_user()
    old, kept = make_chat(alice, 40 * DAY, "done"), make_chat(alice, 40 * DAY, "done", kept=True)
    streaming = make_chat(alice, 40 * DAY, "streaming")
    env = {"SMOLSITE_RETENTION_DAYS": "30", "SMOLSITE_RETENTION_INTERVAL": "1"}
    # As `make worker` runs it: its device queue and the maintenance queue.
    worker = WorkerProcess("retention", "device.cpu,maintenance", tmp_path, **env).start()
    beat_log = tmp_path / "beat.log"
    with open(beat_log, "wb") as log:
        beat = subprocess.Popen([CELERY, "-A", "smolsite", "beat", "-s", str(tmp_path / "schedule"), "--loglevel", "INFO"],
                                cwd=Path(settings.BASE_DIR), env=worker_env(**env), stdout=log, stderr=subprocess.STDOUT)
    try:
        worker.wait_ready()
        deadline = time.monotonic() + 180
        while exists(old):
            assert time.monotonic() < deadline, f"beat + worker did not delete it:\n{worker.logs()}\n{beat_log.read_text()}"
            assert beat.poll() is None, beat_log.read_text()
            time.sleep(0.2)
    finally:
        beat.terminate()
        beat.wait(30)
        worker.stop()
    assert exists(kept) and exists(streaming)
    assert "smolsite.retention" in beat_log.read_text()  # sent by beat
    worker_log = worker.stdout_path.read_text(errors="replace") + worker.stderr_path.read_text(errors="replace")
    assert "retention: deleted 1 conversation(s)" in worker_log  # run on the worker


@pytest.fixture
def redis_db():
    import redis
    from urllib.parse import urlsplit

    url = settings.REDIS_URL
    assert int((urlsplit(url).path or "/0").lstrip("/") or 0) != 0, "give the tests a dedicated Redis database"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield client
    client.close()


# ---- batches and stored files (issue 16) ----------------------------------------------------------

def make_batch(owner, age, status, name):
    """A batch created ``age`` ago (and ended then unless still active), with one line and its
    input, output and error files."""
    from batches.models import Batch, BatchFile, BatchLine

    then = timezone.now() - age
    files = [BatchFile.objects.create(owner=owner, filename=f"{name}-{kind}.jsonl", data=b"{}", bytes=2,
                                      created_at=then, expires_at=None) for kind in ("in", "out", "err")]
    ended = {} if status in Batch.ACTIVE else {f"{status}_at": then}
    batch = Batch.objects.create(owner=owner, status=status, created_at=then, input_file=files[0],
                                 output_file=files[1], error_file=files[2], total=1, **ended)
    BatchLine.objects.create(batch=batch, index=0, custom_id="a", body={"messages": []}, status="done",
                             response={"body": {"choices": [{"message": {"content": "answer"}}]}})
    return batch, files


@pytest.mark.django_db
def test_a_pass_deletes_old_finished_batches_with_their_lines_and_files(settings):
    from batches.models import Batch, BatchFile, BatchLine

    settings.SMOLSITE_RETENTION_DAYS = 30
    alice = make_user()
    old, old_files = make_batch(alice, 40 * DAY, "completed", "old")
    cancelled, cancelled_files = make_batch(alice, 40 * DAY, "cancelled", "cancelled")
    running, running_files = make_batch(alice, 40 * DAY, "in_progress", "running")
    recent, recent_files = make_batch(alice, DAY, "completed", "recent")
    # An old finished batch whose input file a running batch also reads: the input stays.
    shared, _ = make_batch(alice, 40 * DAY, "failed", "shared")
    Batch.objects.filter(pk=running.pk).update(input_file=shared.input_file)

    assert batch_retention.purge_batches() == (3, 3, 8)  # the shared input file stays
    assert set(Batch.objects.values_list("pk", flat=True)) == {running.pk, recent.pk}
    assert set(BatchLine.objects.values_list("batch_id", flat=True)) == {running.pk, recent.pk}
    left = set(BatchFile.objects.values_list("pk", flat=True))
    assert not left & {f.pk for f in old_files + cancelled_files}
    assert {f.pk for f in running_files + recent_files} | {shared.input_file_id} == left
    assert batch_retention.purge_batches() == (0, 0, 0)


@pytest.mark.django_db
def test_expired_files_are_deleted_whatever_the_retention_setting(settings):
    from batches import service
    from batches.models import Batch, BatchFile

    assert settings.SMOLSITE_RETENTION_DAYS == 0
    alice = make_user()
    gone = service.store_file(alice, "gone.jsonl", b"{}")
    kept = service.store_file(alice, "kept.jsonl", b"{}")
    forever = BatchFile.objects.create(owner=alice, filename="forever.jsonl", data=b"{}", expires_at=None)
    running_input = service.store_file(alice, "input.jsonl", b"{}")
    Batch.objects.create(owner=alice, status="in_progress", input_file=running_input)
    now = timezone.now()
    BatchFile.objects.filter(pk__in=[gone.pk, running_input.pk]).update(expires_at=now - DAY)
    assert batch_retention.purge_expired_files() == 1
    assert set(BatchFile.objects.values_list("pk", flat=True)) == {kept.pk, forever.pk, running_input.pk}
    # The default expiry (30 days) applies to every stored file.
    assert batch_retention.purge_expired_files(now=now + 31 * DAY) == 1
    assert set(BatchFile.objects.values_list("pk", flat=True)) == {forever.pk, running_input.pk}
