#!/usr/bin/env python
"""smolsite side by side with llama.cpp's own llama-server, in one run, on the bundled SmolLM2.

For each number of people N (``--people 8 16``) and each round (``--rounds``), both sides serve N
people who press Send at the same moment, each streaming /v1/chat/completions with the openai
client (a short story prompt each, ``--max-tokens`` answers, temperature 0):

  llama_server  ``llama-server -m <gguf> -np N -t 2 -c N*ctx`` (continuous batching, its default),
                built by tools/llama_server.py with our wheel's flags; started, measured, stopped
  smolsite      a served smolsite (tests/browser_support.LiveServer: daphne, the embedded device
                worker, its own SQLite file) with SMOLSITE_SLOTS=N, one account and API key per
                person (as bench/upstream.py makes them); started, measured, stopped

Rounds alternate which side goes first, so a noisy machine hits both. Each measured round reads
the processes' CPU time (utime + stime from /proc/<pid>/stat) before and after: the web process
(daphne) and its device-worker child separately, llama-server as a whole, each divided by the
tokens streamed.

Prints one JSON line per round and side, and one summary line per N: aggregate output tokens/s
(every answer's tokens, counted with the model's own tokenizer, over the wall time from the first
request to the last answer's end), time to first token (median, worst), the ratios smolsite /
llama-server and the issue's goals beside them. Progress goes to stderr. Nothing here is a
pass/fail threshold: the numbers are reported. See bench/README.md.

    .venv/bin/python bench/peers.py [--people 8 16] [--max-tokens 128] [--rounds 2] [--quick]
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from browser_support import LiveServer, free_port  # noqa: E402  (the served site the browser tests use)
from concurrency import MODEL, SITE_N_CTX, THREADS, Tokens, foreign_plugins, story_prompt  # noqa: E402
from upstream import SETUP, model_path  # noqa: E402  (API keys, one account each; the bundled GGUF)

GOALS = {"people_8": {"aggregate_ratio_min": 1.0, "ttft_median_ratio_max": 0.6},
         "people_16": {"aggregate_ratio_min": 1.0}, "web_cpu_ms_per_token_max": 0.5}
READY_SECONDS = 180
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds; None when it is gone."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


# ---- the two sides ------------------------------------------------------------------------------

class Peer:
    """llama.cpp's llama-server, one process, N parallel slots sharing N * ctx tokens of KV cache."""

    name = "llama_server"

    def __init__(self, binary, gguf, people, ctx, threads, workdir):
        self.binary, self.gguf, self.people, self.ctx, self.threads = binary, gguf, people, ctx, threads
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(workdir) / f"llama-server-{people}-{self.port}.log"
        self.proc = None

    @property
    def base_url(self):
        return self.url + "/v1"

    def keys(self, n):
        return ["none"] * n  # it asks for no key

    def start(self):
        argv = [str(self.binary), "-m", self.gguf, "-np", str(self.people), "-t", str(self.threads),
                "-c", str(self.people * self.ctx), "--host", "127.0.0.1", "--port", str(self.port)]
        log(f"  {' '.join(argv)}")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):  # 503 while the model loads
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama-server was not healthy within {READY_SECONDS} s: see {self.log_path}")

    def pids(self):
        return {"server": self.proc.pid}

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Smolsite:
    """A served smolsite (daphne + the embedded device worker, SQLite) with N engine slots."""

    name = "smolsite"

    def __init__(self, gguf, people, threads, workdir):
        self.people = people
        self.workdir = Path(workdir) / f"site-{people}-{time.monotonic_ns()}"
        self.workdir.mkdir(parents=True)
        models = {MODEL: {"path": gguf, "n_ctx": SITE_N_CTX, "threads": threads, "device": "cpu"}}
        self.site = LiveServer(self.workdir, models, self.workdir / "site.log", env={
            "SMOLSITE_SLOTS": str(people), "SMOLSITE_API_RATE_PER_MINUTE": "0",
            "SMOLSITE_BLOCKED_PLUGINS": ",".join(filter(None, ["hello", *foreign_plugins()])),
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING")})
        self.api_keys = []

    @property
    def base_url(self):
        return self.site.url + "/v1"

    def keys(self, n):
        return self.api_keys[:n]

    def start(self):
        log(f"  smolsite on {self.site.url}: SMOLSITE_SLOTS={self.people}, {MODEL} n_ctx {SITE_N_CTX}")
        self.site.start()
        out = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP % self.people], cwd=REPO,
                             env=self.site.env, check=True, capture_output=True, text=True)
        self.api_keys = json.loads(out.stdout.strip().splitlines()[-1])
        return self

    def pids(self):
        # Process mode (the default): the device worker is a child of the web process, in
        # worker-cpu.pid; in thread mode it has none and the web process holds both.
        return {"web": self.site.proc.pid, "worker": self.site.worker_pid()}

    def stop(self):
        self.site.stop()


