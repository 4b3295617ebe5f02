"""The OpenAI-compatible API against a real served process (daphne, the embedded device worker,
its own SQLite file, or in the PostgreSQL run a PostgreSQL database of its own), with the official ``openai`` package as the client and raw HTTP for what a
client library would never send. One server for the whole module; answers are kept short."""
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import jsonschema
import openai
import pytest

from browser_support import ARTIFACTS, REPO
from live_stack import LiveServer, live_database
from smollm3_tiny import write_tiny_smollm3

pytestmark = pytest.mark.model

SMOL = "smollm2-135m"
SETUP = """
import json
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from api.models import ApiKey
from usage.models import UserQuota

out = {}
for name, limits in (("alice", {}), ("bob", {}), ("tight", {"tokens_per_day": 60}), ("revoked", {}),
                     ("doomed", {}), ("deactivated", {})):
    user = get_user_model().objects.create_user(name, password="pw-123456789")
    if limits:
        UserQuota.objects.create(user=user, **limits)
    key, raw = ApiKey.create_for(user, f"{name}'s key")
    if name == "revoked":
        key.revoke()
    client = Client()
    client.force_login(user)
    out[name] = {"key": raw, "session": client.cookies[settings.SESSION_COOKIE_NAME].value}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_path):
    ARTIFACTS.mkdir(exist_ok=True)
    workdir = tmp_path_factory.mktemp("api")
    tiny = write_tiny_smollm3(workdir / "tiny-smollm3.gguf")
    models = {
        SMOL: {"path": default_model_path, "n_ctx": 2048, "threads": 2, "device": "cpu"},
        # The tiny SmolLM3's metadata (so the thinking plugin takes it for SmolLM3) with an answer
        # that repeats the question: "<think>…</think>…" comes back as reasoning and answer.
        "smollm3-echo": {"path": str(tiny), "backend": "echo", "device": "cpu"},
        "echo-slow": {"path": default_model_path, "backend": "echo", "delay": 0.05, "device": "cpu"},
        "missing": {"path": str(workdir / "no-such-file.gguf"), "device": "cpu"},  # no worker serves it
    }
    with live_database("api") as database_url:
        live = LiveServer(workdir, models, ARTIFACTS / "api-server.log", database_url=database_url).start()
        try:
            out = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP], cwd=REPO, env=live.env,
                                 check=True, capture_output=True, text=True, timeout=120).stdout
            live.people = json.loads(out.strip().splitlines()[-1])
            yield live
        finally:
            live.stop()


def client_for(server, who="alice", **options):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.people[who]["key"], max_retries=0,
                         timeout=120, **options)


def query(server, sql, *args):
    return server.query(sql, *args)


def message_id(completion_id):
    return int(completion_id.rsplit("-", 1)[1])


def raw_request(server, path, body=None, headers=None, method=None):
    """(status, headers, parsed JSON body) over plain HTTP."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method or ("POST" if data else "GET"),
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def bearer(server, who="alice"):
    return {"Authorization": f"Bearer {server.people[who]['key']}"}


def ask(text):
    return [{"role": "user", "content": text}]


# ---- models and plain chat ----------------------------------------------------------------------

def test_models_lists_the_configured_models_with_their_features(server):
    models = {m.id: m for m in client_for(server).models.list().data}
    assert set(models) == {SMOL, "smollm3-echo", "echo-slow", "missing"}
    assert models["smollm3-echo"].smolsite["thinking"] is True
    assert models[SMOL].smolsite["thinking"] is False and models[SMOL].smolsite["context_length"] == 2048
    assert client_for(server).models.retrieve(SMOL).id == SMOL


def test_chat_completion_is_a_message_row_in_an_api_conversation(server):
    answer = client_for(server).chat.completions.create(
        model=SMOL, messages=[{"role": "system", "content": "You are terse."},
                              {"role": "user", "content": [{"type": "text", "text": "Say hello."}]}],
        max_tokens=12, temperature=0)
    choice = answer.choices[0]
    assert answer.object == "chat.completion" and answer.model == SMOL
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens > 0 and 0 < answer.usage.completion_tokens <= 12
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert answer.usage.prompt_tokens_details.cached_tokens >= 0
    row = server.message(message_id(answer.id))
    assert row["content"] == choice.message.content and row["status"] == "done"
    conv = query(server, "SELECT c.*, k.name AS key_name FROM chat_conversation c JOIN api_apikey k "
                         "ON k.id = c.api_key_id WHERE c.id = ?", row["conversation_id"])[0]
    assert (conv["source"], conv["key_name"], conv["system_prompt"]) == ("api", "alice's key", "You are terse.")
    ledger = query(server, "SELECT * FROM usage_usagerecord WHERE message_id = ?", row["id"])[0]
    assert (ledger["source"], ledger["key_name"], ledger["model"]) == ("api", "alice's key", SMOL)
    assert ledger["total_tokens"] == answer.usage.total_tokens


