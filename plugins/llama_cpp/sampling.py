"""Per-sequence sampling and text assembly: each sequence in the batch has its own sampler chain
(temperature, top_p, seed, an optional grammar), its own incremental UTF-8 decoder and its own
stop strings, so sequences decoded together never share state."""
import codecs
import ctypes
import math
import random
import time

import llama_cpp
import numpy as np

# The same filters the single-stream backend used (llama-cpp-python's defaults for chat).
TOP_K = 40
MIN_P = 0.05


class GrammarError(ValueError):
    """A grammar llama.cpp refused (the request must fail, never run unconstrained)."""


# llama_token_data as numpy sees it, so candidate arrays are filled without a Python loop.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
# How many of the most likely tokens a grammar checks first. Checking a token costs the grammar
# one walk per live alternative (a 1,000-value enum: 1,000 walks), and it runs inside the step
# every sequence waits for: 64 candidates instead of the whole 49,152-token vocabulary.
WINDOW = 64
MIN_P_LOG = math.log(MIN_P)
# A grammar's work runs in the step every running answer waits for. The limits on schemas keep
# it small; this bound catches whatever slips through (an ambiguous pattern, a worst case we did
# not foresee): a sequence whose filtering takes more than a burst plus a few milliseconds per
# token ends with an error instead of slowing everyone (a step is ~8-10 ms on 2 cores).
GRAMMAR_BURST_SECONDS = 0.5
GRAMMAR_SECONDS_PER_TOKEN = 0.005
COST_SMOOTHING = 0.3


class Sampler:
    """One sequence's sampling. Without a grammar, llama.cpp's sampler chain on the logits. With
    one, the grammar first filters the WINDOW most likely tokens, and the chain picks among the
    survivors whenever that provably gives what filtering the whole vocabulary would (see
    ``_window_is_enough``); only otherwise does the grammar see every token. Same answers as
    grammar-first sampling, at a small fraction of its cost for everyone sharing the step."""

    def __init__(self, vocab, params, grammar=None, trigger=None):
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.grammar = None
        self.vocab = vocab
        # With a trigger (inference.toolcalls.Trigger, for tool_choice "auto") the grammar waits,
        # parsed, until the model opens a call. llama.cpp's lazy grammars match a regular
        # expression against all the text so far at every token, inside the shared step;
        # this looks at a tag's length of new text.
        self.trigger = trigger
        self.greedy = params.temperature <= 0
        self.grammar_seconds = 0.0  # time spent filtering candidates (the engine's budget reads it)
        self.recent_cost = 0.0  # seconds a token lately, smoothed (the engine's fair turns read it)
        if grammar:
            self.grammar = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not self.grammar:
                self.close()
                raise GrammarError("llama.cpp could not parse the grammar for this request")
            self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
            self.window = np.zeros(WINDOW, TOKEN_DATA)
            self.everything = None  # the whole vocabulary's candidates, made on first need
        if self.greedy:
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
        if self.grammar is None or (self.trigger is not None and not self.trigger.fired):
            return llama_cpp.llama_sampler_sample(self.chain, ctx, batch_index)
        began = time.thread_time()  # CPU time: a busy machine must not make a grammar look costly
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, batch_index), shape=(self.n_vocab,))
        top = np.argpartition(logits, -WINDOW)[-WINDOW:]
        self.window["id"], self.window["logit"] = top, logits[top]
        self._apply(self.grammar, self.window)
        candidates = self.window[self.window["logit"] != -np.inf]
        if not self._window_is_enough(candidates, logits[top].min()):
            if self.everything is None:
                self.everything = np.zeros(self.n_vocab, TOKEN_DATA)
            self.everything["id"], self.everything["logit"] = np.arange(self.n_vocab), logits
            self._apply(self.grammar, self.everything)
            candidates = self.everything
        token = self._pick(candidates)
        llama_cpp.llama_sampler_accept(self.grammar, token)
        spent = time.thread_time() - began
        self.grammar_seconds += spent
        self.recent_cost += COST_SMOOTHING * (spent - self.recent_cost)
        return token

    def saw(self, text):
        """The text the last token added. Returns False when it opened a call the grammar cannot
        follow (the call is then cut short, never left unconstrained)."""
        if self.trigger is None or self.trigger.fired:
            return True
        opened = self.trigger.feed(text)
        if opened is None:
            return True
        data = opened.encode()
        ids = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), ids, len(ids), False, True)
        one = np.zeros(1, TOKEN_DATA)
        for token in ids[:max(n, 0)]:
            # A token the grammar refuses would make llama.cpp throw through ctypes: ask first.
            one["id"], one["logit"] = token, 0.0
            self._apply(self.grammar, one)
            if one["logit"][0] == -np.inf:
                return False
            llama_cpp.llama_sampler_accept(self.grammar, token)
        return n >= 0

    def over_budget(self, tokens):
        return self.grammar_seconds > GRAMMAR_BURST_SECONDS + GRAMMAR_SECONDS_PER_TOKEN * tokens

    def _window_is_enough(self, survivors, window_floor):
        """Whether the chain would choose among ``survivors`` even if the grammar had seen every
        token: every token outside the window has a logit at or below ``window_floor``."""
        if not len(survivors):
            return False
        if self.greedy or len(survivors) >= TOP_K:
            return True  # the best allowed tokens are all inside the window
        # Fewer than top_k allowed here: tokens outside could join, unless min_p (relative to
        # the best allowed logit, which is inside) would drop every one of them anyway.
        return window_floor < survivors["logit"].max() + MIN_P_LOG

    def _pick(self, candidates):
        candidates = np.ascontiguousarray(candidates)  # held: the array below points into it
        array = self._apply(self.chain, candidates)
        token = int(array.data[array.selected].id)  # the chain sorts and shrinks in place
        llama_cpp.llama_sampler_accept(self.chain, token)
        return token

    @staticmethod
    def _apply(sampler, candidates):
        array = llama_cpp.llama_token_data_array(
            data=candidates.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(candidates),
            selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        return array

    def close(self):
        if self.chain is not None:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None
        if self.grammar is not None:
            llama_cpp.llama_sampler_free(self.grammar)
            self.grammar = None


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
