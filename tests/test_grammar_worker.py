"""The worst schemas the server accepts never kill the device worker, and the ones past a limit
are a 400 before any work: against a real served daphne whose device worker is a process of its
own (where a grammar that overflowed llama.cpp's parser used to end in SIGSEGV and cut every
user's answer), with the official openai client."""
import json
import os
import subprocess
import sys

import openai
import pytest
from browser_support import ARTIFACTS, REPO
from live_stack import LiveServer

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="grammars and the worker process are "
                                                                     "database-independent: the SQLite run covers them"),
]

SETUP = """
import json
from django.contrib.auth import get_user_model
from api.models import ApiKey
user = get_user_model().objects.create_user("schemer", password="pw-123456789")
print(json.dumps({"key": ApiKey.create_for(user, "k")[1]}))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_path):
    ARTIFACTS.mkdir(exist_ok=True)
    models = {"smollm2-135m": {"path": default_model_path, "n_ctx": 2048, "threads": 2, "device": "cpu"}}
    live = LiveServer(tmp_path_factory.mktemp("grammar-worker"), models, ARTIFACTS / "grammar-worker-server.log",
                      env={"SMOLSITE_WORKER_MODE": "process"}).start()
    try:
        out = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP], cwd=REPO, env=live.env,
                             check=True, capture_output=True, text=True, timeout=120).stdout
        live.key = json.loads(out.strip().splitlines()[-1])["key"]
        yield live
    finally:
        live.stop()


def worst_accepted():
    from inference.structured import LIMITS

    n = LIMITS["repetition"]
    return {
        "max_length": {"type": "string", "minLength": n // 2, "maxLength": n},
        "long_array": {"type": "array", "items": {"type": "string", "maxLength": n}, "maxItems": n},
        "ambiguous_pattern": {"type": "string", "pattern": "^((a|b){0,%d}(a|c){0,%d}){0,%d}$" % (n // 40, n // 40, 40)},
        "enum": {"type": "object", "properties": {"x": {"enum": [f"v{i}-{'z' * 20}" for i in range(
            LIMITS["enum_values"])]}}, "required": ["x"]},
        "wide_any_of": {"anyOf": [{"type": "object", "properties": {f"k{i}": {"type": "string", "maxLength": 100}},
                                   "required": [f"k{i}"]} for i in range(LIMITS["alternatives"])]},
        "many_optional": {"type": "object", "properties": {
            f"p{i}": {"type": "string"} for i in range(LIMITS["object_properties"])}},
    }


def ask(server, schema, max_tokens=24):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.key, max_retries=0, timeout=300)
    return client.chat.completions.create(
        model="smollm2-135m", max_tokens=max_tokens, temperature=0,
        messages=[{"role": "user", "content": "Tell me a story about a dragon."}],
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})


def test_the_worst_accepted_schemas_leave_the_worker_process_alive(server):
    pid = server.worker_pid()
    assert pid
    outcomes = {}
    for name, schema in worst_accepted().items():
        # Each ends as an answer (cut at max_tokens or complete) or as the engine's own refusal of
        # a grammar too costly for the shared step (a clear 400); never as a dead worker.
        try:
            outcomes[name] = ask(server, schema).choices[0].finish_reason
        except openai.BadRequestError as exc:
            assert "costs the shared engine too much" in exc.body["message"], (name, exc.body)
            outcomes[name] = "too costly"
        assert server.worker_pid() == pid, f"{name} killed the worker process"
    assert set(outcomes.values()) <= {"length", "stop", "too costly"}, outcomes
    assert outcomes["max_length"] != "too costly" and outcomes["enum"] != "too costly", outcomes
    assert "was killed by" not in server.log_path.read_text()


@pytest.mark.parametrize("schema", [
    {"type": "string", "maxLength": 2_000_000},  # killed the worker by SIGSEGV before the limits
    {"type": "string", "pattern": "^(a{0,9999}){0,9999}$"},
    {"type": "string", "pattern": "^((a|b){0,1000}(a|c){0,1000}){0,1000}$"},  # accepted, then too costly, before
    {"type": "object", "properties": {"x": {"enum": [str(i) for i in range(20_000)]}}},
])
def test_schemas_past_a_limit_are_a_400_naming_it(server, schema):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(server, schema)
    error = caught.value.body
    assert error["param"] == "response_format" and error["code"] == "schema_too_large"
    assert "at most" in error["message"] or "more than" in error["message"]
