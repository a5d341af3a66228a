from pathlib import Path

import pytest
import torch

from omni.tokens.image import patchify, unpatchify
from omni.tokens.text import SPECIAL_TOKENS, TextTokenizer, train_tokenizer
from omni.tokens.visual import VisualTokenizer, VQConfig, evaluate, world_images

VISUAL_DIR = Path(__file__).resolve().parents[1] / "checkpoints" / "visual-tokenizer"


def test_text_tokenizer_roundtrip_digits_specials():
    tok = TextTokenizer.default()
    assert tok.vocab_size == 640
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.id(name) == i
    for text in ["the relative pose is 0.564 -0.000 -0.384 0.012 -1.571 3.141.",
                 "a photo of as many cubes as ((9 / 9) * 3) * 2.", "How many UNSEEN words? 12345 ünïcode"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    pieces = [tok.tk.id_to_token(i) for i in tok.encode("12 and 305")]
    assert [p.lstrip("Ġ") for p in pieces if p.lstrip("Ġ").isdigit()] == ["1", "2", "3", "0", "5"]
    assert all(len(p.lstrip("Ġ")) == 1 for p in pieces if any(c.isdigit() for c in p))
    words = tok.encode("the red cube is left of the blue sphere")
    assert len(words) == 9  # world words are single tokens
    with pytest.raises(KeyError):
        tok.id("<nonexistent>")


def test_text_tokenizer_training_is_deterministic(tmp_path):
    corpus = ["a red cube and a blue sphere.", "how many cones are there? 3", "the ground spans 4.2 m to 9.8 m."] * 20
    a, b = train_tokenizer(corpus, 300), train_tokenizer(corpus, 300)
    a.save(str(tmp_path / "a.json"))
    b.save(str(tmp_path / "b.json"))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_tokenizer_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        TextTokenizer.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{broken")
    with pytest.raises(ValueError, match="bad.json"):
        TextTokenizer.load(tmp_path / "bad.json")


def test_patchify_roundtrip():
    x = torch.rand(2, 32, 48, 3)
    p = patchify(x, 4)
    assert p.shape == (2, 8 * 12, 48)
    assert torch.equal(p[0, 1], x[0, :4, 4:8].reshape(-1))  # the second patch of the first row
    assert torch.equal(unpatchify(p, 4, 32, 48), x)
    with pytest.raises(ValueError, match="divisible"):
        patchify(torch.rand(1, 30, 32, 3), 4)
    with pytest.raises(ValueError):
        unpatchify(p, 4, 32, 32)


def test_visual_tokenizer_shapes_and_training_step():
    vq = VisualTokenizer(VQConfig(channels=16, codebook_size=64, restart_every=1))
    x = torch.rand(4, 32, 32, 3)
    codes = vq.encode(x)
    assert codes.shape == (4, 64) and codes.max() < 64
    assert vq.decode(codes).shape == (4, 32, 32, 3)
    assert vq.latents(x).shape == (4, 64, 16) and vq.decode_latents(vq.latents(x)).shape == (4, 32, 32, 3)
    out = vq(x)
    out["loss"].backward()
    assert vq.encoder[0].weight.grad.abs().sum() > 0  # straight-through reaches the encoder
    gen = torch.Generator().manual_seed(0)
    vq.restart_dead_codes(out["idx"], out["z"].detach(), gen)
    assert vq.restart_dead_codes(out["idx"], out["z"].detach(), gen) > 0  # unused codes restart
    with pytest.raises(ValueError, match="codes must"):
        vq.decode(torch.full((1, 64), 64))
    with pytest.raises(ValueError, match="images must"):
        vq.encode(torch.rand(1, 16, 16, 3))


@pytest.mark.skipif(not (VISUAL_DIR / "visual_tokenizer.safetensors").is_file(), reason="no shipped visual tokenizer")
def test_shipped_visual_tokenizer_roundtrips_held_out_renders():
    vq = VisualTokenizer.load(VISUAL_DIR)
    held = world_images((2_000_900_000, 2_000_900_040))  # test-split seeds it never saw
    rep = evaluate(vq, held)
    assert rep["psnr"] >= 27.0, rep
    assert rep["codes_used"] >= 64, rep


@pytest.mark.slow
def test_shipped_text_tokenizer_is_reproducible(tmp_path):
    """The shipped tokenizer.json is rebuilt byte for byte from the world of the commit it records
    (SHIPPED_CORPUS_COMMIT: its omni/ package, taken out of this repository's history)."""
    import os
    import subprocess
    import sys
    import tarfile

    from omni.tokens.text import DEFAULT_PATH, SHIPPED_CORPUS_COMMIT

    root = Path(__file__).resolve().parents[1]
    arch = subprocess.run(["git", "-C", str(root), "archive", SHIPPED_CORPUS_COMMIT, "omni"], capture_output=True)
    if arch.returncode != 0:
        pytest.skip(f"no git history with commit {SHIPPED_CORPUS_COMMIT[:10]} here")
    (tmp_path / "old.tar").write_bytes(arch.stdout)
    with tarfile.open(tmp_path / "old.tar") as t:
        t.extractall(tmp_path / "old", filter="data")
    out = tmp_path / "tokenizer.json"
    code = ("from omni.tokens.text import train_tokenizer, world_corpus; "
            f"train_tokenizer(world_corpus()).save({str(out)!r})")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "old", capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(tmp_path / "old")}, timeout=600)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == DEFAULT_PATH.read_bytes()
    # today's world gives another tokenizer: build-text will not write it over the shipped one
    before = DEFAULT_PATH.read_bytes()
    r = subprocess.run([sys.executable, "-m", "omni.cli", "tokens", "build-text"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2 and "write it elsewhere with --out" in r.stderr, r.stderr
    assert DEFAULT_PATH.read_bytes() == before


def test_text_decode_refuses_ids_outside_the_vocabulary():
    """The library dropped ids past the vocabulary without a word and raised an OverflowError on
    negative ones."""
    tok = TextTokenizer.default()
    ids = tok.encode("the red cube")
    assert tok.decode(ids) == "the red cube" and tok.decode(torch.tensor(ids)) == "the red cube"
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 640\), got 640 and 1 more"):
        tok.decode(ids + [640, 700])
    with pytest.raises(ValueError, match="got -1"):
        tok.decode([-1])


def test_text_tokenizer_load_names_a_foreign_file(tmp_path):
    """A tokenizer file that is not this package's (no special tokens) named no file."""
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE()).save(str(tmp_path / "foreign.json"))
    with pytest.raises(ValueError, match="foreign.json: tokenizer: special token '<pad>' must have id 0"):
        TextTokenizer.load(tmp_path / "foreign.json")


