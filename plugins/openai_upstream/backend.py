"""The backend of upstream models: each request goes to one of the upstreams serving its model
(balance.py), streamed with httpx, its chunks handed to the same pipeline as a local model's.

It runs on a thread of the upstream worker, which only waits on sockets: never a llama.cpp slot or
a device worker's thread. Stop closes the HTTP stream (the upstream sees the client go and stops
generating). A stream that breaks after some text ends ``interrupted`` with that text; a failure
before any text tries another healthy upstream of the model first."""
import logging

from inference.plugin_api import Backend, Delta, Finish, Queued, toolcalls

from . import breaker, catalog, metrics, reasoning, request_body
from .balance import get_balancer
from .client import Stream, UpstreamError
from .discovery import current_upstreams
from .tokens import counter

logger = logging.getLogger(__name__)
FINISH = {"stop": "stop", "length": "length", "tool_calls": "stop", "function_call": "stop", "eos": "stop"}


class UpstreamBackend(Backend):
    name = catalog.BACKEND
    # Upstream models are discovered while the site runs: the registry makes this backend on a
    # model's first request instead of at the worker's start.
    load_on_demand = True

    def load(self):
        if not self.model.options.get("routes"):
            raise ValueError(f"model {self.model.name!r} has no upstream")

    @property
    def context_size(self):
        return self.model.n_ctx

    def _upstreams(self):
        configured = current_upstreams()
        return [(configured[u], remote) for u, remote in self.model.options.get("routes", [])
                if u in configured and configured[u].enabled]

    def _count(self):
        routes = self._upstreams()
        return counter(routes[0][0].tokenizer if routes else "")

    def render_prompt(self, request):
        """The turns as text, for counting (the upstream renders its own template)."""
        parts = [f"{m['role']}\n{m['content'] or ''}" for m in request_body.messages(request)]
        if request.raw_prompt is not None:
            return request.raw_prompt
        return "\n".join(parts)

    def count_tokens(self, text):
        # About 4 tokens of template markup a turn, beyond the text, as ChatML-style templates add.
        return self._count()(text) + 4 * text.count("\n") // 2 if text else 0

    def submit(self, request, prompt, should_stop):
        if should_stop():
            yield Finish("stopped")
            return
        tried = set()
        last_error = None

        def candidates():
            routes = [(u, r) for u, r in self._upstreams() if u.name not in tried]
            states = breaker.states([u.name for u, _ in routes])
            return [u for u, _ in routes if not states[u.name]["open"]]

        balancer = get_balancer()
        while True:
            waiting = balancer.acquire(candidates, should_stop)
            try:
                while True:
                    yield Queued(next(waiting))
            except StopIteration as done:
                upstream = done.value
            if upstream is None:
                if should_stop():
                    yield Finish("stopped")
                    return
                yield Finish("error", error=last_error or self._unavailable())
                return
            tried.add(upstream.name)
            remote = dict((u, r) for u, r in self.model.options["routes"])[upstream.name]
            try:
                outcome = yield from self._one(upstream, remote, request, should_stop)
            finally:
                balancer.release(upstream.name)
            if isinstance(outcome, Finish):
                yield outcome
                return
            last_error = outcome  # nothing reached the user: the next healthy upstream may answer

    def _unavailable(self):
        names = ", ".join(self.model.options.get("served_by", [])) or "none"
        return (f"The model {self.model.name} is unavailable right now: its upstream server ({names}) is not "
                "answering. Try again in a moment.")

    def _one(self, upstream, remote, request, should_stop):
        """Stream one attempt. Returns a Finish, or an error text when it failed before any output
        (so another upstream may be tried)."""
        try:
            path, body = request_body.build(upstream, remote, request)
        except request_body.Unsupported as exc:
            return Finish("error", error=str(exc))
        count = counter(upstream.tokenizer)
        stream = Stream(upstream, path, body)
        text, thought, calls, usage, reason = [], [], {}, None, None
        emitted = False
        try:
            stream.open()
            for event in stream.events():
                if isinstance(event, dict) and event.get("error"):
                    err = event["error"]
                    message = err.get("message") if isinstance(err, dict) else str(err)
                    from .client import short

                    raise UpstreamError(f"The upstream {upstream.name} failed: {short(str(message))}", counts=False)
                if isinstance(event, dict) and isinstance(event.get("usage"), dict):
                    usage = event["usage"]
                for piece, kind in _pieces(event, calls):
                    emitted = True
                    (thought if kind == "reasoning" else text).append(piece)
                    yield Delta(reasoning.mark(piece) if kind == "reasoning" else piece)
                choices = event.get("choices") if isinstance(event, dict) else None
                if choices and isinstance(choices[0], dict) and choices[0].get("finish_reason"):
                    reason = choices[0]["finish_reason"]
                if should_stop():
                    stream.close()  # the upstream sees the connection close and stops
                    return self._end(upstream, request, "stopped", text, thought, calls, usage, count)
        except UpstreamError as exc:
            stream.close()
            if exc.counts:
                (breaker.trip if exc.timeout else breaker.failure)(upstream.name, str(exc))
            if not emitted and exc.counts and exc.status is None:
                metrics.record(upstream.name, self.model.name, "failed", 0, 0)
                return str(exc)
            ending = "interrupted" if emitted else "error"
            if should_stop():
                ending, exc = "stopped", None
            return self._end(upstream, request, ending, text, thought, calls, usage, count,
                             error=str(exc) if exc else "")
        finally:
            stream.close()
        breaker.success(upstream.name)
        for call in _ordered(calls):
            piece = toolcalls.call_text(call["name"], call["arguments"])
            text.append(piece)
            yield Delta(piece)
        return self._end(upstream, request, FINISH.get(reason or "stop", "stop"), text, thought, calls, usage, count)

    def _end(self, upstream, request, reason, text, thought, calls, usage, count, error=""):
        prompt = completion = 0
        if usage:
            prompt = _int(usage.get("prompt_tokens"))
            completion = _int(usage.get("completion_tokens"))
        if not completion:
            completion = count("".join(text)) + count("".join(thought))
        metrics.record(upstream.name, self.model.name, reason, prompt, completion)
        return Finish(reason, prompt_tokens=prompt, completion_tokens=completion, error=error,
                      **_served_by(upstream))


