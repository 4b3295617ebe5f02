"""The plugin system: entry-point discovery, blocking, listing, and documentation of every hook."""
import json
import re
from pathlib import Path

import pytest
from django.core.management import call_command

from inference import hookspecs
from inference.plugins import build_plugin_manager, get_plugins

pytestmark = pytest.mark.nodb

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith(("register_", "choose_", "model_", "prepare_",
                                                                      "generation_", "request_")))
BUILT_INS = {"llama_cpp", "echo", "thinking", "metrics"}


def test_hook_list_is_what_hookspecs_declares():
    declared = {name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "smolsite_spec")}
    assert declared == set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    docs = (ROOT / "docs" / "plugins.md").read_text()
    assert re.search(rf"^### {hook}\(", docs, re.M), f"docs/plugins.md has no section for {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    source = (ROOT / "tests" / "test_hooks.py").read_text()
    assert f"def test_hook_{hook}(" in source, f"tests/test_hooks.py has no test_hook_{hook}"


def test_built_ins_load_through_entry_points():
    pm = build_plugin_manager(blocked=[])
    listed = {p["name"]: p for p in get_plugins(pm)}
    assert BUILT_INS <= set(listed)
    for name in BUILT_INS:
        assert listed[name]["distribution"] == "smolsite"
        assert listed[name]["version"]
    assert "register_backends" in listed["llama_cpp"]["hooks"]


def test_outside_plugins_are_ignored_under_test_unless_asked_for():
    assert "hello" not in {p["name"] for p in get_plugins(build_plugin_manager(blocked=[]))}


def test_third_party_distribution_is_discovered_through_its_entry_point():
    pm = build_plugin_manager(blocked=[], extra_distributions=["smolsite-hello"])
    hello = {p["name"]: p for p in get_plugins(pm)}["hello"]
    assert hello["distribution"] == "smolsite-hello"
    assert hello["version"] == "0.3.0"
    assert hello["module"] == "smolsite_hello"
    assert hello["hooks"] == ["model_features", "prepare_request"]


def test_blocked_plugin_is_not_loaded():
    pm = build_plugin_manager(blocked=["metrics", "echo"])
    names = {p["name"] for p in get_plugins(pm)}
    assert "metrics" not in names and "echo" not in names
    assert "llama_cpp" in names


def test_blocking_by_environment(monkeypatch):
    monkeypatch.setenv("SMOLSITE_BLOCKED_PLUGINS", "metrics, thinking")
    names = {p["name"] for p in get_plugins(build_plugin_manager())}
    assert not names & {"metrics", "thinking"}


def test_plugins_command_prints_json(capsys, plugin_manager_reset):
    plugin_manager_reset.reset(build_plugin_manager(blocked=["echo"]))
    call_command("plugins")
    listed = json.loads(capsys.readouterr().out)
    names = {p["name"] for p in listed}
    assert {"llama_cpp", "thinking", "metrics"} <= names and "echo" not in names
    assert all({"name", "module", "distribution", "version", "hooks"} <= set(p) for p in listed)
