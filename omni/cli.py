"""The `omni` command: thin wrappers over the library; bad input -> one line on stderr, exit 2."""

from __future__ import annotations

import functools
import sys

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="omni: Context Unrolling in Omni Models, small and from scratch.")
world_app = typer.Typer(no_args_is_help=True, help="The procedural 3D world: sample tasks, draw sheets.")
app.add_typer(world_app, name="world")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluation: the generation checker, metrics, ablations.")
app.add_typer(eval_app, name="eval")
tokens_app = typer.Typer(no_args_is_help=True, help="Tokenizers: build the text tokenizer, train the visual one.")
app.add_typer(tokens_app, name="tokens")


def user_errors(fn):
    """Turn the library's ValueError / OSError into `error: ...` and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, OSError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _csv(s: str | None) -> tuple[str, ...] | None:
    return None if s is None else tuple(x.strip() for x in s.split(",") if x.strip())


def _world_config(size: int, shapes: str | None, colors: str | None, min_objects: int, max_objects: int,
                  shadows: bool, revision: int = 1):
    from omni.world import SceneOptions, WorldConfig
    from omni.world.scene import COLORS, SHAPES

    for option, given in (("--shapes", shapes), ("--colors", colors)):  # "," or "" meant every one, silently
        if given is not None and not _csv(given):
            raise ValueError(f"{option} must name at least one, comma-separated (leave it out for all), got {given!r}")
    opts = SceneOptions(shapes=_csv(shapes) or SHAPES, colors=_csv(colors) or COLORS,
                        min_objects=min_objects, max_objects=max_objects)
    return WorldConfig(size=size, scene=opts, shadows=shadows, revision=revision)


def _tasks(task: str) -> list[str]:
    from omni.world import TASKS

    if task == "all":
        return list(TASKS)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}, all")
    return [task]


def _rate(x: float | None) -> str:
    """A fraction for the terminal, "-" where there is none."""
    return "-" if x is None else f"{x:.3f}"


def _positive(name: str, n: float) -> None:
    if not n > 0 or n == float("inf"):  # NaN fails the comparison
        raise ValueError(f"{name} must be positive, got {n}")


def _can_listen(host: str, port: int) -> None:
    """A ValueError unless `host` resolves to an address, an OSError unless this process may bind `port` on it."""
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"--host {host!r} is not an address to listen on ({getattr(e, 'strerror', None) or e})") \
            from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _threads(threads: int) -> None:
    """Check --threads (0: torch's default)."""
    if threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's default), got {threads}")


def _image_file(option: str, path: str) -> None:
    """An output image path: a file name with an image extension (not a directory)."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir() or p.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise ValueError(f"{option} must be an image file name (.png, .jpg, .webp), got {path!r}")


ShapesOpt = typer.Option(None, help="Comma-separated shapes to use (default: all).")
ColorsOpt = typer.Option(None, help="Comma-separated colours to use (default: all).")


def _revision_option(name: str = "--revision"):
    return typer.Option(1, name, help="The world's revision: 1 (what the shipped model was trained and scored on), "
                                      "2 (docs/world_audit.md's mends: camera_object answers behind the "
                                      "camera too, t2i prompts not skewed by redrafts, grammar) or 3 (2 with "
                                      "vqa's left_right step read off the thought's inventory).")


@world_app.command("sample")
@user_errors
def world_sample(
    task: str = typer.Option(..., help="vqa, t2i, spatial, depth, pose, nvs, video, edit or all"),
    n: int = typer.Option(8, help="Number of examples."),
    seed: int = typer.Option(0, help="First seed (see the README for the split ranges)."),
    size: int = typer.Option(32, help="Image side in pixels (8..1024)."),
    out: str = typer.Option(..., help="Output directory."),
    shapes: str = ShapesOpt,
    colors: str = ColorsOpt,
    min_objects: int = typer.Option(1),
    max_objects: int = typer.Option(6),
    shadows: bool = typer.Option(False, help="Cast shadows."),
    revision: int = _revision_option(),
):
    """Write examples as PNG + .npy (depth in metres, instance ids) + examples.jsonl, and the world's
    config (size, scene options, revision) as world.json."""
    from omni.world import sample
    from omni.world.export import ensure_writable_dir, save_examples

    _positive("--n", n)
    cfg = _world_config(size, shapes, colors, min_objects, max_objects, shadows, revision)
    tasks = _tasks(task)
    ensure_writable_dir(out)
    examples = [ex for t in tasks for ex in sample(t, range(seed, seed + n), cfg)]
    save_examples(examples, out, world=cfg)
    typer.echo(f"wrote {len(examples)} examples to {out}")


@world_app.command("sheet")
@user_errors
def world_sheet(
    task: str = typer.Option("all", help="A task name or all."),
    n: int = typer.Option(2, help="Examples per task."),
    seed: int = typer.Option(0, help="First seed."),
    size: int = typer.Option(32, help="Image side in pixels (8..1024)."),
    out: str = typer.Option("world_sheet.png", help="Output PNG."),
    shapes: str = ShapesOpt,
    colors: str = ColorsOpt,
    min_objects: int = typer.Option(1),
    max_objects: int = typer.Option(6),
    shadows: bool = typer.Option(False, help="Cast shadows."),
    revision: int = _revision_option(),
):
    """One contact sheet: each example's views, depth and texts."""
    from omni.world import sample
    from omni.world.export import contact_sheet

    _positive("--n", n)
    _image_file("--out", out)
    cfg = _world_config(size, shapes, colors, min_objects, max_objects, shadows, revision)
    examples = [ex for t in _tasks(task) for ex in sample(t, range(seed, seed + n), cfg)]
    path = contact_sheet(examples, out)
    typer.echo(f"wrote {path}")


@eval_app.command("checker")
@user_errors
def eval_checker(
    n: int = typer.Option(2000, help="Number of t2i examples."),
    seed_start: int = typer.Option(2_000_000_000, help="First seed (default: the test split)."),
    size: int = typer.Option(32, help="Image side in pixels."),
    noise: float = typer.Option(0.0, help="Std of Gaussian noise added to the renders."),
    blur: int = typer.Option(0, help="Binomial blur radius in pixels (1 = [1,2,1]/4 per axis)."),
    blur_sigma: float = typer.Option(0.0, help="Gaussian blur sigma in pixels."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    world_revision: int = _revision_option("--world-revision"),
):
    """Validate the checker on ground-truth renders: pass rates per category with each image's own
    spec (should be high) and with a mismatched spec of the same category (should be low)."""
    import json

    from omni.eval.checker import BLUR_RADII, validate_on_world

    _positive("--n", n)
    if size < 8:
        raise ValueError(f"image size must be at least 8 px, got {size}")
    for name, v in (("--noise", noise), ("--blur-sigma", blur_sigma)):  # NaN and inf fail too
        if not 0 <= v < float("inf"):
            raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    if blur not in BLUR_RADII:  # before the renders: degrade refused it only after them, without the option's name
        raise ValueError(f"--blur must be one of {', '.join(map(str, BLUR_RADII))} (px), got {blur}")
    r = validate_on_world(n, seed_start, size, noise, blur, blur_sigma, revision=world_revision)
    if json_out:
        typer.echo(json.dumps(r))
        return
    rev = f", world revision {world_revision}" if world_revision != 1 else ""
    typer.echo(f"checker on {n} ground-truth t2i renders, seeds {seed_start}..{seed_start + n - 1}, {size}px, "
               f"noise {noise}, blur radius {blur}, blur sigma {blur_sigma}{rev}")
    typer.echo(f"{'category':<15}{'n':>6}{'own spec':>10}{'mismatched':>12}")
    mm = r["mismatched"]["categories"]

    def pct(x: float | None) -> str:  # "-": no mismatched spec of the category (or none at all)
        return "-" if x is None else f"{x:.1%}"

    for cat, v in r["matched"]["categories"].items():
        typer.echo(f"{cat:<15}{v['n']:>6}{pct(v['pass']):>10}{pct(mm.get(cat, {}).get('pass')):>12}")
    typer.echo(f"{'overall':<15}{'':>6}{pct(r['matched']['overall']['pass']):>10}"
               f"{pct(r['mismatched']['overall']['pass']):>12}")


@tokens_app.command("build-text")
@user_errors
def tokens_build_text(
    out: str = typer.Option("omni/tokens/tokenizer.json", help="Where to write tokenizer.json."),
):
    """Train the byte-level BPE text tokenizer on the world's language (deterministic). The shipped
    tokenizer.json came from the world of commit SHIPPED_CORPUS_COMMIT (omni.tokens.text); a different
    one is never written over it, since every checkpoint's embeddings index it."""
    from pathlib import Path

    from omni.tokens.text import (
        CORPUS_SEEDS,
        DEFAULT_PATH,
        SHIPPED_CORPUS_COMMIT,
        VOCAB_SIZE,
        train_tokenizer,
        world_corpus,
    )
    from omni.world.export import ensure_writable_dir

    if Path(out).is_dir():  # before the corpus is built: saving into a directory failed only after it
        raise ValueError(f"--out {out} is a directory: give the file to write, e.g. {Path(out) / 'tokenizer.json'}")
    ensure_writable_dir(Path(out).parent)  # before the corpus is built, not after
    corpus = world_corpus()
    tok = train_tokenizer(corpus)
    shipped = Path(out).resolve() == DEFAULT_PATH.resolve() and DEFAULT_PATH.is_file()
    if shipped and tok.to_str(pretty=True).encode() != DEFAULT_PATH.read_bytes():  # the bytes save() writes
        raise ValueError(f"this world's texts give another tokenizer than the shipped one, which came from "
                         f"commit {SHIPPED_CORPUS_COMMIT[:10]}'s world and which every checkpoint's "
                         "embeddings index; write it elsewhere with --out")
    tok.save(out)
    typer.echo(f"wrote {out}: vocabulary {VOCAB_SIZE}, {len(corpus)} texts from seeds {CORPUS_SEEDS}")


@tokens_app.command("train-visual")
@user_errors
def tokens_train_visual(
    out: str = typer.Option(..., help="Output directory (visual_tokenizer.safetensors + .json)."),
    steps: int = typer.Option(3000),
    batch: int = typer.Option(64),
    lr: float = typer.Option(2e-3),
    seed: int = typer.Option(0),
    size: int = typer.Option(32, help="Image side in pixels."),
    codebook: int = typer.Option(256, help="Codebook size."),
    threads: int = typer.Option(0, help="torch threads (0: torch's default)."),
):
    """Train the VQ visual tokenizer on world renders; report held-out PSNR and codebook use."""
    import json

    import torch

    from omni.tokens.visual import VQConfig, train_visual_tokenizer
    from omni.world.export import ensure_writable_dir

    _positive("--steps", steps)
    _positive("--batch", batch)
    _positive("--lr", lr)
    _threads(threads)
    vq_cfg = VQConfig(image_size=size, codebook_size=codebook)
    vq_cfg.validate()  # before any rendering
    from pathlib import Path

    if (Path(out) / "visual_tokenizer.safetensors").exists():  # every model trained on it reads its codes
        raise ValueError(f"{out} already holds a visual tokenizer, which the checkpoints trained on it need: "
                         "write the new one into another directory (or remove the old one first)")
    ensure_writable_dir(out)
    if threads:
        torch.set_num_threads(threads)
    model, report = train_visual_tokenizer(vq_cfg, steps, batch, lr, seed,
                                           log=lambda m: typer.echo(m, err=True))
    model.save(out, {"report": report})
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "history"}))