def test_streaming_with_usage_ends_with_done(server):
    stream = client_for(server).chat.completions.create(
        model=SMOL, messages=ask("Name a colour."), max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= 0
    assert text and server.message(message_id(chunks[0].id))["content"] == text


def test_raw_stream_ends_with_data_done(server):
    body = {"model": "smollm3-echo", "messages": ask("one two three"), "stream": True}
    raw = {"model": SMOL, "messages": ask("Say hi."), "max_tokens": 4, "stream": True}
    request = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(raw).encode(),
                                     headers={"Content-Type": "application/json", **bearer(server)})
    with urllib.request.urlopen(request, timeout=60) as response:
        text = response.read().decode()
    assert ": 0 ahead in the queue" in text and text.endswith("data: [DONE]\n\n")
    request = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **bearer(server)})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        # Comment lines (": ...", waiting in the queue, keep-alives) are for proxies; clients skip them.
        events = [e for e in response.read().decode().split("\n\n") if e and not e.startswith(":")]
    assert events[-1] == "data: [DONE]"
    pieces = [json.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events[:-1]]
    assert "".join(pieces) == "one two three"


def test_n_choices_are_generated_together(server):
    answer = client_for(server).chat.completions.create(model=SMOL, messages=ask("Say hi."), n=2, max_tokens=8,
                                                        temperature=0.9, seed=7)
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(c.message.content for c in answer.choices)
    rows = [server.message(message_id(answer.id) + i) for i in range(2)]
    assert rows[0]["parent_id"] == rows[1]["parent_id"]  # two answers to one question: branches in the UI
    assert answer.usage.completion_tokens == sum(r["completion_tokens"] for r in rows)


def test_stop_strings_cut_the_answer(server):
    client = client_for(server)
    question = ask("List three fruits, separated by commas.")
    free = client.chat.completions.create(model=SMOL, messages=question, max_tokens=16, temperature=0)
    words = free.choices[0].message.content.split()
    assert len(words) >= 3, free.choices[0].message.content
    stop = words[2]
    cut = client.chat.completions.create(model=SMOL, messages=question, max_tokens=16, temperature=0, stop=[stop])
    text = cut.choices[0].message.content
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in text and free.choices[0].message.content.startswith(text)


def test_same_seed_same_text(server):
    client = client_for(server)
    kwargs = dict(model=SMOL, messages=ask("Invent a name for a cat."), max_tokens=12, temperature=0.8, seed=1234)
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    second = client.chat.completions.create(**kwargs).choices[0].message.content
    assert first == second and first



def test_with_a_seed_choice_i_of_n_uses_seed_plus_i(server):
    client = client_for(server)
    kwargs = dict(model=SMOL, messages=ask("Invent a name for a dog."), max_tokens=8, temperature=1.0)
    together = client.chat.completions.create(n=2, seed=40, **kwargs)
    alone = [client.chat.completions.create(seed=40 + i, **kwargs).choices[0].message.content for i in range(2)]
    assert alone[0] != alone[1]  # else choice 1 could use seed 40 as well and pass
    assert [c.message.content for c in together.choices] == alone


def test_max_tokens_beyond_the_context_is_cut_to_fit_and_the_answer_ends_with_length(server, default_model_path):
    from llama_cpp import Llama

    n_ctx = 2048  # the server's smollm2-135m
    vocab = Llama(model_path=default_model_path, vocab_only=True, verbose=False)
    # A count the model carries on with (it does not stop by itself), leaving the least room a prompt
    # must leave for an answer this long (a quarter of the context) and a little more.
    prompt, upto = "", 0
    while len(vocab.tokenize(prompt.encode(), add_bos=False)) < n_ctx * 3 // 4 - 24:
        upto += 1
        prompt += f"{upto}, "
    done = client_for(server).completions.create(model=SMOL, prompt=prompt, max_tokens=1000, temperature=0)
    assert done.choices[0].finish_reason == "length"
    assert done.usage.completion_tokens < 1000 and done.usage.prompt_tokens + done.usage.completion_tokens == n_ctx

