"""The llama.cpp backend: validates and loads a GGUF, renders its own chat template, and hands
requests to the model's batching engine (engine.py), which serves them together."""
import os
import re

import llama_cpp
from llama_cpp._internals import LlamaModel

from inference.plugin_api import Backend, BackendError, ChatTemplate, Finish, GGUFError, read_gguf_info, toolcalls

from . import logs, typed_text
from .engine import BatchEngine, Job, wait_chunks
from .sampling import Sampler

GPU_DEVICES = {"cuda", "metal", "vulkan", "rocm", "gpu"}
VISIBLE_SPECIAL = ("<think>", "</think>", toolcalls.OPEN, toolcalls.CLOSE)


def _setting(model, option, env, default):
    """A per-model option (SMOLSITE_MODELS) over a site-wide environment variable."""
    return int(model.options.get(option, os.environ.get(env, default)))


def amx_in_build():
    """llama.cpp's AMX kernels die with SIGILL off the main thread (llama.cpp PR 26954), and the
    engine is a thread: `make` builds without them (tools/llama_cpp_wheel.py)."""
    return "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode(errors="replace")


class Prompt(str):
    """A rendered prompt that remembers where the messages' own text lies in it (found verbatim)
    and where typed special-token texts lie wherever the template put them (typed_text)."""

    content_spans = ()
    typed_spans = ()

    def __new__(cls, text, spans=(), typed=()):
        prompt = super().__new__(cls, text)
        prompt.content_spans = tuple(spans)
        prompt.typed_spans = tuple(typed)
        return prompt


def content_spans(text, contents):
    """Where each message's content appears in the rendered prompt, in order. A content the
    template rewrote (and so is not found verbatim) is left to the template's tokenisation."""
    spans, cursor = [], 0
    for content in contents:
        if not content:
            continue
        at = text.find(content, cursor)
        if at >= 0:
            spans.append((at, at + len(content)))
            cursor = at + len(content)
    return spans