DEFAULT_CHECKPOINT = "checkpoints/omni-tiny"


def _device_option():
    return typer.Option("cpu", help="Where the model runs: cpu, cuda or cuda:N.")


def _load(checkpoint: str, device: str):
    """The checkpoint's model on `device` (an unavailable device is a ValueError before loading)."""
    from omni.model import OmniModel

    return OmniModel.from_pretrained(checkpoint, device=device)


def _visual_temperature_option():
    return typer.Option(None, help="Temperature of generated visual tokens (default 1.0; 0: greedy, "
                                   "which collapses onto one code with the shipped checkpoint).")


def _visual_top_k_option():
    return typer.Option(None, help="Sample visual tokens among the k likeliest codes (default 16; 0: all).")


# the engine's defaults (omni.unroll.engine.FLOW_STEPS, CFG_SCALE), written here so that the command
# line loads without torch; tests/test_cli.py checks they agree
def _cfg_scale_option():
    return typer.Option(3.0, help="Classifier-free guidance scale for generated images.")


def _flow_steps_option():
    return typer.Option(20, help="Euler steps of the flow sampler.")


def _flow_shift_option():
    return typer.Option(1.0, help="Shift the flow sampler's steps toward pure noise (1: uniform).")


def _flow_start_option():
    return typer.Option(1.0, help="nvs, video, edit: start the flow at this noise level from the input image "
                                  "(SDEdit; 1: from pure noise).")


