"""The KV cache: preallocated, append-only, forkable.

One cache holds the context of `rows` sequences that grow in step (CFG branches, batched
examples): per layer, keys and values (rows, heads, max_len, head_dim) filled up to `length`, the
next rotary position and segment id of each row, and the last stored token's hidden state (the
next-token logits come from it). Everything in it is visible to later tokens: generated images
(image_gen) are run with store=False and never enter it. `fork()` copies the filled prefix into a
new cache, so branches (CFG, ablation rows) continue from one encoding of their common context.

`RecomputingCache` is what all that is measured against: the same interface and results, no reuse.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omni.io import check_int

from .batch import Batch, Segment, attention_mask, pack
from .config import OmniConfig

_END = object()  # closes the last run of a replay


class KVCache:
    recompute = False  # see RecomputingCache

    def __init__(self, cfg: OmniConfig, rows: int = 1, max_len: int | None = None, device="cpu",
                 dtype: torch.dtype = torch.float32):
        self.cfg = cfg
        # max_len=0 read as "the model's max_seq", a negative one failed inside torch.zeros
        max_len = cfg.max_seq if max_len is None else max_len
        check_int("KVCache rows", rows, 1)
        check_int("KVCache max_len", max_len, 1)
        self.max_len, rows = int(max_len), int(rows)
        shape = (cfg.n_layers, rows, cfg.n_heads, self.max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.rows = rows
        self.length = 0
        self.next_pos = [0] * rows
        self.next_seg = [0] * rows
        self.last_hidden: torch.Tensor | None = None  # (rows, d_model)

    def check_device(self, model) -> torch.device:
        """The cache's device, which must be the model's (a ValueError saying how to build it otherwise)."""
        dev = model.tok_emb.weight.device
        if dev != self.k.device:
            raise ValueError(f"the KV cache is on {self.k.device} and the model on {dev}: build the cache on the "
                             "model's device (KVCache(cfg, device=...))")
        if self.k.dtype != torch.float32 and not (torch.is_autocast_enabled(dev.type)
                                                  and torch.get_autocast_dtype(dev.type) == self.k.dtype):
            # its keys met the fp32 queries deep inside attention ("query, key, and value to have the same dtype")
            raise ValueError(f"a {self.k.dtype} KV cache holds what the model computes under "
                             f"torch.autocast('{dev.type}', dtype={self.k.dtype}); without that autocast build it in "
                             "float32 (the default)")
        return dev

    def keys_values(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor, store: bool):
        """Keys and values of the cached context followed by the new tokens (rows, H, len + n, dh)."""
        n = k_new.shape[2]
        end = self.length + n
        if end > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {n} tokens > {self.max_len}")
        if store:
            self.k[layer, :, :, self.length:end] = k_new
            self.v[layer, :, :, self.length:end] = v_new
            return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
        return (torch.cat([self.k[layer, :, :, :self.length], k_new], dim=2),
                torch.cat([self.v[layer, :, :, :self.length], v_new], dim=2))

    def commit(self, b: Batch, n: int) -> None:
        self.length += n
        self.next_pos = list(b.end_pos)
        self.next_seg = list(b.end_seg)

    def advance(self, positions: int = 1, segments: int = 1) -> None:
        """Move past a segment that is not stored (a generated image): it took a position."""
        self.next_pos = [p + positions for p in self.next_pos]
        self.next_seg = [s + segments for s in self.next_seg]

    def fork(self) -> KVCache:
        new = type(self).__new__(type(self))
        new.cfg, new.max_len, new.rows = self.cfg, self.max_len, self.rows
        new.k = torch.zeros_like(self.k)
        new.v = torch.zeros_like(self.v)
        new.k[:, :, :, :self.length] = self.k[:, :, :, :self.length]
        new.v[:, :, :, :self.length] = self.v[:, :, :, :self.length]
        new.length = self.length
        new.next_pos, new.next_seg = list(self.next_pos), list(self.next_seg)
        new.last_hidden = None if self.last_hidden is None else self.last_hidden.clone()
        return new

    def pack(self, segments: Sequence[Sequence[Segment]]) -> Batch:
        if len(segments) != self.rows:
            raise ValueError(f"{len(segments)} rows of segments for a cache of {self.rows} rows")
        b = pack(segments, self.cfg, start_pos=self.next_pos, start_seg=self.next_seg)
        if len({n for _, _, n in b.where}) != 1:
            raise ValueError("every cache row must receive the same number of tokens")
        if b.where[0][2] == 0:  # a run of no tokens has no last hidden state (and failed inside the layers)
            raise ValueError("no segments to add: every cache row's list of segments is empty")
        return b

    def replay(self, model, entries) -> None:
        """Encode recorded context into this cache, in order: each entry a list of segments per row,
        or None for a skipped position (a generated image); consecutive segment entries run in one
        call. What both re-encoding baselines do (Workspace.rebuild, RecomputingCache.refill)."""
        from .transformer import extend

        run: list[list[Segment]] = [[] for _ in range(self.rows)]
        for entry in [*entries, _END]:
            if isinstance(entry, list):
                for r, segs in enumerate(entry):
                    run[r] += segs
                continue
            if any(run):
                extend(model, self, run)
                run = [[] for _ in range(self.rows)]
            if entry is None:
                self.advance()

    def mask(self, b: Batch) -> torch.Tensor:
        """(rows, 1, n, length + n): every cached token is visible unless the query is unconditional;
        among the new tokens, the usual rules."""
        rows, n = b.kind.shape
        cached = (~b.uncond)[:, None, :, None].expand(rows, 1, n, self.length)
        return torch.cat([cached.to(self.k.device), attention_mask(b).to(self.k.device)], dim=-1)


class RecomputingCache(KVCache):
    """No reuse, with the KVCache interface: the baseline the cache is measured against. It keeps
    what it was given (stored segments, decoded tokens, skipped positions) and, before every call
    that reads it (`extend`, `decode_step`: every decoded token and every flow step), throws its
    keys and values away and encodes all of that again — what a model without a KV cache pays at
    each step. Results equal the cached ones up to float rounding."""

    recompute = True

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.log: list = []  # rows' segment lists, or None for a skipped position (advance)

    def remember(self, segments: Sequence[Sequence[Segment]]) -> None:
        if self.recompute:
            self.log.append([list(r) for r in segments])

    def advance(self, positions: int = 1, segments: int = 1) -> None:
        if self.recompute:
            if (positions, segments) != (1, 1):
                raise ValueError("RecomputingCache records single-position advances only")
            self.log.append(None)
        super().advance(positions, segments)

    def refill(self, model) -> None:
        """Forget every key and value and encode the whole record again (runs of segments in one
        call each, a skipped position between runs)."""
        self.length, self.last_hidden = 0, None
        self.next_pos, self.next_seg = [0] * self.rows, [0] * self.rows
        self.recompute = False  # the refill itself is neither recorded nor refilled
        try:
            self.replay(model, self.log)
        finally:
            self.recompute = True

    def fork(self) -> RecomputingCache:
        new = super().fork()
        new.log = list(self.log)
        return new
