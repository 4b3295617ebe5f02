"""Plugins' URL patterns, mounted after the site's own and refused where they would collide.

Django resolves the first pattern that matches, so a plugin mounted first could answer /admin/ or
/accounts/login/ in the site's place. Mounted last, it could no longer shadow them, but it would be
silently unreachable instead: a route that one of ours (or an earlier plugin's) already answers is
therefore refused at start with ImproperlyConfigured, naming the plugin and the path."""
import re
import uuid

from django.core.exceptions import ImproperlyConfigured
from django.urls import URLPattern, URLResolver
from django.urls.exceptions import Resolver404
from django.urls.resolvers import RegexPattern, RoutePattern

# A value each built-in path converter accepts, to turn a route into a concrete path.
_SAMPLES = {"int": "1", "str": "x", "slug": "x", "path": "x", "uuid": str(uuid.UUID(int=1))}
_CONVERTER = re.compile(r"<(?:(?P<kind>[^>:]+):)?(?P<name>[^>]+)>")
_REGEX_SPECIAL = re.compile(r"[\\.^$*+?{}\[\]|()]")


def _sample(pattern):
    """A concrete path this pattern matches (its literal prefix, for a regular expression)."""
    if isinstance(pattern, RoutePattern):
        return _CONVERTER.sub(lambda m: _SAMPLES.get(m.group("kind") or "str", "x"), str(pattern._route))
    text = str(pattern._regex) if isinstance(pattern, RegexPattern) else str(pattern)
    text = text.lstrip("^")
    cut = _REGEX_SPECIAL.search(text)
    return text[:cut.start()] if cut else text


def _paths(patterns, prefix=""):
    """Concrete paths for every pattern, includes flattened."""
    for p in patterns:
        here = prefix + _sample(p.pattern)
        if isinstance(p, URLResolver):
            yield from _paths(p.url_patterns, here)
        elif isinstance(p, URLPattern):
            yield here


def _answers(patterns, path):
    resolver = URLResolver(RegexPattern(r"^/"), patterns)
    try:
        resolver.resolve("/" + path)
    except Resolver404:
        return False
    return True


def mount(urlpatterns, pm):
    """Append each plugin's ``register_routes()`` to ``urlpatterns``, refusing a plugin route
    that an earlier pattern (the site's or another plugin's) already answers."""
    for impl in pm.hook.register_routes.get_hookimpls():
        routes = list(impl.function() or [])
        for path in _paths(routes):
            if _answers(urlpatterns, path):
                raise ImproperlyConfigured(
                    f"Plugin {impl.plugin_name!r} registers the route /{path}, which the site (or an "
                    f"earlier plugin) already serves: a plugin cannot replace it. Rename the plugin's "
                    f"route, or block the plugin with SMOLSITE_BLOCKED_PLUGINS={impl.plugin_name}.")
        urlpatterns.extend(routes)
    return urlpatterns
