"""The training loop: packed fixed-token batches from the mixture, AdamW with warmup and cosine decay,
gradient clipping, optional EMA, atomic checkpoints every N steps (the last K kept), exact resume,
a progress bar, a JSONL log of every metric (and TensorBoard when installed), and DDP — or, with
fsdp, FSDP (each layer's weights, gradients and optimizer state sharded across ranks) — under torchrun.
Checkpoints hold full tensors either way, so a run can resume with or without sharding.

A batch is a pure function of (data seed, step), so resuming from a checkpoint of step s — model,
optimizer, scheduler and EMA state — replays exactly the run that was interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist

from omni.io import atomic_write_bytes, check_int, read_json, read_safetensors, save_safetensors, write_json
from omni.model import OmniModel, preset
from omni.model.batch import Batch
from omni.tokens.text import TextTokenizer
from omni.tokens.visual import VisualTokenizer

from .data import Mixture, MixtureConfig, Writer

DEFAULT_VISUAL = Path(__file__).resolve().parents[2] / "checkpoints" / "visual-tokenizer"


# the model config fields a run takes from its tokenizers (never from --model)
TOKENIZER_FIELDS = ("text_vocab", "codebook_size", "latent_dim", "latent_grid", "image_size")


def tokenizer_fields(tok: TextTokenizer, vq: VisualTokenizer) -> dict[str, int]:
    """TOKENIZER_FIELDS with the values these tokenizers give them, as `preset` keywords."""
    return dict(zip(TOKENIZER_FIELDS, (tok.vocab_size, vq.cfg.codebook_size, vq.cfg.code_dim, vq.cfg.grid,
                                       vq.cfg.image_size), strict=True))


@dataclass
class TrainConfig:
    preset: str = "tiny"
    steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.95)
    clip: float = 1.0
    accum: int = 1  # micro-batches per step (their gradients are averaged)
    ema: float = 0.0  # > 0: keep an exponential moving average of the weights (saved as the model)
    seed: int = 0  # model initialisation
    save_every: int = 200
    keep: int = 2
    log_every: int = 10  # steps between TensorBoard scalars and progress-bar figures (log.jsonl has every step)
    device: str = "cpu"
    threads: int = 0
    workers: int = 1
    fsdp: bool = False  # under torchrun: shard weights, gradients and optimizer state (FSDP2) instead of DDP
    visual: str = str(DEFAULT_VISUAL)
    # start from this checkpoint's weights (a fine-tune or continuation: fresh optimizer, schedule
    # and data order); parameters of a feature the source lacks (OmniModel.FEATURE_PARAMS) start at 0
    init_from: str = ""
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    model_overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        """Every field is checked here, before a model is built; errors name the command-line option
        (the field with - for _: --save-every)."""
        from omni.model.config import PRESETS, OmniConfig

        if self.preset not in PRESETS:
            raise ValueError(f"--preset: unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")
        for name, lo in (("steps", 1), ("warmup", 0), ("accum", 1), ("save_every", 1), ("keep", 1), ("log_every", 1),
                         ("threads", 0), ("workers", 0)):
            check_int(option(name), getattr(self, name), lo)
        check_int(option("seed"), self.seed)
        _check(math.isfinite(_real(self.lr)) and _real(self.lr) > 0, "lr", self.lr, "> 0")
        _check(0 <= _real(self.min_lr_ratio) <= 1, "min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        wd = _real(self.weight_decay)
        _check(math.isfinite(wd) and wd >= 0, "weight_decay", self.weight_decay, ">= 0")
        _check(_real(self.clip) > 0, "clip", self.clip, "> 0")  # inf: no clipping
        _check(0 <= _real(self.ema) < 1, "ema", self.ema, "in [0, 1) (0: off)")
        betas = tuple(self.betas) if isinstance(self.betas, list | tuple) else ()
        _check(len(betas) == 2 and all(0 <= _real(b) < 1 for b in betas), "betas", self.betas, "two numbers in [0, 1)")
        d = self.device
        if not (isinstance(d, str) and (d in ("cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit()))):
            raise ValueError(f"--device must be cpu or cuda (or cuda:N), got {d!r}")
        if not isinstance(self.model_overrides, dict):
            raise ValueError(f"--model must be a JSON object of model config fields, got {self.model_overrides!r}")
        unknown = sorted(set(self.model_overrides) - {f.name for f in fields(OmniConfig) if f.name != "preset"})
        if unknown:
            raise ValueError(f"--model: unknown model config fields {', '.join(map(repr, unknown))}"
                             + (" (the preset is --preset)" if "preset" in unknown else ""))
        from_tokenizers = sorted(set(self.model_overrides) & set(TOKENIZER_FIELDS))
        if from_tokenizers:  # the Trainer sets them from the tokenizers (it was a TypeError there)
            raise ValueError(f"--model: {', '.join(from_tokenizers)} come from the tokenizers the run uses and "
                             "cannot be set")
        if not isinstance(self.mixture, MixtureConfig):
            raise ValueError(f"mixture must be a MixtureConfig, got {type(self.mixture).__name__}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config from its JSON (train_config.json); a ValueError naming what is wrong in it."""
        if not isinstance(d, dict):
            raise ValueError(f"a training config is a JSON object, got {type(d).__name__}")
        d = dict(d)
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown training config fields: {', '.join(unknown)}")
        mix = d.get("mixture", {})
        if not isinstance(mix, dict):
            raise ValueError(f"mixture must be a JSON object, got {mix!r}")
        unknown = sorted(set(mix) - {f.name for f in fields(MixtureConfig)})
        if unknown:
            raise ValueError(f"unknown mixture fields: {', '.join(unknown)}")
        betas = d.get("betas", (0.9, 0.95))
        if not isinstance(betas, (list, tuple)):
            raise ValueError(f"--betas must be two numbers, got {betas!r}")
        try:
            d["mixture"] = MixtureConfig(**mix)
            d["betas"] = tuple(betas)
            return cls(**d)
        except TypeError as e:  # a value of the wrong type compared with a bound
            raise ValueError(f"a value of the wrong type ({e})") from None


