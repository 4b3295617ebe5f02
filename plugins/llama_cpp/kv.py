"""Which sequence ids of the shared context hold which tokens, so a follow-up prefills only
its new tokens (2,900 tokens of history cost ~17 s to prefill on 2 cores, a restore milliseconds).

Two tiers: finished sequences stay *resident* in the context (LRU over the spare sequence ids
and KV cells); evicted ones move to a *host-RAM* tier as llama.cpp sequence state within a byte
budget. Reuse is scoped to the owner (the user): a request only starts from its own user's
earlier tokens. Everything here runs on the engine thread.
"""
import collections
import ctypes
import time

import llama_cpp

MIN_REUSE = 32  # below this, restoring costs more than prefilling
MIN_SHARED = 8  # a shared prefix is copied within the KV cache for free: worth it sooner


def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class KvSequence:
    __slots__ = ("seq_id", "tokens", "owner", "busy", "used_at", "spill")

    def __init__(self, seq_id):
        self.seq_id = seq_id
        self.tokens = []  # exactly the tokens in the KV cache for this sequence, positions 0..n-1
        self.owner = None
        self.busy = False
        self.used_at = 0.0
        self.spill = True  # whether eviction moves it to the host tier (or only drops it)


class HostTier:
    """Evicted sequences' state in host RAM, LRU within ``budget`` bytes."""

    def __init__(self, budget):
        self.budget = budget
        self.entries = collections.OrderedDict()  # id -> (owner, tokens, state bytes)
        self.size = 0
        self._next = 0

    def put(self, owner, tokens, state):
        if len(state) > self.budget:
            return
        self._next += 1
        self.entries[self._next] = (owner, tokens, state)
        self.size += len(state)
        while self.size > self.budget and self.entries:
            _, (_, _, old) = self.entries.popitem(last=False)
            self.size -= len(old)

    def take(self, owner, prompt):
        """Remove and return the owner's entry sharing the longest prefix with ``prompt``."""
        best, best_len = None, MIN_REUSE - 1
        for key, (entry_owner, tokens, _) in self.entries.items():
            if entry_owner == owner:
                n = common_prefix(tokens, prompt)
                if n > best_len:
                    best, best_len = key, n
        if best is None:
            return None
        owner, tokens, state = self.entries.pop(best)
        self.size -= len(state)
        return tokens, state


