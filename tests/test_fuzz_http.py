"""Fuzzing the HTTP side (issue 12, "Bad input and access"): random and near-valid bodies, wrong
types, unknown ids and huge payloads to the OpenAI-compatible API (/v1/chat/completions,
/v1/completions, /v1/files, /v1/batches) and the chat pages' htmx views (rename, settings, model,
branch, keys, the Batches page), in-process through Django's test client, which re-raises any
exception a view lets escape: a crash fails the test rather than hiding in a 500 page.

Never a 500; API errors are JSON in OpenAI's shape; a refused request writes nothing (every row is
compared before and after). The site here is scaled out with no device worker alive (REDIS_URL set,
no heartbeats), so an API request that passes every check is answered 503 model_not_available
before any row exists: every chat/completions answer is a refusal. Runs on SQLite and PostgreSQL.

(The API has no OpenAPI description to drive schemathesis with; these are hypothesis strategies
shaped like OpenAI's request bodies, plus fully random ones.)"""
import json
import secrets
from urllib.parse import quote

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.forms.models import model_to_dict
from django.test import Client
from hypothesis import event, example, given, strategies as st

from api.models import ApiKey
from batches.models import Batch, BatchFile, BatchLine
from chat.models import Conversation, Message
from fuzz_support import fuzz, json_values, odd_numbers, odd_text, scalars
from usage.models import UsageRecord

pytestmark = pytest.mark.django_db
MODEL = "smollm2-135m"
HX = {"HTTP_HX_REQUEST": "true"}
API_STATUSES = {400, 401, 404, 405, 409, 413, 415, 422, 429, 503}


def rows():
    """Every row a request could write, field by field."""
    out = []
    for model in (Conversation, Message, BatchFile, Batch, BatchLine, UsageRecord, get_user_model()):
        for obj in model.objects.order_by("pk"):
            fields = model_to_dict(obj)
            fields.pop("last_login", None)
            out.append((model.__name__, obj.pk, repr(sorted(fields.items(), key=lambda kv: kv[0]))))
    out += [("ApiKey", k.pk, k.name, k.revoked_at) for k in ApiKey.objects.order_by("pk")]
    return out


@pytest.fixture
def site(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # scaled out, and no worker has ever beaten
    user = get_user_model().objects.create_user("fuzzer", password="correct-horse-battery-9")
    _, raw = ApiKey.create_for(user, "fuzz")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    pages = Client()
    pages.force_login(user)
    return user, api, pages


def assert_api_error(response):
    assert response.status_code in API_STATUSES, (response.status_code, response.content[:500])
    assert response["Content-Type"] == "application/json", response["Content-Type"]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)


# ---- chat and text completions ---------------------------------------------------------------

roles = st.sampled_from(["system", "user", "assistant", "developer", "tool", "function", "", "USER"]) | json_values
content_parts = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio"]) | odd_text},
                                               optional={"text": scalars, "image_url": json_values}), max_size=3)
odd_messages = st.lists(st.fixed_dictionaries(
    {"role": roles}, optional={"content": st.one_of(odd_text, content_parts, json_values), "name": scalars,
                               "tool_calls": json_values, "tool_call_id": scalars, "reasoning_content": scalars}),
    max_size=4)
plain_messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                                 "content": st.text(min_size=1, max_size=30)}), min_size=1, max_size=3)
response_formats = st.one_of(
    json_values,
    st.sampled_from([{"type": "text"}, {"type": "json_object"},
                     {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}]),
    st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema"]) | odd_text},
                          optional={"json_schema": st.fixed_dictionaries(
                              {"name": scalars}, optional={"schema": json_values, "strict": scalars})}),
)
# Each parameter: usually a plausible value (so many requests pass every check and reach the
# worker lookup), sometimes anything at all.
PLAUSIBLE = {
    "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "max_tokens": st.integers(1, 64),
    "max_completion_tokens": st.integers(1, 64), "n": st.integers(1, 2), "seed": st.integers(0, 2 ** 31),
    "stop": st.text(min_size=1, max_size=5) | st.lists(st.text(min_size=1, max_size=5), max_size=2),
    "stream": st.booleans(), "stream_options": st.just({"include_usage": True}), "user": st.text(max_size=10),
    "response_format": response_formats, "reasoning_effort": st.sampled_from(["low", "medium", "high"]),
    "logprobs": st.just(False), "presence_penalty": st.just(0), "frequency_penalty": st.just(0),
    "tools": json_values, "tool_choice": json_values, "logit_bias": json_values, "metadata": json_values,
    "chat_template_kwargs": st.just({"enable_thinking": False}) | json_values, "echo": st.booleans(),
    "suffix": scalars, "best_of": scalars, "store": scalars, "top_logprobs": scalars,
}
OPTIONAL = {name: st.one_of(plausible, plausible, scalars | json_values) for name, plausible in PLAUSIBLE.items()}

