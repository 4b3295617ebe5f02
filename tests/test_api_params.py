"""API requests that never reach a worker, in-process: whatever a client sends, the answer is a
JSON error in OpenAI's shape with the right status (never a 500, never HTML), and nothing is
written. Runs on SQLite and PostgreSQL."""
import json

import pytest
from django.contrib.auth import get_user_model

from api.models import ApiKey
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def key():
    user = get_user_model().objects.create_user("caller", password="pw-123456789")
    return ApiKey.create_for(user, "tests")[1]


def post(client, key, body, path="/v1/chat/completions"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(path, data, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")


def error_of(response, status):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


MODEL = "smollm2-135m"
HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL, "messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role"),
    ({"model": MODEL, "messages": [{"role": {"a": 1}, "content": "hi"}]}, "messages[0].role"),
    ({"model": MODEL, "messages": HI, "reasoning_effort": ["high"]}, "reasoning_effort"),
    ({"model": MODEL, "messages": HI, "temperature": 10 ** 400}, "temperature"),
    ({"model": MODEL, "messages": HI, "top_p": float("nan")}, "top_p"),
    ({"model": MODEL, "messages": HI, "max_tokens": True}, "max_tokens"),
    ({"model": MODEL, "messages": HI, "seed": 2 ** 70}, "seed"),
    ({"model": MODEL, "messages": HI, "stream_options": {"include_usage": "yes"}}, "stream_options"),
    ({"model": MODEL, "messages": HI, "user": 5}, "user"),
    ({"model": MODEL, "messages": HI, "logprobs": True}, "logprobs"),
    ({"model": MODEL, "messages": HI, "presence_penalty": 0.5}, "presence_penalty"),
    ({"model": MODEL, "messages": HI, "chat_template_kwargs": {"enable_thinking": "no"}}, "chat_template_kwargs"),
    ({"model": MODEL, "messages": HI, "stop": "x",
      "response_format": {"type": "json_object"}}, "stop"),
    ({"model": MODEL, "messages": HI, "stop": ["a" * 257]}, "stop"),  # checked at every token, in the shared step
    ({"model": MODEL, "messages": HI, "response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": {"type": "string", "maxLength": 2_000_000}}}}, "response_format"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "a\x00b"}]}, None),
    ({"model": MODEL, "messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
    ({"model": MODEL, "messages": [{"role": "assistant", "content": "x", "tool_calls": [{}]}]},
     "messages[0].tool_calls"),
    ({"model": MODEL, "messages": HI * 2001}, "messages"),
    ({"model": 5, "messages": HI}, "model"),
])
def test_odd_fields_are_400_and_write_nothing(client, key, body, param):
    error = error_of(post(client, key, body), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert not Conversation.objects.exists() and not Message.objects.exists()


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser recurses
    b"\xff\xfe{}",
    b"null",
    b"",
])
def test_unparseable_bodies_are_400(client, key, body):
    error_of(post(client, key, body), 400)


def test_completions_refuse_token_prompts_and_too_many_choices(client, key):
    error = error_of(post(client, key, {"model": MODEL, "prompt": [1, 2, 3]}, "/v1/completions"), 400)
    assert error["param"] == "prompt"
    error = error_of(post(client, key, {"model": MODEL, "prompt": ["a", "b", "c"], "n": 2}, "/v1/completions"), 400)
    assert error["param"] == "n"


def test_a_deep_schema_is_refused_not_a_crash(client, key):
    schema = {"type": "object"}
    for _ in range(300):
        schema = {"type": "object", "properties": {"a": schema}}
    body = json.dumps({"model": MODEL, "messages": HI,
                       "response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": schema}}})
    error = error_of(post(client, key, body), 400)
    assert error["code"] == "unsupported_schema"


def test_unknown_routes_and_methods_are_json(client, key):
    error = error_of(client.get("/v1/assistants", HTTP_AUTHORIZATION=f"Bearer {key}"), 404)
    assert error["code"] == "unknown_url"
    error = error_of(client.delete("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}"), 405)
    assert error["code"] == "method_not_allowed"
    error = error_of(client.get("/v1", HTTP_AUTHORIZATION=f"Bearer {key}"), 404)


def test_no_csrf_token_is_needed(key):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    error = error_of(post(strict, key, {"model": MODEL}), 400)  # reached the view: not a CSRF 403
    assert error["param"] == "messages"


def test_a_schema_over_a_limit_is_a_400_naming_the_limit_and_writes_nothing(client, key):
    body = {"model": MODEL, "messages": HI, "response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": {"type": "object", "properties": {"x": {"enum": [str(i) for i in range(20_000)]}}}}}}
    error = error_of(post(client, key, body), 400)
    assert error["param"] == "response_format" and error["code"] == "schema_too_large"
    assert "1,000 enum and const values" in error["message"]
    assert not Conversation.objects.exists() and not Message.objects.exists()
