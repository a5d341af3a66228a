"""Native training on the whole world: the data mixture, the loop, checkpoints, distributed launch."""

from __future__ import annotations

import os
from pathlib import Path

from .data import FORMS, Mixture, MixtureConfig, Writer
from .loop import TrainConfig, Trainer, average, checkpoint_dirs, checkpoint_step, export, lr_at, resumed_config


def train_main(out: str, preset: str = "tiny", steps: int | None = None, resume: bool = False, device: str = "cpu",
               log=print, max_minutes: float | None = None, named: set[str] | None = None, **overrides) -> dict:
    """Train (or resume) a run in `out`. Under torchrun (WORLD_SIZE > 1) it joins the process group
    (gloo on the CPU, nccl on CUDA) and runs DDP; every rank builds its own share of the batch.
    max_minutes: stop (with a checkpoint) after that much wall time; `resume` continues.

    Every option is checked (TrainConfig, MixtureConfig) before anything is built. With `resume` and a
    complete checkpoint, the run continues with its saved train_config.json: --steps (None or 0
    keeps the saved steps; None in a fresh run is TrainConfig's default) and the per-slice options
    (loop.PER_SLICE) come from this call, and any other option that differs from the saved value is an
    error (loop.resumed_config): one the command line gave (`named`, the config fields it set), or
    without `named` one that differs from its default. With `resume`
    and no complete checkpoint it says so and starts a fresh run (so every slice of a sliced run may
    pass --resume)."""
    if max_minutes is not None and not (isinstance(max_minutes, int | float) and max_minutes >= 0):
        raise ValueError(f"--max-minutes must be >= 0, got {max_minutes!r}")
    import torch
    import torch.distributed as dist

    from omni.io import read_json
    from omni.model.checkpoint import check_device

    if not str(out).strip():  # it was the current directory
        raise ValueError("--out needs a run directory, got an empty name")
    if Path(out).exists() and not Path(out).is_dir():  # it was "[Errno 17] File exists", after the model was built
        raise ValueError(f"--out {out} is a file, not a run directory")
    say = log if os.environ.get("RANK", "0") == "0" else (lambda *_: None)  # under torchrun: rank 0 only
    keep_steps = resume and not steps  # resuming without --steps (or with 0): the saved steps
    mixture = overrides.pop("mixture", None) or MixtureConfig(**overrides.pop("mixture_kw", {}))
    # no --steps: TrainConfig's default for a fresh run (a resumed one keeps its saved steps, below)
    n = TrainConfig.steps if steps is None else 1 if keep_steps else steps
    cfg = TrainConfig(preset=preset, steps=n, device=device, mixture=mixture, **overrides)
    run_dir = Path(out)
    saved = run_dir / "train_config.json"
    cks = checkpoint_dirs(run_dir) if resume else []
    if resume and not cks:
        if steps == 0:
            raise ValueError(f"--steps must be >= 1, got {steps} (0 keeps a resumed run's steps, and {run_dir} "
                             "has no complete checkpoint)")
        say(f"--resume: no complete checkpoint in {run_dir}: starting a fresh run")
    elif resume:  # the saved config: train_config.json, else the one the newest checkpoint records
        if saved.is_file():
            record = read_json(saved)
        else:
            record = read_json(cks[-1] / "config.json").get("training", {}).get("config")
        if record:
            try:
                was = TrainConfig.from_dict(record)
            except ValueError as e:  # name the file: its values are the saved run's, not this command's
                where = saved if saved.is_file() else cks[-1] / "config.json"
                raise ValueError(f"{where}: the saved run's config: {e}") from None
            cfg = resumed_config(cfg, was, keep_steps, log=say, named=named)
        cfg = _reachable_visual(cfg, run_dir, cks[-1], say)
        at = checkpoint_step(cks[-1])
        if cfg.steps < at:
            raise ValueError(f"--steps {cfg.steps} is below the step of the checkpoint to resume ({cks[-1]})")
    elif checkpoint_dirs(run_dir):
        raise ValueError(f"{run_dir} already holds checkpoints: pass --resume or choose another --out")
    if cfg.device != "cpu":
        check_device(cfg.device)  # CUDA there, and the device index too
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")
        if cfg.device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    trainer = Trainer(cfg, run_dir, log=log)
    if resume:
        trainer.resume()
    last = trainer.run(None if max_minutes is None else 60.0 * max_minutes)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return last


def _reachable_visual(cfg: TrainConfig, run_dir: Path, newest: Path, say) -> TrainConfig:
    """A resumed run whose recorded visual tokenizer is gone (the run was started from a checkout or a
    temporary copy since removed) continues with the copy its newest checkpoint holds, copied once into
    the run directory (run_dir/visual-tokenizer/) so that rotating old checkpoints out cannot lose it."""
    import shutil
    from dataclasses import replace

    from omni.tokens.visual import VisualTokenizer

    names = VisualTokenizer.FILES  # config first: what says the tokenizer is there
    if (Path(cfg.visual) / names[0]).is_file() or not all((newest / n).is_file() for n in names):
        return cfg  # reachable, or no copy to fall back on (VisualTokenizer.load names the missing file)
    own = run_dir / "visual-tokenizer"
    if not all((own / n).is_file() for n in names):
        own.mkdir(exist_ok=True)
        for n in names:  # a copy interrupted midway is never taken for a whole one
            shutil.copyfile(newest / n, own / f".{n}.tmp")
            os.replace(own / f".{n}.tmp", own / n)
    say(f"--resume: the run's visual tokenizer {cfg.visual} is gone; continuing with the copy in {newest}, "
        f"kept as {own}")
    return replace(cfg, visual=str(own))


__all__ = ["FORMS", "Mixture", "MixtureConfig", "TrainConfig", "Trainer", "Writer", "average", "export", "lr_at",
           "train_main"]
