#!/usr/bin/env python
"""Tokens per second and time to first token of smolsite's generation paths against raw
llama-cpp-python on the same model, threads and context size, measured in one run.

Prints one JSON line per scenario on stdout (progress goes to stderr):

  raw               llama_cpp.Llama.create_chat_completion(stream=True), timed per chunk
  service_embedded  inference.service.GenerationService with the real engine, an in-memory job
                    store and the real Publisher on an InMemoryChannelLayer; timed by a group
                    subscriber draining that layer
  celery_redis      a real Celery device worker subprocess over Redis; timed by a channels-redis
                    group subscriber in this process
  ws_embedded       a websocket client (channels' WebsocketCommunicator) talking to the real chat
                    consumer, embedded mode (in-process device worker, in-memory layer)
  ws_celery_redis   the same client and consumer with Redis + the Celery worker

Every scenario run is paired with a raw run next to it (order alternating per round), so each
line carries the raw baseline measured beside it. See bench/README.md.

Raw llama-cpp-python runs in a child process of its own. llama.cpp's OpenMP thread teams belong
to the thread that calls it, and the engine behind service_embedded drives llama.cpp from its own
thread: two teams in one process oversubscribe the cores and halve the speed of both (raw read
29.8 tok/s beside the engine, against 71-78 tok/s alone). ws_embedded runs in another child,
configured for the embedded mode (no REDIS_URL), with its own in-process device worker.
"""
import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