chat_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from([MODEL, MODEL, MODEL]) | scalars,
     "messages": st.one_of(plain_messages, plain_messages, odd_messages, json_values)}, optional=OPTIONAL)
completion_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from([MODEL, MODEL, MODEL]) | scalars,
     "prompt": st.one_of(st.text(min_size=1, max_size=30), odd_text, st.lists(odd_text, max_size=3),
                         st.lists(st.integers(), max_size=3), json_values)},
    optional=OPTIONAL)
raw_bodies = st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                       json_values.map(lambda v: json.dumps(v).encode()))
content_types = st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x", "application/json; charset=latin-1", ""])


@fuzz
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
       body=st.one_of(chat_bodies.map(json.dumps).map(str.encode), completion_bodies.map(json.dumps).map(str.encode),
                      raw_bodies),
       content_type=content_types)
@example(path="/v1/chat/completions", content_type="application/json",  # valid: reaches the worker lookup
         body=json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode())
@example(path="/v1/completions", content_type="application/json", body=json.dumps({"model": MODEL, "prompt": "hi"}).encode())
def test_fuzz_completion_requests_are_refused_cleanly_and_write_nothing(site, path, body, content_type):
    _, api, _ = site
    before = rows()
    response = api.generic("POST", path, body, content_type=content_type)
    error = response.json()['error']
    event(f"{response.status_code} {error['code']} {error['param']}")  # --hypothesis-show-statistics
    assert_api_error(response)
    assert rows() == before


@fuzz
@given(method=st.sampled_from(["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "POST"]),
       path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/files", "/v1/batches",
                             "/v1/files/x/content", "/v1/batches/x/cancel", "/v1"]) | odd_text.map(
           lambda t: "/v1/" + quote(t, safe="/")),
       header=st.one_of(st.none(), odd_text, st.sampled_from(["Bearer", "Bearer ", "bearer x", "Basic Zm9v",
                                                              "Bearer " + "k" * 5000])))
def test_fuzz_methods_paths_and_keys(site, method, path, header):
    """Any method on any API path, with no key, a bad key or the right one: JSON, never a 500."""
    _, api, _ = site
    client = api if header is None else Client(HTTP_AUTHORIZATION=header)
    before = rows()
    response = client.generic(method, path)
    if method == "HEAD":
        assert response.status_code < 500
    elif response.status_code != 200:
        assert_api_error(response)
    else:
        assert header is None and method == "GET"  # only an authenticated read succeeds
    assert rows() == before


# ---- files and batches -----------------------------------------------------------------------

good_line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}})
file_contents = st.one_of(
    st.binary(max_size=300),
    st.just(good_line.encode()),
    st.lists(st.fixed_dictionaries({"custom_id": scalars, "method": st.sampled_from(["POST", "GET"]) | scalars,
                                    "url": st.sampled_from(["/v1/chat/completions", "/v1/completions"]) | scalars,
                                    "body": chat_bodies | json_values}), min_size=1, max_size=3)
    .map(lambda lines: "\n".join(json.dumps(line) for line in lines).encode()),
)
# What a client may put in a multipart filename: anything but CR (it ends the part's header line).
filenames = st.text(alphabet=st.characters(blacklist_characters="\r", blacklist_categories=("Cs",)),
                    max_size=80) | st.sampled_from(['a"b.jsonl', "a;b=c.jsonl", "..\\..\\x.jsonl", "/", ".", "..",
                                                    "a\nb.jsonl", "<img src=x onerror=alert(1)>.jsonl", "é.csv"])


def multipart(fields, filename, data):
    """A multipart/form-data body written by hand: Django's test client would refuse some of the
    names a client can send (SimpleUploadedFile validates them), and the server must not rely on
    that."""
    boundary = "fuzz-" + secrets.token_hex(12)
    out = []
    for name, value in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                   + str(value).encode("utf-8", "surrogatepass") + b"\r\n")
    out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
               f"Content-Type: application/octet-stream\r\n\r\n".encode("utf-8", "surrogatepass") + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def upload(client, path, filename, data, **fields):
    body, content_type = multipart(fields, filename, data)
    return client.generic("POST", path, body, content_type=content_type)


@fuzz
@given(name=filenames, data=file_contents, purpose=st.sampled_from(["batch", "fine-tune", "", "BATCH"]) | odd_text,
       expiry=st.fixed_dictionaries({}, optional={
           "expires_after[anchor]": st.sampled_from(["created_at", ""]) | odd_text,
           "expires_after[seconds]": st.integers(-10, 10**10).map(str) | odd_text,
           "expires_after": st.sampled_from(['{"anchor": "created_at", "seconds": 3600}', "[]", "null"]) | odd_text}))
