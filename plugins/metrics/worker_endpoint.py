"""A Celery device worker's own metrics endpoint, for workers on other hosts than the web process.

The multiprocess directory is per host: the site's /metrics sums the processes of its own host.
A worker on another host serves its host's directory itself when SMOLSITE_METRICS_PORT is set
(prometheus_client.start_http_server on SMOLSITE_METRICS_ADDR, 127.0.0.1 by default), and
Prometheus scrapes each such worker as a target of its own. Every number is in exactly one
host's directory, so summing over targets counts nothing twice. This endpoint has no token:
bind it to an address only the Prometheus server can reach.
"""
import logging

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from . import multiproc

logger = logging.getLogger(__name__)

_server = None


class HostCollector(Collector):
    """Every process's files in this host's directory, dead processes' live gauges dropped first."""

    def collect(self):
        multiproc.forget_dead_processes()
        return MultiProcessCollector(None, path=multiproc.directory()).collect()


def serve(port, addr="127.0.0.1"):
    global _server
    registry = CollectorRegistry()
    registry.register(HostCollector())
    _server, _thread = start_http_server(port, addr=addr, registry=registry)
    return _server


def _on_worker_ready(**kwargs):
    from django.conf import settings

    port = int(getattr(settings, "SMOLSITE_METRICS_PORT", 0) or 0)
    if not port or _server is not None:
        return
    addr = getattr(settings, "SMOLSITE_METRICS_ADDR", "127.0.0.1")
    try:
        serve(port, addr)
        logger.info("metrics of this host's processes at http://%s:%d/metrics", addr, port)
    except OSError as exc:  # the port is taken (a second worker on this host): the first one serves it
        logger.warning("metrics endpoint not started on %s:%d: %s", addr, port, exc)


def _on_worker_shutdown(**kwargs):
    # As the library documents for a process that exits: its live gauges stop counting.
    try:
        multiproc.mark_this_process_dead()
    except Exception:
        logger.exception("metrics: could not mark this process dead")
    if _server is not None:
        _server.shutdown()


def connect():
    """Called at import: in a Celery worker the plugins load during worker_init, before these fire;
    in any other process they never fire."""
    from celery.signals import worker_ready, worker_shutdown

    worker_ready.connect(_on_worker_ready, weak=False, dispatch_uid="smolsite-metrics-ready")
    worker_shutdown.connect(_on_worker_shutdown, weak=False, dispatch_uid="smolsite-metrics-shutdown")
