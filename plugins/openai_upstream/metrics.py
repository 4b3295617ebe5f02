"""Per-upstream figures for /metrics (prometheus_client; multiprocess files like every other
smolsite metric, so the metrics plugin's exposition shows them). Imported on first use, after the
metrics plugin has chosen multiprocess storage. A broken metric never costs an answer."""
import logging

logger = logging.getLogger(__name__)
_instruments = None


def _get():
    global _instruments
    if _instruments is None:
        from prometheus_client import Counter

        labels = ("upstream", "model")
        _instruments = {
            "requests": Counter("smolsite_upstream_requests", "requests sent to upstreams, by outcome",
                                labels + ("outcome",), registry=None),
            "prompt": Counter("smolsite_upstream_prompt_tokens", "prompt tokens billed for upstream answers",
                              labels, registry=None),
            "completion": Counter("smolsite_upstream_completion_tokens", "completion tokens billed for upstream "
                                  "answers", labels, registry=None),
        }
    return _instruments


def record(upstream, model, outcome, prompt_tokens, completion_tokens):
    try:
        m = _get()
        m["requests"].labels(upstream=upstream, model=model, outcome=outcome).inc()
        m["prompt"].labels(upstream=upstream, model=model).inc(prompt_tokens or 0)
        m["completion"].labels(upstream=upstream, model=model).inc(completion_tokens or 0)
    except Exception:
        logger.exception("metrics: could not count an upstream request")