def option(name: str) -> str:
    """The command-line option of a config field: save_every -> --save-every."""
    return "--" + name.replace("_", "-")


def _check(ok: bool, name: str, value, want: str) -> None:
    """ok is written so that NaN fails it (`x > 0`, not `not x <= 0`)."""
    if not ok:
        raise ValueError(f"{option(name)} must be {want}, got {value!r}")


def _real(x) -> float:
    """x as a float, NaN for what is not a number (so that every check fails on it)."""
    return float(x) if isinstance(x, numbers.Real) and not isinstance(x, bool) else math.nan


# options that only say how this process runs (where, with how many threads and data workers, sharded
# or not): a resumed slice takes them from its own command line, whatever the saved run had. Batches
# are a function of (data seed, step) whatever the workers; checkpoints hold full tensors, so a run
# resumes with or without FSDP; a device or thread count changes results only by rounding.
PER_SLICE = ("device", "threads", "workers", "fsdp")
# options that change no result: a resumed run takes a value given other than the default, else its saved one
BOOKKEEPING = ("save_every", "keep", "log_every")


def _show(v) -> str:
    return json.dumps(v, sort_keys=True) if isinstance(v, dict | list | tuple) else str(v)


def resumed_config(given: TrainConfig, saved: TrainConfig, keep_steps: bool = False,
                   log=print, named: set[str] | None = None) -> TrainConfig:
    """The config a resumed run continues with: the saved one, with this command line's --steps (unless
    keep_steps) and its per-slice options (PER_SLICE). Any other option given with a value that differs
    from the saved one is an error listing them with their saved values. `named`: the TrainConfig and
    MixtureConfig fields the command line gave (the CLI knows); None (the Python API) counts an option at
    its default as not given, since it cannot be told from one left out, so the saved value holds."""
    defaults, conflicts, changes = TrainConfig(), [], {}

    def was_given(name, value, default) -> bool:
        return name in named if named is not None else value != default

    for f in fields(TrainConfig):
        k = f.name
        new, old, dflt = getattr(given, k), getattr(saved, k), getattr(defaults, k)
        if k == "steps":
            changes[k] = old if keep_steps else new
        elif k in PER_SLICE:
            changes[k] = new
        elif k in BOOKKEEPING:
            changes[k] = new if was_given(k, new, dflt) else old
        elif k == "mixture":
            for m in fields(MixtureConfig):
                a, b, c = getattr(new, m.name), getattr(old, m.name), getattr(dflt, m.name)
                if was_given(m.name, a, c) and a != b:
                    conflicts.append(f"{option(m.name)} {_show(a)} (saved: {_show(b)})")
        elif k == "model_overrides":
            conflicts += _model_conflicts(new, old, saved.preset)
        elif was_given(k, new, dflt) and new != old:
            conflicts.append(f"{option(k)} {_show(new)} (saved: {_show(old)})")
    if conflicts:
        raise ValueError("--resume continues the run with its saved train_config.json, and these options differ "
                         f"from it: {'; '.join(conflicts)}. Leave them out (or pass the saved values) to resume; "
                         "--steps, the per-slice options (--device, --threads, --workers, --fsdp, --max-minutes) "
                         "and --save-every / --keep may change")
    out = replace(saved, **changes)
    said = [f"{option(k)} {_show(getattr(out, k))} (saved: {_show(getattr(saved, k))})"
            for k in changes if getattr(out, k) != getattr(saved, k)]
    if said:
        log("resuming with " + ", ".join(said))
    return out


