"""Batch input files checked line by line before anything runs, and the Files/Batches endpoints'
ownership and pagination, in-process (no worker: a failed batch never reaches one). Runs on
SQLite and PostgreSQL."""
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile

from api.models import ApiKey
from batches.models import Batch, BatchLine
from chat.models import Conversation

pytestmark = pytest.mark.django_db
MODEL = "smollm2-135m"


def line(custom_id="a", body=None, **extra):
    item = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": body if body is not None else {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                   "max_tokens": 4}}
    item.update(extra)
    return json.dumps(item)


@pytest.fixture
def people():
    out = {}
    for name in ("alice", "bob"):
        user = get_user_model().objects.create_user(name, password="pw-123456789")
        out[name] = ApiKey.create_for(user, "tests")[1]
    return out


def auth(key):
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def upload(client, key, text, name="in.jsonl", purpose="batch"):
    response = client.post("/v1/files", {"file": SimpleUploadedFile(name, text.encode()), "purpose": purpose},
                           **auth(key))
    return response


def create(client, key, text, **extra):
    file_id = upload(client, key, text).json()["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **extra}
    return client.post("/v1/batches", json.dumps(body), content_type="application/json", **auth(key))


def errors_of(response):
    assert response.status_code == 200, response.content
    batch = response.json()
    assert batch["status"] == "failed" and batch["failed_at"] and batch["in_progress_at"] is None
    return {(e["line"], e["code"]) for e in batch["errors"]["data"]}


SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
    "n": {"type": "integer", "minimum": 3}}}}}


