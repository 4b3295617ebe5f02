"""Metrics plugin: counts generations, tokens and latencies across all workers (kept in the
shared cache, so the web process sees what the device workers did) and serves them at
/metrics in Prometheus' text format and /metrics.json."""
import threading

from django.core.cache import cache
from django.http import HttpResponse, JsonResponse
from django.urls import path

from inference.hookspecs import hookimpl

KEY = "smolsite:metrics"
RECENT = 200
_lock = threading.Lock()


def _empty():
    return {"started": 0, "finished": {}, "prompt_tokens": 0, "completion_tokens": 0, "recent": []}


def snapshot():
    data = cache.get(KEY) or _empty()
    recent = data["recent"]
    ttfts = sorted(r["ttft"] for r in recent if r.get("ttft") is not None)
    rates = sorted(r["tps"] for r in recent if r.get("tps"))

    def median(values):
        return values[len(values) // 2] if values else None

    return {
        "generations_started": data["started"],
        "generations_finished": data["finished"],
        "prompt_tokens": data["prompt_tokens"],
        "completion_tokens": data["completion_tokens"],
        "recent_median_ttft_seconds": median(ttfts),
        "recent_median_tokens_per_second": median(rates),
        "recent_count": len(recent),
    }


def _update(change):
    # The read-modify-write is per process; across workers a lost update only skews a counter.
    with _lock:
        data = cache.get(KEY) or _empty()
        change(data)
        cache.set(KEY, data, None)


@hookimpl
def generation_started(request):
    _update(lambda d: d.__setitem__("started", d["started"] + 1))


@hookimpl
def generation_finished(request, result):
    def change(d):
        d["finished"][result.status] = d["finished"].get(result.status, 0) + 1
        d["prompt_tokens"] += result.prompt_tokens or 0
        d["completion_tokens"] += result.completion_tokens or 0
        d["recent"] = (d["recent"] + [{"model": result.model, "ttft": result.ttft,
                                       "tps": result.tokens_per_second}])[-RECENT:]

    _update(change)


# Per model and worker, from the device workers' engine reports (inference.workers.EngineReporter).
ENGINE_GAUGES = [
    ("running", "gauge", "sequences being decoded"),
    ("waiting", "gauge", "requests waiting for a slot"),
    ("slots", "gauge", "sequences decoded together at most"),
    ("batch_fill", "gauge", "share of the last step's token budget used"),
    ("kv_cells_used", "gauge", "KV cache cells holding tokens"),
    ("kv_cells", "gauge", "KV cache cells"),
    ("resident_sequences", "gauge", "finished conversations kept in the KV cache"),
    ("host_bytes", "gauge", "bytes of sequence state kept in host RAM"),
    ("prefix_hits", "counter", "requests that reused a resident sequence"),
    ("prefix_host_hits", "counter", "requests restored from host RAM"),
    ("prefix_shared_hits", "counter", "requests that reused only the template's user-independent opening"),
    ("prefix_misses", "counter", "requests prefilled from scratch"),
]


def engine_snapshot():
    from inference.workers import engine_stats

    return engine_stats()


def metrics_json(request):
    return JsonResponse({**snapshot(), "engines": engine_snapshot()})


def metrics_text(request):
    s = snapshot()
    lines = [
        "# TYPE smolsite_generations_started_total counter",
        f"smolsite_generations_started_total {s['generations_started']}",
        "# TYPE smolsite_generations_finished_total counter",
    ]
    for status, count in sorted(s["generations_finished"].items()):
        lines.append(f'smolsite_generations_finished_total{{status="{status}"}} {count}')
    lines += [
        "# TYPE smolsite_prompt_tokens_total counter",
        f"smolsite_prompt_tokens_total {s['prompt_tokens']}",
        "# TYPE smolsite_completion_tokens_total counter",
        f"smolsite_completion_tokens_total {s['completion_tokens']}",
    ]
    if s["recent_median_ttft_seconds"] is not None:
        lines += ["# TYPE smolsite_recent_median_ttft_seconds gauge",
                  f"smolsite_recent_median_ttft_seconds {s['recent_median_ttft_seconds']:.6f}"]
    if s["recent_median_tokens_per_second"] is not None:
        lines += ["# TYPE smolsite_recent_median_tokens_per_second gauge",
                  f"smolsite_recent_median_tokens_per_second {s['recent_median_tokens_per_second']:.3f}"]
    engines = engine_snapshot()
    for key, kind, help_text in ENGINE_GAUGES:
        name = f"smolsite_engine_{key}" + ("_total" if kind == "counter" else "")
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for worker, models in sorted(engines.items()):
            for model, stats in sorted(models.items()):
                if key in stats:
                    lines.append(f'{name}{{worker="{_label(worker)}",model="{_label(model)}"}} {stats[key]}')
    return HttpResponse("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")


def _label(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


@hookimpl
def register_routes():
    return [path("metrics", metrics_text, name="metrics"), path("metrics.json", metrics_json, name="metrics-json")]
