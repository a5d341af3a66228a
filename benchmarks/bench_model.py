"""The model's speed on this machine, all in one run (tiny preset unless --preset).

    python benchmarks/bench_model.py [--json] [--preset tiny] [--threads N]

- fp32 matmul peak: the best GFLOP/s of square matmuls (512..2048) with the same thread count;
- training: tokens/s of full steps (forward, backward, AdamW) on packed rows of world-like mixed
  sequences (text with loss, an input image with depth, an image being generated with the flow
  loss, visual tokens with loss), and MFU = model FLOPs/s / that peak, where model FLOPs per token
  are 2 x (the linear weights that token's expert uses, adaLN included) + 4 x d x (the keys its
  mask lets it attend to) per layer, plus the LM head where there is a target, times 3 for
  forward + backward (masked-out attention that SDPA computes anyway is not counted);
- decoding: tokens/s of cached greedy decoding of 64 tokens after 256 (and 512) tokens of context
  vs re-running the whole prefix for every new token, and their ratio (each after one warm-up call;
  the cached path's first call also lays out the decode weights, a one-time cost per weights);
- one flow-sampling step (64 latent tokens against the cached context) and a whole 20-step image;
- peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import torch

from omni.model import KVCache, OmniModel, Segment, attention_mask, extend, pack, preset
from omni.model.config import EXPERT_OF_KIND, GEN
from omni.model.sampling import generate_tokens, sample_latents


def matmul_peak(threads: int) -> dict:
    best = {}
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        reps = max(3, int(2e10 / (2 * n**3)))
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best[n] = 2 * n**3 * reps / (time.perf_counter() - t) / 1e9
    return {"gflops_by_size": {k: round(v, 1) for k, v in best.items()}, "peak_gflops": round(max(best.values()), 1),
            "threads": threads}


def mixed_sequence(cfg, g) -> list[Segment]:
    n_lat = cfg.latent_grid ** 2
    txt = torch.randint(20, cfg.text_vocab, (60,), generator=g).tolist()
    return [Segment("text", txt[:40], loss=True),
            Segment("image_in", pixels=torch.rand(cfg.image_size, cfg.image_size, 3, generator=g),
                    depth=torch.rand(cfg.image_size, cfg.image_size, generator=g) * 8 + 2),
            Segment("text", txt[40:], loss=True),
            Segment("visual", torch.randint(0, cfg.codebook_size, (n_lat,), generator=g).tolist(), loss=True),
            Segment("image_gen", latents=torch.randn(n_lat, cfg.latent_dim, generator=g), t=0.5, loss=True,
                    noise=torch.randn(n_lat, cfg.latent_dim, generator=g))]


def flops_per_token(model: OmniModel, b) -> float:
    """Training FLOPs per real token of a packed batch (matmuls only; see the module docstring)."""
    cfg = model.cfg
    d, h = cfg.d_model, cfg.mlp_hidden
    linear = 4 * d * d + 3 * d * h  # qkv + proj + SwiGLU
    kind = b.kind.reshape(-1)
    real = kind >= 0
    n_gen = sum(int((kind == k).sum()) for k, e in EXPERT_OF_KIND.items() if e == GEN)
    n_real = int(real.sum())
    per_layer = n_real * 2 * linear + n_gen * 2 * (6 * d * d)  # + the generation expert's adaLN
    attn = 4 * d * int(attention_mask(b)[:, 0][real.reshape(b.kind.shape)].sum())  # attended keys only
    head = 2 * d * cfg.vocab_size * int((b.target >= 0).sum())
    return 3 * (cfg.n_layers * (per_layer + attn) + head) / n_real


def bench_training(model: OmniModel, rows: int, row_len: int, steps: int) -> dict:
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    n_seq = rows * (row_len // sum(s.length(cfg) for s in mixed_sequence(cfg, g)))
    b = pack([mixed_sequence(cfg, g) for _ in range(n_seq)], cfg, row_len=row_len)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        out = model.losses(b)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t) / steps
    n = int((b.kind >= 0).sum())
    return {"rows": int(b.kind.shape[0]), "row_len": row_len, "tokens_per_step": n, "step_s": round(dt, 3),
            "tokens_per_s": round(n / dt, 1), "flops_per_token": flops_per_token(model, b)}


@torch.no_grad()
def bench_decoding(model: OmniModel, context: int = 256, new: int = 64) -> dict:
    cfg = model.cfg
    model.eval()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(20, cfg.text_vocab, (context,), generator=g).tolist()
    cache = KVCache(cfg)
    extend(model, cache, [Segment("text", prompt)])
    generate_tokens(model, cache.fork(), 2)  # warm-up (builds the decode weight layout once)
    t = time.perf_counter()
    generate_tokens(model, cache, new)
    cached = new / (time.perf_counter() - t)
    seq = list(prompt)
    model(pack([[Segment("text", seq)]], cfg))  # warm-up
    t = time.perf_counter()
    for _ in range(new):
        h = model(pack([[Segment("text", seq)]], cfg))[0, -1]
        seq.append(int(model.logits(h).argmax()))
    full = new / (time.perf_counter() - t)
    return {"context": context, "new_tokens": new, "cached_tokens_per_s": round(cached, 1),
            "full_reforward_tokens_per_s": round(full, 1), "speedup": round(cached / full, 1)}


@torch.no_grad()
def bench_flow(model: OmniModel, context: int = 200) -> dict:
    cfg = model.cfg
    g = torch.Generator().manual_seed(2)
    cache = KVCache(cfg)
    extend(model, cache, [Segment("text", torch.randint(20, cfg.text_vocab, (context,), generator=g).tolist())])
    x = torch.randn(cfg.latent_grid ** 2, cfg.latent_dim, generator=g)
    seg = [Segment("image_gen", latents=x, t=0.5)]
    extend(model, cache, seg, store=False)
    reps = 10
    t = time.perf_counter()
    for _ in range(reps):
        model.velocity(extend(model, cache, seg, store=False)[0])
    step = (time.perf_counter() - t) / reps
    t = time.perf_counter()
    sample_latents(model, cache.fork(), steps=20, cfg_scale=3.0, generator=g)
    whole = time.perf_counter() - t
    return {"context": context, "latent_tokens": cfg.latent_grid ** 2, "step_ms": round(1000 * step, 2),
            "image_20_steps_cfg_s": round(whole, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--row-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    model = OmniModel(preset(args.preset))
    peak = matmul_peak(threads)
    train = bench_training(model, args.rows, args.row_len, args.steps)
    achieved = train["tokens_per_s"] * train["flops_per_token"] / 1e9
    train["model_gflops"] = round(achieved, 1)
    train["mfu"] = round(achieved / peak["peak_gflops"], 3)
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                       "threads": threads},
           "model": {"preset": args.preset, "params": model.num_params(), "und_expert_params": model.num_params(0),
                     "gen_expert_params": model.num_params(1)},
           "matmul": peak, "training": train, "decoding": bench_decoding(model),
           "decoding_512": bench_decoding(model, context=512), "flow": bench_flow(model),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    m, tr, fl = out["model"], out["training"], out["flow"]
    print(f"model benchmark | {out['machine']['platform']} | {threads} threads | torch {torch.__version__}")
    print(f"preset {m['preset']}: {m['params'] / 1e6:.2f} M parameters "
          f"(expert stacks: und {m['und_expert_params'] / 1e6:.2f} M, gen {m['gen_expert_params'] / 1e6:.2f} M)")
    print(f"fp32 matmul peak: {peak['peak_gflops']} GFLOP/s {peak['gflops_by_size']}")
    print(f"training: {tr['tokens_per_s']} tokens/s ({tr['rows']} rows x {tr['row_len']}, {tr['step_s']} s/step), "
          f"{tr['model_gflops']} GFLOP/s, MFU {tr['mfu']:.1%}")
    for de in (out["decoding"], out["decoding_512"]):
        print(f"decoding at {de['context']} tokens of context: cached {de['cached_tokens_per_s']} tokens/s, full "
              f"re-forward {de['full_reforward_tokens_per_s']} tokens/s, {de['speedup']}x")
    print(f"flow: one step {fl['step_ms']} ms ({fl['latent_tokens']} latents, {fl['context']} tokens of context); "
          f"a 20-step image with CFG {fl['image_20_steps_cfg_s']} s")
    print(f"peak resident memory: {out['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
