"""The metrics plugin: Prometheus metrics of every generation (prometheus_client, multiprocess
mode: plugins.metrics.multiproc), the live engines of every worker, /metrics and /metrics.json
for a bearer token or staff, and a staff dashboard drawn from the database.

Blocking the plugin (SMOLSITE_BLOCKED_PLUGINS=metrics) removes all of it; chat does not need it.
"""
from . import multiproc

# Before prometheus_client is imported: it chooses multiprocess storage at import.
multiproc.configure()

from django.urls import path  # noqa: E402

from inference.plugin_api import hookimpl  # noqa: E402

from . import observe, views, worker_endpoint  # noqa: E402

worker_endpoint.connect()


@hookimpl
def generation_started(request):
    observe.started(request)


@hookimpl
def generation_finished(request, result):
    observe.finished(request, result)


@hookimpl
def request_throttled(action, scope):
    observe.throttled(action, scope)


@hookimpl
def register_routes():
    return [
        path("metrics", views.metrics_text, name="metrics"),
        path("metrics.json", views.metrics_json, name="metrics-json"),
        path("metrics/dashboard/", views.dashboard_page, name="metrics-dashboard"),
        path("metrics/dashboard/data.json", views.dashboard_data, name="metrics-dashboard-data"),
    ]
