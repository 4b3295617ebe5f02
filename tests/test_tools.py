"""Tools as plugins: the runner (inference.tool_runner), the built-in tools (plugins/tools) and a
third-party tool from the installed smolsite-hello distribution. Every call goes through
run_tool as the chat's agent makes it: real threads, real time limits, the real database."""
import ast
import json
import logging
import threading
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from chat.models import Conversation, Message
from inference import tool_runner
from inference.hookspecs import hookimpl
from inference.plugins import build_plugin_manager
from inference.tool_runner import Tool, ToolContext, registered_tools, run_tool, tool_specs
from plugins.tools import calculator as calculator_module
from plugins.tools.chat_search import search_my_chats

BUILT_INS = {"calculator", "current_time", "search_my_chats"}
ANYONE = ToolContext(user_id=1)
OBJECT = {"type": "object", "properties": {}}


@pytest.fixture
def pm(plugin_manager_reset):
    manager = build_plugin_manager(blocked=[])
    plugin_manager_reset.reset(manager)
    return manager


def calc(expression):
    return run_tool("calculator", json.dumps({"expression": expression}), ANYONE)


# ---- calculator ----------------------------------------------------------------------------

@pytest.mark.parametrize("expression, expected", [
    ("0.1 + 0.2", "0.3"),  # exactly: fractions, not floats
    ("0.1 + 0.2 - 0.3", "0"),
    ("1 / 3", "1/3 ≈ 0.33333333333333333333"),
    ("2 / 3 + 1 / 3", "1"),
    ("2 ** 200", str(2 ** 200)),
    ("12345678901234567890 * 98765432109876543210", str(12345678901234567890 * 98765432109876543210)),
    ("2 + 3 * 4 ** 2", "50"),
    ("(2 + 3) * 4", "20"),
    ("-2 ** 2", "-4"),
    ("2 ** -2", "0.25"),
    ("7 // 2", "3"),
    ("-7 % 3", "2"),
    ("1 / 2 ** 20", "0.00000095367431640625"),
    ("abs(-3.5) + max(1, 2, 3) - min(4, 5)", "2.5"),
    ("round(2.675, 2)", "2.68"),  # the literal is exactly 2.675, unlike the float
    ("sqrt(16) + sqrt(9 / 4)", "5.5"),
    ("3 × 4 ÷ 6", "2"),
])
def test_calculator_is_exact(pm, expression, expected):
    outcome = calc(expression)
    assert (outcome.status, outcome.output) == ("ok", expected)


def test_calculator_square_root_of_a_non_square_says_it_is_approximate(pm):
    outcome = calc("sqrt(2)")
    assert outcome.status == "ok" and outcome.output.startswith("≈ 1.4142135623730950488")


