"""The plugin manager. Built-in plugins are entry points of the smolsite distribution itself,
so they load exactly the way a third-party plugin does."""
import importlib.metadata
import logging
import os
import sys
import threading

import pluggy

from . import hookspecs

logger = logging.getLogger(__name__)

GROUP = "smolsite"
# Under pytest only our own distribution's plugins load unless a test asks for more, so a
# plugin installed on the developer's machine cannot change test outcomes.
OWN_DISTRIBUTION = "smolsite"

_lock = threading.Lock()
_pm = None
_versions = {}


def _blocked_names():
    names = set(filter(None, (n.strip() for n in os.environ.get("SMOLSITE_BLOCKED_PLUGINS", "").split(","))))
    try:
        from django.conf import settings

        if settings.configured:
            names.update(getattr(settings, "SMOLSITE_BLOCKED_PLUGINS", []))
    except ImportError:  # pragma: no cover - django is a hard dependency
        pass
    return names


def _entry_points():
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == GROUP:
                yield dist, ep


def build_plugin_manager(blocked=None, extra_distributions=()):
    pm = pluggy.PluginManager("smolsite")
    pm.add_hookspecs(hookspecs)
    blocked = _blocked_names() if blocked is None else set(blocked)
    for name in blocked:
        pm.set_blocked(name)
    called_from_test = hasattr(sys, "_called_from_test")
    seen = set()
    for dist, ep in _entry_points():
        dist_name = dist.metadata["Name"]
        if called_from_test and dist_name != OWN_DISTRIBUTION and dist_name not in extra_distributions:
            continue
        if ep.name in seen or pm.is_blocked(ep.name):
            continue
        seen.add(ep.name)
        plugin = ep.load()
        pm.register(plugin, name=ep.name)
        _versions[ep.name] = (dist_name, dist.version)
    return pm


def get_plugin_manager():
    global _pm
    with _lock:
        if _pm is None:
            _pm = build_plugin_manager()
        return _pm


def reset(pm=None):
    """Replace the process-wide manager (tests use this to block or add plugins)."""
    global _pm
    with _lock:
        _pm = pm


def get_plugins(pm=None):
    pm = pm or get_plugin_manager()
    plugins = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:
            continue
        dist_name, version = _versions.get(name, (None, None))
        plugins.append(
            {
                "name": name,
                "module": getattr(plugin, "__name__", repr(plugin)),
                "distribution": dist_name,
                "version": version,
                "hooks": sorted(caller.name for caller in pm.get_hookcallers(plugin) or []),
            }
        )
    return plugins
