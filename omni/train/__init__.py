"""Native training on the whole world: the data mixture, the loop, checkpoints, distributed launch."""

from __future__ import annotations

import os
from pathlib import Path

from .data import FORMS, Mixture, MixtureConfig, Writer
from .loop import TrainConfig, Trainer, export, lr_at


def train_main(out: str, preset: str = "tiny", steps: int = 1000, resume: bool = False, device: str = "cpu",
               log=print, max_minutes: float | None = None, **overrides) -> dict:
    """Train (or resume) a run in `out`. Under torchrun (WORLD_SIZE > 1) it joins the process group
    (gloo on the CPU, nccl on CUDA) and runs DDP; every rank builds its own share of the batch.
    max_minutes: stop (with a checkpoint) after that much wall time; `resume` continues."""
    if max_minutes is not None and max_minutes < 0:
        raise ValueError(f"--max-minutes must be >= 0, not {max_minutes}")
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    run_dir = Path(out)
    saved = run_dir / "train_config.json"
    if resume and saved.is_file():
        from omni.io import read_json

        cfg = TrainConfig.from_dict(read_json(saved))
        cfg.steps = steps if steps else cfg.steps
    else:
        mixture = overrides.pop("mixture", None) or MixtureConfig(**overrides.pop("mixture_kw", {}))
        cfg = TrainConfig(preset=preset, steps=steps, device=device, mixture=mixture, **overrides)
    trainer = Trainer(cfg, run_dir, log=log)
    if resume:
        trainer.resume()
    elif trainer.checkpoint_dirs():
        raise ValueError(f"{run_dir} already holds checkpoints: pass --resume or choose another --out")
    last = trainer.run(None if max_minutes is None else 60.0 * max_minutes)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return last


__all__ = ["FORMS", "Mixture", "MixtureConfig", "TrainConfig", "Trainer", "Writer", "export", "lr_at", "train_main"]
