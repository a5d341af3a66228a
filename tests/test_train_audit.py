"""The training code's failures made loud: a NaN loss stops a run before it spoils its weights and
checkpoints, --workers 0 keeps --threads, --row-len's check sees the sequences a source_latents model
trains on, and a checkpoint of another model or a mixture of another image size is named."""

import json
import math
import re

import pytest
import torch

import omni.train.loop
from omni.io import read_safetensors
from omni.model import preset
from omni.tokens.text import TextTokenizer
from omni.tokens.visual import VisualTokenizer
from omni.train import Mixture, MixtureConfig, TrainConfig, Trainer, Writer, train_main
from omni.train import data as train_data
from omni.train.loop import DEFAULT_VISUAL, BatchStream, tokenizer_fields

SMALL = {"d_model": 64, "n_layers": 2, "n_heads": 4}


def fast(**kw) -> dict:
    """The tiniest run: one row of 512 tokens, a 2-layer model, no worker processes, one thread."""
    return {"workers": 0, "threads": 1, "warmup": 2, "model_overrides": SMALL,
            "mixture": MixtureConfig(rows=1, row_len=512), **kw}


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def tokenizers():
    return TextTokenizer.default(), VisualTokenizer.load(DEFAULT_VISUAL)


def test_a_nan_loss_stops_the_run_before_the_update(tmp_path):
    """A step whose loss was NaN was taken: AdamW wrote NaN into every weight, training went on logging
    NaN (not JSON) and the checkpoints that followed rotated the good ones out (--keep 1 left only a NaN
    step-3). Now the run stops before that update with a FloatingPointError naming the step; the weights
    are untouched and the newest checkpoint is the good one."""
    run = tmp_path / "r"
    trainer = Trainer(TrainConfig(**fast(steps=3, save_every=1, keep=1)), run, log=quiet)
    forward = trainer.model.forward

    def diverging(b, **kw):  # the second step's loss (and so its gradients) is NaN
        out = forward(b, **kw)
        if trainer.step == 1:
            out = {**out, "loss": out["loss"] * math.nan}
        return out

    trainer.model.forward = diverging
    with pytest.raises(FloatingPointError, match=re.escape("step 2: the loss is nan (loss)")):
        trainer.run()
    assert [p.name for p in run.glob("step-*")] == ["step-0000001"]
    saved = read_safetensors(run / "step-0000001" / "model.safetensors")
    assert all(torch.equal(v, saved[k]) for k, v in trainer.model.state_dict().items())  # not updated
    lines = (run / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1 and math.isfinite(json.loads(lines[0])["loss"])


def test_workers_0_trains_on_the_threads_given():
    """With --workers 0 the batches are made in the training process, which set torch to one thread for
    good: `--workers 0 --threads 2` trained on one thread (and left the caller's process on one). The
    batches are still made on one thread (the same as a worker's), and the steps get their threads back."""
    made = []

    class Counting:
        def batch(self, i):
            made.append(torch.get_num_threads())
            return i, {}

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        steps = []
        for step, micro in BatchStream(Counting(), 0, 3, accum=2):
            steps.append((step, [i for i, _ in micro]))
            assert torch.get_num_threads() == 2  # what the training step runs on
        assert steps == [(0, [0, 1]), (1, [2, 3]), (2, [4, 5])] and made == [1] * 6
    finally:
        torch.set_num_threads(before)


def test_row_len_check_sees_the_source_latents_a_model_trains_on(tokenizers, monkeypatch):
    """The sequence lengths --row-len is checked against were cached without source_latents, which adds
    an image to every nvs, edit and video sequence: in one process, a source_latents model got a plain
    model's shorter lengths, so a row too short for its sequences passed unnoticed."""
    tok, vq = tokenizers
    monkeypatch.setattr(train_data, "_LENGTHS", {})
    mix = MixtureConfig(rows=1, row_len=512, task_weights={"nvs": 1})

    def lengths(**kw):
        return Mixture(mix, Writer(tok, vq, preset("tiny", **tokenizer_fields(tok, vq), **kw))).form_lengths(2)

    plain = lengths()
    with_latents = lengths(source_latents=True)
    train_data._LENGTHS.clear()
    assert with_latents == lengths(source_latents=True)  # what it is when computed first
    assert with_latents[("nvs", "direct")][0] > plain[("nvs", "direct")][0] + vq.cfg.grid ** 2 - 1


def test_a_checkpoint_of_another_model_is_named_on_resume(tmp_path):
    """A checkpoint whose model has a parameter this run's lacks (a pose head) loaded its weights and then
    failed in torch's optimizer with "loaded state dict contains a parameter group that doesn't match the
    size of optimizer's group", naming no file; it is now the checkpoint that cannot be resumed from."""
    other = Trainer(TrainConfig(**fast(steps=1, model_overrides={**SMALL, "pose_head": True})), tmp_path / "a",
                    log=quiet)
    other.run()
    d = tmp_path / "a" / "step-0000001"
    trainer = Trainer(TrainConfig(**fast(steps=2)), tmp_path / "b", log=quiet)
    with pytest.raises(ValueError, match=re.escape(f"{d}: a checkpoint this run cannot resume from (ValueError: "
                                                   "loaded state dict contains a parameter group")):
        trainer.load(d)


def test_a_mixture_of_another_image_size_than_its_tokenizer_is_named(tokenizers):
    """MixtureConfig(image_size=16) with the 32-pixel visual tokenizer failed at the first sequence written,
    with the encoder's "images must be (B, 32, 32, 3), got shape (1, 16, 16, 3)"."""
    tok, vq = tokenizers
    writer = Writer(tok, vq, preset("tiny", **tokenizer_fields(tok, vq)))
    with pytest.raises(ValueError, match=re.escape("the mixture's image_size 16 is not its visual tokenizer's, 32")):
        Mixture(MixtureConfig(image_size=16), writer)


def test_the_tensorboard_writer_is_closed_when_the_run_ends(tmp_path, monkeypatch):
    """The SummaryWriter was never closed, so the events its background thread had not yet written (up to
    two minutes' worth, all of a short run) could be lost when the process ended."""
    class Writer_:
        scalars, closed = [], False

        def add_scalar(self, k, v, step):
            self.scalars.append((k, step))

        def close(self):
            Writer_.closed = True

    monkeypatch.setattr(omni.train.loop, "_tensorboard", lambda out: Writer_())
    train_main(str(tmp_path / "r"), steps=1, log=quiet, **fast())
    assert ("loss", 1) in Writer_.scalars and Writer_.closed


def test_average_refuses_weights_given_as_a_string(tmp_path):
    """average(weights="12") read the string as the two weights 1 and 2."""
    from omni.serve.testing import random_tiny_checkpoint
    from omni.train import average

    a, b = random_tiny_checkpoint(tmp_path / "a", seed=0), random_tiny_checkpoint(tmp_path / "b", seed=1)
    with pytest.raises(ValueError, match="weights must be 2 finite non-negative numbers"):
        average([a, b], tmp_path / "c", weights="12")
    assert not (tmp_path / "c").exists()


def test_a_killed_runs_half_written_checkpoint_is_removed_on_resume(tmp_path):
    """A run killed while writing a checkpoint left `.tmp-step-N/` (never COMPLETE, never read) in the
    run directory for good; the next slice removes it."""
    run = tmp_path / "r"
    train_main(str(run), steps=1, save_every=1, log=quiet, **fast())
    half = run / ".tmp-step-0000007"  # a step this slice never saves (its own save clears its own tmp)
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 10)
    train_main(str(run), steps=2, save_every=1, resume=True, log=quiet, **fast())
    assert not half.exists() and (run / "step-0000002" / "COMPLETE").is_file()