def test_every_bad_line_is_listed_and_nothing_runs(client, people):
    text = "\n".join([
        line("ok"),
        "{not json",
        line(""),                                   # missing custom_id
        line("ok"),                                 # duplicate
        line("m", method="GET"),
        line("u", url="/v1/completions"),
        line("model", body={"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        line("temp", body={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 9}),
        line("schema", body={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                             "response_format": SCHEMA}),
        line("stream", body={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}),
        line("stop", body={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": "x",
                           "response_format": {"type": "json_object"}}),
        line("nomsg", body={"model": MODEL}),
        "[1, 2]",
    ])
    errors = errors_of(create(client, people["alice"], text))
    assert errors == {(2, "invalid_json_line"), (3, "missing_custom_id"), (4, "duplicate_custom_id"),
                      (5, "invalid_method"), (6, "invalid_url"), (7, "model_not_found"), (8, "invalid_request"),
                      (9, "unsupported_schema"), (10, "invalid_request"), (11, "invalid_request"),
                      (12, "invalid_request"), (13, "invalid_json_line")}
    assert not BatchLine.objects.exists() and not Conversation.objects.exists()


def test_limits_are_settings(client, people, settings):
    settings.SMOLSITE_BATCH_MAX_LINES = 2
    assert errors_of(create(client, people["alice"], "\n".join([line("a"), line("b"), line("c")]))) == {
        (None, "too_many_requests")}
    settings.SMOLSITE_BATCH_MAX_BYTES = 50
    too_big = upload(client, people["alice"], line("a"))
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "file_too_large"
    from batches.validation import BatchInvalid, validate_jsonl

    with pytest.raises(BatchInvalid) as refused:
        validate_jsonl(line("a").encode())
    assert refused.value.errors[0]["code"] == "file_too_large"
    assert errors_of(create(client, people["alice"], "\n\n")) == {(None, "empty_file")}


def test_batches_in_progress_per_user_are_limited(client, people, settings):
    settings.SMOLSITE_BATCH_MAX_ACTIVE = 1
    first = create(client, people["alice"], line("a"))
    assert first.json()["status"] == "in_progress" and first.json()["request_counts"]["total"] == 1
    second = create(client, people["alice"], line("a"))
    assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_batches"
    assert create(client, people["bob"], line("a")).json()["status"] == "in_progress"


def test_request_errors_in_openai_shape(client, people):
    key = people["alice"]
    assert upload(client, key, line(), purpose="fine-tune").json()["error"]["param"] == "purpose"
    response = client.post("/v1/batches", json.dumps({"input_file_id": "file-nope", "endpoint": "/v1/chat/completions",
                                                      "completion_window": "24h"}),
                           content_type="application/json", **auth(key))
    assert response.status_code == 404 and response.json()["error"]["code"] == "file_not_found"
    file_id = upload(client, key, line()).json()["id"]
    for body, param in (({"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"},
                         "endpoint"),
                        ({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "1h"},
                         "completion_window")):
        response = client.post("/v1/batches", json.dumps(body), content_type="application/json", **auth(key))
        assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert client.get("/v1/batches").status_code == 401
    assert client.get("/v1/batches?limit=0", **auth(key)).json()["error"]["param"] == "limit"


def test_another_user_sees_nothing(client, people):
    batch = create(client, people["alice"], line()).json()
    file_id = batch["input_file_id"]
    bob = auth(people["bob"])
    for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content", f"/v1/batches/{batch['id']}"):
        assert client.get(path, **bob).status_code == 404
    assert client.post(f"/v1/batches/{batch['id']}/cancel", **bob).status_code == 404
    assert client.delete(f"/v1/files/{file_id}", **bob).status_code == 404
    assert client.get("/v1/batches", **bob).json()["data"] == []
    assert client.get("/v1/files", **bob).json()["data"] == []
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    assert client.post("/v1/batches", json.dumps(body), content_type="application/json", **bob).status_code == 404
    alice = auth(people["alice"])
    assert client.get(f"/v1/files/{file_id}/content", **alice).content.decode() == line()


def test_list_pages_with_after_and_cancel_before_running(client, people, settings):
    settings.SMOLSITE_BATCH_MAX_ACTIVE = 10
    key = people["alice"]
    ids = [create(client, key, line()).json()["id"] for _ in range(5)]
    page = client.get("/v1/batches?limit=2", **auth(key)).json()
    assert [b["id"] for b in page["data"]] == ids[::-1][:2] and page["has_more"]
    seen = [b["id"] for b in page["data"]]
    while page["has_more"]:
        page = client.get(f"/v1/batches?limit=2&after={page['last_id']}", **auth(key)).json()
        seen += [b["id"] for b in page["data"]]
    assert seen == ids[::-1]
    cancelled = client.post(f"/v1/batches/{ids[0]}/cancel", **auth(key)).json()
    assert cancelled["status"] == "cancelling" and cancelled["cancelling_at"]
    from batches import service

    service.advance(Batch.objects.get(pk=ids[0]))
    final = client.get(f"/v1/batches/{ids[0]}", **auth(key)).json()
    assert final["status"] == "cancelled" and final["output_file_id"] is None and final["error_file_id"]
    again = client.post(f"/v1/batches/{ids[0]}/cancel", **auth(key))
    assert again.status_code == 409
    deleted = client.delete(f"/v1/files/{final['input_file_id']}", **auth(key)).json()
    assert deleted == {"id": final["input_file_id"], "object": "file", "deleted": True}


def test_csv_becomes_batch_lines():
    from batches.validation import csv_to_jsonl, validate_jsonl

    data = csv_to_jsonl(b"prompt,system,custom_id\nHello,Be brief,first\n\"Two, words\",,\n", MODEL, 8)
    lines = validate_jsonl(data)
    assert [cid for cid, _, _ in lines] == ["first", "row-2"]
    assert lines[0][1]["messages"][0] == {"role": "system", "content": "Be brief"}
    assert lines[1][1]["messages"] == [{"role": "user", "content": "Two, words"}] and lines[1][2].max_tokens == 8


def test_checked_lines_keep_no_grammar_until_they_run():
    """A file of lines with different schemas: validation converts each (refusing any that cannot
    be enforced) but keeps none of the grammars; each is made again when its line runs."""
    from batches.validation import validate_jsonl

    def line(i):
        schema = {"type": "object", "properties": {f"field{i}": {"type": "integer"}}, "required": [f"field{i}"]}
        return json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
            "model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}})

    lines = validate_jsonl("\n".join(line(i) for i in range(50)).encode())
    assert len(lines) == 50
    assert all(plan.grammar == "" and plan.schema is None for _, _, plan in lines)
