"""Gauges read at scrape time from what device workers report to the shared cache
(inference.workers: heartbeats and EngineReporter), so the web process can show the engines of
every worker, on any host, without those processes serving anything."""
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from inference.plugin_api import alive_workers, engine_stats

# engine figure -> (metric suffix, kind, help)
FIGURES = {
    "running": ("running_sequences", "gauge", "sequences being decoded"),
    "waiting": ("waiting_requests", "gauge", "requests waiting for a slot"),
    "slots": ("slots", "gauge", "sequences decoded together at most"),
    "batch_fill": ("batch_fill_ratio", "gauge", "share of the last step's token budget used"),
    "kv_cells_used": ("kv_cells_used", "gauge", "KV cache cells holding tokens"),
    "kv_cells": ("kv_cells", "gauge", "KV cache cells"),
    "resident_sequences": ("resident_sequences", "gauge", "finished conversations kept in the KV cache"),
    "host_bytes": ("host_state_bytes", "gauge", "bytes of sequence state kept in host RAM"),
    "steps": ("steps", "counter", "decode steps"),
    "decoded_tokens": ("decoded_tokens", "counter", "tokens decoded (prompt and output)"),
    "prefix_hits": ("prefix_hits", "counter", "requests that reused a resident sequence"),
    "prefix_host_hits": ("prefix_host_hits", "counter", "requests restored from host RAM"),
    "prefix_shared_hits": ("prefix_shared_hits", "counter",
                           "requests that reused only the template's user-independent opening"),
    "prefix_misses": ("prefix_misses", "counter", "requests prefilled from scratch"),
    "preemptions": ("preemptions", "counter", "background sequences paused for a person's request"),
}
LABELS = ["worker", "device", "model"]


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class EngineCollector(Collector):
    """One series per live worker and model; a worker whose heartbeat expired drops out."""

    def collect(self):
        workers = alive_workers()
        devices = {w["id"]: w.get("device", "") for w in workers}
        alive = GaugeMetricFamily("smolsite_workers_alive", "device workers whose heartbeat is current",
                                  labels=["device"])
        per_device = {}
        for w in workers:
            per_device[w.get("device", "")] = per_device.get(w.get("device", ""), 0) + 1
        for device, count in sorted(per_device.items()):
            alive.add_metric([device], count)
        yield alive

        engines = engine_stats()
        families = {}
        for key, (suffix, kind, help_text) in FIGURES.items():
            name = f"smolsite_engine_{suffix}"
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, help_text, labels=LABELS)
            families[key] = family
        usage = GaugeMetricFamily("smolsite_engine_kv_usage_ratio", "share of KV cache cells holding tokens",
                                  labels=LABELS)
        hit_rate = GaugeMetricFamily("smolsite_engine_prefix_hit_ratio",
                                     "share of requests since the worker started that reused cached tokens",
                                     labels=LABELS)
        for worker, models in sorted(engines.items()):
            for model, stats in sorted((models or {}).items()):
                labels = [worker, devices.get(worker, ""), model]
                for key, family in families.items():
                    if _number(stats.get(key)):
                        family.add_metric(labels, stats[key])
                if _number(stats.get("kv_cells")) and stats["kv_cells"] and _number(stats.get("kv_cells_used")):
                    usage.add_metric(labels, stats["kv_cells_used"] / stats["kv_cells"])
                hits = sum(stats.get(k, 0) for k in ("prefix_hits", "prefix_host_hits", "prefix_shared_hits")
                           if _number(stats.get(k)))
                total = hits + (stats["prefix_misses"] if _number(stats.get("prefix_misses")) else 0)
                if total:
                    hit_rate.add_metric(labels, hits / total)
        yield from families.values()
        yield usage
        yield hit_rate
