"""Reading and writing weights and configs: safetensors and JSON only, with errors that name the file;
the type check of a config field read from JSON; the check of a device name."""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import threading
from pathlib import Path

import torch
from torch import nn


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    try:
        data = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # bad JSON or text; an integer of > 4300 digits; nesting too deep
        raise ValueError(f"{path}: not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def check_device(device) -> torch.device:
    """`device` as a torch.device this machine has; ValueError saying why not otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"unknown device {device!r} (use cpu, cuda, cuda:N or mps): {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine (use device='cpu')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine (use device='cpu')")
    elif dev.type not in ("cpu", "cuda", "mps"):  # meta, xla, ...: nothing here computes on them
        raise ValueError(f"unknown device {device!r}: omni runs on cpu, cuda, cuda:N or mps")
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise ValueError(f"device {device!r} cannot be used on this machine: {e}") from None
    return dev


def write_json(path: str | Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it. On any error (a full disk,
    `path` a directory, an interrupt) the temporary file is removed and what `path` held is kept. The
    temporary file is the writer's own (process and thread): two threads writing one path (the server's
    requests) each rename a whole file, the last one kept."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a partial .tmp file was left beside `path`, one per failed write
        with contextlib.suppress(OSError):  # never hide the error that got here
            tmp.unlink()
        raise


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: corrupt or truncated safetensors file ({e})") from None


def non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors holding NaN or inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def check_finite(state: dict[str, torch.Tensor], where) -> None:
    """ValueError naming `where` and the tensors holding NaN or inf: weights a diverged run wrote load
    without complaint and answer with NaN hidden states (argmax reads them as token 0)."""
    bad = non_finite(state)
    if bad:
        raise ValueError(f"{where}: {len(bad)} tensor(s) hold NaN or inf (a diverged run?), e.g. {bad[:3]}")


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save

    # an empty metadata dict is None: safetensors 0.8 writes {} tensors with {} metadata as a header it
    # cannot read back ('{},"__metadata__":{}}'; a trainer state saved before any step)
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                metadata={k: str(v) for k, v in (metadata or {}).items()} or None)
    atomic_write_bytes(path, data)


def load_safetensors(module: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Load a module's state from a safetensors file (or `state`, already read from it); a missing,
    corrupt, truncated or mismatched file raises an error naming it and what is wrong. A module on the
    meta device is only checked against the file: nothing is loaded or allocated."""
    state = read_safetensors(path) if state is None else state
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path}: tensors do not match the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"{path}: tensor {k!r} has shape {tuple(state[k].shape)}, the model expects "
                         f"{tuple(own[k].shape)}")
    if any(t.is_meta for t in own.values()):
        return
    module.load_state_dict({k: state[k].to(own[k].dtype) for k in own})


def check_int(name: str, value, lo: int | None = None) -> None:
    """ValueError naming `name` unless `value` is an integer (Python's or numpy's, not a bool) >= lo."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")


def check_type(name: str, value, kind: str) -> None:
    """ValueError naming `name` unless `value` is of the annotated `kind` ("int", "float", "bool" or
    "str"): a bool is no int; a float may be an int, and must be finite."""
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    else:
        raise TypeError(f"{name}: unsupported field type {kind!r}")
    if not ok:
        want = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}[kind]
        raise ValueError(f"{name} must be {want}, got {value!r} ({type(value).__name__})")