# ---- N people at once -----------------------------------------------------------------------------

def one(base_url, key, prompt, max_tokens, out, i, start):
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
    start.wait()
    t0 = time.monotonic()
    first, pieces, usage, finish = None, [], None, None
    try:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage.completion_tokens
            if chunk.choices:
                choice = chunk.choices[0]
                if choice.delta.content:
                    first = first or time.monotonic()
                    pieces.append(choice.delta.content)
                finish = choice.finish_reason or finish
    except openai.APIError as exc:
        out[i] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        return
    out[i] = {"t0": t0, "ttft": None if first is None else first - t0, "end": time.monotonic(),
              "text": "".join(pieces), "usage_tokens": usage, "finish": finish}


def burst(side, n, max_tokens, count, prompts=None):
    """N people at once; returns (the round's figures, the answers' texts)."""
    keys = side.keys(n)
    prompts = prompts or [story_prompt(i) for i in range(n)]
    out, start = [None] * n, threading.Event()
    threads = [threading.Thread(target=one, args=(side.base_url, keys[i], prompts[i], max_tokens, out, i, start))
               for i in range(n)]
    for t in threads:
        t.start()
    pids = side.pids()
    cpu_before = {k: cpu_seconds(p) for k, p in pids.items()}
    start.set()
    for t in threads:
        t.join()
    cpu_after = {k: cpu_seconds(p) for k, p in pids.items()}
    errors = [r["error"] for r in out if "error" in r]
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} requests failed on {side.name}: {errors[0]}")
    wall = max(r["end"] for r in out) - min(r["t0"] for r in out)
    tokens = [count(r["text"]) for r in out]
    ttfts = sorted(r["ttft"] for r in out if r["ttft"] is not None)
    total = sum(tokens)
    cpu = {}
    for k in pids:
        if cpu_before[k] is not None and cpu_after[k] is not None:
            cpu[f"{k}_cpu_s"] = round(cpu_after[k] - cpu_before[k], 3)
            cpu[f"{k}_cpu_ms_per_token"] = round((cpu_after[k] - cpu_before[k]) * 1000 / total, 4) if total else None
    if len(cpu) > 2:
        spent = sum(v for k, v in cpu.items() if k.endswith("_cpu_s"))
        cpu["total_cpu_s"] = round(spent, 3)
        cpu["total_cpu_ms_per_token"] = round(spent * 1000 / total, 4) if total else None
    t_start = min(r["t0"] for r in out)
    line = {"tokens": total, "wall_s": round(wall, 3), "tokens_per_s": round(total / wall, 2),
            "ttft_median_ms": round(statistics.median(ttfts) * 1000, 1) if ttfts else None,
            "ttft_max_ms": round(ttfts[-1] * 1000, 1) if ttfts else None, **cpu,
            "usage_tokens": sum(r["usage_tokens"] or 0 for r in out),
            "finish_reasons": {f: sum(1 for r in out if r["finish"] == f) for f in {r["finish"] for r in out}},
            "answers_without_text": sum(1 for r in out if r["ttft"] is None),
            "per_person": {"ttft_ms": [None if r["ttft"] is None else round(r["ttft"] * 1000, 1) for r in out],
                           "end_s": [round(r["end"] - t_start, 3) for r in out], "tokens": tokens}}
    return line, [r["text"] for r in out]


