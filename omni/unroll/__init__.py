"""Context Unrolling: the sequence format, the workspace with its KV cache, primitives, plans, decoders."""

from .engine import (
                     DECODERS,
                     DEFAULT_PLAN,
                     PLANS,
                     PRIMITIVES,
                     Engine,
                     Inputs,
                     Item,
                     Result,
                     Workspace,
                     parse_plan,
                     register,
)
from .format import Format

__all__ = ["DECODERS", "DEFAULT_PLAN", "PLANS", "PRIMITIVES", "Engine", "Format", "Inputs", "Item", "Result",
           "Workspace", "parse_plan", "register"]
