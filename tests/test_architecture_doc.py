"""docs/architecture.md is the map: every path and module it names must exist, so a rename that
forgets the map fails here instead of sending a newcomer to a file that is gone."""
import importlib
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.nodb

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "architecture.md"
APPS = ("smolsite", "chat", "api", "batches", "review", "usage", "inference", "plugins", "accounts")
TOP = APPS + ("docs", "bench", "static", "templates", "tests", "tools", ".ci")
SKIP_DIRS = {".git", ".venv", "node_modules", "var", "test-artifacts", ".wheelhouse"}


def _named():
    spans = set(re.findall(r"`([^`\s]+)`", DOC.read_text()))
    paths = sorted(s for s in spans if re.fullmatch(r"[\w./-]+", s) and (s.startswith("./") or s.split("/")[0] in TOP))
    files = sorted(s for s in spans if "/" not in s and re.fullmatch(r"\w+\.(py|js|md|css|html)", s))
    dotted = sorted(s for s in spans if re.fullmatch(r"[a-z_]+(\.\w+)+", s) and s.split(".")[0] in APPS
                    and not re.fullmatch(r"\w+\.(py|js|md|css|html)", s))
    return paths, files, dotted


PATHS, FILES, DOTTED = _named()


def _all_file_names():
    return {p.name for p in REPO.rglob("*") if p.is_file() and not SKIP_DIRS & set(p.relative_to(REPO).parts)}


def test_the_map_names_things():
    assert len(PATHS) > 20 and len(FILES) > 5 and len(DOTTED) > 3, (PATHS, FILES, DOTTED)


@pytest.mark.parametrize("path", PATHS)
def test_every_path_exists(path):
    target = path.lstrip("./")
    found = (REPO / target).exists() or any((REPO / "static" / "chat").glob(target))
    assert found, f"docs/architecture.md names {path}, which is not in the tree"


def test_every_file_name_exists_somewhere():
    names = _all_file_names()
    missing = [f for f in FILES if f not in names]
    assert not missing, f"docs/architecture.md names files that are nowhere in the tree: {missing}"


@pytest.mark.parametrize("name", DOTTED)
def test_every_module_and_attribute_exists(name):
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            assert hasattr(obj, attr), f"docs/architecture.md names {name}: {attr} is not in {obj!r}"
            obj = getattr(obj, attr)
        return
    pytest.fail(f"docs/architecture.md names {name}, which is no module")