def warm(side, count):
    """One short answer, unmeasured (the first request's costs are nobody's time to first token).
    smolsite refuses with 503 until its worker's heartbeat says the model can answer."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return burst(side, 1, 4, count, prompts=["Say hello in five words."])
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def measure(side, n, args, count):
    side.start()
    try:
        warm(side, count)
        return burst(side, n, args.max_tokens, count)
    finally:
        side.stop()


def summary(n, lines, texts, args):
    def pooled(way):
        ls = lines[way]
        return {"tps": sum(x["tokens"] for x in ls) / sum(x["wall_s"] for x in ls),
                "ttft_median_ms": statistics.median(x["ttft_median_ms"] for x in ls),
                "ttft_max_ms": max(x["ttft_max_ms"] for x in ls),
                "tokens": sum(x["tokens"] for x in ls)}

    def cpu_per_token(way, key):
        ls = lines[way]
        spent = [x.get(f"{key}_cpu_s") for x in ls]
        return None if None in spent else round(sum(spent) * 1000 / sum(x["tokens"] for x in ls), 4)

    peer, site = pooled("llama_server"), pooled("smolsite")
    same = [a == b for a, b in zip(texts["llama_server"][0], texts["smolsite"][0])]
    return {
        "scenario": f"peers_{n}_people", "people": n, "max_tokens": args.max_tokens, "rounds": args.rounds,
        "llama_server_np": n, "smolsite_slots": n, "threads": args.threads,
        "llama_server_tokens_per_s": round(peer["tps"], 2), "smolsite_tokens_per_s": round(site["tps"], 2),
        "aggregate_ratio": round(site["tps"] / peer["tps"], 3),
        "llama_server_ttft_median_ms": peer["ttft_median_ms"], "smolsite_ttft_median_ms": site["ttft_median_ms"],
        "ttft_median_ratio": round(site["ttft_median_ms"] / peer["ttft_median_ms"], 3),
        "llama_server_ttft_max_ms": peer["ttft_max_ms"], "smolsite_ttft_max_ms": site["ttft_max_ms"],
        "smolsite_web_cpu_ms_per_token": cpu_per_token("smolsite", "web"),
        "smolsite_worker_cpu_ms_per_token": cpu_per_token("smolsite", "worker"),
        "smolsite_total_cpu_ms_per_token": cpu_per_token("smolsite", "total"),
        "llama_server_cpu_ms_per_token": cpu_per_token("llama_server", "server"),
        "llama_server_tokens": peer["tokens"], "smolsite_tokens": site["tokens"],
        # Greedy on both sides, but batching and kernels may sum in another order: texts can part.
        "same_text_round1": sum(same), "ignore_eos": False,
        "goals": {k: v for k, v in GOALS.items() if k in (f"people_{n}", "web_cpu_ms_per_token_max")}}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--people", type=int, nargs="+", default=[8], help="people at once, each its own run (default 8)")
    p.add_argument("--max-tokens", type=int, default=128, help="max_tokens of every answer (default 128)")
    p.add_argument("--rounds", type=int, default=2, help="rounds, alternating which side goes first (default 2)")
    p.add_argument("--threads", type=int, default=THREADS, help="llama.cpp threads on both sides (default 2)")
    p.add_argument("--ctx", type=int, default=1024, help="llama-server's context per slot: -c N*ctx (default 1024)")
    p.add_argument("--server", help="the llama-server binary (default: tools/llama_server.py's, built if missing)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 4 people, 32 tokens, 1 round")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (server logs, databases)")
    args = p.parse_args()
    if args.quick:
        args.people, args.max_tokens, args.rounds = [4], 32, 1
    if min(args.people) < 1 or args.max_tokens < 1 or args.rounds < 1:
        p.error("--people, --max-tokens and --rounds must be >= 1")
    return args


def server_binary(args):
    if args.server:
        return Path(args.server)
    import llama_cpp

    out = subprocess.run([sys.executable, str(REPO / "tools" / "llama_server.py"), llama_cpp.__version__,
                          str(REPO / ".wheelhouse")], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip())


def main():
    args = parse_args()
    binary = server_binary(args)
    gguf = model_path()
    tmp = Path(tempfile.mkdtemp(prefix="smolsite-bench-peers-"))
    tokens = Tokens(gguf)
    ok = False
    try:
        lines = {n: {"llama_server": [], "smolsite": []} for n in args.people}
        texts = {n: {"llama_server": [], "smolsite": []} for n in args.people}
        for r in range(args.rounds):
            for n in args.people:
                sides = [Peer(binary, gguf, n, args.ctx, args.threads, tmp), Smolsite(gguf, n, args.threads, tmp)]
                for side in sides if r % 2 == 0 else sides[::-1]:
                    log(f"round {r + 1}: {n} at once, {side.name}")
                    line, answers = measure(side, n, args, tokens.count)
                    lines[n][side.name].append(line)
                    texts[n][side.name].append(answers)
                    print(json.dumps({"round": r + 1, "way": side.name, "people": n, "max_tokens": args.max_tokens,
                                      **line}), flush=True)
        for n in args.people:
            print(json.dumps(summary(n, lines[n], texts[n], args)), flush=True)
        ok = True
    finally:
        tokens.close()
        if args.keep or not ok:
            log(f"kept {tmp} (server logs, databases)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