def _flow(cfg_scale: float, flow_steps: int, flow_shift: float, flow_start: float = 1.0) -> dict:
    """Engine keyword arguments for the image sampler's options, checked before any model loads."""
    _positive("--flow-steps", flow_steps)
    from omni.model.batch import MIN_SHIFT

    if not MIN_SHIFT <= flow_shift < float("inf"):
        raise ValueError(f"--flow-shift must be >= {MIN_SHIFT:g}, got {flow_shift}")
    if not 0 <= cfg_scale < float("inf"):
        raise ValueError(f"--cfg-scale must be >= 0, got {cfg_scale}")
    if not 0 < flow_start <= 1:
        raise ValueError(f"--flow-start must be in (0, 1], got {flow_start}")
    return {"cfg_scale": cfg_scale, "flow_steps": flow_steps, "flow_shift": flow_shift, "flow_start": flow_start}


def _sampling(temperature: float, top_k: int, visual_temperature: float | None, visual_top_k: int | None) -> dict:
    """Engine keyword arguments for the sampling options (visual None: the engine's default), checked
    before any model loads."""
    flags = {"--temperature": temperature, "--top-k": top_k, "--visual-temperature": visual_temperature,
             "--visual-top-k": visual_top_k}
    bad = [f for f, v in flags.items() if v is not None and not 0 <= v < float("inf")]
    if bad:
        raise ValueError(f"{' and '.join(bad)} must be >= 0")
    kw = {"temperature": temperature, "top_k": top_k, "visual_temperature": visual_temperature,
          "visual_top_k": visual_top_k}
    return {k: v for k, v in kw.items() if v is not None}


def _sampling_seeds(text: str) -> list[int]:
    """--seed: one sampling seed or several, comma-separated, each an integer in [0, 2^64), none twice."""
    parts = _csv(text) or ()
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--seed must be integers, comma-separated, got {text!r}") from None
    if not seeds or any(not 0 <= s < 2**64 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seed must be integers in [0, 2^64), none twice, got {text!r}")
    return seeds


def _eval_task_command(task: str):
    def command(
        checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, help="Checkpoint directory."),
        device: str = _device_option(),
        n: int = typer.Option(100, help="Number of held-out examples."),
        seed_start: int = typer.Option(2_000_000_000, help="First seed (default: the test split)."),
        plan: str = typer.Option("direct", help="A plan: a row name of the task, 'default', or primitives 'a,b'."),
        seed: str = typer.Option("0", help="Sampling seed; several, comma-separated (0,1,2), score each example "
                                           "as its mean over them (the image tasks' noise: docs/experiments.md)."),
        cfg_scale: float = _cfg_scale_option(),
        flow_steps: int = _flow_steps_option(),
        flow_shift: float = _flow_shift_option(),
        flow_start: float = _flow_start_option(),
        visual_temperature: float | None = _visual_temperature_option(),
        visual_top_k: int | None = _visual_top_k_option(),
        pose_decoder: str = typer.Option("text", help="Where the model has a pose head: decode its pose texts' "
                                                      "digits ('text') or write the head's numbers ('head')."),
        pose_motions: str = typer.Option("orbit", help="pose only: the pairs' camera motions, comma-separated: "
                                                       "orbit (the benchmark) and/or move_turn (moved like "
                                                       "the spatial task's second view)."),
        world_revision: int = _revision_option("--world-revision"),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ):
        import json

        from omni.eval.run import eval_world, evaluate_seeds, held_out
        from omni.unroll.engine import POSE_DECODERS, Engine, parse_plan
        from omni.world.tasks import split_of_range

        _positive("--n", n)
        seeds = _sampling_seeds(seed)
        parse_plan(task, plan)  # a bad plan fails before the model loads
        split_of_range(seed_start, n)
        motions = eval_world(task, _csv(pose_motions), revision=world_revision).pose_motions  # before the model loads
        sampling = _sampling(0.0, 0, visual_temperature, visual_top_k) | _flow(cfg_scale, flow_steps, flow_shift,
                                                                               flow_start)
        if pose_decoder not in POSE_DECODERS:  # checked before the model loads
            raise ValueError(f"--pose-decoder must be {' or '.join(POSE_DECODERS)}, not {pose_decoder!r}")
        model = _load(checkpoint, device)
        if pose_decoder == "head" and not model.cfg.pose_head:  # the engine decoded text, and the output said nothing
            raise ValueError(f"--pose-decoder head: {checkpoint} has no pose head (its pose texts are decoded "
                             "as text); leave the option out")
        r = evaluate_seeds(lambda s: Engine(model, seed=s, pose_decoder=pose_decoder, **sampling), seeds, task, n,
                           seed_start, plan, log=None if json_out else lambda m: typer.echo(m, err=True),
                           pose_motions=motions, world_revision=world_revision)
        if json_out:
            typer.echo(json.dumps(r))
            return
        over = f", each the mean over sampling seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else ""
        typer.echo(f"{task} on {n} {held_out(r['split'])} examples (seeds {seed_start}..{over}), "
                   f"plan {r['plan'] or 'direct'}:")
        for k, v in r["metrics"].items():
            typer.echo(f"  {k:<10} {v['mean']:.4f}  95% CI [{v['lo']:.4f}, {v['hi']:.4f}]")
        if r.get("pose_fit", {}).get("corr"):
            f = r["pose_fit"]
            typer.echo("  each number against the truth (correlation; predicted mean ± sd | true mean ± sd):")
            for i, name in enumerate(f["numbers"]):
                c = "  —  " if f["corr"][i] is None else f"{f['corr'][i]:+.2f}"
                typer.echo(f"    {name}  {c}   {f['pred_mean'][i]:+.3f} ± {f['pred_std'][i]:.3f} | "
                           f"{f['true_mean'][i]:+.3f} ± {f['true_std'][i]:.3f}")

    command.__name__ = f"eval_{task}"
    command.__doc__ = f"Run a checkpoint on held-out {task} examples; metrics with 95% intervals."
    return user_errors(command)