class SequenceTable:
    def __init__(self, ctx, n_seq, capacity, host_budget, resident_budget=None):
        self.ctx = ctx
        self.mem = llama_cpp.llama_get_memory(ctx)
        self.seqs = [KvSequence(i) for i in range(n_seq)]
        self.capacity = capacity  # KV cells shared by all sequences (unified KV cache)
        self.host = HostTier(host_budget)
        # Idle sequences' cells kept in the KV cache while others decode (None: no limit).
        self.resident_budget = resident_budget
        self.hits = self.misses = self.host_hits = self.shared_hits = 0
        self.forgotten = set()  # owners whose accounts are deleted

    def cells_used(self):
        return sum(len(s.tokens) for s in self.seqs)

    def take(self, owner, prompt, public=0):
        """A sequence id for ``prompt``, primed with the longest prefix this owner has cached,
        or else with up to ``public`` tokens (the template's own opening, such as its default
        system prompt: no user's text) from any sequence. Returns (sequence, reused); at least the
        last prompt token is always left to evaluate, so the first token is sampled from logits
        computed for this sequence."""
        idle = [s for s in self.seqs if not s.busy]
        if not idle:
            raise RuntimeError("no free sequence id (more requests admitted than sequences)")
        reused, best = max(((common_prefix(s.tokens, prompt), s) for s in idle if s.owner == owner and s.tokens),
                           default=(0, None), key=lambda pair: pair[0])
        if best is not None and reused >= MIN_REUSE:
            seq = best
            self.hits += 1
        else:
            seq = min(idle, key=lambda s: (bool(s.tokens), s.used_at))
            self._evict(seq)
            reused = 0
            found = self.host.take(owner, prompt)
            if found is not None and self._restore(seq, *found):
                reused = common_prefix(seq.tokens, prompt)
                self.host_hits += 1
            else:
                reused = self._share_public(seq, prompt, public)
                self.misses += not reused
        reused = min(reused, len(prompt) - 1)
        self._truncate(seq, reused)
        seq.owner, seq.busy = owner, True
        return seq, reused

    def _share_public(self, seq, prompt, public):
        """Copy the longest user-independent prefix any sequence holds (a tag, not a copy, in a
        unified KV cache). Returns how many tokens the sequence now holds."""
        donors = [s for s in self.seqs if s is not seq and s.tokens]
        if public < MIN_SHARED or not donors:
            return 0
        n, donor = max(((common_prefix(s.tokens, prompt[:public]), s) for s in donors), key=lambda pair: pair[0])
        if n < MIN_SHARED:
            return 0
        llama_cpp.llama_memory_seq_cp(self.mem, donor.seq_id, seq.seq_id, 0, n)
        seq.tokens = list(prompt[:n])
        self.shared_hits += 1
        return n

    def release(self, seq, tokens, spill=True):
        """A finished sequence stays resident for its owner's next request. ``spill``: whether it
        is worth host RAM once evicted (a batch line's conversation gets no follow-up, and its
        state, about 1.6 MB per 70 tokens, would push people's histories out of the budget)."""
        if seq.owner in self.forgotten:
            seq.tokens = tokens
            return self.discard(seq)
        seq.tokens = tokens
        seq.busy = False
        seq.used_at = time.monotonic()
        seq.spill = spill

    def forget_owners(self, owners):
        """Drop every idle sequence and host-RAM entry of these owners (deleted accounts); their
        running ones are dropped, not kept, when they finish."""
        self.forgotten.update(owners)
        for seq in self.seqs:
            if not seq.busy and seq.owner in owners:
                self._truncate(seq, 0)
                seq.owner = None
        for key in [k for k, (owner, _, _) in self.host.entries.items() if owner in owners]:
            self.host.size -= len(self.host.entries.pop(key)[2])

    def discard(self, seq):
        """Forget a sequence whose KV content is not trustworthy (a failed decode)."""
        self._truncate(seq, 0)
        seq.owner, seq.busy = None, False

    def make_room(self, cells):
        """Evict idle sequences (to the host tier), least recently used first, until ``cells``
        more fit; False when even that is not enough."""
        for seq in sorted((s for s in self.seqs if not s.busy and s.tokens), key=lambda s: s.used_at):
            if self.cells_used() + cells <= self.capacity:
                break
            self._evict(seq)
        return self.cells_used() + cells <= self.capacity

    def trim_idle(self, running_cells=0):
        """Every step's attention spans the occupied KV cells, idle sequences' too: one idle
        2,900-token history cost a single stream 12% of its decode speed here, five of them 34%,
        and 3,000 idle cells cost sixteen streams 12% (bench/engine.py's shape). So while anything
        decodes, the cells in use stay within ``resident_budget`` where they can: idle sequences
        keep what the ``running_cells`` leave of it, and the least recently used move to the host
        tier (restoring one costs milliseconds, not a prefill)."""
        if self.resident_budget is None:
            return
        allowed = max(0, self.resident_budget - running_cells)
        idle = [s for s in self.seqs if not s.busy and s.tokens]
        held = sum(len(s.tokens) for s in idle)
        if held <= allowed:  # the usual case, checked every step: nothing to sort
            return
        for seq in sorted(idle, key=lambda s: s.used_at):
            if held <= allowed:
                break
            held -= len(seq.tokens)
            self._evict(seq)

    def forget_idle(self):
        for seq in self.seqs:
            if not seq.busy:
                self._truncate(seq, 0)
                seq.owner = None
        self.host.entries.clear()
        self.host.size = 0

    def _truncate(self, seq, n):
        llama_cpp.llama_memory_seq_rm(self.mem, seq.seq_id, n, -1)
        del seq.tokens[n:]

    def _evict(self, seq):
        if seq.spill and len(seq.tokens) >= MIN_REUSE and seq.owner is not None:
            size = llama_cpp.llama_state_seq_get_size(self.ctx, seq.seq_id)
            if 0 < size <= self.host.budget:
                buf = (ctypes.c_uint8 * size)()
                written = llama_cpp.llama_state_seq_get_data(self.ctx, buf, size, seq.seq_id)
                # string_at copies in C; bytes(buf[:n]) would build a list of ints first (40x slower)
                self.host.put(seq.owner, list(seq.tokens), ctypes.string_at(buf, written))
        self._truncate(seq, 0)
        seq.owner = None

    def _restore(self, seq, tokens, state):
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if not llama_cpp.llama_state_seq_set_data(self.ctx, buf, len(state), seq.seq_id):
            self._truncate(seq, 0)
            return False
        seq.tokens = list(tokens)
        return True

    def stats(self):
        return {"resident_sequences": sum(1 for s in self.seqs if s.tokens and not s.busy),
                "kv_cells_used": self.cells_used(), "kv_cells": self.capacity,
                "host_bytes": self.host.size, "host_entries": len(self.host.entries),
                "prefix_hits": self.hits, "prefix_host_hits": self.host_hits, "prefix_shared_hits": self.shared_hits,
                "prefix_misses": self.misses}
