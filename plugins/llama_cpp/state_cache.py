"""Per-conversation KV state, so a conversation's history is not prefilled again after another
conversation has used the model in between (2,900 tokens of history cost ~17 s to prefill on
2 cores; restoring the sequence state costs milliseconds).

The outgoing conversation's state is saved only when a different conversation takes the model,
so a conversation that keeps the model pays nothing."""
import collections
import ctypes

import llama_cpp
import numpy as np

MIN_REUSE = 32  # below this, restoring costs more than prefilling


def common_prefix(a, b):
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.nonzero(np.asarray(a[:n]) != np.asarray(b[:n]))[0]
    return int(diff[0]) if len(diff) else n


class StateCache:
    def __init__(self, budget_bytes):
        self.budget = budget_bytes
        self.entries = collections.OrderedDict()  # key -> (tokens ndarray, state bytes)
        self.size = 0
        self.owner = None  # cache key of the conversation whose state is in the context now

    def _evict(self):
        while self.size > self.budget and self.entries:
            _, (_, state) = self.entries.popitem(last=False)
            self.size -= len(state)

    def _save(self, llm, key):
        n = llm.n_tokens
        if key is None or n < MIN_REUSE:
            return
        ctx = llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        if size > self.budget:
            return
        buf = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        state = ctypes.string_at(buf, written)  # bytes(buf[:n]) builds a list of ints first: 40x slower
        old = self.entries.pop(key, None)
        if old is not None:
            self.size -= len(old[1])
        self.entries[key] = (np.array(llm.input_ids[:n], dtype=np.intc), state)
        self.size += len(state)
        self._evict()

    def _restore(self, llm, tokens, state):
        ctx = llm._ctx.ctx
        llm._ctx.kv_cache_seq_rm(0, 0, -1)
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if not llama_cpp.llama_state_seq_set_data(ctx, buf, len(state), 0):
            llm._ctx.kv_cache_seq_rm(0, 0, -1)
            llm.n_tokens = 0
            return False
        llm.input_ids[: len(tokens)] = tokens
        llm.n_tokens = len(tokens)
        return True

    def prepare(self, llm, key, prompt_tokens):
        """Make the context hold the longest available prefix of ``prompt_tokens``; returns how
        many prompt tokens are already in the context (llama's generate() reuses them)."""
        current = common_prefix(llm.input_ids[: llm.n_tokens], prompt_tokens)
        if self.owner != key:
            self._save(llm, self.owner)
            self.owner = key
        entry = self.entries.get(key) if key is not None else None
        if entry is not None:
            tokens, state = entry
            cached = common_prefix(tokens, prompt_tokens)
            if cached >= MIN_REUSE and cached > current and self._restore(llm, tokens, state):
                self.entries.move_to_end(key)
                return cached
        return current