def test_fuzz_file_uploads(site, name, data, purpose, expiry):
    user, api, _ = site
    before, files = rows(), BatchFile.objects.count()
    response = upload(api, "/v1/files", name, data, purpose=purpose, **expiry)
    event(str(response.status_code))
    if response.status_code != 200:
        assert_api_error(response)
        assert rows() == before
        return
    assert purpose == "batch" and BatchFile.objects.count() == files + 1
    file_id = response.json()["id"]
    # Whatever the name was, the stored file can be read back and downloaded.
    assert api.get(f"/v1/files/{file_id}").status_code == 200
    download = api.get(f"/v1/files/{file_id}/content")
    assert download.status_code == 200 and download.content == data
    assert "\n" not in download["Content-Disposition"] and "\r" not in download["Content-Disposition"]


@fuzz
@given(file_choice=st.sampled_from(["good", "good", "bad", "other"]) | odd_text,
       extra=st.fixed_dictionaries(
           {"endpoint": st.sampled_from(["/v1/chat/completions"] * 3 + ["/v1/completions"]) | scalars,
            "completion_window": st.sampled_from(["24h", "24h", "1h"]) | scalars},
           optional={"metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3) | json_values}),
       raw=st.one_of(st.none(), st.none(), st.none(), raw_bodies))
@example(file_choice="good", extra={"endpoint": "/v1/chat/completions", "completion_window": "24h"}, raw=None)
@example(file_choice="bad", extra={"endpoint": "/v1/chat/completions", "completion_window": "24h"}, raw=None)
def test_fuzz_batch_creation(site, file_choice, extra, raw):
    user, api, _ = site
    good = BatchFile.objects.create(owner=user, filename="g.jsonl", data=good_line.encode(), bytes=len(good_line))
    bad = BatchFile.objects.create(owner=user, filename="b.jsonl", data=b"{not json", bytes=9)
    other = BatchFile.objects.create(owner=get_user_model().objects.get_or_create(username="someone")[0],
                                     filename="o.jsonl", data=good_line.encode(), bytes=len(good_line))
    file_id = {"good": good.pk, "bad": bad.pk, "other": other.pk}.get(file_choice, file_choice)
    body = raw if raw is not None else json.dumps({"input_file_id": file_id, **extra}).encode()
    before, batches = rows(), Batch.objects.count()
    response = api.generic("POST", "/v1/batches", body, content_type="application/json")
    event(f"{response.status_code} {response.json().get('status') or response.json()['error']['param']}")
    if response.status_code == 200:
        # Created (failed at once when its lines are bad): only from one's own file.
        assert Batch.objects.count() == batches + 1 and file_id in (good.pk, bad.pk)
        batch = response.json()
        assert batch["status"] == ("in_progress" if file_id == good.pk else "failed")
        assert api.post(f"/v1/batches/{batch['id']}/cancel").status_code in (200, 409)
    else:
        assert_api_error(response)
        assert rows() == before


@fuzz
@given(object_id=odd_text | st.integers().map(str), params=st.dictionaries(
    st.sampled_from(["limit", "after", "purpose", "order"]), odd_text | st.integers().map(str), max_size=3))
def test_fuzz_ids_and_listing_parameters(site, object_id, params):
    _, api, _ = site
    before = rows()
    quoted = quote(object_id, safe="")
    for method, path in [("GET", f"/v1/files/{quoted}"), ("DELETE", f"/v1/files/{quoted}"),
                         ("GET", f"/v1/files/{quoted}/content"), ("GET", f"/v1/batches/{quoted}"),
                         ("POST", f"/v1/batches/{quoted}/cancel"), ("GET", f"/v1/models/{quoted}")]:
        response = api.generic(method, path)
        if response.status_code != 200:
            assert_api_error(response)
    for path in ("/v1/files", "/v1/batches"):
        response = api.get(path, params)
        if response.status_code != 200:
            assert_api_error(response)
    assert rows() == before


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/batches"])
def test_huge_api_bodies_are_413_json_and_write_nothing(site, path):
    _, api, _ = site
    before = rows()
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 30_000_000}]})
    assert_api_error(response := api.generic("POST", path, body, content_type="application/json"))
    assert response.status_code == 413
    assert rows() == before


def test_a_file_over_the_limit_is_413_and_stores_nothing(site, settings):
    settings.SMOLSITE_BATCH_MAX_BYTES = 1000
    _, api, _ = site
    before = rows()
    response = api.post("/v1/files", {"file": SimpleUploadedFile("big.jsonl", b"x" * 5000), "purpose": "batch"})
    assert_api_error(response)
    assert response.status_code == 413 and rows() == before