# model config fields that `omni train` sets by a flag of their own
MODEL_FLAGS = {"visual_cells": "--visual-cells", "source_latents": "--source-latents", "source_cond": "--source-cond",
               "pair_cond": "--pair-cond", "pose_head": "--pose-head", "rope_2d": "--rope-2d"}


def _model_conflicts(new: dict, old: dict, preset_name: str) -> list[str]:
    """--model fields given (not {}) whose value differs from the saved run's (its override, else its preset's,
    else OmniConfig's default)."""
    from omni.model.config import PRESETS, OmniConfig

    base = {**{f.name: f.default for f in fields(OmniConfig)}, **PRESETS.get(preset_name, {})}
    out = []
    for k, v in new.items():
        was = old.get(k, base.get(k))
        if v != was:
            name = f"{MODEL_FLAGS[k]} (--model {k})" if k in MODEL_FLAGS else f"--model {k}"
            out.append(f"{name} {_show(v)} (saved: {_show(was)})")
    return out


def stop_if_diverged(step: int, losses: dict, gnorm, out: Path) -> None:
    """A FloatingPointError when a step's loss or gradient norm is NaN or infinite. The update would write
    NaN into every weight and AdamW moment, and the checkpoints that follow would rotate the good ones
    out (training went on, logging NaN); stopping before it leaves the newest checkpoint finite."""
    loss, g = float(losses["loss"]), float(gnorm)
    if math.isfinite(loss) and math.isfinite(g):
        return
    bad = [k for k, v in losses.items() if not math.isfinite(float(v))]
    raise FloatingPointError(f"step {step}: the loss is {loss} ({', '.join(bad) or 'every term finite'}) and the "
                             f"gradient norm {g}: training diverged or met a bad batch. Stopped before the update; "
                             f"the checkpoints in {out} are of earlier steps (a new run with a lower --lr or a "
                             "longer --warmup may avoid it)")


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio x lr at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


class BatchStream(torch.utils.data.IterableDataset):
    """Batches for steps start, start+1, ... (worker w of W makes steps w, w+W, ...; the loader's
    round robin over workers keeps the order)."""

    def __init__(self, mixture: Mixture, start: int, end: int, rank: int = 0, world: int = 1, accum: int = 1):
        self.mixture, self.start, self.end = mixture, start, end
        self.rank, self.world, self.accum = rank, world, accum

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, n = (info.id, info.num_workers) if info else (0, 1)
        for step in range(self.start + wid, self.end, n):
            # a step's global batch is world x accum micro-batches; rank r's micro-batch i is the
            # mixture's batch number (step * world + r) * accum + i, so one process accumulating
            # world x accum micro-batches sees exactly what world processes see together
            first = (step * self.world + self.rank) * self.accum
            with _one_thread():
                micro = [self.mixture.batch(first + i) for i in range(self.accum)]
            yield step, micro


@contextlib.contextmanager
def _one_thread():
    """Batches are made on one torch thread, in a worker process and (--workers 0) in the training process
    alike, so they are the same whatever the workers; the training process gets its --threads back for
    the step (setting 1 for good there trained every --workers 0 run on one thread)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _collate(x):
    return x


def run_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """A run's complete checkpoints (step-N/ with COMPLETE), step -> directory, oldest first. Other
    names (a copy such as step-N-backup, an unfinished .tmp-step-N) are not checkpoints."""
    out = {}
    for d in Path(run_dir).glob("step-*"):
        m = re.fullmatch(r"step-(\d+)", d.name)
        if m and (d / "COMPLETE").is_file():
            out[int(m.group(1))] = d
    return dict(sorted(out.items()))


def checkpoint_step(d: Path) -> int:
    """The step a checkpoint directory step-N holds: its trainer.json's, which must be N (a copied or
    edited checkpoint whose record says another step would make a resumed run overwrite good ones)."""
    m = re.fullmatch(r"step-(\d+)", Path(d).name)
    step = read_json(Path(d) / "trainer.json").get("step")
    if m is None or isinstance(step, bool) or not isinstance(step, int) or step != int(m.group(1)):
        raise ValueError(f"{Path(d) / 'trainer.json'}: step {step!r} is not the directory's: a corrupt or "
                         "copied checkpoint; remove it to resume from the one before")
    return step


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """A run's complete checkpoints, oldest first."""
    return list(run_checkpoints(run_dir).values())


