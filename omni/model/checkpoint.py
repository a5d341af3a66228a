"""Checkpoints: a directory of JSON and safetensors files, nothing else (no pickle anywhere).

    config.json                        model config, format version, anything the trainer records
    model.safetensors                  weights (or model-0000k-of-0000n.safetensors shards plus
                                       model.safetensors.index.json when one file would be too big)
    tokenizer.json                     the text tokenizer
    visual_tokenizer.safetensors/.json the visual tokenizer

A missing, truncated, corrupt or mismatched file raises an error that names it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from omni.io import check_device, check_finite, non_finite, read_json, read_safetensors, save_safetensors, write_json
from omni.tokens.visual import VisualTokenizer

from .config import OmniConfig
from .transformer import OmniModel

FORMAT = "omni-checkpoint-v1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RESERVED_META = ("format", "model", "dtype")  # config.json's own keys, beside the caller's meta


def save_pretrained(model: OmniModel, directory: str | Path, dtype: str = "float32", max_shard_mb: float = 14.0,
                    meta: dict | None = None, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the checkpoint directory; `state` (full tensors) instead of model.state_dict() when the
    model's own parameters are shards (FSDP)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    reserved = sorted(set(meta or {}) & set(RESERVED_META))
    if reserved:  # they would overwrite what config.json says of the weights: a checkpoint that fails to load
        raise ValueError(f"meta must not set {', '.join(map(repr, reserved))}: save_pretrained writes "
                         f"{', '.join(RESERVED_META)} itself")
    own = model.state_dict()
    source = own if state is None else state
    if state is not None:  # keys or shapes not the model's wrote a checkpoint that failed only when loaded
        missing, extra = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        shapes = [k for k in own.keys() & state.keys() if tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or extra or shapes:
            raise ValueError(f"state is not this model's: missing {missing[:3]}, unknown {extra[:3]}, "
                             f"shapes differ {sorted(shapes)[:3]}")
    diverged = non_finite({k: v.detach() for k, v in source.items()})
    if diverged:  # unloadable ("NaN or inf"), and a run's keep-K rotation would delete good checkpoints for it
        raise ValueError(f"weights hold NaN or inf (a diverged run?): {diverged[:5]}; nothing written")
    state = {k: v.detach().to(DTYPES[dtype]).contiguous().cpu() for k, v in source.items()}
    # a weight beyond the dtype's range (float16: 65504) became inf, written without a word; loading it
    # then failed as "NaN or inf (a diverged run?)". Checked before anything in the directory is touched
    over = non_finite(state)  # the source is finite (above)
    if over:
        raise ValueError(f"weights do not fit {dtype} (values beyond its range would be saved as inf): "
                         f"{over[:5]}; save as float32 or bfloat16")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for old in list(d.glob("model-*-of-*.safetensors")) + [d / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size, limit = 0, int(max_shard_mb * 2**20)
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    if len(shards) == 1:
        (d / "model.safetensors").unlink(missing_ok=True)
        save_safetensors(shards[0], d / "model.safetensors", {"format": FORMAT})
    else:
        (d / "model.safetensors").unlink(missing_ok=True)
        index = {}
        for i, sh in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_safetensors(sh, d / name, {"format": FORMAT})
            index.update({k: name for k in sh})
        write_json(d / "model.safetensors.index.json", {"metadata": {"format": FORMAT}, "weight_map": index})
    write_json(d / "config.json", {"format": FORMAT, "model": model.cfg.to_dict(), "dtype": dtype, **(meta or {})})
    # a model without tokenizers saved over another checkpoint must not leave that one's tokenizers
    # beside its weights (from_pretrained would load them as this model's)
    if model.tokenizer is not None:
        model.tokenizer.save(d / "tokenizer.json")
    else:
        (d / "tokenizer.json").unlink(missing_ok=True)
    if model.visual is not None:
        model.visual.save(d)
    else:
        for name in VisualTokenizer.FILES:
            (d / name).unlink(missing_ok=True)
    return d


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _has_weights(d: Path) -> bool:
    return (d / "model.safetensors").is_file() or (d / "model.safetensors.index.json").is_file()


def _pickle_files(d: Path) -> list[str]:
    """Names of pickle checkpoint files (pytorch_model.bin, *.pt, ...) in `d`; never opened."""
    return sorted(p.name for p in d.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file()) \
        if d.is_dir() else []


def _no_weights(d: Path) -> FileNotFoundError:
    """The error for a directory without model.safetensors or a shard index, naming any pickle
    checkpoint lying there."""
    pickles = _pickle_files(d)
    extra = (f" (found {', '.join(pickles[:5])}: pickle checkpoints are not loaded, only safetensors are)"
             if pickles else "")
    return FileNotFoundError(f"missing file: {d / 'model.safetensors'}{extra}")


def shard_file(d: Path, index: Path, name) -> Path:
    """The path of a shard the index names: a plain file name inside the checkpoint directory."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
            or Path(name).name != name or Path(name).is_absolute():
        raise ValueError(f"{index}: shard name must be a file name inside the checkpoint, got {name!r}")
    if not name.endswith(".safetensors"):
        raise ValueError(f"{index}: shard {name!r} is not a .safetensors file")
    return d / name