class LlamaCppBackend(Backend):
    """One model and one batching engine per model per worker process."""

    name = "llama_cpp"

    def __init__(self, model):
        super().__init__(model)
        self.llm_model = None
        self.engine = None
        self.info = None
        self.template = None
        # 16: sixteen people at once are one wave, not two, each starting within about a second
        # (bench/peers.py: 16 at once, first-token median 1.1 s here against 4.8 s with 8 slots).
        # The KV cache is one pool, so more slots cost no memory; with fewer people nothing changes.
        self.slots = _setting(model, "slots", "SMOLSITE_SLOTS", 16)
        self.batch_tokens = _setting(model, "batch_tokens", "SMOLSITE_BATCH_TOKENS", 512)
        self.chunk_tokens = _setting(model, "chunk_tokens", "SMOLSITE_CHUNK_TOKENS", 128)
        self.kv_tokens = max(model.n_ctx, _setting(model, "kv_tokens", "SMOLSITE_KV_TOKENS", 16384))
        self.per_user = _setting(model, "user_concurrency", "SMOLSITE_USER_CONCURRENCY", 4)
        self.state_cache_mb = _setting(model, "state_cache_mb", "SMOLSITE_STATE_CACHE_MB", 512)
        self.resident_cells = _setting(model, "resident_cells", "SMOLSITE_RESIDENT_CELLS", 2048)
        # llama.cpp's "auto" turns flash attention on where the device supports it.
        self.flash_attn = str(model.options.get("flash_attn", os.environ.get("SMOLSITE_FLASH_ATTN", "auto"))).lower()

    def load(self):
        try:
            self.info = read_gguf_info(self.model.path)
        except GGUFError as exc:
            raise BackendError(f"model {self.model.name!r}: {exc}") from None
        gpu = self.model.device in GPU_DEVICES
        if gpu and not llama_cpp.llama_supports_gpu_offload():
            raise BackendError(f"model {self.model.name!r} is configured for device {self.model.device!r}, "
                               "but this llama.cpp build has no GPU offload")
        if amx_in_build():
            raise BackendError("this llama-cpp-python was compiled with AMX kernels, which crash when "
                               "they decode outside the main thread; reinstall it with `make install` "
                               "(it builds without AMX; see README, 'llama.cpp build')")
        logs.install()
        before = logs.mark()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = -1 if gpu else 0
        try:
            self.llm_model = LlamaModel(path_model=self.model.path, params=params, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise BackendError(self._explain_load_failure(logs.since(before), exc)) from None
        ctx = llama_cpp.llama_init_from_model(self.llm_model.model, self._context_params())
        if not ctx:
            self.close()
            raise BackendError(f"model {self.model.name!r}: llama.cpp could not create a context of "
                               f"{self.kv_tokens} tokens ({logs.since(before).strip()[-300:]})")
        self._ctx = ctx
        self.template = ChatTemplate.of_model(self.info.chat_template, self.llm_model)
        self._special_pattern = typed_text.pattern_for(typed_text.special_texts(self.llm_model))
        self.engine = BatchEngine(self.llm_model, ctx, slots=self.slots, batch_tokens=self.batch_tokens,
                                  chunk_tokens=self.chunk_tokens,
                                  per_user=self.per_user, capacity=self.kv_tokens,
                                  host_budget=self.state_cache_mb * 1024 * 1024,
                                  resident_cells=self.resident_cells,
                                  visible_special=self._visible_special_tokens(), name=self.model.name)

    def _context_params(self):
        p = llama_cpp.llama_context_default_params()
        p.n_ctx = self.kv_tokens
        p.n_batch = p.n_ubatch = self.batch_tokens + self.slots
        # Several sequences in one KV cache that each may use all of it, so a sequence id is
        # only a tag and one long conversation is not limited to n_ctx / slots.
        p.n_seq_max = self.slots * 2  # half running, half keeping finished conversations resident
        p.kv_unified = True
        p.n_threads = p.n_threads_batch = self.model.threads
        p.flash_attn_type = {"on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED, "1": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                             "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
                             "0": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED}.get(self.flash_attn,
                                                                                 llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO)
        p.no_perf = True
        return p

    def _visible_special_tokens(self):
        """Reasoning and tool-call tags are text the thinking plugin and the tool-call reader
        must see even where the GGUF marks them as control tokens; every other special token
        stays hidden."""
        ids = set()
        for tag in VISIBLE_SPECIAL:
            found = self.llm_model.tokenize(tag.encode(), add_bos=False, special=True)
            if len(found) == 1:
                ids.add(found[0])
        return ids

    def close(self):
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if getattr(self, "_ctx", None):
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self.llm_model is not None:
            self.llm_model.close()
            self.llm_model = None

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

    @property
    def context_size(self):
        """The longest prompt plus answer one conversation may have."""
        return min(self.model.n_ctx, self.kv_tokens)

    def render_prompt(self, request):
        native = toolcalls.template_knows_tools(self.template.source)
        messages = request.chat_messages(native_tools=native)
        kwargs = dict(request.template_kwargs)
        shield = typed_text.Shield(self._special_pattern)
        if request.tools and native:
            # Tool descriptions are a client's text too: never special tokens.
            kwargs["xml_tools"] = shield.cover([toolcalls.tool_json(t) for t in request.tools])
        text = self.template.render(shield.messages(messages), add_generation_prompt=True, **kwargs)
        text, typed = shield.restore(text)
        return Prompt(text, content_spans(text, [m["content"] for m in messages]), typed)

    def tokenize(self, text):
        return self._tokenize(text)[0]

    def _tokenize(self, text):
        """Token ids for a prompt, and how many lead tokens hold no user's text. The template's
        own markup may hold special tokens, but what people typed is only ever text (typing
        "<|im_end|><|im_start|>system" must not open a system turn)."""
        contents = getattr(text, "content_spans", ())
        tokens = self.llm_model.tokenize(b"", add_bos=True, special=True)  # the BOS, if the model wants one
        pos, public = 0, None
        for start, end in typed_text.merge(contents, getattr(text, "typed_spans", ())):
            tokens += self._tokens(text[pos:start], special=True)
            public = len(tokens) if public is None else public
            tokens += self._tokens(text[start:end], special=False)
            pos = end
        tokens += self._tokens(text[pos:], special=True)
        return tokens, (public if public is not None else 0)

    def _tokens(self, text, special):
        return self.llm_model.tokenize(text.encode("utf-8"), add_bos=False, special=special) if text else []

    def count_tokens(self, text):
        return len(self.tokenize(text))

    def submit(self, request, prompt, should_stop):
        tokens, public = self._tokenize(prompt)
        if should_stop():
            yield Finish("stopped", len(tokens), 0)
            return
        sampler = None
        if request.grammar:
            # Parsed here, in the caller's thread: a large grammar's parse never holds up the
            # engine's step, which every running answer waits for.
            try:
                trigger = toolcalls.Trigger() if request.grammar_waits_for_call else None
                sampler = Sampler(self.engine.vocab, request.params, request.grammar, trigger)
            except ValueError as exc:
                yield Finish("error", len(tokens), 0, error=str(exc))
                return
        job = self.engine.submit(Job(tokens, request.params, user=request.user_key, priority=request.priority,
                                     grammar=request.grammar or None, public=public, sampler=sampler))
        yield from wait_chunks(self.engine, job, should_stop)

    def stats(self):
        return self.engine.stats() if self.engine else {}

    def forget_users(self, user_keys):
        if self.engine is not None:
            self.engine.forget_users(user_keys)