MODEL = "smollm2-135m"
# Greedy SmolLM2-135M answers this with well over 1,000 tokens, so every run produces max_tokens.
PROMPT = "Explain in detail how a computer works, from transistors to operating systems."
SCENARIOS = ["service_embedded", "celery_redis", "ws_embedded", "ws_celery_redis"]
TARGETS = {  # tokens/s as a share of raw; TTFT allowed above raw, at the median
    "service_embedded": {"tps_ratio": 0.97},
    "celery_redis": {"tps_ratio": 0.97},
    "ws_embedded": {"tps_ratio": 0.95, "ttft_delta_ms": 50},
    "ws_celery_redis": {"tps_ratio": 0.95, "ttft_delta_ms": 50},
}
TIMEOUT = 300


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--repeats", type=int, default=3, help="measured runs per scenario (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs per scenario first (default 1)")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens to generate per run (default 256)")
    p.add_argument("--prompt", default=PROMPT, help="user message (pick one with a long answer)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
                   help="Redis database for the scaled-out scenarios; it is flushed (default /14)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (database, worker log)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # the ws_embedded process
    p.add_argument("--raw-child", help=argparse.SUPPRESS)  # the raw process: JSON {model_path, n_ctx, threads}
    args = p.parse_args()
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.repeats < 1 or args.max_tokens < 2:
        p.error("--repeats must be >= 1 and --max-tokens >= 2")
    if not (args.child or args.raw_child) and (args.redis_url.rstrip("/").endswith(":6379") or args.redis_url.rstrip("/").endswith("/0")):
        p.error("--redis-url must name a database of its own (it is flushed), e.g. redis://127.0.0.1:6379/14")
    return args


def foreign_plugins():
    """Entry-point plugins from other distributions: blocked, so that only the project's own plugins
    shape the prompt (an installed third-party plugin could rewrite it and skew the comparison)."""
    import importlib.metadata

    return sorted({ep.name for dist in importlib.metadata.distributions() for ep in dist.entry_points
                   if ep.group == "smolsite" and dist.metadata["Name"] != "smolsite"})


def bench_env(args, tmp):
    """Environment for this process, the Celery worker and the embedded child: a scratch SQLite
    database, Redis for the scaled-out scenarios, no embedded worker started behind our back."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "SMOLSITE_MODELS"}}
    env.update(DJANGO_SETTINGS_MODULE="smolsite.settings", REDIS_URL=args.redis_url,
               SQLITE_PATH=str(tmp / "bench.sqlite3"), SMOLSITE_EMBEDDED_WORKER="0",
               SMOLSITE_BLOCKED_PLUGINS=",".join(filter(None, [os.environ.get("SMOLSITE_BLOCKED_PLUGINS", ""),
                                                               *foreign_plugins()])),
               LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"))
    return env


def setup_django(env):
    os.environ.clear()
    os.environ.update(env)
    import django

    django.setup()


# ---- one run of each kind -----------------------------------------------------------------------

class Run(dict):
    """ttft (s), tps (tokens/s over the tokens after the first), tokens, text, and extras."""


def timed(t0, first, last, tokens, text, **extra):
    if first is None:
        raise RuntimeError("no text was produced")
    tps = (tokens - 1) / (last - first) if tokens > 1 and last > first else float("nan")
    return Run(ttft=first - t0, tps=tps, tokens=tokens, text=text, **extra)


def raw_run(llm, args):
    t0 = time.perf_counter()
    first = last = None
    pieces = []
    # The sampling the llama_cpp backend uses, at temperature 0 (greedy).
    for chunk in llm.create_chat_completion([{"role": "user", "content": args.prompt}], stream=True,
                                            max_tokens=args.max_tokens, temperature=0.0, top_p=0.95,
                                            top_k=40, min_p=0.05, repeat_penalty=1.0):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            last = time.perf_counter()
            first = first or last
            pieces.append(piece)
    # One streamed chunk per generated token (ASCII text; nothing held back for stop strings).
    return timed(t0, first, last, len(pieces), "".join(pieces))


class EventTimer:
    """Folds received event batches into first/last text arrival times, text and final stats."""

    def __init__(self):
        self.first = self.last = self.done = None
        self.pieces = []

    def feed(self, events):
        now = time.perf_counter()
        for e in events:
            if e["kind"] == "text" and e["text"]:
                self.first = self.first or now
                self.last = now
                self.pieces.append(e["text"])
            elif e["kind"] == "done":
                self.done = e

    def result(self, t0):
        if self.done.get("status") != "done":
            raise RuntimeError(f"generation ended {self.done.get('status')}: {self.done.get('error')}")
        stats = self.done["stats"]
        return timed(t0, self.first, self.last, stats["completion_tokens"], "".join(self.pieces),
                     service_ttft=stats["ttft"], service_tps=stats["tokens_per_second"])


async def receive_events(layer, channel, message_id, timer):
    async with asyncio.timeout(TIMEOUT):
        while timer.done is None:
            message = await layer.receive(channel)
            if message.get("type") == "gen.events" and str(message["message"]) == str(message_id):
                timer.feed(message["events"])


async def service_embedded_run(engine, args, llama_thread):
    from channels.layers import InMemoryChannelLayer

    from inference.publish import Publisher
    from inference.service import GenerationService
    from inference.testing import MemoryStore, make_request

    loop = asyncio.get_running_loop()
    layer = InMemoryChannelLayer()  # lives on this loop, as the embedded site's layer lives on daphne's
    request = make_request(MODEL, args.prompt, request_id=uuid.uuid4().hex, max_tokens=args.max_tokens)
    request.group = "bench.embedded"
    channel = await layer.new_channel()
    await layer.group_add(request.group, channel)
    store = MemoryStore()
    store.add(request)
    service = GenerationService(registry=engine, store=store,
                                publisher_factory=lambda group, mid: Publisher(group, mid, layer=layer, loop=loop))

    def job():  # what inference.service.run_job does, with our store
        return service.run(store.claim(request.id, "bench"))

    timer = EventTimer()
    t0 = time.perf_counter()
    future = loop.run_in_executor(llama_thread, job)
    await receive_events(layer, channel, request.id, timer)
    await future
    return timer.result(t0)


class Chat:
    """Users and conversations in the scratch database."""

    def __init__(self):
        from django.contrib.auth import get_user_model

        self.user = get_user_model().objects.create_user(f"bench-{uuid.uuid4().hex[:8]}", password=uuid.uuid4().hex)

    def conversation(self, args):
        from chat.models import Conversation

        return Conversation.objects.create(owner=self.user, model=MODEL, temperature=0.0, top_p=0.95,
                                           max_tokens=args.max_tokens, thinking=False, title="bench")


async def celery_run(chat, args):
    from channels.db import database_sync_to_async
    from channels.layers import get_channel_layer

    from chat import actions
    from inference import dispatch

    conv = await database_sync_to_async(chat.conversation)(args)
    reply = await database_sync_to_async(actions.send)(conv.pk, args.prompt)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(conv.group_name, channel)
    timer = EventTimer()
    t0 = time.perf_counter()
    dispatch.enqueue(str(reply.pk), MODEL)
    await receive_events(layer, channel, reply.pk, timer)
    await layer.group_discard(conv.group_name, channel)
    return timer.result(t0)


def websocket_app():
    """The websocket side of smolsite.asgi.application, without importing smolsite.asgi (which
    starts the reaper and, embedded, a device worker of its own)."""
    from channels.auth import AuthMiddlewareStack
    from channels.routing import URLRouter
    from channels.security.websocket import AllowedHostsOriginValidator

    from chat.routing import websocket_urlpatterns

    return AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))


async def websocket_run(app, chat, args):
    """Time as a browser sees it: from sending the "send" frame to the first and last frames
    carrying text."""
    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator

    from chat.models import Message

    conv = await database_sync_to_async(chat.conversation)(args)
    comm = WebsocketCommunicator(app, f"/ws/chat/{conv.pk}/", headers=[(b"origin", b"http://127.0.0.1")])
    comm.scope["user"] = chat.user
    connected, _ = await comm.connect()
    assert connected, "the consumer refused the connection"
    first = last = None
    pieces = []
    reply_id = None
    t0 = time.perf_counter()
    await comm.send_to(text_data=json.dumps({"action": "send", "content": args.prompt}))
    async with asyncio.timeout(TIMEOUT):
        while True:
            frame = json.loads(await comm.receive_from(timeout=TIMEOUT))
            now = time.perf_counter()
            if frame["type"] == "thread":
                reply_id = frame["active"]
            elif frame["type"] == "events":
                text = "".join(e["text"] for e in frame["events"] if e["kind"] == "text")
                if text:
                    first = first or now
                    last = now
                    pieces.append(text)
            elif frame["type"] == "error":
                raise RuntimeError(frame["error"])
            elif frame["type"] == "final":
                break
    await comm.disconnect()
    message = await database_sync_to_async(Message.objects.get)(pk=reply_id)
    if message.status != "done":
        raise RuntimeError(f"generation ended {message.status}: {message.error}")
    return timed(t0, first, last, message.completion_tokens, "".join(pieces),
                 service_ttft=message.ttft, service_tps=message.tokens_per_second)


# ---- the embedded child process (ws_embedded) ----------------------------------------------------

async def child_main(args):
    """Embedded mode as `make run` without REDIS_URL serves it: in-memory layer, local cache and
    the in-process device worker; runs one websocket generation per "run" line on stdin."""
    from asgiref.sync import sync_to_async

    from inference import embedded

    worker = embedded.get_worker("cpu")
    await asyncio.to_thread(worker.ready.wait)
    if worker.error is not None:
        raise RuntimeError(f"the embedded worker cannot load its models: {worker.error}")
    chat = await sync_to_async(Chat)()
    app = websocket_app()
    print(json.dumps({"ready": True}), flush=True)
    try:
        while (await asyncio.to_thread(sys.stdin.readline)).strip() == "run":
            try:
                result = await websocket_run(app, chat, args)
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(result), flush=True)
    finally:
        await asyncio.to_thread(embedded.stop_all)


def raw_child_main(args):
    """Raw llama-cpp-python alone in this process: one run per "run" line on stdin."""
    from llama_cpp import Llama

    spec = json.loads(args.raw_child)
    llm = Llama(model_path=spec["model_path"], n_ctx=spec["n_ctx"], n_threads=spec["threads"],
                n_threads_batch=spec["threads"], verbose=False)
    print(json.dumps({"ready": True}), flush=True)
    try:
        for line in sys.stdin:
            if line.strip() != "run":
                break
            try:
                result = raw_run(llm, args)
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(result), flush=True)
    finally:
        llm.close()


class Child:
    """A child process that answers each "run" line on its stdin with one JSON result line."""

    def __init__(self, args, env, mode):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, *mode, "--max-tokens", str(args.max_tokens), "--prompt", args.prompt],
            cwd=BASE_DIR, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()  # {"ready": true} once the model is loaded

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the child {self.proc.args[2]} exited with {self.proc.wait()}")
        data = json.loads(line)
        if "error" in data:
            raise RuntimeError(f"{self.proc.args[2]} run failed: {data['error']}")
        return data

    def run(self):
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return Run(self._read())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- the Celery worker ----------------------------------------------------------------------------

class Worker:
    def __init__(self, env, tmp):
        self.env, self.log_path = env, tmp / "worker.log"
        self.proc = None

    def start(self, timeout=180):
        from inference.workers import alive_workers

        env = dict(self.env, SMOLSITE_DEVICE="cpu", PYTHONUNBUFFERED="1", LOG_LEVEL="INFO")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("celery")), "-A", "smolsite", "worker", "-Q", "device.cpu",
                 "--pool", "solo", "-n", "cpu-bench@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
                cwd=BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Celery worker exited with {self.proc.returncode}:\n{self.logs()}")
            if any(w["id"].endswith(f":{self.proc.pid}") and w["models"] for w in alive_workers()):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"the Celery worker showed no heartbeat in {timeout}s:\n{self.logs()}")

    def logs(self):
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- the benchmark -----------------------------------------------------------------------------------

def embedded_settings():
    """The embedded mode's process-local cache, which holds the stop flags the service polls (the
    channel layer is passed to the Publisher directly)."""
    from django.test import override_settings

    return override_settings(CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}})


def median(values):
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else None


def summarize(name, runs, raws, raw_text):
    def ms(seconds):
        return None if seconds is None else round(seconds * 1000, 1)

    tps, ttft = median([r["tps"] for r in runs]), median([r["ttft"] for r in runs])
    line = {"scenario": name, "runs": len(runs), "tokens": median([r["tokens"] for r in runs]),
            "tps": round(tps, 2), "ttft_ms": ms(ttft)}
    if raws is not None:
        raw_tps, raw_ttft = median([r["tps"] for r in raws]), median([r["ttft"] for r in raws])
        line.update(raw_tps=round(raw_tps, 2), raw_ttft_ms=ms(raw_ttft), tps_ratio=round(tps / raw_tps, 4),
                    ttft_delta_ms=round((ttft - raw_ttft) * 1000, 1),
                    # Each run against the raw run beside it: steadier than the ratio of medians
                    # when the machine drifts between rounds.
                    paired_tps_ratio=round(median([r["tps"] / w["tps"] for r, w in zip(runs, raws)]), 4))
        if runs and "service_tps" in runs[0]:
            line["service_reported"] = {"tps": round(median([r["service_tps"] for r in runs]), 2),
                                        "ttft_ms": ms(median([r["service_ttft"] for r in runs]))}
        target = TARGETS[name]
        line["target"] = target
        line["meets_target"] = (line["tps_ratio"] >= target["tps_ratio"]
                                and line["ttft_delta_ms"] <= target.get("ttft_delta_ms", float("inf")))
        line["same_text_as_raw"] = all(r["text"] == raw_text for r in runs)
        line["samples"] = {"tps": [round(r["tps"], 2) for r in runs], "ttft_ms": [ms(r["ttft"]) for r in runs],
                           "raw_tps": [round(r["tps"], 2) for r in raws],
                           "raw_ttft_ms": [ms(r["ttft"]) for r in raws]}
    else:
        line["samples"] = {"tps": [round(r["tps"], 2) for r in runs], "ttft_ms": [ms(r["ttft"]) for r in runs]}
    return line


async def bench(args, env, tmp):
    from asgiref.sync import sync_to_async
    from django.conf import settings

    from inference.registry import get_registry
    from inference.model_configs import get_model

    model = get_model(MODEL)
    log(f"model {model.path} (n_ctx {model.n_ctx}, {model.threads} threads), max_tokens {args.max_tokens}, "
        f"{args.repeats} runs + {args.warmup} warm-up per scenario")
    loop = asyncio.get_running_loop()
    llama_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
    engine = None
    if "service_embedded" in args.scenarios:
        engine = get_registry()
        await loop.run_in_executor(llama_thread, engine.load_device, "cpu")
    chat = await sync_to_async(Chat)()
    app = websocket_app()
    worker = child = None
    log("starting the raw llama-cpp-python process ...")
    raw_child = await asyncio.to_thread(Child, args, env, ["--raw-child", json.dumps(
        {"model_path": model.path, "n_ctx": model.n_ctx, "threads": model.threads})])

    async def run_scenario(name):
        if name == "service_embedded":
            with embedded_settings():
                return await service_embedded_run(engine, args, llama_thread)
        if name == "celery_redis":
            return await celery_run(chat, args)
        if name == "ws_embedded":
            return await asyncio.to_thread(child.run)
        if name == "ws_celery_redis":
            return await websocket_run(app, chat, args)
        raise ValueError(name)

    async def raw():
        return await asyncio.to_thread(raw_child.run)

    results = {name: [] for name in args.scenarios}
    paired_raw = {name: [] for name in args.scenarios}
    try:
        if {"celery_redis", "ws_celery_redis"} & set(args.scenarios):
            import redis

            redis.Redis.from_url(settings.REDIS_URL).flushdb()
            log("starting the Celery worker ...")
            worker = await asyncio.to_thread(Worker(env, tmp).start)
        if "ws_embedded" in args.scenarios:
            log("starting the embedded child process ...")
            child = await asyncio.to_thread(Child, args, {k: v for k, v in env.items() if k != "REDIS_URL"},
                                            ["--child"])
        for name in args.scenarios:  # warm-up: templates, prompt prefix in each model's KV cache, connections
            for _ in range(args.warmup):
                await raw()
                await run_scenario(name)
        for round_no in range(args.repeats):
            for name in args.scenarios:
                if round_no % 2 == 0:
                    raw_result, result = await raw(), await run_scenario(name)
                else:
                    result, raw_result = await run_scenario(name), await raw()
                results[name].append(result)
                paired_raw[name].append(raw_result)
                log(f"round {round_no + 1}: {name:17s} {result['tps']:7.2f} tok/s ttft {result['ttft'] * 1000:7.1f} ms"
                    f" | raw {raw_result['tps']:7.2f} tok/s ttft {raw_result['ttft'] * 1000:7.1f} ms"
                    f" ({result['tokens']} / {raw_result['tokens']} tokens)")
    finally:
        if child is not None:
            await asyncio.to_thread(child.stop)
        if worker is not None:
            await asyncio.to_thread(worker.stop)
        await asyncio.to_thread(raw_child.stop)
        llama_thread.shutdown()
    all_raw = [r for name in args.scenarios for r in paired_raw[name]]
    raw_text = all_raw[0]["text"]
    lines = [summarize("raw", all_raw, None, raw_text)]
    lines[0]["same_text_across_raw_runs"] = all(r["text"] == raw_text for r in all_raw)
    lines += [summarize(name, results[name], paired_raw[name], raw_text) for name in args.scenarios]
    return lines


def main():
    args = parse_args()
    if args.raw_child:
        raw_child_main(args)
        return
    if args.child:
        setup_django(dict(os.environ))
        asyncio.run(child_main(args))
        return
    tmp = Path(tempfile.mkdtemp(prefix="smolsite-bench-"))
    try:
        env = bench_env(args, tmp)
        setup_django(env)
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        lines = asyncio.run(bench(args, env, tmp))
        for line in lines:
            print(json.dumps(line), flush=True)
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
