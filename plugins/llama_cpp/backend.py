import codecs
import os
import re
import threading

import llama_cpp
from llama_cpp import Llama

from inference.backends import Backend, BackendError, Delta, Finish
from inference.gguf_info import GGUFError, read_gguf_info
from inference.prompt import ChatTemplate

from . import logs
from .state_cache import StateCache

GPU_DEVICES = {"cuda", "metal", "vulkan", "rocm", "gpu"}
VISIBLE_SPECIAL = ("<think>", "</think>")


class LlamaCppBackend(Backend):
    """One ``Llama`` per model per process. ``Llama`` is not thread-safe, so requests are
    served one at a time behind a lock (a batching engine can replace this class later)."""

    name = "llama_cpp"

    def __init__(self, model):
        super().__init__(model)
        self.llm = None
        self.info = None
        self.template = None
        self._lock = threading.Lock()
        budget_mb = int(model.options.get("state_cache_mb", os.environ.get("SMOLSITE_STATE_CACHE_MB", "512")))
        self.states = StateCache(budget_mb * 1024 * 1024)

    def load(self):
        try:
            self.info = read_gguf_info(self.model.path)
        except GGUFError as exc:
            raise BackendError(f"model {self.model.name!r}: {exc}") from None
        if self.model.device in GPU_DEVICES and not llama_cpp.llama_supports_gpu_offload():
            raise BackendError(f"model {self.model.name!r} is configured for device {self.model.device!r}, "
                               "but this llama.cpp build has no GPU offload")
        logs.install()
        before = logs.mark()
        try:
            self.llm = Llama(
                model_path=self.model.path,
                n_ctx=self.model.n_ctx,
                n_threads=self.model.threads,
                n_threads_batch=self.model.threads,
                n_gpu_layers=-1 if self.model.device in GPU_DEVICES else 0,
                verbose=False,
                **self.model.options.get("llama_kwargs", {}),
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise BackendError(self._explain_load_failure(logs.since(before), exc)) from None
        bos = self._token_text(self.llm.token_bos())
        eos = self._token_text(self.llm.token_eos())
        self.template = ChatTemplate(self.info.chat_template, bos_token=bos, eos_token=eos)
        self.visible_special = self._visible_special_tokens()

    def _visible_special_tokens(self):
        """Reasoning tags are text the thinking plugin must see even where the GGUF marks them
        as control tokens; every other special token stays hidden."""
        ids = set()
        for tag in VISIBLE_SPECIAL:
            found = self.llm.tokenize(tag.encode(), add_bos=False, special=True)
            if len(found) == 1:
                ids.add(found[0])
        return ids

    def close(self):
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def _explain_load_failure(self, log_text, exc):
        arch = self.info.architecture
        match = re.search(r"unknown model architecture: '([^']*)'", log_text)
        if match:
            return (f"model {self.model.name!r}: this llama.cpp (llama-cpp-python {llama_cpp.__version__}) "
                    f"cannot load architecture {match.group(1)!r} ({self.model.path})")
        errors = [line.strip() for line in log_text.splitlines() if "error" in line.lower() or "failed" in line.lower()]
        detail = errors[-1] if errors else str(exc)
        return (f"model {self.model.name!r}: llama.cpp could not load {self.model.path} "
                f"(architecture {arch!r}): {detail}")

    def _token_text(self, token):
        if token is None or token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="ignore")

    @property
    def context_size(self):
        return self.llm.n_ctx()

    def render_prompt(self, request):
        return self.template.render(request.chat_messages(), add_generation_prompt=True,
                                    **request.template_kwargs)

    def tokenize(self, text):
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def count_tokens(self, text):
        return len(self.tokenize(text))

    def submit(self, request, prompt, should_stop):
        """Our own decode loop over ``Llama.generate``: one detokenisation per token (not the
        whole completion each step), special tokens never rendered, stop checked every step."""
        params = request.params
        with self._lock:
            tokens = self.tokenize(prompt)
            if should_stop():
                yield Finish("stopped", len(tokens), 0)
                return
            if params.seed is not None:
                self.llm.set_seed(params.seed)
            cached = min(self.states.prepare(self.llm, request.session_key or None, tokens), len(tokens) - 1)
            stops = StopStrings(params.stop)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            vocab = self.llm._model.vocab
            produced, reason = 0, "length"
            generator = self.llm.generate(tokens, top_k=40, top_p=params.top_p, min_p=0.05,
                                          temp=params.temperature, repeat_penalty=1.0, reset=True)
            try:
                for token in generator:
                    if llama_cpp.llama_vocab_is_eog(vocab, token):
                        reason = "stop"
                        break
                    produced += 1
                    piece = decoder.decode(self.llm.detokenize([token], special=token in self.visible_special))
                    text, hit = stops.feed(piece)
                    if text:
                        yield Delta(text)
                    if hit:
                        reason = "stop"
                        break
                    if produced >= params.max_tokens:
                        reason = "length"
                        break
                    if should_stop():
                        reason = "stopped"
                        break
            finally:
                generator.close()
            tail = stops.finish(decoder.decode(b"", final=True))
            if tail:
                yield Delta(tail)
            yield Finish(reason, len(tokens), produced, cached_tokens=max(cached, 0))


class StopStrings:
    """Cuts the stream at the first stop string; holds back text that may begin one."""

    def __init__(self, stops):
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text):
        if not self.stops:
            return text, False
        buf = self.held + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held = ""
            return buf[:cut], True
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def finish(self, text=""):
        out, self.held = self.held + text, ""
        return out
