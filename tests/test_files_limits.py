"""Stored files (issue 16 §4, §5): names in Content-Disposition, the upload size refused before
the body is read (in Django and in front of it, at the ASGI layer), the per-user cap on stored
files, expiry (OpenAI's expires_after, a default for every file) and the active-batch limit
checked before a file is validated."""
import json
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.test import Client
from django.test.client import FakePayload
from django.urls import reverse
from django.utils import timezone
from django.utils.http import content_disposition_header

from api.models import ApiKey
from batches import service
from batches.models import Batch, BatchFile

pytestmark = pytest.mark.django_db
MODEL = "smollm2-135m"
GOOD = (json.dumps({"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}}) + "\n").encode()
BOUNDARY = "b0undary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


@pytest.fixture
def alice():
    user = get_user_model().objects.create_user("alice", password="pw-123456789")
    _, raw = ApiKey.create_for(user, "test")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    page = Client()
    page.force_login(user)
    return user, api, page


def multipart(data, filename="in.jsonl", **fields):
    out = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
           for k, v in {"purpose": "batch", **fields}.items()]
    out.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
               f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    out.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(out)


def upload(api, data, **fields):
    return api.generic("POST", "/v1/files", multipart(data, **fields), content_type=MULTIPART)


def assert_error(response, status, code):
    assert response.status_code == status, response.content[:300]
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"], error
    return error


# ---- names in Content-Disposition -----------------------------------------------------------

def test_download_names_are_escaped_in_content_disposition(alice):
    user, api, page = alice
    name = 'x";filename=evil.sh;a="b.jsonl'
    stored = service.store_file(user, name, GOOD)
    expected = content_disposition_header(True, name)
    assert expected == 'attachment; filename="x\\";filename=evil.sh;a=\\"b.jsonl"'
    assert api.get(f"/v1/files/{stored.pk}/content")["Content-Disposition"] == expected
    batch = service.create_batch(user, stored)
    assert page.get(reverse("batches:download", args=[batch.pk, "input"]))["Content-Disposition"] == expected
    # A name outside ASCII travels as RFC 5987's filename*.
    stored = service.store_file(user, "résumé;x.jsonl", GOOD)
    assert api.get(f"/v1/files/{stored.pk}/content")["Content-Disposition"] == \
        "attachment; filename*=utf-8''r%C3%A9sum%C3%A9%3Bx.jsonl"


# ---- the upload size ----------------------------------------------------------------------------

def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(alice, settings):
    _, api, _ = alice
    settings.SMOLSITE_BATCH_MAX_BYTES = 1000
    body = multipart(GOOD)
    payload = FakePayload(body)
    # The declared length says 100 MB; reading would run past what the payload holds (and fail).
    response = api.generic("POST", "/v1/files", b"", content_type=MULTIPART,
                           **{"wsgi.input": payload, "CONTENT_LENGTH": str(100 * 1024 * 1024)})
    error = assert_error(response, 413, "file_too_large")
    assert "104,857,600" in error["message"] and "1,000" in error["message"]
    assert not payload.read_started and not BatchFile.objects.exists()


def test_a_file_over_the_limit_within_a_declared_length_is_stopped_by_the_upload_handler(alice, settings):
    _, api, _ = alice
    settings.SMOLSITE_BATCH_MAX_BYTES = 1000
    assert_error(upload(api, GOOD * 40), 413, "file_too_large")  # 5 KB, within the declared slack
    assert not BatchFile.objects.exists()
    assert upload(api, GOOD).status_code == 200  # under the limit: stored


def asgi_post(path, chunks, headers=()):
    """Drive the site's ASGI application (as daphne would) with a POST whose body arrives in
    ``chunks``; returns (status, body, bytes the application asked for)."""
    from smolsite.asgi import application

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-type", MULTIPART.encode()), *headers],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    pending, read, sent = list(chunks), [0], []

    async def receive():
        if not pending:
            return {"type": "http.disconnect"}
        chunk = pending.pop(0)
        read[0] += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message):
        sent.append(message)

    async_to_sync(application)(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, read[0]


@pytest.mark.parametrize("path", ["/v1/files", "/batches/"])
def test_in_front_of_django_a_declared_length_is_refused_unread_and_a_chunked_body_is_capped(settings, path):
    """Django reads a whole body into a spooled file before any view runs, so served (ASGI) the
    limit is applied in front of it (batches.uploads.UploadCap)."""
    settings.SMOLSITE_BATCH_MAX_BYTES = 1000
    chunk = b"x" * 16384
    status, body, read = asgi_post(path, [chunk] * 100, [(b"content-length", str(100 * len(chunk)).encode())])
    assert status == 413 and read == 0
    status, body, read = asgi_post(path, [chunk] * 100)  # no Content-Length: cut off as it arrives
    assert status == 413 and read < 10 * len(chunk)
    if path.startswith("/v1/"):
        assert json.loads(body)["error"]["code"] == "file_too_large"
    else:
        assert b"at most 1,000 bytes" in body


# ---- the per-user cap -----------------------------------------------------------------------------

def test_stored_files_per_user_are_capped_in_count_and_bytes(alice, settings):
    user, api, page = alice
    settings.SMOLSITE_MAX_FILES_PER_USER = 2
    assert upload(api, GOOD).status_code == 200
    assert upload(api, GOOD).status_code == 200
    error = assert_error(upload(api, GOOD), 400, "file_limit_exceeded")
    assert "at most 2" in error["message"] and error["param"] == "file"
    assert BatchFile.objects.filter(owner=user).count() == 2
    # The Batches page's upload is counted the same way.
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = page.post("/batches/", {"file": SimpleUploadedFile("p.jsonl", GOOD), "model": MODEL})
    assert response.status_code == 422 and "at most 2" in response.content.decode()
    assert BatchFile.objects.filter(owner=user).count() == 2

    settings.SMOLSITE_MAX_FILES_PER_USER = 0  # off
    settings.SMOLSITE_MAX_FILE_BYTES_PER_USER = 3 * len(GOOD)
    assert upload(api, GOOD).status_code == 200
    error = assert_error(upload(api, GOOD), 400, "storage_limit_exceeded")
    assert f"{3 * len(GOOD):,}" in error["message"]
    assert BatchFile.objects.filter(owner=user).count() == 3
    # Deleting one makes room again.
    api.delete(f"/v1/files/{BatchFile.objects.filter(owner=user).first().pk}")
    assert upload(api, GOOD).status_code == 200


# ---- expiry ---------------------------------------------------------------------------------------

def test_files_expire_by_default_or_as_the_upload_asks(alice, settings):
    user, api, _ = alice
    default = upload(api, GOOD).json()
    # (Both stamps are whole seconds of two clock reads made together: they may straddle a second.)
    assert default["expires_at"] - default["created_at"] - 30 * 86400 in (0, 1)
    asked = upload(api, GOOD, **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}).json()
    assert asked["expires_at"] == asked["created_at"] + 3600
    assert api.get(f"/v1/files/{asked['id']}").json()["expires_at"] == asked["expires_at"]
    as_json = upload(api, GOOD, expires_after=json.dumps({"anchor": "created_at", "seconds": 7200})).json()
    assert as_json["expires_at"] == as_json["created_at"] + 7200
    for fields, param in ((({"expires_after[anchor]": "created_at", "expires_after[seconds]": "10"}),
                           "expires_after.seconds"),
                          ({"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"},
                           "expires_after.anchor"),
                          ({"expires_after[seconds]": "many"}, "expires_after.anchor"),
                          ({"expires_after": "{not json"}, "expires_after")):
        assert assert_error(upload(api, GOOD, **fields), 400, None)["param"] == param
    assert BatchFile.objects.count() == 3
    # Files a batch writes expire too.
    written = service.store_file(user, "out.jsonl", b"{}\n", purpose="batch_output")
    assert timedelta(days=29) < written.expires_at - timezone.now() <= timedelta(days=30)


# ---- the active-batch limit before the file is read ---------------------------------------------

def test_the_active_batch_limit_is_checked_before_the_file_is_validated(alice, settings, monkeypatch):
    user, api, page = alice
    settings.SMOLSITE_BATCH_MAX_ACTIVE = 1
    file_id = upload(api, GOOD).json()["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    assert api.post("/v1/batches", body, content_type="application/json").status_code == 200
    # Count the validations (the real one runs): a refused batch must not cost a file's check.
    checks = []
    real = service.check_file
    monkeypatch.setattr(service, "check_file", lambda *a, **k: checks.append(1) or real(*a, **k))
    error = assert_error(api.post("/v1/batches", body, content_type="application/json"), 429, "too_many_batches")
    assert "at most 1" in error["message"]
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = page.post("/batches/", {"file": SimpleUploadedFile("p.jsonl", GOOD), "model": MODEL})
    assert response.status_code == 422 and "at most 1" in response.content.decode()
    assert checks == [] and Batch.objects.filter(owner=user).count() == 1