def test_visual_tokenizer_refuses_images_codes_and_latents_it_would_misread():
    """uint8 or 0..255 images, NaN pixels and NaN latents were encoded / decoded silently (NaN as
    code 0); numpy images, float or bool codes and latents of the wrong width failed deep in torch."""
    import numpy as np

    vq = VisualTokenizer(VQConfig(channels=8, codebook_size=16))
    x = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(vq.encode(x), vq.encode(x.double()))
    with pytest.raises(ValueError, match="dtype torch.uint8"):
        vq.encode((x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="lie in \\[0, 1\\], got \\[.*, 25\\d(\\.\\d+)?\\]"):  # max ~255
        vq.encode(x * 255)
    with pytest.raises(ValueError, match="finite"):
        vq.latents(torch.full((1, 32, 32, 3), float("nan")))
    with pytest.raises(ValueError, match="torch.Tensor, got ndarray"):
        vq.encode(x.numpy())
    for bad in (torch.full((1, 64), 3.0), torch.ones(1, 64, dtype=torch.bool)):
        with pytest.raises(ValueError, match="integer code indices"):
            vq.decode(bad)
    with pytest.raises(ValueError, match="got \\[3, 16\\]"):
        vq.decode(torch.tensor([[3] * 63 + [16]]))
    with pytest.raises(ValueError, match="NaN"):
        vq.decode_latents(torch.full((1, 64, 16), float("nan")))
    with pytest.raises(ValueError, match="latents must be \\(B, 64, 16\\), got shape \\(1, 64, 8\\)"):
        vq.decode_latents(torch.zeros(1, 64, 8))
    assert vq.decode_latents(vq.latents(x)).shape == (2, 32, 32, 3)
    assert np.isfinite(vq.decode(vq.encode(x)).numpy()).all()


def test_visual_tokenizer_takes_an_empty_batch():
    """No images in, no codes out (a torch reshape error before: reshape(0, -1) is ambiguous)."""
    vq = VisualTokenizer(VQConfig(channels=8, codebook_size=16))
    none = torch.zeros(0, 32, 32, 3)
    assert vq.encode(none).shape == (0, 64) and vq.latents(none).shape == (0, 64, 16)
    assert vq.decode(vq.encode(none)).shape == vq.decode_latents(vq.latents(none)).shape == (0, 32, 32, 3)
