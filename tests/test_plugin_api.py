"""inference.plugin_api is the one module plugins import from inference: what it lists exists, the
import-linter contract that holds the built-in plugins to it names every other module of inference
(a module added later is forbidden too, not silently allowed), and the example third-party plugin
uses only it."""
import ast
import pkgutil
import tomllib
from pathlib import Path

import inference
from inference import plugin_api

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "tests" / "plugin_dist" / "smolsite-hello"


def test_every_listed_name_exists_once():
    assert len(plugin_api.__all__) == len(set(plugin_api.__all__))
    missing = [name for name in plugin_api.__all__ if not hasattr(plugin_api, name)]
    assert not missing, f"inference.plugin_api.__all__ names what it does not have: {missing}"


def test_what_a_backend_and_a_tool_need_is_listed():
    for name in ("hookimpl", "Backend", "BackendError", "Delta", "Finish", "Queued", "Tool", "ModelConfig"):
        assert name in plugin_api.__all__, name


def _contract():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    [contract] = [c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "plugins-public-api"]
    return contract


def test_the_contract_forbids_every_other_module_of_inference():
    contract = _contract()
    assert contract["type"] == "forbidden" and contract["source_modules"] == ["plugins"]
    assert contract["allow_indirect_imports"] is True and not contract.get("ignore_imports")
    modules = {f"inference.{m.name}" for m in pkgutil.iter_modules(inference.__path__)}
    assert "inference.plugin_api" in modules
    assert set(contract["forbidden_modules"]) == modules - {"inference.plugin_api"}


def _inference_imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "inference":
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "inference")


def test_the_example_plugin_imports_inference_only_through_the_public_face():
    files = sorted(EXAMPLE.rglob("*.py"))
    assert files
    used = {(f.name, module) for f in files for module in _inference_imports(f)}
    assert used and {module for _, module in used} == {"inference.plugin_api"}, used