# ---- structured output ----------------------------------------------------------------------------

SCHEMAS = {
    "nested_object": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                                          "zip": {"type": "integer"}},
                        "required": ["city", "zip"], "additionalProperties": False},
        },
        "required": ["name", "address"],
    },
    "array_of_enums": {
        "type": "object",
        "properties": {"colours": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                                   "minItems": 1, "maxItems": 3}},
        "required": ["colours"],
    },
    "enum_bool_ref": {
        "$defs": {"size": {"type": "string", "enum": ["small", "large"]}},
        "type": "object",
        "properties": {"size": {"$ref": "#/$defs/size"}, "ok": {"type": "boolean"},
                       "note": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 10}]}},
        "required": ["size", "ok", "note"],
    },
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_answers_validate(server, name):
    schema = SCHEMAS[name]
    answer = client_for(server).chat.completions.create(
        model=SMOL, messages=ask("Answer in JSON."), max_tokens=120, temperature=0.7, seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}})
    choice = answer.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), schema)


def test_the_clients_pydantic_helper_gets_a_parsed_answer(server):
    import enum

    from pydantic import BaseModel, Field

    class Colour(str, enum.Enum):
        red = "red"
        blue = "blue"

    class Pet(BaseModel):
        name: str = Field(max_length=12)
        colours: list[Colour] = Field(max_length=2)
        legs: int

    answer = client_for(server).chat.completions.parse(
        model=SMOL, messages=ask("Describe a pet."), response_format=Pet, max_tokens=80, temperature=0.5, seed=11)
    pet = answer.choices[0].message.parsed
    assert isinstance(pet, Pet) and len(pet.name) <= 12 and len(pet.colours) <= 2


def test_json_object_mode_answers_an_object(server):
    answer = client_for(server).chat.completions.create(
        model=SMOL, messages=ask("Give a JSON object with a key 'a'."), max_tokens=60, temperature=0,
        response_format={"type": "json_object"})
    choice = answer.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    else:  # cut by max_tokens, and it says so
        assert choice.finish_reason == "length" and choice.message.content.lstrip().startswith("{")


@pytest.mark.parametrize("schema, why", [
    ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}, "minimum"),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "oneOf"),
    ({"type": "string", "format": "email"}, "email"),
    ({"type": "string", "pattern": "(?<=a)b"}, "Pattern"),
])
def test_a_schema_the_grammar_cannot_enforce_is_refused(server, schema, why):
    with pytest.raises(openai.BadRequestError) as err:
        client_for(server).chat.completions.create(
            model=SMOL, messages=ask("x"), max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    assert err.value.status_code == 400 and why in err.value.message
    assert err.value.code == "unsupported_schema" and err.value.param == "response_format"


# ---- reasoning --------------------------------------------------------------------------------------

def test_reasoning_content_from_a_smollm3_model(server):
    client = client_for(server)
    answer = client.chat.completions.create(model="smollm3-echo", messages=ask("<think>plan it</think>The answer"))
    message = answer.choices[0].message
    assert message.reasoning_content == "plan it" and message.content == "The answer"
    stream = client.chat.completions.create(model="smollm3-echo", messages=ask("<think>a b</think>c d"), stream=True)
    chunks = [c for c in stream if c.choices]
    assert "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks) == "a b"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "c d"
    thinking = query(server, "SELECT thinking FROM chat_conversation c JOIN chat_message m ON m.conversation_id = c.id "
                             "WHERE m.id = ?", message_id(answer.id))[0]["thinking"]
    assert thinking == 1


@pytest.mark.parametrize("switch", [{"reasoning_effort": "none"},
                                    {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}])
def test_thinking_can_be_switched_off(server, switch):
    answer = client_for(server).chat.completions.create(model="smollm3-echo", messages=ask("hello"), **switch)
    assert answer.choices[0].message.content == "hello"
    row = query(server, "SELECT thinking FROM chat_conversation c JOIN chat_message m ON m.conversation_id = c.id "
                        "WHERE m.id = ?", message_id(answer.id))[0]
    assert row["thinking"] == 0


# ---- completions --------------------------------------------------------------------------------------

def test_completions_use_the_prompt_without_a_template(server):
    client = client_for(server)
    done = client.completions.create(model=SMOL, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert done.object == "text_completion" and done.choices[0].text
    # The prompt as given: 5 tokens and a BOS at most, not a chat template's dozens.
    assert done.usage.prompt_tokens <= 7
    echoed = client.completions.create(model="smollm3-echo", prompt="plain words here", echo=True)
    assert echoed.choices[0].text == "plain words hereplain words here"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="smollm3-echo", prompt="a b c", stream=True) if c.choices)
    assert streamed == "a b c"