def _served_by(upstream):
    """Who answered, for the message's row (the admin's review), when inference.backends.Finish has
    a place for it."""
    return {"backend": f"{catalog.BACKEND}:{upstream.name}"} if "backend" in Finish.__dataclass_fields__ else {}


def _int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _pieces(event, calls):
    """(text, "text"|"reasoning") pieces of one streamed event; tool-call fragments go to ``calls``."""
    choices = event.get("choices") if isinstance(event, dict) else None
    if not choices or not isinstance(choices[0], dict):
        return []
    choice = choices[0]
    out = []
    delta = choice.get("delta")
    if isinstance(delta, dict):
        for key, kind in (("reasoning_content", "reasoning"), ("reasoning", "reasoning"), ("content", "text")):
            value = delta.get(key)
            if isinstance(value, str) and value:
                out.append((value.replace("\x00", ""), kind))
        for call in delta.get("tool_calls") or []:
            if not isinstance(call, dict):
                continue
            written = calls.setdefault(call.get("index", len(calls)), {"name": "", "arguments": ""})
            fn = call.get("function") or {}
            if isinstance(fn.get("name"), str):
                written["name"] += fn["name"]
            if isinstance(fn.get("arguments"), str):
                written["arguments"] += fn["arguments"]
    elif isinstance(choice.get("text"), str) and choice["text"]:  # /completions
        out.append((choice["text"].replace("\x00", ""), "text"))
    return [(piece, kind) for piece, kind in out if piece]


def _ordered(calls):
    return [calls[k] for k in sorted(calls, key=lambda k: k if isinstance(k, int) else 0) if calls[k]["name"]]