def ddp_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; fp32 on the CPU, where bf16 matmuls are slow (a test runs the CUDA
    path's model and step under the CPU's bf16 autocast by replacing this)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


class Trainer:
    def __init__(self, cfg: TrainConfig, out: str | Path, log=print):
        self.cfg, self.out, self.log = cfg, Path(out), log
        self.rank, self.world = ddp_info()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = torch.device(cfg.device)
        tok = TextTokenizer.default()
        vq = VisualTokenizer.load(cfg.visual)
        mcfg = preset(cfg.preset, **tokenizer_fields(tok, vq), **cfg.model_overrides)
        # the mixture first: a --row-len that cannot hold its sequences is an error before a model is built
        self.mixture = Mixture(cfg.mixture, Writer.for_mixture(tok, vq, mcfg, cfg.mixture))
        row_len_warning = self.mixture.check_row_len()
        torch.manual_seed(cfg.seed)
        self.model = OmniModel(mcfg).to(self.device)
        self.model.tokenizer = tok
        object.__setattr__(self.model, "visual", vq)
        if cfg.init_from and not self.checkpoint_dirs():  # a run with checkpoints resumes from its own
            self._init_from(Path(cfg.init_from))
        self.ddp = None
        self.fsdp = cfg.fsdp and self.world > 1
        if self.fsdp:  # one shard group per layer, then the rest (embeddings, heads) at the root
            from torch.distributed.fsdp import fully_shard

            # every rank reduces a gradient for every parameter (zero where unused): so, unlike
            # without sharding, AdamW also steps (decays) a parameter no token of a batch used
            self.model.set_full_graph()

            for layer in self.model.layers:
                fully_shard(layer)
            fully_shard(self.model)
        elif self.world > 1:  # gloo on the CPU, nccl on CUDA (chosen when the process group starts)
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=True)
        # the optimizer and the EMA see the parameters as they are after sharding
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2 and "emb" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
        self.ema = ({k: v.detach().clone() for k, v in self.model.state_dict().items()} if cfg.ema > 0 else None)
        self.step = 0
        if row_len_warning and self.rank == 0:
            self.log(row_len_warning)
        if cfg.warmup > cfg.steps and self.rank == 0:  # accepted without a word
            self.log(f"--warmup {cfg.warmup} is longer than the run (--steps {cfg.steps}): the learning rate "
                     f"peaks at {lr_at(cfg, cfg.steps - 1):.3g}, not --lr {cfg.lr:g}")
        if cfg.fsdp and self.world == 1:  # it was recorded and ignored without a word
            self.log("--fsdp shards across torchrun's processes; this is one process, so it trains unsharded "
                     "(run it under torchrun --nproc_per_node N to shard)")

    def _init_from(self, d: Path) -> None:
        """Load a checkpoint directory's weights (config.json + model safetensors) into the new model.
        Tensors the model lacks, or of another shape, are an error; the model's feature parameters
        the source lacks start at zero, where the feature changes nothing."""
        from omni.model.checkpoint import fit_state, load_state

        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"--init-from: no checkpoint (config.json) in {d}")
        own = self.model.state_dict()
        state = load_state(d)
        self.model.load_state_dict(fit_state(state, own, f"--init-from {d}", "the model being trained",
                                             optional=OmniModel.FEATURE_PARAMS, own_init=OmniModel.FEATURE_OWN_INIT))
        new = sorted(set(own) - set(state))
        zero = [k for k in new if k not in OmniModel.FEATURE_OWN_INIT]
        drawn = [k for k in new if k in OmniModel.FEATURE_OWN_INIT]
        self.log(f"initialised from {d}" + (f" (new, at zero: {', '.join(zero)})" if zero else "")
                 + (f" (new, drawn: {', '.join(drawn)})" if drawn else ""))

    # -- checkpoints ----------------------------------------------------------------------------

    def checkpoint_dirs(self) -> list[Path]:
        return checkpoint_dirs(self.out)

    def full_state(self) -> tuple[dict, dict, dict | None]:
        """Model weights, optimizer state (torch's layout: parameters by index) and EMA as full
        tensors. Under FSDP a collective (every rank calls it) whose result only rank 0 holds."""
        if not self.fsdp:
            return self.model.state_dict(), self.opt.state_dict(), self.ema
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model = get_model_state_dict(self.model, options=opts)
        osd = get_optimizer_state_dict(self.model, self.opt, options=opts)  # parameters by name
        ema = {k: v.full_tensor().cpu() for k, v in self.ema.items()} if self.ema is not None else None
        if self.rank != 0:
            return {}, {}, None
        names = [n for g in osd["param_groups"] for n in g["params"]]
        index = {n: i for i, n in enumerate(names)}
        groups, i = [], 0
        for g in osd["param_groups"]:
            groups.append({**g, "params": list(range(i, i + len(g["params"])))})
            i += len(g["params"])
        return model, {"state": {index[n]: st for n, st in osd["state"].items()}, "param_groups": groups}, ema

    def save(self) -> Path | None:
        """Write step-<n>/ (model in the checkpoint format + training state), then COMPLETE; a
        checkpoint counts only once COMPLETE exists, so a kill mid-write leaves the previous one.
        Under FSDP every rank calls it (the full tensors are gathered) and rank 0 writes."""
        model_state, opt_state, ema = self.full_state()
        if self.rank != 0:
            return None
        d = self.out / f"step-{self.step:07d}"
        tmp = self.out / f".tmp-step-{self.step:07d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        meta = {"training": {"config": self.cfg.to_dict(), "step": self.step, "data_seed": self.cfg.mixture.data_seed}}
        self.model.save_pretrained(tmp, meta=meta, state=model_state)
        tensors, plain = {}, {"param_groups": opt_state["param_groups"], "state_keys": {}}
        for pid, st in opt_state["state"].items():
            plain["state_keys"][str(pid)] = {}
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"opt.{pid}.{k}"] = v
                    plain["state_keys"][str(pid)][k] = "tensor"
                else:
                    plain["state_keys"][str(pid)][k] = v
        if ema is not None:
            tensors.update({f"ema.{k}": v for k, v in ema.items()})
        save_safetensors(tensors, tmp / "trainer.safetensors")
        write_json(tmp / "trainer.json", {"step": self.step, "optimizer": plain,
                                          "rng": torch.random.get_rng_state().tolist()})
        atomic_write_bytes(tmp / "COMPLETE", b"ok\n")
        shutil.rmtree(d, ignore_errors=True)
        os.replace(tmp, d)
        fd = os.open(self.out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        for old in self.checkpoint_dirs()[: -self.cfg.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return d

    def load(self, d: Path) -> None:
        """The state of checkpoint `d`; a ValueError naming it when any part is missing or does not fit
        this run (another architecture, a truncated optimizer or random state)."""
        step = checkpoint_step(d)
        try:
            self._load(d)
            if not self.fsdp:  # AdamW takes moments of another shape and fails only at the next step
                for g in self.opt.param_groups:
                    for p in g["params"]:
                        for k, v in self.opt.state.get(p, {}).items():
                            if torch.is_tensor(v) and v.dim() and v.shape != p.shape:
                                raise RuntimeError(f"optimizer state {k} of shape {tuple(v.shape)} for a "
                                                   f"parameter of shape {tuple(p.shape)}")
        except (KeyError, TypeError, RuntimeError, IndexError, ValueError, AttributeError) as e:
            raise ValueError(f"{d}: a checkpoint this run cannot resume from ({type(e).__name__}: {e})") from None
        self.step = step

    def _load(self, d: Path) -> None:
        from omni.model.checkpoint import load_state

        state = load_state(d)
        meta = read_json(d / "trainer.json")
        tensors = read_safetensors(d / "trainer.safetensors")
        plain = meta["optimizer"]
        st = {}
        for pid, keys in plain["state_keys"].items():
            st[int(pid)] = {k: (tensors[f"opt.{pid}.{k}"] if v == "tensor" else v) for k, v in keys.items()}
        if self.fsdp:  # every rank reads the full tensors and keeps its shards
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )
            from torch.distributed.tensor import distribute_tensor

            own = self.model.state_dict()
            set_model_state_dict(self.model, {k: state[k].to(v.dtype) for k, v in own.items()},
                                 options=StateDictOptions(full_state_dict=True))
            by_param = {id(p): n for n, p in self.model.named_parameters()}
            order = [by_param[id(p)] for g in self.opt.param_groups for p in g["params"]]  # index -> name
            groups, i = [], 0
            for g in plain["param_groups"]:
                groups.append({**g, "params": order[i:i + len(g["params"])]})
                i += len(g["params"])
            set_optimizer_state_dict(self.model, self.opt, {"state": {order[p]: v for p, v in st.items()},
                                                            "param_groups": groups},
                                     options=StateDictOptions(full_state_dict=True))
            if self.ema is not None:
                self.ema = {k: distribute_tensor(tensors[f"ema.{k}"].to(v.dtype).to(v.device), v.device_mesh,
                                                 v.placements) for k, v in self.ema.items()}
        else:
            self.model.load_state_dict({k: state[k].to(v.dtype) for k, v in self.model.state_dict().items()})
            self.opt.load_state_dict({"state": st, "param_groups": plain["param_groups"]})
            if self.ema is not None:
                self.ema = {k: tensors[f"ema.{k}"].to(device=v.device, dtype=v.dtype) for k, v in self.ema.items()}
        torch.random.set_rng_state(torch.tensor(meta["rng"], dtype=torch.uint8))
        self.step = int(meta["step"])

    def resume(self) -> bool:
        cks = self.checkpoint_dirs()
        if not cks:
            return False
        self.load(cks[-1])
        self.log(f"resumed from {cks[-1]} (step {self.step})")
        return True

    # -- the loop -------------------------------------------------------------------------------

    def train_step(self, micro: list[Batch]) -> dict:
        """One optimizer step over micro-batches (gradients averaged, across DDP ranks too).
        Returned losses are the means over micro-batches and ranks."""
        model = self.ddp if self.ddp is not None else self.model
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.cfg, self.step)
        self.opt.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for i, b in enumerate(micro):
            b = b.to(self.device)
            autocast = autocast_for(self.device)
            sync = (self.ddp.no_sync() if self.ddp is not None and i < len(micro) - 1 else contextlib.nullcontext())
            if self.fsdp:  # reduce-scatter the gradients after the last micro-batch only
                self.model.set_requires_gradient_sync(i == len(micro) - 1)
            with sync:
                with autocast:
                    out = model(b, losses=True)
                (out["loss"] / len(micro)).backward()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() / len(micro)
        if self.world > 1:
            vals = torch.stack([sums[k] for k in sorted(sums)])
            dist.all_reduce(vals)
            sums = {k: v / self.world for k, v in zip(sorted(sums), vals, strict=True)}
        out = sums
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        if hasattr(gnorm, "full_tensor"):  # FSDP: the norm over every rank's shards
            gnorm = gnorm.full_tensor()
        stop_if_diverged(self.step + 1, out, gnorm, self.out)  # every rank sees the same reduced values
        self.opt.step()
        if self.ema is not None:
            with torch.no_grad():
                for k, v in self.model.state_dict().items():
                    if v.dtype.is_floating_point:
                        self.ema[k].mul_(self.cfg.ema).add_(v, alpha=1 - self.cfg.ema)
        self.step += 1
        return {k: float(v.detach()) for k, v in out.items()} | {"grad_norm": float(gnorm),
                                                                 "lr": lr_at(self.cfg, self.step - 1)}

    def run(self, max_seconds: float | None = None) -> dict:
        """Train up to cfg.steps. With max_seconds, stop once that much wall time has passed (after
        a step, with a checkpoint of it, so `--resume` continues exactly): a long run in slices
        that fit a machine's time limit per command. The last metrics carry `stopped_early`."""
        cfg = self.cfg
        started = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            write_json(self.out / "train_config.json", cfg.to_dict())
            for tmp in self.out.glob(".tmp-step-*"):  # a killed run's half-written checkpoint (never COMPLETE)
                shutil.rmtree(tmp, ignore_errors=True)
        if self.step >= cfg.steps:  # a finished run resumed: nothing to do, and say so
            self.log(f"{self.out} is already at step {self.step} of {cfg.steps}: nothing to train "
                     "(a larger --steps continues it)")
            return {"step": self.step, "steps": cfg.steps, "done": True}
        stream = BatchStream(self.mixture, self.step, cfg.steps, self.rank, self.world, cfg.accum)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.workers,
                                             collate_fn=_collate, persistent_workers=False)
        logf = open(self.out / "log.jsonl", "a") if self.rank == 0 else None
        tb = _tensorboard(self.out) if self.rank == 0 else None
        bar = _progress(cfg.steps, self.step) if self.rank == 0 else None
        t0, tokens, last = time.perf_counter(), 0, {}
        for step, micro in loader:
            assert step == self.step, (step, self.step)
            t = time.perf_counter()
            m = self.train_step([b for b, _ in micro])
            dt = time.perf_counter() - t
            n_tok = sum(info["tokens"] for _, info in micro) * self.world
            tokens += n_tok
            m.update(step=self.step, tokens=n_tok, examples=sum(info["examples"] for _, info in micro) * self.world,
                     step_s=round(dt, 3),
                     tokens_per_s=round(tokens / (time.perf_counter() - t0), 1))
            last = m
            shown = self.step % cfg.log_every == 0 or self.step == cfg.steps
            if logf is not None:
                logf.write(json.dumps(m) + "\n")
                logf.flush()
                if tb is not None and shown:
                    for k, v in m.items():
                        if isinstance(v, float):
                            tb.add_scalar(k, v, self.step)
            if bar is not None:
                bar.update(1)
                if shown:
                    bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{m['tokens_per_s']:.0f}")
            stop = max_seconds is not None and time.perf_counter() - started >= max_seconds
            if max_seconds is not None and self.world > 1:  # every rank follows rank 0's clock
                flag = torch.tensor([float(stop)], device=self.device if self.device.type == "cuda" else "cpu")
                dist.broadcast(flag, 0)
                stop = bool(flag.item())
            if self.step % cfg.save_every == 0 or self.step == cfg.steps or stop:
                if self.rank == 0 or self.fsdp:  # FSDP: every rank takes part in gathering
                    self.save()
                if self.world > 1:
                    dist.barrier()
            if stop and self.step < cfg.steps:
                last["stopped_early"] = True
                self.log(f"stopped at step {self.step} of {cfg.steps} after {max_seconds / 60:g} min "
                         "(--max-minutes); continue with --resume")
                break
        if bar is not None:
            bar.close()
        if logf is not None:
            logf.close()
        if tb is not None:  # its events are written by a background thread: close flushes them
            tb.close()
        return last