# ---- errors ---------------------------------------------------------------------------------------------

def test_missing_bad_and_revoked_keys_are_401(server):
    for key in ("sk-smol-wrong", server.people["revoked"]["key"]):
        with pytest.raises(openai.AuthenticationError) as err:
            openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0).models.list()
        assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    status, _, body = raw_request(server, "/v1/models")
    assert status == 401 and body["error"]["code"] == "missing_api_key"
    status, _, body = raw_request(server, "/v1/models", headers={"Authorization": "Basic YWxpY2U6cHc="})
    assert status == 401 and body["error"]["type"] == "invalid_request_error"


def test_a_session_cookie_is_not_an_api_key(server):
    status, _, body = raw_request(server, "/v1/chat/completions", {"model": SMOL, "messages": ask("hi")},
                                  headers={"Cookie": f"sessionid={server.people['alice']['session']}"})
    assert status == 401 and set(body["error"]) == {"message", "type", "param", "code"}


def test_unknown_model_is_404(server):
    with pytest.raises(openai.NotFoundError) as err:
        client_for(server).chat.completions.create(model="gpt-9", messages=ask("hi"))
    assert err.value.code == "model_not_found" and err.value.param == "model"


@pytest.mark.parametrize("body, param", [
    ({"model": SMOL}, "messages"),
    ({"model": SMOL, "messages": []}, "messages"),
    ({"model": SMOL, "messages": "hi"}, "messages"),
    ({"model": SMOL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"model": SMOL, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": SMOL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content"),
    ({"model": SMOL, "messages": ask("hi"), "temperature": "hot"}, "temperature"),
    ({"model": SMOL, "messages": ask("hi"), "max_tokens": 0}, "max_tokens"),
    ({"model": SMOL, "messages": ask("hi"), "n": 99}, "n"),
    ({"model": SMOL, "messages": ask("hi"), "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": SMOL, "messages": ask("hi"), "seed": 1.5}, "seed"),
    ({"model": SMOL, "messages": ask("hi"), "stream": "yes"}, "stream"),
    ({"model": SMOL, "messages": ask("hi"), "tools": [{"type": "function"}]}, "tools[0]"),
    ({"model": SMOL, "messages": ask("hi"), "functions": [{"name": "f"}]}, "functions"),
    ({"model": SMOL, "messages": ask("hi"), "response_format": {"type": "xml"}}, "response_format"),
    ({"messages": ask("hi")}, "model"),
])
def test_invalid_requests_are_400_naming_the_parameter(server, body, param):
    status, _, answer = raw_request(server, "/v1/chat/completions", body, headers=bearer(server))
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] == param


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"", b"\xff\xfe"])
def test_malformed_bodies_are_400_json(server, body):
    status, _, answer = raw_request(server, "/v1/chat/completions", body, headers=bearer(server), method="POST")
    assert status == 400 and answer["error"]["type"] == "invalid_request_error"


def test_a_bad_host_header_and_an_oversized_body_answer_json(server):
    status, _, body = raw_request(server, "/v1/models", headers={**bearer(server), "Host": "evil.example"})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    huge = json.dumps({"model": SMOL, "messages": ask("x" * 3_000_000)}).encode()
    status, _, body = raw_request(server, "/v1/chat/completions", huge, headers=bearer(server))
    assert status == 413 and body["error"]["code"] == "request_too_large"


def test_context_overflow_is_400(server):
    with pytest.raises(openai.BadRequestError) as err:
        client_for(server).chat.completions.create(model=SMOL, messages=ask("hello " * 3000), max_tokens=5)
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):  # streaming: a plain error before the stream starts
        client_for(server).chat.completions.create(model=SMOL, messages=ask("hello " * 3000), stream=True)


