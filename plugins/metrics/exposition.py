"""The registry /metrics serves: every process's counters on this host (MultiProcessCollector)
and the engines of every live worker (EngineCollector). A fresh registry per scrape, as the
library's multiprocess documentation does, so files of processes started since are included."""
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .engine import EngineCollector
from .worker_endpoint import HostCollector


def registry(engines=True):
    """``engines=False`` for a worker's own endpoint: engine gauges come from the shared cache and
    are served by the site's /metrics, so a worker serving them too would show them twice."""
    reg = CollectorRegistry()
    reg.register(HostCollector())
    if engines:
        reg.register(EngineCollector())
    return reg


def render():
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def samples():
    """{metric name: [(labels, value), ...]} of the counters and gauges, for /metrics.json."""
    out = {}
    for family in registry().collect():
        for sample in family.samples:
            out.setdefault(sample.name, []).append({"labels": sample.labels, "value": sample.value})
    return out