@pytest.mark.parametrize("expression, reason", [
    ("__import__('os').getpid()", "unknown function"),
    ("().__class__.__bases__", "not allowed"),
    ("(1).__class__", "not allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("(lambda: 1)()", "unknown function"),
    ("open('/etc/passwd')", "unknown function"),
    ("x + 1", "unknown name 'x'"),
    ("[1, 2]", "not allowed"),
    ("'a' * 3", "not a number"),
    ("True + 1", "not a number"),
    ("1 < 2", "not allowed"),
    ("2 ^ 8", "write **"),
    ("1 / 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("2 ** 0.5", "whole-number exponents"),
    ("1 +", "not an arithmetic expression"),
])
def test_calculator_refuses_what_is_not_arithmetic(pm, expression, reason):
    outcome = calc(expression)
    assert outcome.status == "error"
    assert reason in outcome.output
    assert "Traceback" not in outcome.output


@pytest.mark.parametrize("expression", ["9 ** 9 ** 9", "10 ** 10 ** 10", "2 ** 100000", "(10 ** 3000) ** 2",
                                        "1e999999999", "10 ** 2000 * 10 ** 2000"])
def test_calculator_refuses_huge_numbers_at_once(pm, expression):
    started = time.monotonic()
    outcome = calc(expression)
    assert outcome.status == "error" and ("digits" in outcome.output or "too large" in outcome.output)
    assert time.monotonic() - started < 1


def test_calculator_bounds_its_input(pm):
    too_long = run_tool("calculator", json.dumps({"expression": "1+" * 300 + "1"}), ANYONE)
    assert too_long.status == "error" and "Invalid arguments" in too_long.output
    assert calc("-" * 300 + "1").status == "error"  # nested past MAX_DEPTH, refused without recursing
    assert calc("+".join(["1"] * 200)).output == "200"


def test_calculator_never_evaluates_with_python():
    """Behaviour above; here, that the module holds no eval, exec or compile to fall back on."""
    tree = ast.parse(Path(calculator_module.__file__).read_text())
    called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__"}


# ---- current_time --------------------------------------------------------------------------

def test_current_time_in_the_users_time_zone(pm):
    outcome = run_tool("current_time", "{}", ToolContext(user_id=1, time_zone="Asia/Kolkata"))
    assert outcome.status == "ok"
    assert "Asia/Kolkata" in outcome.output and "UTC+05:30" in outcome.output
    stamp = datetime.fromisoformat(outcome.output.split("ISO 8601: ")[1])
    assert stamp.utcoffset().total_seconds() == 5.5 * 3600
    assert abs((stamp - datetime.now(ZoneInfo("UTC"))).total_seconds()) < 5


def test_current_time_in_a_named_zone(pm):
    outcome = run_tool("current_time", '{"time_zone": "America/Sao_Paulo"}', ToolContext(user_id=1))
    assert outcome.status == "ok" and "UTC-03:00" in outcome.output and outcome.output.endswith("-03:00")


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime"])
def test_current_time_unknown_zone_is_an_error(pm, zone):
    outcome = run_tool("current_time", json.dumps({"time_zone": zone}), ANYONE)
    assert outcome.status == "error" and "unknown time zone" in outcome.output


def test_current_time_with_an_unknown_browser_zone_falls_back_to_utc(pm):
    outcome = run_tool("current_time", "{}", ToolContext(user_id=1, time_zone="Not/AZone"))
    assert outcome.status == "ok" and "in UTC (UTC+00:00)" in outcome.output and "unknown" in outcome.output


# ---- search_my_chats -----------------------------------------------------------------------

def chat(owner, title, *texts, source="chat"):
    conv = Conversation.objects.create(owner=owner, title=title, model="echo", source=source)
    parent = None
    for i, text in enumerate(texts):
        parent = Message.objects.create(conversation=conv, parent=parent, content=text,
                                        role=Message.Role.USER if i % 2 == 0 else Message.Role.ASSISTANT)
    return conv


@pytest.fixture
def two_users():
    User = get_user_model()
    alice, bob = User.objects.create_user("alice"), User.objects.create_user("bob")
    older = chat(alice, "Dragon lore", "Tell me about dragons.", "Dragons are mythical reptiles.")
    newer = chat(alice, "Pets", "Could a dragon be a pet?", "Only a small one.")
    current = chat(alice, "This chat", "Which chats mentioned dragons?")
    chat(alice, "batch line 7", "dragons in a batch", source="batch")
    bobs = chat(bob, "Bob's secret", "My dragons hoard BOB-ONLY-GOLD in the cellar.")
    return {"alice": alice, "bob": bob, "older": older, "newer": newer, "current": current, "bobs": bobs}


def test_search_my_chats_returns_only_the_owners_chats(db, two_users):
    alice, bob = two_users["alice"], two_users["bob"]
    results = search_my_chats({"query": "dragon"}, ToolContext(user_id=alice.pk,
                                                              conversation_id=two_users["current"].pk))
    # Newest first; the current chat and batch lines left out; every link is the chat's page.
    assert [r["title"] for r in results] == ["Pets", "Dragon lore"]
    assert results[0]["url"] == reverse("chat:conversation", args=[two_users["newer"].pk])
    assert results[1]["url"] == reverse("chat:conversation", args=[two_users["older"].pk])
    assert "dragon" in results[0]["snippet"].lower()
    assert "BOB-ONLY-GOLD" not in json.dumps(results) and "secret" not in json.dumps(results)

    # Words only bob wrote find nothing for alice, and bob finds only his own.
    assert search_my_chats({"query": "BOB-ONLY-GOLD"}, ToolContext(user_id=alice.pk)) == []
    assert search_my_chats({"query": "hoard"}, ToolContext(user_id=alice.pk)) == []
    bobs = search_my_chats({"query": "dragons"}, ToolContext(user_id=bob.pk))
    assert [r["title"] for r in bobs] == ["Bob's secret"] and "BOB-ONLY-GOLD" in bobs[0]["snippet"]
    assert "mythical" not in json.dumps(bobs)


def test_search_my_chats_includes_the_current_chat_only_when_none_is_given(db, two_users):
    results = search_my_chats({"query": "dragon", "limit": 10}, ToolContext(user_id=two_users["alice"].pk))
    assert [r["title"] for r in results] == ["This chat", "Pets", "Dragon lore"]


@pytest.mark.django_db(transaction=True)
def test_search_my_chats_through_run_tool(pm, two_users):
    """In the tool's own thread, with its own database connection, as the agent runs it."""
    alice = two_users["alice"]
    context = ToolContext(user_id=alice.pk, conversation_id=two_users["current"].pk)
    outcome = run_tool("search_my_chats", '{"query": "dragon", "limit": 1}', context)
    assert outcome.status == "ok"
    assert [r["title"] for r in json.loads(outcome.output)] == ["Pets"]
    for query in ("dragons", "cellar", "gold", "bob"):
        outcome = run_tool("search_my_chats", json.dumps({"query": query}), context)
        assert outcome.status == "ok" and "BOB-ONLY-GOLD" not in outcome.output and "secret" not in outcome.output
    assert run_tool("search_my_chats", '{"query": "dragon", "limit": 50}', context).status == "error"
    assert run_tool("search_my_chats", '{"query": ""}', context).status == "error"


# ---- run_tool ------------------------------------------------------------------------------

class Recorder:
    """A plugin with tools whose behaviour the runner tests need; records each call."""

    def __init__(self):
        self.calls = []
        self.release = threading.Event()

    @hookimpl
    def register_tools(self):
        def record(fn):
            def wrapped(arguments, context):
                self.calls.append(arguments)
                return fn(arguments, context)
            return wrapped

        strict = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
                  "additionalProperties": False}
        return [
            Tool("sleepy", "", OBJECT, lambda a, c: time.sleep(5) or "woke", timeout=0.2),
            Tool("waits", "", OBJECT, lambda a, c: self.release.wait(10) and "released", timeout=0.1),
            Tool("slow_default", "", OBJECT, lambda a, c: time.sleep(2) or "late"),
            Tool("big", "", OBJECT, lambda a, c: "x" * 20_000),
            Tool("strict", "", strict, record(lambda a, c: f"n={a['n']}")),
            Tool("boom", "", OBJECT, lambda a, c: (_ for _ in ()).throw(RuntimeError("kaput"))),
            Tool("own_timeout", "", OBJECT, lambda a, c: (_ for _ in ()).throw(TimeoutError("upstream"))),
            Tool("as_json", "", OBJECT, lambda a, c: {"user": c.user_id, "zone": c.time_zone, "ü": [1, 2]}),
            Tool("number", "", OBJECT, lambda a, c: 42),
        ]


@pytest.fixture
def recorder(pm):
    plugin = Recorder()
    pm.register(plugin, name="recorder")
    yield plugin
    plugin.release.set()


def test_a_tool_past_its_time_limit_times_out_promptly(recorder):
    started = time.monotonic()
    outcome = run_tool("sleepy", "{}", ANYONE)
    assert outcome.status == "timeout" and "0.2 seconds" in outcome.output
    assert 0.2 <= outcome.duration < 1 and time.monotonic() - started < 1


def test_the_default_time_limit_comes_from_settings(recorder, settings):
    settings.SMOLSITE_TOOL_TIMEOUT = 0.3
    outcome = run_tool("slow_default", "{}", ANYONE)
    assert outcome.status == "timeout" and outcome.duration < 1.5


def test_output_over_the_cap_is_cut_and_says_so(recorder, settings):
    settings.SMOLSITE_TOOL_MAX_OUTPUT = 1000
    outcome = run_tool("big", "{}", ANYONE)
    assert outcome.status == "ok" and len(outcome.output) <= 1000
    assert outcome.output.startswith("x" * 900) and "output cut: 20,000 characters" in outcome.output


@pytest.mark.parametrize("arguments", ['{"n": "7"}', "{}", '{"n": 7, "m": 1}', "not json", "[7]", '{"n": 7.5}',
                                       "[" * 5000 + "]" * 5000])
def test_invalid_arguments_are_refused_without_calling_the_tool(recorder, arguments):
    outcome = run_tool("strict", arguments, ANYONE)
    assert outcome.status == "error" and outcome.output.startswith("Invalid arguments for strict")
    assert recorder.calls == []


def test_valid_arguments_reach_the_tool(recorder):
    assert run_tool("strict", '{"n": 7}', ANYONE) == tool_runner.Outcome("ok", "n=7", pytest.approx(0, abs=1))
    assert recorder.calls == [{"n": 7}]


def test_an_exception_is_an_error_with_its_type_and_message(recorder, caplog):
    with caplog.at_level(logging.WARNING, logger="inference.tool_runner"):
        outcome = run_tool("boom", "{}", ANYONE)
    assert (outcome.status, outcome.output) == ("error", "RuntimeError: kaput")
    assert any(r.exc_info for r in caplog.records)  # the traceback is logged, not sent to the model
    # A TimeoutError the tool raised is its error, not the runner's time limit.
    own = run_tool("own_timeout", "{}", ANYONE)
    assert (own.status, own.output) == ("error", "TimeoutError: upstream")


def test_dicts_and_lists_are_sent_as_json_and_other_values_refused(recorder):
    outcome = run_tool("as_json", "", ToolContext(user_id=7, time_zone="Europe/Oslo"))
    assert outcome.status == "ok" and json.loads(outcome.output) == {"user": 7, "zone": "Europe/Oslo", "ü": [1, 2]}
    assert "ü" in outcome.output  # not escaped: the model reads characters, not \\u escapes
    number = run_tool("number", "{}", ANYONE)
    assert number.status == "error" and "returned int" in number.output


def test_unknown_tool_is_an_error(pm):
    outcome = run_tool("no_such_tool", "{}", ANYONE)
    assert outcome.status == "error" and "no_such_tool" in outcome.output


def test_stuck_tools_cannot_pile_up_threads(recorder, monkeypatch):
    monkeypatch.setattr(tool_runner, "_places", threading.BoundedSemaphore(2))
    assert [run_tool("waits", "{}", ANYONE).status for _ in range(2)] == ["timeout", "timeout"]
    refused = run_tool("calculator", '{"expression": "1 + 1"}', ANYONE)
    assert refused.status == "error" and "Too many tool calls" in refused.output
    recorder.release.set()  # the stuck calls end, and give back their places
    deadline = time.monotonic() + 5
    while run_tool("calculator", '{"expression": "1 + 1"}', ANYONE).status != "ok":
        assert time.monotonic() < deadline
        time.sleep(0.01)


# ---- registration --------------------------------------------------------------------------

def test_built_in_tools_are_registered(pm):
    tools = registered_tools()
    assert BUILT_INS <= set(tools)
    assert all(isinstance(t, Tool) and t.description for t in tools.values())


def test_blocking_the_plugin_removes_the_built_in_tools(plugin_manager_reset, monkeypatch):
    assert not BUILT_INS & set(registered_tools(build_plugin_manager(blocked=["tools"])))
    monkeypatch.setenv("SMOLSITE_BLOCKED_PLUGINS", "metrics, tools")
    plugin_manager_reset.reset(build_plugin_manager())
    assert not BUILT_INS & set(registered_tools())
    assert run_tool("calculator", '{"expression": "1"}', ANYONE).status == "error"


def test_third_party_tool_from_an_installed_distribution(plugin_manager_reset):
    manager = build_plugin_manager(blocked=[], extra_distributions=["smolsite-hello"])
    plugin_manager_reset.reset(manager)
    assert "hello" in registered_tools(), ("smolsite-hello has no hello_tools entry point: reinstall it "
                                           "(make install-test, or pip install ./tests/plugin_dist/smolsite-hello)")
    assert registered_tools()["hello"].fn.__module__ == "smolsite_hello.tools"
    outcome = run_tool("hello", '{"name": "Ada"}', ToolContext(user_id=3))
    assert outcome.status == "ok" and outcome.output.startswith("Hello, Ada!")
    assert BUILT_INS <= set(registered_tools())
    # Not loaded under test unless asked for, like any outside plugin.
    assert "hello" not in registered_tools(build_plugin_manager(blocked=[]))


def test_bad_tools_are_skipped_not_fatal(pm, caplog):
    class Careless:
        @hookimpl
        def register_tools(self):
            return [
                Tool("bad name!", "", OBJECT, lambda a, c: "x"),
                Tool("calculator", "a second calculator", OBJECT, lambda a, c: "hijacked"),
                Tool("unenforceable", "", {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}},
                     lambda a, c: "x"),
                Tool("not_an_object", "", {"type": "string"}, lambda a, c: "x"),
                Tool("not_callable", "", OBJECT, "print"),
                Tool("bad_timeout", "", OBJECT, lambda a, c: "x", timeout=-1),
                "not a tool",
                Tool("fine", "kept", OBJECT, lambda a, c: "fine"),
            ]

    class Broken:
        @hookimpl
        def register_tools(self):
            raise RuntimeError("plugin bug")

    pm.register(Careless(), name="careless")
    pm.register(Broken(), name="broken")
    with caplog.at_level(logging.WARNING, logger="inference.tool_runner"):
        tools = registered_tools()
    assert set(tools) == BUILT_INS | {"fine"}
    assert calc("6 * 7").output == "42"  # the first calculator registered stays
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for needle in ("bad name!", "already registered a tool named 'calculator'", "minimum", "\"type\": \"object\"",
                   "not callable", "timeout", "not an inference.tool_runner.Tool", "broken: register_tools() failed"):
        assert needle in logged


def test_tool_specs_are_what_the_call_grammar_takes(pm):
    from api.tools import grammar

    specs = tool_specs(["search_my_chats", "nope", "calculator", "calculator"])
    assert [s["name"] for s in specs] == ["search_my_chats", "calculator"]
    assert all(set(s) == {"name", "description", "parameters"} for s in specs)
    assert "call0" in grammar(tool_specs(sorted(BUILT_INS)), "auto", True)
