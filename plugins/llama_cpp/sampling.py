"""Per-sequence sampling and text assembly: each sequence in the batch has its own sampler chain
(temperature, top_p, seed, an optional grammar), its own incremental UTF-8 decoder and its own
stop strings, so sequences decoded together never share state."""
import codecs
import ctypes
import random

import llama_cpp

# The same filters the single-stream backend used (llama-cpp-python's defaults for chat).
TOP_K = 40
MIN_P = 0.05


class GrammarError(ValueError):
    """A grammar llama.cpp refused (the request must fail, never run unconstrained)."""


class Sampler:
    def __init__(self, vocab, params, grammar=None):
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if grammar:
            g = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not g:
                self.close()
                raise GrammarError("llama.cpp could not parse the grammar for this request")
            self._add(g)
        if params.temperature <= 0:
            self._add(llama_cpp.llama_sampler_init_greedy())
        else:
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            self._add(llama_cpp.llama_sampler_init_top_k(TOP_K))
            self._add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            self._add(llama_cpp.llama_sampler_init_min_p(MIN_P, 1))
            self._add(llama_cpp.llama_sampler_init_temp(params.temperature))
            self._add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def _add(self, sampler):
        llama_cpp.llama_sampler_chain_add(self.chain, sampler)

    def sample(self, ctx, batch_index):
        """Sample from the logits of batch row ``batch_index`` (llama.cpp also accepts the token)."""
        return llama_cpp.llama_sampler_sample(self.chain, ctx, batch_index)

    def close(self):
        if self.chain is not None:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None


class Detokenizer:
    """Token ids to text, one piece at a time; multi-byte characters split across tokens are held."""

    def __init__(self, vocab, visible_special=()):
        self.vocab = vocab
        self.visible_special = set(visible_special)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.buf = ctypes.create_string_buffer(256)

    def piece(self, token):
        special = token in self.visible_special
        n = llama_cpp.llama_token_to_piece(self.vocab, token, self.buf, len(self.buf), 0, special)
        if n < 0:  # a piece longer than the buffer: grow it once and retry
            self.buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, self.buf, len(self.buf), 0, special)
        return self.decoder.decode(self.buf.raw[:n])

    def finish(self):
        return self.decoder.decode(b"", final=True)


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