def test_a_prompt_the_template_pushes_past_the_context_is_400_and_leaves_no_rows(server):
    # The typed text alone fits (the server's check before any row lets it through); with the
    # chat template's own tokens it does not, which only the worker can tell.
    def conversations():
        return query(server, "SELECT count(*) AS n FROM chat_conversation c JOIN auth_user u ON u.id = c.owner_id "
                             "WHERE u.username = ?", "bob")[0]["n"]

    before = conversations()
    with pytest.raises(openai.BadRequestError) as err:
        client_for(server, "bob").chat.completions.create(model=SMOL, messages=ask("hello " * 2035), max_tokens=5)
    assert err.value.code == "context_length_exceeded" and err.value.param == "messages"
    assert "context is too small" in err.value.message  # the worker's refusal, not the early one
    assert conversations() == before


def test_routes_and_methods_answer_json(server):
    status, _, body = raw_request(server, "/v1/chat/completions", headers=bearer(server))
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    status, _, body = raw_request(server, "/v1/embeddings", {"input": "x"}, headers=bearer(server))
    assert status == 404 and body["error"]["code"] == "unknown_url"
    status, _, body = raw_request(server, "/v1/models/", headers=bearer(server))
    assert status == 200 and body["object"] == "list"


def test_no_worker_for_the_model_is_503(server):
    with pytest.raises(openai.InternalServerError) as err:
        client_for(server).chat.completions.create(model="missing", messages=ask("hi"))
    assert err.value.status_code == 503 and err.value.code == "model_not_available"
    assert err.value.response.headers["Retry-After"]


# The rate limit's 429 (django-ratelimit's fixed window) is tested in-process on a clock the test
# controls (tests/test_api_limits.py): here a window edge between two requests would let one through.


def test_token_quota_is_429_and_the_ui_path_counts_the_same_ledger(server):
    client = client_for(server, "tight")  # 60 tokens a day
    with pytest.raises(openai.RateLimitError) as err:  # may use up to 100: refused before anything runs
        client.chat.completions.create(model="smollm3-echo", messages=ask("hi"), max_tokens=100)
    assert err.value.code == "insufficient_quota" and int(err.value.response.headers["Retry-After"]) > 0
    client.chat.completions.create(model="smollm3-echo", messages=ask("a b c"), max_tokens=40)
    with pytest.raises(openai.RateLimitError):  # the tokens just used count
        client.chat.completions.create(model="smollm3-echo", messages=ask("hi"), max_tokens=55)


# ---- users, the UI, disconnects ---------------------------------------------------------------------