def _progress(total: int, start: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


RECORD_KEYS = ("training", "exported_from", "weights")  # what a shipped model's config says of how it was made


def recorded_path(p: str | Path) -> str:
    """A path as a shipped record keeps it, naming no machine's paths: a relative path as given, an
    absolute one relative to the working directory, or else its last part."""
    p = Path(p)
    if not p.is_absolute():
        return str(p)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return p.name


def _writable_dest(dest, keep: list[Path], what: str) -> Path:
    """`dest` as a Path, unless it is empty (it was the current directory) or is, or lies inside, one of
    the directories `keep` (what is being read: writing there would replace it): a ValueError then."""
    if not isinstance(dest, (str, os.PathLike)) or not str(dest).strip():
        raise ValueError(f"{what} needs a destination directory, got {dest!r}")
    d = Path(dest).resolve()
    for k in keep:
        k = Path(k).resolve()
        if d == k or k in d.parents:
            raise ValueError(f"{what} would write into {k}, which it reads: choose another destination")
    return Path(dest)


def export(run_dir: str | Path, dest: str | Path, dtype: str = "bfloat16", step: int | None = None) -> Path:
    """Copy the newest complete checkpoint of a run (or its checkpoint of `step`) into `dest` as a
    shippable model (EMA weights if the run kept them), in `dtype` on disk, with the training record
    in its config.json."""
    from omni.model import OmniModel as _M

    run_dir = Path(run_dir)
    cks = run_checkpoints(run_dir)
    if Path(dest).resolve() == run_dir.resolve():
        raise ValueError(f"export would write into the run directory {run_dir}: choose another destination")
    _writable_dest(dest, list(cks.values()), "export")
    if step is not None and step not in cks:
        raise FileNotFoundError(f"no complete checkpoint of step {step} in {run_dir} (complete: {list(cks)})")
    if not cks:
        raise FileNotFoundError(f"no complete checkpoint in {run_dir}")
    src = cks[max(cks) if step is None else step]
    model = _M.from_pretrained(src)
    meta = read_json(src / "config.json")
    tensors = read_safetensors(src / "trainer.safetensors")
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    if ema:
        model.load_state_dict({k: ema[k].to(v.dtype) for k, v in model.state_dict().items()})
    extra = {k: v for k, v in meta.items() if k not in ("format", "model", "dtype")}
    extra["exported_from"] = src.name
    cfg = extra.get("training", {}).get("config", {})
    init = cfg.get("init_from")
    if init and (Path(init) / "config.json").is_file():  # a continuation records what it continued
        source = read_json(Path(init) / "config.json")
        extra["training"]["init"] = {k: source[k] for k in RECORD_KEYS if k in source}
    for key in ("visual", "init_from"):
        if cfg.get(key):
            cfg[key] = recorded_path(cfg[key])
    extra["weights"] = "ema" if ema else "raw"
    return model.save_pretrained(dest, dtype=dtype, meta=extra)


def average(sources, dest: str | Path, weights=None, dtype: str = "bfloat16", first_only: str | None = None) -> Path:
    """Average the weights of shippable models (`export`'s outputs, or a shipped checkpoint) of the
    same architecture into `dest`: a weighted mean of every floating tensor (uniform by default,
    computed in float64), tensors equal in every source kept exactly. `first_only`, a regular
    expression (`re.match` on the tensor's name; `OmniModel.GENERATION_TENSORS` names the generation
    side), keeps the tensors it matches as the first source has them, unaveraged. The config records
    each source's training (and `first_only`), so the average stays reproducible from the commands
    that made its sources. ValueError on fewer than two sources, different model configs or tensors,
    bad weights, or a `first_only` that is not a regular expression or matches no tensor."""
    if isinstance(sources, (str, os.PathLike)):  # one path: its characters were taken for sources
        raise TypeError(f"sources must be a list of checkpoint directories, got {sources!r}")
    sources = [Path(s) for s in sources]
    _writable_dest(dest, sources, "average")
    if len({s.resolve() for s in sources}) < len(sources):
        raise ValueError(f"a checkpoint is named twice among the sources: {[str(s) for s in sources]} (give it a "
                         "larger weight instead)")
    if first_only is not None:
        try:
            keep = re.compile(first_only)
        except re.error as e:
            raise ValueError(f"first_only is not a regular expression ({e}): {first_only!r}") from None
    if len(sources) < 2:
        raise ValueError(f"averaging needs at least two models, got {len(sources)}")
    n = len(sources)
    try:
        if isinstance(weights, (str, bytes)):  # "12" read as the two weights 1 and 2
            raise TypeError
        w = [1.0 / n] * n if weights is None else [float(x) for x in weights]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"weights must be {n} finite non-negative numbers with a positive sum, got {weights!r}") \
            from None
    if len(w) != n or any(not math.isfinite(x) or x < 0 for x in w) or not 0 < sum(w) < math.inf:
        raise ValueError(f"weights must be {n} finite non-negative numbers with a positive sum, got {weights!r}")
    w = [x / sum(w) for x in w]
    models = [OmniModel.from_pretrained(s) for s in sources]  # each checked as it loads
    metas = [read_json(s / "config.json") for s in sources]
    first = models[0].cfg.to_dict()
    for s, m in zip(sources[1:], models[1:], strict=True):
        cfg = m.cfg.to_dict()
        diff = sorted(k for k in set(cfg) | set(first) if cfg.get(k) != first.get(k))
        if diff:
            raise ValueError(f"{s} and {sources[0]} differ in their model config: {', '.join(diff)}")
    states = [m.state_dict() for m in models]
    if first_only is not None and not any(keep.match(k) for k in states[0]):
        raise ValueError(f"first_only {first_only!r} matches none of the model's tensors")
    out = {}
    for k, v in states[0].items():
        ts = [st.get(k) for st in states]
        if any(t is None or t.shape != v.shape for t in ts):
            raise ValueError(f"tensor {k!r} is missing or of another shape in some model")
        if all(torch.equal(t, v) for t in ts[1:]) or (first_only is not None and keep.match(k)):
            out[k] = v
        elif not v.is_floating_point():
            raise ValueError(f"tensor {k!r} ({v.dtype}) differs between the models and cannot be averaged")
        else:
            out[k] = sum(x * t.double() for x, t in zip(w, ts, strict=True)).to(v.dtype)
    models[0].load_state_dict(out)
    record = [{"source": recorded_path(s), "weight": x, **{k: m[k] for k in RECORD_KEYS if k in m}}
              for s, x, m in zip(sources, w, metas, strict=True)]
    training = {"average": record, **({"first_only": first_only} if first_only is not None else {})}
    return models[0].save_pretrained(dest, dtype=dtype, meta={"training": training, "weights": "average"})