for _task in ("vqa", "t2i", "spatial", "depth", "pose", "nvs", "video", "edit"):
    eval_app.command(_task)(_eval_task_command(_task))


@eval_app.command("context-use")
@user_errors
def eval_context_use(
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, help="Checkpoint directory."),
    device: str = _device_option(),
    task: str = typer.Option("t2i", help="t2i (the generator's flow loss), vqa, spatial or depth (the output)."),
    n: int = typer.Option(100, help="Held-out examples."),
    seed_start: int = typer.Option(2_000_000_000, help="First seed (default: the test split)."),
    t: str = typer.Option(None, help="t2i only: noise levels, comma-separated (1: pure noise) "
                                     "[default: 0.5,0.8,0.95]."),
    vqa_thought: str = typer.Option("inventory", help="vqa only: the world's thought the model's own is compared "
                                                      "with: inventory (the world's default), focused or measured "
                                                      "(for a model trained with that --vqa-thought)."),
    world_revision: int = _revision_option("--world-revision"),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Does the model use each context? Its output given the world's true contexts (as in training)
    against none: for t2i the generator's teacher-forced flow loss given the true short thought,
    layout text and visual codes (same targets and noise), and the rollout's visual codes given the
    true short thought and layout text; for vqa / spatial the answer's greedy
    correctness and loss given the true thought, pose text and views; for depth the depth map given
    the true captions and visual codes."""
    import json

    from omni.eval.context_use import ANSWER_TASKS, IMAGES, STEP_NAMES, check_noise_levels, context_use
    from omni.eval.run import eval_world
    from omni.world.tasks import split_of_range

    _positive("--n", n)
    split_of_range(seed_start, n)
    if task != "t2i" and task not in ANSWER_TASKS:
        raise ValueError(f"--task must be t2i or one of {', '.join(ANSWER_TASKS)}, got {task!r}")
    eval_world(task, vqa_thought=vqa_thought, revision=world_revision)  # checked before the model loads
    ts = None
    if t is not None:
        if task != "t2i":
            raise ValueError("--t (noise levels) applies to --task t2i only")
        try:
            ts = [float(x) for x in t.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--t must be numbers separated by commas, got {t!r}") from None
        check_noise_levels(ts, "--t: noise levels")  # before the model loads, not after
    res = context_use(_load(checkpoint, device), task, n, seed_start, ts, vqa_thought=vqa_thought,
                      world_revision=world_revision)
    tables, extra = res["tables"], ({"by_group": res["by_group"]} if res["by_group"] else {})
    for key in ("thought_steps", "thought_steps_views"):
        if key in res:
            extra[key] = res[key]
    if json_out:
        typer.echo(json.dumps({"checkpoint": checkpoint, "task": task, "n": n, "seed_start": seed_start,
                               **({"world_revision": world_revision} if world_revision != 1 else {}),
                               "tables": {k: v.to_json() for k, v in tables.items()}, **extra}))
    else:
        typer.echo("\n".join(v.markdown() for v in tables.values()))
        for g, rows in extra.get("by_group", {}).items():
            typer.echo(f"{g} (n = {next(iter(rows.values()))['n']}): " + ", ".join(
                f"{name} " + " / ".join(f"{v:.3f}" for k, v in r.items() if k != "n") for name, r in rows.items()))
        if "thought_steps" in extra and task == "vqa":
            st = extra["thought_steps"]
            for im in (im for im in IMAGES if im in st):
                typer.echo(f"the true thought, piece by piece, {im} (teacher-forced): " + ", ".join(
                    f"{k} {v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]" for k, v in st[im].items()))
            typer.echo("chance: " + ", ".join(f"{k} {v:.3f}" for k, v in st["chance"].items()))
            for im, by_truth in st["yes_no"].items():
                typer.echo(f"yes / no answers stated after the true thought, {im}: " + "; ".join(
                    f"true {t}: " + ", ".join(f"{said} {k}" for said, k in sorted(c.items()))
                    for t, c in sorted(by_truth.items())))
        elif "thought_steps" in extra:
            for key, where in (("thought_steps", ""), ("thought_steps_views", " after the true pose text and views")):
                st = extra[key]
                typer.echo(f"the true thought{where}, step by step (teacher-forced): " + ", ".join(
                    f"{k} {st[k]['mean']:.3f} [{st[k]['lo']:.3f}, {st[k]['hi']:.3f}]" for k in STEP_NAMES)
                    + "; letters stated: " + ", ".join(f"{c} {k}" for c, k in st["letters"].items()))
                for q, v in st["verdicts"].items():
                    typer.echo(f"verdicts{where}, {q}: said yes to {_rate(v['said_yes_if_match'])} of "
                               f"{v['n_match']} matches and {_rate(v['said_yes_if_mismatch'])} of "
                               f"{v['n_mismatch']} mismatches; match above mismatch at the same place "
                               f"{_rate(v['auc'])} (0.5: no comparison), over all places {_rate(v['pooled_auc'])}")


@eval_app.command("readout")
@user_errors
def eval_readout(
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, help="Checkpoint directory."),
    device: str = _device_option(),
    train: int = typer.Option(1000, help="Training examples for the probes (train seeds from --train-start)."),
    train_start: int = typer.Option(0, help="First training seed."),
    n: int = typer.Option(500, help="Held-out examples the probes are scored on."),
    seed_start: int = typer.Option(2_000_000_000, help="First held-out seed (default: the test split)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    world_revision: int = _revision_option("--world-revision"),
):
    """What the hidden states carry, layer by layer: linear probes, fit on training seeds and scored
    on held-out ones, of the image tokens' covering object (colour, shape, size) and of each word
    the VQA thought lists, at the token that predicts it, teacher-forced on the world's true thought."""
    import json

    from omni.eval.readout import check_seeds, readout, readout_markdown
    from omni.eval.run import eval_world

    check_seeds(train, n, train_start, seed_start)  # before the model loads
    eval_world("vqa", revision=world_revision)
    res = readout(_load(checkpoint, device), train, n, train_start, seed_start, revision=world_revision)
    if json_out:
        typer.echo(json.dumps({"checkpoint": checkpoint, **res}))
    else:
        typer.echo(readout_markdown(res), nl=False)