def test_a_key_reaches_only_its_own_users_conversations_and_cache(server):
    question = ask("Repeat after me: the quick brown fox jumps over the lazy dog, twice over.")
    alice, bob = client_for(server, "alice"), client_for(server, "bob")
    first = alice.chat.completions.create(model=SMOL, messages=question, max_tokens=3, temperature=0)
    theirs = bob.chat.completions.create(model=SMOL, messages=question, max_tokens=3, temperature=0)
    again = alice.chat.completions.create(model=SMOL, messages=question, max_tokens=3, temperature=0)
    # Alice's prompt is not bob's cache: at most the template's own opening (its default system
    # prompt, nobody's text) is shared between users.
    assert theirs.usage.prompt_tokens_details.cached_tokens < 32
    assert again.usage.prompt_tokens_details.cached_tokens > theirs.usage.prompt_tokens_details.cached_tokens
    conv = server.message(message_id(first.id))["conversation_id"]
    owners = query(server, "SELECT u.username FROM chat_conversation c JOIN auth_user u ON u.id = c.owner_id "
                           "WHERE c.id = ?", conv)
    assert owners == [{"username": "alice"}]
    # Alice sees it in her sidebar with an API badge; bob gets a 404 for it.
    def page(who, path):
        request = urllib.request.Request(server.url + path,
                                         headers={"Cookie": f"sessionid={server.people[who]['session']}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    status, html = page("alice", f"/c/{conv}/")
    assert status == 200 and 'class="conv-badge"' in html and "alice&#x27;s key" in html
    assert page("bob", f"/c/{conv}/")[0] == 404


def test_a_client_that_disconnects_mid_stream_stops_the_generation(server):
    words = " ".join(f"w{i}" for i in range(400))  # 20 s at 50 ms a word
    stream = client_for(server).chat.completions.create(model="echo-slow", messages=ask(words), stream=True)
    first = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = chunk
            break
    assert first is not None
    stream.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        row = server.message(message_id(first.id))
        if row["status"] not in ("pending", "streaming"):
            break
        time.sleep(0.2)
    assert row["status"] == "stopped", row["status"]
    assert 0 < len(row["content"].split()) < 300


def test_a_client_that_disconnects_while_waiting_for_a_whole_answer_stops_it_too(server):
    import socket

    words = " ".join(f"w{i}" for i in range(400))
    body = json.dumps({"model": "echo-slow", "messages": ask(words)}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {server.people['alice']['key']}\r\n".encode()
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the answer is being generated
            rows = query(server, "SELECT id, status FROM chat_message WHERE content LIKE 'w0 w1%' "
                                 "AND role = 'assistant' ORDER BY id DESC LIMIT 1")
            if rows and rows[0]["status"] == "streaming":
                break
            time.sleep(0.1)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        row = server.message(rows[0]["id"])
        if row["status"] not in ("pending", "streaming"):
            break
        time.sleep(0.2)
    assert row["status"] == "stopped"


def test_a_key_revoked_mid_stream_ends_the_stream_with_an_error_and_stops_the_answer(server):
    words = " ".join(f"w{i}" for i in range(400))  # 20 s at 50 ms a word
    body = json.dumps({"model": "echo-slow", "messages": ask(words), "stream": True}).encode()
    request = urllib.request.Request(server.url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json", **bearer(server, "doomed")})
    events, revoked = [], False
    with urllib.request.urlopen(request, timeout=60) as response:
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data: "):
                continue  # blank separators and ": ..." comments
            events.append(line[6:])
            if not revoked and '"content": "w' in line:
                # The owner revokes the key on the account page while the answer streams.
                server.execute("UPDATE api_apikey SET revoked_at = CURRENT_TIMESTAMP WHERE name = ?", "doomed's key")
                revoked = True
    assert revoked
    error = json.loads(events[-1])["error"]  # OpenAI's error shape, inside the stream, and the end of it
    assert error["code"] == "invalid_api_key" and "revoked" in error["message"]
    assert "[DONE]" not in events
    streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    reply = message_id(json.loads(events[0])["id"])
    deadline = time.monotonic() + 30
    while server.message(reply)["status"] in ("pending", "streaming") and time.monotonic() < deadline:
        time.sleep(0.2)
    row = server.message(reply)
    assert row["status"] == "stopped" and row["content"].startswith(streamed)
    assert 0 < len(row["content"].split()) < 400  # stopped partway, its text kept


def test_an_account_deactivated_while_a_whole_answer_generates_gets_401_and_the_answer_stops(server):
    import threading

    words = " ".join(f"x{i}" for i in range(400))
    outcome = {}

    def request():
        try:
            client_for(server, "deactivated").chat.completions.create(model="echo-slow", messages=ask(words))
        except openai.APIStatusError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=request)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the answer has some text
        rows = query(server, "SELECT id, content FROM chat_message WHERE role = 'assistant' AND status = 'streaming' "
                             "AND conversation_id IN (SELECT c.id FROM chat_conversation c JOIN auth_user u "
                             "ON u.id = c.owner_id WHERE u.username = ?)", "deactivated")
        if rows and rows[0]["content"]:
            break
        time.sleep(0.1)
    server.execute("UPDATE auth_user SET is_active = ? WHERE username = ?", False, "deactivated")
    thread.join(60)
    error = outcome["error"]
    assert error.status_code == 401 and error.code == "invalid_api_key"
    deadline = time.monotonic() + 30
    while server.message(rows[0]["id"])["status"] in ("pending", "streaming") and time.monotonic() < deadline:
        time.sleep(0.2)  # the worker ends it at its next step
    row = server.message(rows[0]["id"])
    assert row["status"] == "stopped" and 0 < len(row["content"].split()) < 400


def test_the_server_log_has_no_traceback(server):
    # Django logs the refused Host header (django.security.DisallowedHost) with its traceback.
    blocks = server.log_path.read_text().split("Traceback (most recent call last):")[1:]
    crashes = [b for b in blocks if "DisallowedHost" not in b.split("\n127.0.0.1")[0]]
    assert not crashes, crashes[0][-3000:]
