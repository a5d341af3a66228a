"""`python -m omni.train` (and `torchrun --nproc_per_node N -m omni.train`): the same options as `omni train`."""

import argparse
import json
import sys

from . import train_main


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m omni.train", description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--keep", type=int, default=2, help="checkpoints kept (the newest)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--row-len", type=int, default=1024)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--t-shift", type=float, default=1.0,
                    help="shift generated images' training noise levels toward pure noise (1: unshifted)")
    ap.add_argument("--task-weights", default="",
                    help='JSON of task weights over the defaults, e.g. \'{"spatial": 2}\'')
    ap.add_argument("--form-weights", default="",
                    help='JSON of form weights per task, e.g. \'{"spatial": {"pose": 3}}\'')
    ap.add_argument("--ema", type=float, default=0.0)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--fsdp", action="store_true", help="under torchrun: shard weights, gradients and optimizer "
                                                         "state across ranks (FSDP) instead of DDP")
    ap.add_argument("--init-from", default="", help="start from this checkpoint's weights (fresh optimizer and "
                                                     "schedule; use another --data-seed for new batches)")
    ap.add_argument("--model", default="{}", help="JSON of model config overrides (e.g. for tests)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop after this much wall time, with a checkpoint (continue with --resume)")
    a = ap.parse_args()
    try:
        last = _train(a)
    except (ValueError, OSError) as e:  # bad input: one line and exit code 2, as `omni train`
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(last))


def _train(a: argparse.Namespace) -> dict:
    from .data import MixtureConfig

    try:
        model = json.loads(a.model)
    except json.JSONDecodeError as e:
        raise ValueError(f"--model is not JSON ({e.msg}): {a.model!r}") from None
    return train_main(a.out, a.preset, a.steps, a.resume, a.device, max_minutes=a.max_minutes, lr=a.lr,
                      warmup=a.warmup, save_every=a.save_every, keep=a.keep, workers=a.workers, threads=a.threads,
                      ema=a.ema,
                      accum=a.accum, fsdp=a.fsdp, init_from=a.init_from, model_overrides=model,
                      mixture=MixtureConfig(data_seed=a.data_seed, rows=a.rows, row_len=a.row_len,
                                            t_shift=a.t_shift,
                                            **MixtureConfig.weights(a.task_weights, a.form_weights)))


if __name__ == "__main__":
    main()