@eval_app.command("gradients")
@user_errors
def eval_gradients(
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, help="Checkpoint directory."),
    device: str = _device_option(),
    task_weights: str = typer.Option("", help='JSON of task weights over the defaults, e.g. \'{"pose": 4}\'.'),
    form_weights: str = typer.Option("", help='JSON of form weights per task, as `omni train` takes them.'),
    pose_motions: str = typer.Option("orbit", help="The pose task's camera motions, comma-separated."),
    batches: int = typer.Option(3, help="Batches (steps 0, 1, ...) the norms are averaged over."),
    rows: int = typer.Option(4, help="Rows per batch."),
    row_len: int = typer.Option(1024, help="Tokens per row."),
    data_seed: int = typer.Option(0, help="The mixture's data seed."),
    all_params: bool = typer.Option(False, "--all-params", help="Norms over every parameter, not only the "
                                    "transformer layers' (the weights every task shares)."),
    model: str = typer.Option("", help='JSON of loss weights to measure with instead of the checkpoint\'s, '
                              'e.g. \'{"w_pose": 1}\'.'),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Which loss moves the shared weights: each weighted loss term's gradient norm on the mixture's
    batches, and on each task's alone. (A term ten times another's need not take the shared weights
    from it: on the CPU, pose's at ten times the text's did not slow VQA; docs/experiments.md, "Is it the loss
    weights?".)"""
    import json

    from omni.train import MixtureConfig
    from omni.train.gradients import WEIGHTS, gradients_markdown, loss_gradients

    mix = MixtureConfig(data_seed=data_seed, rows=rows, row_len=row_len, pose_motions=_csv(pose_motions),
                        **MixtureConfig.weights(task_weights, form_weights))
    try:
        loss_w = json.loads(model) if model else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"--model is not JSON ({e.msg}): {model!r}") from None
    if not isinstance(loss_w, dict) or set(loss_w) - set(WEIGHTS.values()):
        raise ValueError(f"--model takes a JSON object of loss weights ({', '.join(WEIGHTS.values())}), got {model!r}")
    for k, v in loss_w.items():  # before the model loads
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
            raise ValueError(f"--model: loss weight {k} must be a finite number >= 0, got {v!r}")
    if batches < 1:  # loss_gradients refused it only after the model loaded
        raise ValueError(f"--batches must be >= 1, got {batches}")
    m = _load(checkpoint, device)
    for k, v in loss_w.items():
        setattr(m.cfg, k, float(v))
    res = loss_gradients(m, mix, batches=batches, trunk=not all_params)
    if json_out:
        typer.echo(json.dumps({"checkpoint": checkpoint, **res}))
    else:
        typer.echo(gradients_markdown(res), nl=False)


@eval_app.command("steps")
@user_errors
def eval_steps(
    run: str = typer.Option(None, help="A training run directory: every complete step-N/ checkpoint is scored."),
    out: str = typer.Option(..., help="Output directory: step-N/TASK.json (reused when present), "
                                      "scores_by_step.json and .png."),
    tasks: str = typer.Option("vqa,spatial,depth,pose,t2i", help="Tasks, comma-separated; spatial-thought "
                                                              "scores the spatial thought's steps (thought_steps)."),
    n: int = typer.Option(500, help="Held-out examples per task."),
    n_t2i: int = typer.Option(200, help="Held-out examples for t2i (slower: 20 guided flow steps each)."),
    seed_start: int = typer.Option(2_000_000_000, help="First seed (default: the test split)."),
    also: str = typer.Option("", help="More points, STEP=MODEL_DIR comma-separated (e.g. the shipped model "
                                      "at its last step: 3000=checkpoints/omni-tiny)."),
    world_revision: int = _revision_option("--world-revision"),
):
    """How a run's held-out scores grew with its steps: each checkpoint's EMA weights (exported as the
    shipped model is) scored with the direct plan, as `omni eval TASK` scores them."""
    from omni.eval.steps import scores_by_step, steps_markdown

    names = list(_csv(tasks) or ())
    _positive("--n", n)
    _positive("--n-t2i", n_t2i)
    extra = {}
    for item in _csv(also) or ():
        step, sep, path = item.partition("=")
        if not sep or not step.strip().isdigit():
            raise ValueError(f"--also takes STEP=MODEL_DIR, got {item!r}")
        extra[int(step)] = path.strip()
    if run is None and not extra:
        raise ValueError("give --run (a training run) or --also STEP=MODEL_DIR")
    r = scores_by_step(run, out, names, n, {"t2i": n_t2i}, seed_start, extra,
                       log=lambda m: typer.echo(m, err=True), world_revision=world_revision)
    typer.echo(steps_markdown(r), nl=False)
    typer.echo(f"wrote {out}/scores_by_step.json, .md and .png")