def load_state(directory: str | Path) -> dict[str, torch.Tensor]:
    d = Path(directory)
    index = d / "model.safetensors.index.json"
    if not _has_weights(d):
        raise _no_weights(d)
    if (d / "model.safetensors").is_file():
        return read_safetensors(d / "model.safetensors")
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: no weight_map")
    shards = {shard_file(d, index, name) for name in weight_map.values()}
    state = {}
    for path in sorted(shards):
        state.update(read_safetensors(path))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise ValueError(f"{index}: tensors listed but not found in the shards: {missing[:5]}")
    return state


def fit_state(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], where, against: str,
              optional: tuple[str, ...] = (), own_init: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """`state` checked against a model's own state dict and cast to its dtypes. A tensor the model
    lacks, one of another shape, or one the model has and `state` lacks is an error naming `where`
    (what `against` implies), except the `optional` ones, which start at zero, and the `own_init`
    ones, which keep the model's own values."""
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in missing if k not in optional and k not in own_init]
    if bad or unexpected:
        raise ValueError(f"{where}: weights do not match {against} (missing {bad[:5]}, unexpected "
                         f"{unexpected[:5]})")
    for k in state:
        if tuple(state[k].shape) != tuple(own[k].shape):
            raise ValueError(f"{where}: tensor {k!r} has shape {tuple(state[k].shape)}, {against} implies "
                             f"{tuple(own[k].shape)}")
    return {k: state[k].to(v.dtype) if k in state else v.clone() if k in own_init else torch.zeros_like(v)
            for k, v in own.items()}


def from_pretrained(directory: str | Path, device: str = "cpu", with_tokenizers: bool = True) -> OmniModel:
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"from_pretrained needs the path of a checkpoint directory, got {directory!r}")
    if not str(directory):
        raise ValueError("from_pretrained needs the path of a checkpoint directory, got an empty string")
    device = check_device(device)  # first: an unusable device is the error, whatever the path
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise NotADirectoryError(f"checkpoint path is a file, not a directory: {d} (pass the directory that holds "
                                 "config.json and model.safetensors)")
    if not d.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {d}")
    if not _has_weights(d) and _pickle_files(d):  # say so before any complaint about its config
        raise _no_weights(d)
    where = d / "config.json"
    meta = read_json(where)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{where}: not an omni checkpoint (format {meta.get('format')!r})")
    if "model" not in meta:
        raise ValueError(f"{where}: bad model config: no \"model\" entry")
    try:
        cfg = OmniConfig.from_dict(meta["model"], complete=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: bad model config: {e}") from None
    state = load_state(d)
    try:
        with torch.device("meta"):  # the weights' shapes checked first: a config of absurd sizes allocates nothing
            shapes = OmniModel(cfg).state_dict()
    except RuntimeError as e:  # a tensor too large to describe
        raise ValueError(f"{where}: bad model config: sizes no model can have ({e})") from None
    fit_state(state, shapes, d / "model.safetensors", "config.json")
    check_finite(state, d / "model.safetensors")
    model = OmniModel(cfg)
    model.load_state_dict(fit_state(state, model.state_dict(), d / "model.safetensors", "config.json"))
    if with_tokenizers:
        from omni.tokens.text import TextTokenizer

        tok = TextTokenizer.load(d / "tokenizer.json")
        if tok.vocab_size != cfg.text_vocab:
            raise ValueError(f"{d / 'tokenizer.json'}: vocabulary {tok.vocab_size} does not match the model's "
                             f"{cfg.text_vocab}")
        vis = VisualTokenizer.load(d)
        if vis.cfg.code_dim != cfg.latent_dim or vis.cfg.codebook_size != cfg.codebook_size \
                or vis.cfg.grid != cfg.latent_grid:
            raise ValueError(f"{d / 'visual_tokenizer.json'}: codes ({vis.cfg.codebook_size} x {vis.cfg.code_dim}, "
                             f"grid {vis.cfg.grid}) do not match the model")
        model.tokenizer = tok
        object.__setattr__(model, "visual", vis)  # on the CPU, where the engine hands it codes and latents
    return model.to(device).eval()


def describe(directory: str | Path) -> str:
    return json.dumps(read_json(Path(directory) / "config.json"), indent=2)


def weights_digest(model: OmniModel) -> str:
    """A SHA-256 of the model's weights as they are in memory (each tensor's name, dtype, shape and
    bytes, in the state dict's order): the same weights give the same digest, any change another."""
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