# ---- the chat pages' htmx views --------------------------------------------------------------

form_values = odd_text | odd_numbers.map(str) | st.sampled_from(["on", "off", "true", "0.5", "1e3", "-0", " 7 "])


@pytest.fixture
def chat(site):
    user, _, pages = site
    conv = Conversation.objects.create(owner=user, title="before", model=MODEL)
    q = Message.objects.create(conversation=conv, role="user", content="q")
    a = Message.objects.create(conversation=conv, parent=q, role="assistant", content="a", status="done")
    conv.current_leaf = a
    conv.save(update_fields=["current_leaf"])
    return conv, pages


plausible_form = st.fixed_dictionaries({}, optional={
    "title": st.text(max_size=250), "system_prompt": st.text(max_size=50), "temperature": st.floats(0, 2).map(str),
    "top_p": st.floats(0.01, 1).map(str), "max_tokens": st.integers(1, 9000).map(str), "thinking": st.just("on"),
    "model": st.just(MODEL), "message": st.sampled_from(["1", "2", "3"])})


@fuzz
@given(view=st.sampled_from(["rename", "settings", "model", "branch"]), htmx=st.booleans(),
       data=plausible_form | st.dictionaries(st.sampled_from(["title", "system_prompt", "temperature", "top_p",
                                                              "max_tokens", "thinking", "model", "message"])
                                             | odd_text, form_values, max_size=6))
def test_fuzz_chat_forms(chat, view, htmx, data):
    conv, pages = chat
    before = rows()
    response = pages.post(f"/c/{conv.pk}/{view}/", data, **(HX if htmx else {}))
    event(f"{view} {response.status_code}")
    assert response.status_code in (200, 302, 400, 404, 409, 422), response.status_code
    if response.status_code >= 400:
        assert rows() == before, f"a refused {view} wrote"


@fuzz
@given(segment=odd_text | odd_numbers.map(str), tail=st.sampled_from(
    ["", "thread/", "item/", "rename/", "delete/", "settings/", "model/", "branch/", "cancel/", "problems/",
     "input/", "output/", "errors/", "x/"]), prefix=st.sampled_from(["c", "batches", "account/keys"]),
    method=st.sampled_from(["get", "post"]))
def test_fuzz_ids_in_page_urls(chat, segment, tail, prefix, method):
    conv, pages = chat
    before = rows()
    response = getattr(pages, method)(f"/{prefix}/{quote(segment, safe='')}/{tail}", **HX)
    assert response.status_code in (200, 302, 400, 404, 405, 422), response.status_code
    if response.status_code >= 400:  # (a segment can be the user's own chat: deleting that is allowed)
        assert rows() == before


@fuzz
@given(name=form_values, days=form_values)
def test_fuzz_api_key_form(chat, name, days):
    _, pages = chat
    keys = ApiKey.objects.count()
    response = pages.post("/account/keys/", {"name": name, "expires_in_days": days})
    assert response.status_code in (200, 400)
    assert ApiKey.objects.count() == keys + (response.status_code == 200)


@fuzz
@given(name=filenames, data=file_contents | st.sampled_from([b"prompt\nhello\n", b"prompt,system\n\"a,b\n",
                                                             b"\xef\xbb\xbfprompt\nx\n", b"custom_id\n1\n"]),
       model=st.just(MODEL) | odd_text, max_tokens=form_values)
def test_fuzz_batches_page_upload(chat, name, data, model, max_tokens):
    _, pages = chat
    before, batches = rows(), Batch.objects.count()
    response = upload(pages, "/batches/", name, data, model=model, max_tokens=max_tokens)
    event(str(response.status_code))
    assert response.status_code in (200, 302, 422), response.status_code
    if response.status_code == 302:
        assert Batch.objects.count() == batches + 1
        batch = Batch.objects.latest("created_at")
        for which in ("input", "errors", "output"):
            download = pages.get(f"/batches/{batch.pk}/{which}/")
            assert download.status_code in (200, 404)
            if download.status_code == 200:
                assert "\n" not in download["Content-Disposition"]
        assert pages.get("/batches/list/", **HX).status_code == 200
    else:
        assert rows() == before


def test_a_refused_batch_upload_on_the_page_stores_no_file(chat, settings):
    """Found by the fuzzer: the page stored the file, then the batch was refused (too many running),
    leaving an orphan file behind."""
    settings.SMOLSITE_BATCH_MAX_ACTIVE = 1
    _, pages = chat
    assert upload(pages, "/batches/", "one.jsonl", good_line.encode()).status_code == 302
    before = rows()
    response = upload(pages, "/batches/", "two.jsonl", good_line.encode())
    assert response.status_code == 422 and b"at most 1 may run at once" in response.content
    assert rows() == before