@eval_app.command("compare")
@user_errors
def eval_compare(
    outputs: list[str] = typer.Argument(..., help="Two or more `omni eval TASK --json` output files of one task "  # noqa: B008
                                                  "on the same examples (the first is the reference), or two "
                                                  "or more `omni ablate` <task>_scores.json files."),
    names: str = typer.Option(None, help="Comma-separated row names (default: the file names)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Compare `omni eval` outputs example by example (e.g. two checkpoints): each metric's mean and
    interval per output, and its Δ against the first, paired, with a 95% bootstrap interval. Given
    `omni ablate` <task>_scores.json files, the same for every row and metric of the table."""
    import json

    from omni.eval.report import compare_outputs
    from omni.io import read_json

    labels = list(_csv(names)) if names is not None else [str(p) for p in outputs]  # "" names none: refused below
    if names is None and len(set(labels)) != len(labels):
        raise ValueError(f"a file is named twice: {', '.join(outputs)} (compare different outputs)")
    if len(labels) != len(outputs) or len(set(labels)) != len(labels):
        raise ValueError(f"--names must give {len(outputs)} distinct names, got {names!r}")
    tables = compare_outputs({k: read_json(p) for k, p in zip(labels, outputs, strict=True)})
    if json_out:
        typer.echo(json.dumps({k: t.to_json() for k, t in tables.items()}))
    else:
        typer.echo("\n".join(t.markdown() for t in tables.values()))


@eval_app.command("curves")
@user_errors
def eval_curves(
    log: list[str] = typer.Option(..., help="A run's log.jsonl; repeated, the logs of a stage's slices "  # noqa: B008
                                    "(each run from the one before's weights), plotted end to end."),
    out: str = typer.Option("training_curves.png", help="Output PNG."),
):
    """Plot a training run's loss curves from its JSONL log (or several runs' logs, chained)."""
    from omni.eval.report import chain_logs, diverged, plot_chained

    _image_file("--out", out)
    rows, starts = chain_logs(log)  # read once: the plot and the warnings see the same entries
    typer.echo(f"wrote {plot_chained(rows, starts, out)}")
    for k, s in diverged(rows).items():  # the plot marks them too
        typer.echo(f"warning: {k} is not finite from step {s} (the run diverged there)", err=True)


@app.command("ablate")
@user_errors
def ablate_command(
    task: str = typer.Argument(..., help="vqa, t2i, spatial or depth: the paper's four tables (pose, nvs, "
                                         "video and edit have one row, direct)"),
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, help="Checkpoint directory."),
    device: str = _device_option(),
    n: int = typer.Option(500, help="Held-out examples per row."),
    seed_start: int = typer.Option(2_000_000_000, help="First seed (default: the test split)."),
    out: str = typer.Option("ablations", help="Output directory (Markdown, JSON, plot)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    rows: str = typer.Option("", help="Only these rows, comma-separated (default: every row of the table)."),
    temperature: float = typer.Option(0.0, help="Sampling temperature of generated text tokens (0: greedy)."),
    top_k: int = typer.Option(0, help="Sample text tokens among the k likeliest (0: all)."),
    visual_temperature: float | None = _visual_temperature_option(),
    visual_top_k: int | None = _visual_top_k_option(),
    cfg_scale: float = _cfg_scale_option(),
    flow_steps: int = _flow_steps_option(),
    flow_shift: float = _flow_shift_option(),
    vqa_thought: str = typer.Option("inventory", help="vqa only: the world's thought the model's own is compared "
                                                      "with: inventory (the world's default), focused or measured "
                                                      "(for a model trained with that --vqa-thought)."),
    world_revision: int = _revision_option("--world-revision"),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    resume: bool = typer.Option(False, "--resume", help="Continue the unfinished run kept in OUT/TASK_partial.json "
                                "(same arguments and checkpoint): the same results as a run that never stopped."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished TASK ablation's files in OUT "
                                   "(refused otherwise: they may be hours of work)."),
):
    """The paper's rows for TASK on the same held-out examples: a table, its JSON and a plot. Progress
    is kept in OUT/TASK_partial.json until the run ends."""
    import json
    from pathlib import Path

    from omni.eval.ablate import ablate, markdown, save_ablation
    from omni.eval.run import eval_world
    from omni.unroll.engine import PLANS, Engine
    from omni.world.export import ensure_writable_dir
    from omni.world.tasks import split_of_range

    _positive("--n", n)
    _sampling_seeds(str(seed))  # the engine refused it only after the model loaded, without the option's name
    if task not in PLANS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(PLANS)}")
    eval_world(task, vqa_thought=vqa_thought, revision=world_revision)
    chosen = None
    if rows:
        names = [r.strip() for r in rows.split(",") if r.strip()]
        unknown = [r for r in names if r not in PLANS[task]]
        if unknown or not names:
            known = ", ".join(PLANS[task])
            raise ValueError(f"unknown row(s) {', '.join(unknown) or rows!r} for {task}; known: {known}")
        chosen = {r: PLANS[task][r] for r in names}
    sampling = _sampling(temperature, top_k, visual_temperature, visual_top_k) | _flow(cfg_scale, flow_steps,
                                                                                         flow_shift)
    split_of_range(seed_start, n)
    ensure_writable_dir(out)  # before hours of work, not after
    partial = Path(out) / f"{task}_partial.json"
    if partial.exists() and not resume:
        raise ValueError(f"{partial} keeps an unfinished run: --resume continues it (same arguments and "
                         "checkpoint); remove the file to start again")
    finished = Path(out) / f"{task}_scores.json"
    if finished.exists() and not overwrite and not partial.exists():  # a resumed run was let in when it began
        raise ValueError(f"{finished} holds a finished {task} ablation: choose another --out, or --overwrite to "
                         "replace its files")
    engine = Engine(_load(checkpoint, device), seed=seed, **sampling)
    r = ablate(engine, task, n, seed_start, rows=chosen, log=None if json_out else lambda m: typer.echo(m, err=True),
               partial=partial, resume=resume, vqa_thought=vqa_thought, world_revision=world_revision)
    files = save_ablation(r, out)
    partial.unlink()
    if json_out:
        tables = {k: t.to_json() for k, t in r["tables"].items()}
        typer.echo(json.dumps({k: v for k, v in r.items() if k != "tables"} | {"tables": tables}))
    else:
        typer.echo(markdown(r))
        typer.echo(f"wrote {', '.join(str(p) for p in files.values())}")


@app.command("unroll")
@user_errors
def unroll_command(
    task: str = typer.Argument(..., help="vqa, t2i, spatial, depth, pose, nvs, video or edit"),
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, help="Checkpoint directory."),
    device: str = _device_option(),
    plan: str = typer.Option("default", help="A plan: a row name, 'default', 'direct' or primitives 'a,b'."),
    seed: int = typer.Option(2_000_000_000, help="World seed of the example (default: the first test seed)."),
    out: str = typer.Option(..., help="Output directory: output, every intermediate image, trace.json."),
    world_revision: int = _revision_option("--world-revision"),
):
    """Unroll one plan on one world example; write the final output, intermediate images and trace.json."""
    from omni.eval.run import eval_world, inputs_of, score
    from omni.unroll.engine import Engine, parse_plan
    from omni.unroll.trace import write_trace
    from omni.world import sample
    from omni.world.export import ensure_writable_dir
    from omni.world.tasks import split_of

    parse_plan(task, plan)  # an unknown task or primitive fails here
    split_of(seed)  # a seed in no split is an error
    world = eval_world(task, revision=world_revision)
    ensure_writable_dir(out)
    parse_plan(task, plan, inputs_of(sample(task, [seed], world)[0]))  # a plan the example cannot feed, before the load
    model = _load(checkpoint, device)
    # the world omni eval samples, at the model's image size
    ex = sample(task, [seed], eval_world(task, size=model.cfg.image_size, revision=world_revision))[0]
    engine = Engine(model)
    res = engine.run(inputs_of(ex), plan)
    rev = {"world_revision": world_revision} if world_revision != 1 else {}
    path = write_trace(res, out, extra={"seed": seed, **rev, "score": score(ex, res)})
    typer.echo(f"{task} plan {', '.join(res.plan) or 'direct'}: output {res.output.text or res.output.kind}")
    typer.echo(f"wrote {path}")


@app.command("demo")
@user_errors
def demo_command(
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, help="Checkpoint directory."),
    device: str = _device_option(),
    out: str = typer.Option("omni_demo.png", help="Contact sheet PNG (the traces go beside it as .json)."),
    seed: int = typer.Option(2_000_000_000, help="World seed of each task's example (default: the test split)."),
    flow_steps: int = _flow_steps_option(),
    world_revision: int = _revision_option("--world-revision"),
):
    """Run every task once with its default plan: one contact sheet of inputs, context and outputs."""
    from omni.eval.demo import demo
    from omni.eval.run import eval_world
    from omni.unroll.engine import Engine
    from omni.world.tasks import split_of

    _positive("--flow-steps", flow_steps)
    _image_file("--out", out)
    split_of(seed)  # a seed in no split is an error
    eval_world("vqa", revision=world_revision)  # before the model loads
    traces = demo(Engine(_load(checkpoint, device), flow_steps=flow_steps), out, seed, revision=world_revision)
    for task, t in traces.items():
        typer.echo(f"{task:8s} " + ", ".join(f"{k} {v:.3f}" for k, v in t["score"].items()))
    typer.echo(f"wrote {out}")


@app.command("serve")
@user_errors
def serve_command(
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, help="Checkpoint directory."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    queue: int = typer.Option(8, help="Runs that may wait behind the running one (more get HTTP 429)."),
    timeout: float = typer.Option(120.0, help="Seconds a run may take from admission (then HTTP 504)."),
    flow_steps: int = _flow_steps_option(),
    cfg_scale: float = typer.Option(3.0, help="Guidance of generated images when a request gives none (1: none)."),
    artifact_ttl: float = typer.Option(900.0, help="Seconds a run's images stay available."),
    max_body_mb: float = typer.Option(8.0, help="Largest request body in MiB (HTTP 413 above)."),
    threads: int = typer.Option(0, help="torch threads (0: torch's default)."),
    device: str = typer.Option("cpu", help="Run the model on this device (cpu, cuda, cuda:N)."),
):
    """Serve the HTTP API (OpenAPI at /docs) and the page that shows the unrolled workspace (/)."""
    from omni.serve import ServeSettings, create_app

    if not 0 < port < 65536:
        raise ValueError(f"--port must lie in 1..65535, got {port}")
    _positive("--max-body-mb", max_body_mb)
    _threads(threads)
    settings = ServeSettings(max_queue=queue, timeout_s=timeout, flow_steps=flow_steps, cfg_scale=cfg_scale,
                             artifact_ttl_s=artifact_ttl,
                             max_body_bytes=int(max_body_mb * 2**20))
    settings.validate()
    _can_listen(host, port)  # before the model loads: uvicorn itself would exit 3 with a log line
    if threads:
        import torch

        torch.set_num_threads(threads)
    api = create_app(checkpoint, settings, device=device)
    import uvicorn

    typer.echo(f"omni serve: {checkpoint} on http://{host}:{port}/ (API docs: /docs)", err=True)
    uvicorn.run(api, host=host, port=port, log_level="info")


@app.command("train")
@user_errors
def train(
    ctx: typer.Context,
    out: str = typer.Option(..., help="Run directory (checkpoints step-*/, log.jsonl, train_config.json)."),
    preset: str = typer.Option("tiny", help="Model preset: tiny or small."),
    steps: int = typer.Option(None, help="Optimizer steps of the whole run (default: 1000; with --resume, the "
                                         "saved run's)."),
    resume: bool = typer.Option(False, help="Continue from the newest complete checkpoint in --out."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    lr: float = typer.Option(1e-3),
    warmup: int = typer.Option(100),
    save_every: int = typer.Option(200),
    keep: int = typer.Option(2, help="Checkpoints kept (the newest; older ones are deleted)."),
    log_every: int = typer.Option(10, help="Steps between TensorBoard scalars and the progress bar's loss and "
                                           "tokens/s (log.jsonl holds every step)."),
    workers: int = typer.Option(1, help="DataLoader worker processes making batches."),
    threads: int = typer.Option(0, help="torch threads (0: torch's default)."),
    rows: int = typer.Option(4, help="Rows per batch."),
    row_len: int = typer.Option(1024, help="Tokens per row."),
    data_seed: int = typer.Option(0),
    t_shift: float = typer.Option(1.0, help="Shift generated images' training noise levels toward pure "
                                            "noise (1: logit-normal, unshifted)."),
    edit_start: float = typer.Option(1.0, help="The noise level edits' flow starts from in training (1: pure "
                                               "noise); below 1, from the before image noised at it, the start "
                                               "that `omni eval edit --flow-start` samples from."),
    pose_motions: str = typer.Option("orbit", help="The pose task's camera motions, comma-separated: orbit "
                                                   "(the world's default) and/or move_turn (moved like the "
                                                   "spatial task's second view)."),
    vqa_thought: str = typer.Option("inventory", help="The vqa thought's shape: inventory (every object, then "
                                                      "the step: the world's default), focused (only the "
                                                      "objects the question names) or measured (the inventory "
                                                      "with each object's distance)."),
    world_revision: int = _revision_option("--world-revision"),
    task_weights: str = typer.Option("", help='JSON of task weights over the defaults, e.g. \'{"spatial": 2}\'.'),
    form_weights: str = typer.Option("", help='JSON of form weights per task (others 1, drills 0), e.g. '
                                              '\'{"spatial": {"pose": 3}}\'.'),
    ema: float = typer.Option(0.0, help="EMA decay of the weights (0: off)."),
    accum: int = typer.Option(1, help="Micro-batches accumulated per optimizer step."),
    max_minutes: float = typer.Option(None, help="Stop after this much wall time, with a checkpoint "
                                                 "(continue with --resume)."),
    fsdp: bool = typer.Option(False, help="Under torchrun: shard weights, gradients and optimizer state "
                                          "(FSDP) instead of DDP."),
    init_from: str = typer.Option("", help="Start from this checkpoint's weights (fresh optimizer and "
                                           "schedule; use another --data-seed for new batches)."),
    visual_cells: bool = typer.Option(None, "--visual-cells/--no-visual-cells",
                                      help="Visual tokens carry their grid cell's embedding (default: "
                                           "off)."),
    source_latents: bool = typer.Option(None, "--source-latents/--no-source-latents",
                                        help="nvs, edit and video also see their source image as clean "
                                             "latents (default: off)."),
    source_cond: bool = typer.Option(None, "--source-cond/--no-source-cond",
                                     help="A generated nvs, edit or video image takes its source's latent "
                                          "of each cell as an input (default: off)."),
    pair_cond: bool = typer.Option(None, "--pair-cond/--no-pair-cond",
                                   help="The second view of pose and spatial also takes the first view's patch "
                                        "of each cell as an input (default: off)."),
    pose_head: bool = typer.Option(None, "--pose-head/--no-pose-head",
                                   help="A pose head reads the six pose numbers off the <campose> token, trained "
                                        "by a regression loss beside the text's (default: off)."),
    rope_2d: bool = typer.Option(None, "--rope-2d/--no-rope-2d",
                                 help="Image tokens' rotary angles also carry their cell's row and column "
                                      "(default: off)."),
    model: str = typer.Option("{}", help='JSON of model config fields over the preset\'s, e.g. \'{"d_model": '
                                         '64}\' (the flags above set theirs).'),
):
    """Train the model natively on the whole world mixture. Under torchrun (python -m omni.train, which
    is this command) it runs DDP, or FSDP with --fsdp."""
    import json

    from omni.train import MixtureConfig, train_main
    from omni.train.loop import MODEL_FLAGS

    if steps is not None:
        _positive("--steps", steps)
    try:
        overrides = json.loads(model)
    except json.JSONDecodeError as e:
        raise ValueError(f"--model is not JSON ({e.msg}): {model!r}") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"--model must be a JSON object of model config fields, got {model!r}")
    for k, v in (("visual_cells", visual_cells), ("source_latents", source_latents), ("source_cond", source_cond),
                 ("pair_cond", pair_cond), ("pose_head", pose_head), ("rope_2d", rope_2d)):
        if v is not None:
            if overrides.get(k, v) != v:
                raise ValueError(f"{MODEL_FLAGS[k]} and --model {k} {json.dumps(overrides[k])} disagree")
            overrides[k] = v
    mixture = MixtureConfig(data_seed=data_seed, rows=rows, row_len=row_len, t_shift=t_shift,
                            edit_start=edit_start, pose_motions=_csv(pose_motions), vqa_thought=vqa_thought,
                            world_revision=world_revision,
                            **MixtureConfig.weights(task_weights, form_weights))
    # the options the command line gave: --resume compares exactly those with the saved run's
    named = {k for k in ctx.params if getattr(ctx.get_parameter_source(k), "name", "") in ("COMMANDLINE",
                                                                                           "ENVIRONMENT")}
    last = train_main(out, preset, steps, resume, device, max_minutes=max_minutes, named=named, lr=lr,
                      warmup=warmup, save_every=save_every, keep=keep, log_every=log_every, workers=workers,
                      threads=threads, ema=ema,
                      accum=accum, fsdp=fsdp, init_from=init_from, model_overrides=overrides, mixture=mixture)
    typer.echo(json.dumps(last))


def main() -> None:
    app(prog_name="omni")


if __name__ == "__main__":
    sys.exit(main())
