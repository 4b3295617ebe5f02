"""The engine alone, beside raw llama.cpp batched decoding, in one run: where a crowd's time goes.

bench/peers.py compares the whole site with llama-server. This splits what is left of the gap
without the web: N people's prompts (bench/concurrency.py's stories, greedy, --max-tokens) at once

  engine       plugins.llama_cpp's BatchEngine as the backend configures it by default (one
               shared KV pool, fair turns, chunked prefill, the Python sampling loop); the time
               inside llama_decode is measured apart from the rest of each step (Python: sampling,
               text, queues);
  raw_streams  a minimal batched loop over llama-cpp-python's low-level API in llama-server's
               shape: one KV stream per sequence (kv_unified off, -np N), all prompts in one
               llama_decode, then one greedy token per sequence per step;
  raw_unified  the same loop on the engine's KV shape (one unified cache, 2N sequence ids):
               what the shared cache costs, with no Python engine around it.

Prints one JSON line per N: tokens/s of each, the ratios, and the engine's ms per step inside
and outside llama_decode. One at a time on a quiet machine.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smolsite.settings")

import django  # noqa: E402

django.setup()

import llama_cpp  # noqa: E402
from django.conf import settings  # noqa: E402
from llama_cpp._internals import LlamaModel  # noqa: E402

from concurrency import MODEL, SITE_N_CTX, THREADS, story_prompt  # noqa: E402
from inference.backends import Finish, SamplingParams  # noqa: E402
from inference.model_configs import ModelConfig  # noqa: E402
from plugins.llama_cpp import engine as engine_module  # noqa: E402
from plugins.llama_cpp.backend import LlamaCppBackend  # noqa: E402
from plugins.llama_cpp.engine import Job  # noqa: E402


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def chat_tokens(model, i):
    text = f"<|im_start|>user\n{story_prompt(i)}<|im_end|>\n<|im_start|>assistant\n"
    return model.tokenize(text.encode(), add_bos=True, special=True)


class DecodeTimer:
    """Wraps llama_decode where the engine calls it, adding up the seconds spent inside."""

    def __init__(self):
        self.seconds, self.calls = 0.0, 0
        self.real = llama_cpp.llama_decode

    def __enter__(self):
        def timed(ctx, batch):
            began = time.perf_counter()
            try:
                return self.real(ctx, batch)
            finally:
                self.seconds += time.perf_counter() - began
                self.calls += 1
        engine_module.llama_cpp.llama_decode = timed
        return self

    def __exit__(self, *exc):
        engine_module.llama_cpp.llama_decode = self.real


def run_engine(backend, n, max_tokens):
    engine = backend.engine
    engine.forget_cached()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    prompts = [chat_tokens(backend.llm_model, i) for i in range(n)]
    before = engine.stats()["steps"]
    with DecodeTimer() as timer:
        began = time.perf_counter()
        jobs = [engine.submit(Job(p, params, user=f"person{i}")) for i, p in enumerate(prompts)]
        produced = 0
        for job in jobs:
            while True:
                chunk = job.out.get(timeout=600)
                if isinstance(chunk, Finish):
                    produced += chunk.completion_tokens
                    break
        wall = time.perf_counter() - began
    steps = engine.stats()["steps"] - before
    return {"tokens": produced, "seconds": wall, "steps": steps,
            "decode_ms_per_step": 1e3 * timer.seconds / max(1, timer.calls),
            "other_ms_per_step": 1e3 * (wall - timer.seconds) / max(1, timer.calls)}


def run_raw(model, n, max_tokens, unified):
    p = llama_cpp.llama_context_default_params()
    p.n_ctx = 16384 if unified else n * 1024
    p.n_seq_max = 2 * n if unified else n
    p.kv_unified = unified
    p.n_batch = p.n_ubatch = 2048
    p.n_threads = p.n_threads_batch = THREADS
    p.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
    p.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model.model, p)
    batch = llama_cpp.llama_batch_init(2048, 0, 1)
    samplers = [llama_cpp.llama_sampler_init_greedy() for _ in range(n)]
    vocab = model.vocab

    def decode(rows):
        for i, (token, pos, seq, logits) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens = len(rows)
        assert llama_cpp.llama_decode(ctx, batch) == 0

    try:
        prompts = [chat_tokens(model, i) for i in range(n)]
        began = time.perf_counter()
        decode([(t, k, s, k == len(p) - 1) for s, p in enumerate(prompts) for k, t in enumerate(p)])
        live = {s: len(p) for s, p in enumerate(prompts)}  # sequence -> next position
        index = {}  # sequence -> its logits row in the last batch
        row = 0
        for s, p in enumerate(prompts):
            row += len(p)
            index[s] = row - 1
        produced = [0] * n
        while live:
            rows = []
            for s in list(live):
                token = llama_cpp.llama_sampler_sample(samplers[s], ctx, index[s])
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    del live[s]
                    continue
                produced[s] += 1
                if produced[s] >= max_tokens:
                    del live[s]
                    continue
                rows.append((token, live[s], s, True))
                live[s] += 1
            if rows:
                decode(rows)
                index = {r[2]: i for i, r in enumerate(rows)}
        wall = time.perf_counter() - began
        return {"tokens": sum(produced), "seconds": wall}
    finally:
        for s in samplers:
            llama_cpp.llama_sampler_free(s)
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2, help="each way this many times, interleaved; medians")
    args = ap.parse_args()
    path = settings.SMOLSITE_MODELS[MODEL]["path"]
    config = ModelConfig(name=MODEL, path=path, n_ctx=SITE_N_CTX, threads=THREADS,
                         options={"slots": max(args.people)})
    backend = LlamaCppBackend(config)
    backend.load()
    raw_model = LlamaModel(path_model=path, params=llama_cpp.llama_model_default_params(), verbose=False)
    try:
        run_engine(backend, 2, 8)  # warm both
        run_raw(raw_model, 2, 8, unified=False)
        for n in args.people:
            seen = {"engine": [], "raw_streams": [], "raw_unified": []}
            for r in range(args.rounds):
                for way in seen:
                    if way == "engine":
                        out = run_engine(backend, n, args.max_tokens)
                    else:
                        out = run_raw(raw_model, n, args.max_tokens, unified=way == "raw_unified")
                    out["tokens_per_s"] = out["tokens"] / out["seconds"]
                    seen[way].append(out)
                    log(f"  {n} people, round {r + 1}, {way}: {out['tokens_per_s']:.1f} tok/s")

            def median(way, key):
                values = sorted(o[key] for o in seen[way])
                return values[len(values) // 2]

            tps = {way: median(way, "tokens_per_s") for way in seen}
            print(json.dumps({
                "scenario": f"engine_{n}_people", "max_tokens": args.max_tokens, "rounds": args.rounds,
                **{f"{way}_tokens_per_s": round(v, 2) for way, v in tps.items()},
                "engine_vs_raw_streams": round(tps["engine"] / tps["raw_streams"], 3),
                "raw_unified_vs_raw_streams": round(tps["raw_unified"] / tps["raw_streams"], 3),
                "engine_vs_raw_unified": round(tps["engine"] / tps["raw_unified"], 3),
                "engine_decode_ms_per_step": round(median("engine", "decode_ms_per_step"), 2),
                "engine_other_ms_per_step": round(median("engine", "other_ms_per_step"), 2),
                "engine_steps": median("engine", "steps"),
            }), flush=True)
    finally:
        backend.close()
        raw_model.close()


if __name__ == "__main__":
    main()
