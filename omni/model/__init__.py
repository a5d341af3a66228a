"""The unified model: config presets, the MoT transformer, packed batches, KV cache, sampling, checkpoints."""

from .batch import Batch, Segment, attention_mask, pack
from .cache import KVCache
from .config import PRESETS, OmniConfig, preset
from .transformer import OmniModel, extend

__all__ = ["PRESETS", "Batch", "KVCache", "OmniConfig", "OmniModel", "Segment", "attention_mask", "extend", "pack",
           "preset"]
