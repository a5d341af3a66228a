"""The KV cache: preallocated, append-only, forkable.

One cache holds the context of `rows` sequences that grow in step (CFG branches, batched
examples): per layer, keys and values (rows, heads, max_len, head_dim) filled up to `length`, the
next rotary position and segment id of each row, and the last stored token's hidden state (the
next-token logits come from it). Everything in it is visible to later tokens: generated images
(image_gen) are run with store=False and never enter it. `fork()` copies the filled prefix into a
new cache, so branches (CFG, ablation rows) continue from one encoding of their common context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .batch import Batch, Segment, attention_mask, pack
from .config import OmniConfig


class KVCache:
    def __init__(self, cfg: OmniConfig, rows: int = 1, max_len: int | None = None, device="cpu",
                 dtype: torch.dtype = torch.float32):
        self.cfg = cfg
        self.max_len = max_len or cfg.max_seq
        shape = (cfg.n_layers, rows, cfg.n_heads, self.max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.rows = rows
        self.length = 0
        self.next_pos = [0] * rows
        self.next_seg = [0] * rows
        self.last_hidden: torch.Tensor | None = None  # (rows, d_model)

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
        new = KVCache.__new__(KVCache)
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
        return b

    def mask(self, b: Batch) -> torch.Tensor:
        """(rows, 1, n, length + n): every cached token is visible unless the query is unconditional;
        among the new tokens, the usual rules."""
        rows, n = b.kind.shape
        cached = (~b.uncond)[:, None, :, None].expand(rows, 1, n, self.length)
        return torch.cat([cached.to(self.k.device), attention_mask(b).to(self.k.device)], dim=-1)
