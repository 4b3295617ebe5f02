"""Helpers for testing plugins and backends without a database or a channel layer."""
from .backends import GenerationRequest, SamplingParams
from .service import GenerationService, JobStore


class MemoryStore(JobStore):
    """Keeps requests and results in dicts; ``progress`` records every save."""

    def __init__(self):
        self.requests, self.results, self.progress = {}, {}, []

    def add(self, request):
        self.requests[request.id] = request
        return request

    def claim(self, job_id, worker_id):
        return self.requests.pop(job_id, None)

    def save_progress(self, job_id, text, reasoning, seq):
        self.progress.append((job_id, text, reasoning, seq))

    def finish(self, job_id, result):
        self.results[job_id] = result


class RecordingPublisher:
    """Same interface as inference.publish.Publisher; keeps the numbered events in a list."""

    instances = []

    def __init__(self, group, message_id, flush_seconds=0.0):
        from .publish import Publisher

        self._inner = Publisher(group="", message_id=message_id, layer=None, loop=object(),
                                flush_seconds=flush_seconds)
        self.events = []
        self.closed = False
        RecordingPublisher.instances.append(self)

    @property
    def seq(self):
        return self._inner.seq

    def emit(self, kind, text="", **data):
        self._inner.emit(kind, text, **data)

    def due(self):
        return self._inner.due()

    def flush(self):
        pending = list(self._inner._pending)
        seq = self._inner.flush()
        self.events.extend(pending)
        return seq

    def close(self, timeout=10):
        self.flush()
        self._inner.close(timeout)  # no longer counted among the answers streaming (publish.flush_interval)
        self.closed = True


def run_service(registry, request, store=None):
    """Run one request through the real GenerationService; returns (result, publisher, store)."""
    store = store or MemoryStore()
    publishers = []

    def factory(group, message_id):
        pub = RecordingPublisher(group, message_id)
        publishers.append(pub)
        return pub

    result = GenerationService(registry=registry, store=store, publisher_factory=factory).run(request)
    return result, publishers[0], store


def run_request(registry, request, store=None):
    """Run one request through the real GenerationService; returns (result, events)."""
    result, publisher, _ = run_service(registry, request, store)
    return result, publisher.events


def make_request(model, content, request_id="t1", **params):
    return GenerationRequest(id=request_id, model=model, messages=[{"role": "user", "content": content}],
                             params=SamplingParams(**{"temperature": 0.0, **params}))
