"""HTTP to upstreams (httpx): the model list, and streamed completions read as server-sent events.

What comes back is bounded: an error body is read up to ERROR_BYTES and reaches users as one short
line (the upstream's own error message when it sends OpenAI's error shape, never its HTML or
traceback); a streamed answer may be at most SMOLSITE_UPSTREAM_MAX_BYTES, one event at most
LINE_BYTES."""
import json
import logging
import re
import threading

import httpx
from django.conf import settings

from . import breaker

# httpx logs every request at INFO: a probe every few seconds per upstream would flood the log.
logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))

ERROR_BYTES = 4096
LINE_BYTES = 1 << 20
JSON_BYTES = 1 << 20
MESSAGE_CHARS = 200


class UpstreamError(Exception):
    """A failure to tell the user, in one short line. ``retry_elsewhere``: nothing reached the
    user yet and another upstream may answer; ``counts``: the upstream itself failed (a timeout, a
    refused connection, a 5xx), which counts towards its breaker (a 400 does not)."""

    def __init__(self, message, counts=True, timeout=False, status=None):
        super().__init__(message)
        self.counts, self.timeout, self.status = counts, timeout, status


def max_bytes():
    return int(getattr(settings, "SMOLSITE_UPSTREAM_MAX_BYTES", 16 * 1024 * 1024))


_clients = {}
_clients_lock = threading.Lock()


def client_for(upstream):
    """One connection pool per upstream per process (its settings in the key: a change makes a new one)."""
    key = (upstream.name, upstream.base_url, upstream.connect_timeout, upstream.read_timeout, upstream.max_concurrency)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            for old in [k for k in _clients if k[0] == upstream.name]:
                _clients.pop(old).close()
            limits = httpx.Limits(max_connections=upstream.max_concurrency + 4,
                                  max_keepalive_connections=upstream.max_concurrency)
            client = _clients[key] = httpx.Client(
                timeout=httpx.Timeout(upstream.read_timeout, connect=upstream.connect_timeout),
                limits=limits, follow_redirects=False, trust_env=False)
        return client


def headers(upstream):
    h = {"Accept": "application/json, text/event-stream", "User-Agent": "smolsite-openai-upstream"}
    if upstream.api_key:
        h["Authorization"] = f"Bearer {upstream.api_key}"
    return h


def short(text):
    """One line of plain text, at most MESSAGE_CHARS (no markup, no traceback)."""
    text = re.sub(r"<[^>]*>", " ", text or "")
    text = " ".join(text.split())
    return text[:MESSAGE_CHARS] + ("…" if len(text) > MESSAGE_CHARS else "")


def error_text(upstream, status, body):
    """An upstream's error response as a short message for users."""
    detail = ""
    try:
        data = json.loads(body.decode("utf-8", "replace"))
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            detail = err.get("message") or ""
        elif isinstance(err, str):
            detail = err
        elif isinstance(data, dict) and isinstance(data.get("detail"), str):
            detail = data["detail"]
        elif isinstance(data, dict) and isinstance(data.get("message"), str):
            detail = data["message"]
    except (ValueError, AttributeError):
        pass  # HTML or a traceback: not shown
    detail = short(detail if isinstance(detail, str) else "")
    return f"The upstream {upstream.name} refused the request (HTTP {status})" + (f": {detail}" if detail else ".")


def _transport_error(upstream, exc):
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(f"The upstream {upstream.name} did not answer in time.", timeout=True)
    if isinstance(exc, httpx.ConnectError):
        return UpstreamError(f"The upstream {upstream.name} cannot be reached.")
    return UpstreamError(f"The connection to the upstream {upstream.name} broke ({type(exc).__name__}).")


def get_json(upstream, path, timeout):
    try:
        with client_for(upstream).stream("GET", upstream.base_url + path, headers=headers(upstream),
                                         timeout=httpx.Timeout(timeout, connect=min(timeout, upstream.connect_timeout))) as r:
            body = _read_capped(r, JSON_BYTES if r.status_code == 200 else ERROR_BYTES)
            if r.status_code != 200:
                raise UpstreamError(error_text(upstream, r.status_code, body), status=r.status_code)
    except httpx.HTTPError as exc:
        raise _transport_error(upstream, exc) from None
    try:
        return json.loads(body)
    except ValueError:
        raise UpstreamError(f"The upstream {upstream.name} answered {path} with something other than JSON.") from None


def _read_capped(response, limit):
    out = bytearray()
    for chunk in response.iter_raw():
        out += chunk
        if len(out) > limit:
            raise UpstreamError(f"The upstream {response.request.url.host} sent more than {limit} bytes.")
    return bytes(out)


class Stream:
    """A streamed completion: iterate ``events()`` for each SSE ``data:`` payload (parsed JSON);
    ``close()`` (Stop) closes the HTTP connection, so the upstream sees the client go."""

    def __init__(self, upstream, path, body):
        self.upstream = upstream
        self._cm = None
        self.response = None
        self.path, self.body = path, body
        self.bytes = 0

    def open(self):
        h = dict(headers(self.upstream), **{"Content-Type": "application/json"})
        try:
            self._cm = client_for(self.upstream).stream("POST", self.upstream.base_url + self.path, headers=h,
                                                        content=json.dumps(self.body).encode())
            self.response = self._cm.__enter__()
        except httpx.HTTPError as exc:
            self._cm = None
            raise _transport_error(self.upstream, exc) from None
        status = self.response.status_code
        if status == 200:
            breaker.progress(self.upstream.name)
        else:
            try:
                body = _read_capped(self.response, ERROR_BYTES)
            except (UpstreamError, httpx.HTTPError):
                body = b""
            self.close()
            raise UpstreamError(error_text(self.upstream, status, body), counts=status >= 500 or status == 429,
                                status=status)
        return self

    def events(self):
        """Parsed ``data:`` payloads up to ``[DONE]``; raises UpstreamError on a broken or oversized stream."""
        limit = max_bytes()
        buf = b""
        try:
            for chunk in self.response.iter_raw():
                breaker.progress(self.upstream.name)
                self.bytes += len(chunk)
                if self.bytes > limit:
                    raise UpstreamError(f"The upstream {self.upstream.name}'s answer was larger than {limit} bytes: "
                                        "it was cut there.", counts=False)
                buf += chunk
                while True:
                    at = buf.find(b"\n")
                    if at < 0:
                        break
                    line, buf = buf[:at].rstrip(b"\r"), buf[at + 1:]
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    try:
                        yield json.loads(data)
                    except ValueError:
                        raise UpstreamError(f"The upstream {self.upstream.name} sent an event that is not JSON.",
                                            counts=False) from None
                if len(buf) > LINE_BYTES:
                    raise UpstreamError(f"The upstream {self.upstream.name} sent an event over {LINE_BYTES} bytes.",
                                        counts=False)
        except httpx.HTTPError as exc:
            raise _transport_error(self.upstream, exc) from None
        raise UpstreamError(f"The upstream {self.upstream.name} ended the stream before the answer was finished.",
                            counts=True)

    def close(self):
        cm, self._cm = self._cm, None
        if cm is not None:
            try:
                cm.__exit__(None, None, None)
            except Exception:
                pass
