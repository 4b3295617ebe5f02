"""The Batches page, in-process: upload (JSONL and CSV), per-line errors, the self-polling list
with progress, cancel, downloads, and other users' 404s. No worker runs here: the batches stay
in progress (the driver is a thread of served processes only)."""
import re

import pytest
from django.contrib.admin.utils import quote as admin_quote
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.core.files.uploadedfile import SimpleUploadedFile

from batches import service
from batches.models import Batch

pytestmark = pytest.mark.django_db
MODEL = "smollm2-135m"
GOOD = ('{"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}]}}\n')


@pytest.fixture
def alice(client):
    user = get_user_model().objects.create_user("alice", password="pw-123456789")
    client.force_login(user)
    return user


def upload(client, name, text, **fields):
    return client.post("/batches/", {"file": SimpleUploadedFile(name, text.encode()), "model": MODEL, **fields})


def test_page_needs_login(client):
    assert client.get("/batches/").status_code == 302


def test_upload_jsonl_then_the_list_polls_with_progress(client, alice):
    response = upload(client, "prompts.jsonl", GOOD)
    assert response.status_code == 302
    batch = Batch.objects.get(owner=alice)
    assert batch.status == "in_progress" and batch.total == 1
    page = client.get("/batches/").content.decode()
    assert 'hx-trigger="every 2s"' in page and "prompts.jsonl" in page and "<progress" in page
    assert "Cancel" in page
    # The site's CSP: no inline scripts or styles.
    assert not re.search(r"<script(?![^>]*\bsrc=)", page) and " style=" not in page and "<style" not in page
    fragment = client.get("/batches/list/", HTTP_HX_REQUEST="true").content.decode()
    assert fragment.startswith('<div id="batch-list"') and "0 done of 1" in fragment
    cancelled = client.post(f"/batches/{batch.id}/cancel/", HTTP_HX_REQUEST="true").content.decode()
    assert "Cancelling" in cancelled
    service.advance(Batch.objects.get(pk=batch.id))
    done = client.get("/batches/list/").content.decode()
    assert "Cancelled" in done and "hx-trigger" not in done  # nothing active: polling stops
    assert b'"batch_cancelled"' in client.get(f"/batches/{batch.id}/errors/").content  # the error file
    assert client.get(f"/batches/{batch.id}/input/").content.decode() == GOOD


def test_csv_becomes_a_batch_with_the_picked_model(client, alice):
    assert upload(client, "sheet.csv", "prompt,custom_id\nHello,one\nBye,\n", max_tokens=16).status_code == 302
    batch = Batch.objects.get(owner=alice)
    bodies = list(batch.lines.order_by("index").values_list("custom_id", "body"))
    assert [cid for cid, _ in bodies] == ["one", "row-2"]
    assert bodies[0][1] == {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}


def test_bad_lines_are_listed_and_nothing_runs(client, alice):
    response = upload(client, "bad.jsonl", GOOD + "{oops\n" + GOOD)
    assert response.status_code == 302  # the batch exists, failed, with its errors
    batch = Batch.objects.get(owner=alice)
    assert batch.status == "failed" and not batch.lines.exists()
    page = client.get("/batches/").content.decode()
    assert "Line 2:" in page and "Line 3:" in page and "nothing ran" in page
    assert b"duplicate_custom_id" in client.get(f"/batches/{batch.id}/problems/").content
    bad_csv = upload(client, "x.csv", "question\nhi\n")
    assert bad_csv.status_code == 422 and "prompt" in bad_csv.content.decode()


def test_another_user_gets_404s(client, alice):
    upload(client, "prompts.jsonl", GOOD)
    batch = Batch.objects.get(owner=alice)
    bob = get_user_model().objects.create_user("bob", password="pw-123456789")
    client.force_login(bob)
    assert client.get(f"/batches/{batch.id}/input/").status_code == 404
    assert client.post(f"/batches/{batch.id}/cancel/").status_code == 404
    assert client.get(f"/batches/{batch.id}/problems/").status_code == 404
    assert batch.id not in client.get("/batches/").content.decode()
    assert Batch.objects.get(pk=batch.id).status == "in_progress"


def test_admins_see_every_batch_in_django_admin(client, alice):
    upload(client, "prompts.jsonl", GOOD)
    batch = Batch.objects.get(owner=alice)
    admin = get_user_model().objects.create_superuser("root", password="pw-123456789")
    client.force_login(admin)
    listing = client.get("/admin/batches/batch/").content.decode()
    assert batch.id in listing and "alice" in listing
    # Follow the admin's own link: it escapes ids ("batch_22…" read raw would be 'batch"…').
    change = reverse("admin:batches_batch_change", args=[admin_quote(batch.pk)])
    assert f'href="{change}"' in listing
    page = client.get(change)
    assert page.status_code == 200 and batch.id in page.content.decode()
    assert client.get("/admin/batches/batchline/").status_code == 200
    assert client.get("/admin/batches/batchfile/").status_code == 200
