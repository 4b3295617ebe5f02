"""The counters, histograms and gauges a device worker updates, one set per process.

They are registered with no registry: in multiprocess mode their values live in the process's
files, and the exposition (plugins.metrics.exposition) reads every process's files through
MultiProcessCollector. Registering them too would count this process twice.
"""
import logging

from prometheus_client import Counter, Gauge, Histogram, values

if not getattr(values.ValueClass, "_multiprocess", False):
    # Imported before PROMETHEUS_MULTIPROC_DIR was set: counts would stay in this process, unseen.
    logging.getLogger(__name__).error("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set; "
                                      "this process's generations will not reach /metrics")

LABELS = ("model", "device", "source")

GENERATIONS = Counter("smolsite_generations", "generations started (requests)", LABELS, registry=None)
OUTCOMES = Counter("smolsite_generations_finished", "generations ended, by outcome (done, stopped, error)",
                   LABELS + ("status",), registry=None)
PROMPT_TOKENS = Counter("smolsite_prompt_tokens", "prompt tokens of finished generations", LABELS, registry=None)
CACHED_TOKENS = Counter("smolsite_cached_tokens", "prompt tokens reused from the KV cache (not prefilled again)",
                        LABELS, registry=None)
COMPLETION_TOKENS = Counter("smolsite_completion_tokens", "tokens generated", LABELS, registry=None)
TTFT = Histogram("smolsite_time_to_first_token_seconds", "from a worker starting a generation to its first token",
                 LABELS, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=None)
TIME_PER_TOKEN = Histogram("smolsite_time_per_output_token_seconds",
                           "seconds per generated token after the first (1 / tokens per second)",
                           LABELS, buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2), registry=None)
QUEUE_WAIT = Histogram("smolsite_queue_wait_seconds",
                       "from the answer being queued to a device worker starting it",
                       LABELS, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 15, 60, 300, 1800), registry=None)
# livesum: the sum over processes alive now; a dead process's share is dropped
# (plugins.metrics.multiproc.forget_dead_processes).
IN_PROGRESS = Gauge("smolsite_generations_in_progress", "generations running now", LABELS,
                    multiprocess_mode="livesum", registry=None)
# Counted in the web process (accounts.login_throttle through the request_throttled hook).
THROTTLED = Counter("smolsite_throttled_requests", "sign-ins and sign-ups refused by a limit, by action and "
                    "by the limit (account or address)", ("action", "scope"), registry=None)
