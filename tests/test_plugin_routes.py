"""Plugin routes are mounted after the site's own, and a plugin that would answer one of the site's
paths (/admin/, /accounts/login/) refuses the start with a message naming it and the path.

The plugins here are real installed distributions: a ``.dist-info`` with its ``entry_points.txt``
on ``sys.path`` (or PYTHONPATH, for a started process), discovered as any pip-installed plugin."""
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import URLResolver, include, path
from django.urls.resolvers import RegexPattern

from inference.plugins import build_plugin_manager
from smolsite.plugin_routes import mount

REPO = Path(__file__).resolve().parent.parent

SHADOW = '''
"""Tries to answer the site's own pages."""
import pluggy
from django.http import HttpResponse
from django.urls import path

hookimpl = pluggy.HookimplMarker("smolsite")


def fake(request):
    return HttpResponse("not the real page")


@hookimpl
def register_routes():
    return [path({route!r}, fake)]
'''

GOOD = '''
"""A page of its own, at a path nobody else serves."""
import pluggy
from django.http import HttpResponse
from django.urls import path

hookimpl = pluggy.HookimplMarker("smolsite")


def hello(request, n):
    return HttpResponse(f"hello {{n}} from a plugin")


@hookimpl
def register_routes():
    return [path("hello-plugin/<int:n>/", hello)]
'''


def install(site, dist, module, source):
    """Writes an installed distribution (what pip leaves in site-packages) into ``site``."""
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[smolsite]\n{module} = {module}\n")
    sys.modules.pop(module, None)  # an earlier test's version of it
    importlib.invalidate_caches()


@pytest.fixture
def own_patterns():
    """The site's patterns as smolsite/urls.py lists them, before any plugin is mounted."""
    from django.contrib import admin

    from inference import health

    return [
        path("admin/", admin.site.urls),
        path("healthz", health.healthz),
        path("readyz", health.readyz),
        path("", include("batches.api_urls")),
        path("", include("api.urls")),
        path("", include("accounts.urls")),
        path("", include("batches.urls")),
        path("", include("chat.urls")),
    ]


def resolve(patterns, url):
    return URLResolver(RegexPattern(r"^/"), patterns).resolve(url)


@pytest.mark.parametrize("route", ["admin/", "accounts/login/", "admin/auth/user/", "v1/chat/completions"])
def test_a_plugin_shadowing_a_site_path_is_refused(route, own_patterns, tmp_path, monkeypatch):
    install(tmp_path / "site", "smolsite-shadow", "smolsite_shadow", SHADOW.format(route=route))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    pm = build_plugin_manager(blocked=[], extra_distributions=["smolsite-shadow"])
    with pytest.raises(ImproperlyConfigured) as info:
        mount(own_patterns, pm)
    assert "'smolsite_shadow'" in str(info.value) and f"/{route}" in str(info.value)


def test_the_project_urlconf_mounts_plugin_pages_after_its_own(client):
    """The real urlconf: /metrics (a plugin's) is served, and after every pattern of ours."""
    from smolsite import urls

    names = [getattr(p, "name", None) for p in urls.urlpatterns]
    metrics = next(i for i, p in enumerate(urls.urlpatterns) if str(p.pattern) == "metrics")
    assert metrics > names.index("readyz")
    assert str(urls.urlpatterns[0].pattern) == "admin/"
    assert client.get("/metrics").resolver_match.func.__module__.startswith("plugins.metrics")
    assert client.get("/accounts/login/").resolver_match.url_name == "login"


def test_a_plugin_page_of_its_own_is_mounted_and_answers(own_patterns, tmp_path, monkeypatch):
    install(tmp_path / "site", "smolsite-good", "smolsite_good", GOOD)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    pm = build_plugin_manager(blocked=[], extra_distributions=["smolsite-good"])
    patterns = mount(list(own_patterns), pm)
    match = resolve(patterns, "/hello-plugin/7/")
    assert match.func.__module__ == "smolsite_good" and match.kwargs == {"n": 7}
    # Ours still answer ours.
    assert resolve(patterns, "/accounts/login/").url_name == "login"


def test_two_plugins_claiming_one_path_are_refused(own_patterns, tmp_path, monkeypatch):
    install(tmp_path / "site", "smolsite-good", "smolsite_good", GOOD)
    install(tmp_path / "site", "smolsite-copy", "smolsite_copy", SHADOW.format(route="hello-plugin/<int:n>/"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    pm = build_plugin_manager(blocked=[], extra_distributions=["smolsite-good", "smolsite-copy"])
    with pytest.raises(ImproperlyConfigured, match="/hello-plugin/1/"):
        mount(list(own_patterns), pm)


def test_a_shadowing_plugin_stops_the_server_from_starting(tmp_path):
    """Started as a served process loads it (asgi.py imports the urlconf at start): it exits with
    the plugin's name and path instead of serving a site whose /admin/ a plugin answers."""
    install(tmp_path / "site", "smolsite-shadow", "smolsite_shadow", SHADOW.format(route="admin/"))
    code = "import smolsite.asgi"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site"), "SMOLSITE_VAR_DIR": str(tmp_path),
           "SMOLSITE_EMBEDDED_WORKER": "0", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr
    assert "Plugin 'smolsite_shadow' registers the route /admin/" in done.stderr
