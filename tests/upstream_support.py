"""Real upstream servers for the upstream plugin's tests and benchmark: llama-cpp-python's own
OpenAI-compatible server (``python -m llama_cpp.server``, its ``server`` extra) on the bundled
SmolLM2 GGUF, stopped, continued and killed by signals as a test needs."""
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from browser_support import free_port

ALIAS = "smollm2-up"
READY_SECONDS = 180


class LlamaServer:
    def __init__(self, workdir, model_path, name="llama-a", api_key="upstream-key", alias=ALIAS, n_ctx=2048,
                 threads=1):
        self.workdir, self.model_path, self.name = Path(workdir), model_path, name
        self.api_key, self.alias, self.n_ctx, self.threads = api_key, alias, n_ctx, threads
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = self.workdir / f"{name}.log"
        self.proc = None

    def config(self, **extra):
        """Its SMOLSITE_UPSTREAMS entry."""
        return {"name": self.name, "base_url": self.url, "api_key": self.api_key, "n_ctx": self.n_ctx,
                "tokenizer": self.model_path, "structured_output": "grammar", "connect_timeout": 2,
                "read_timeout": 20, **extra}

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", self.model_path, "--model_alias", self.alias,
             "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads), "--host", "127.0.0.1",
             "--port", str(self.port), "--api_key", self.api_key,
             # Its default ends a running stream whenever another request (a probe) arrives.
             "--interrupt_requests", "false"],
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_SECONDS
        while self.models() is None:
            assert self.proc.poll() is None, f"llama_cpp.server exited: {self.log()[-2000:]}"
            assert time.monotonic() < deadline, f"llama_cpp.server not up after {READY_SECONDS} s"
            time.sleep(0.3)
        return self

    def models(self):
        request = urllib.request.Request(self.url + "/models", headers={"Authorization": f"Bearer {self.api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return [m["id"] for m in json.loads(response.read())["data"]]
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def requests_seen(self):
        """Completions requests the upstream has received (uvicorn's access log)."""
        return self.log().count("POST /v1/chat/completions") + self.log().count("POST /v1/completions")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
