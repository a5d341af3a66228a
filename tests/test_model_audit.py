"""A helper's audit of omni.model and omni.tokens: each test fails on the code before its fix.

Each test names what the code did before: a wrong result without a word, or an error from deep inside
torch or numpy that did not say which argument was wrong. Valid inputs compute what they computed."""

import numpy as np
import pytest
import torch

from omni.model import KVCache, OmniConfig, OmniModel, Segment, extend, pack
from omni.model.config import TEXT, VISUAL
from omni.model.sampling import choose, generate_tokens, sample_latents
from omni.model.transformer import decode_step
from omni.tokens.image import patchify, unpatchify

SMALL = dict(d_model=64, n_layers=2, n_heads=4, max_seq=256)


def tiny(seed=0) -> OmniModel:
    torch.manual_seed(seed)
    m = OmniModel(OmniConfig(**SMALL)).eval()
    with torch.no_grad():  # adaLN-zero starts the generation expert at zero: make it matter
        for layer in m.layers:
            torch.nn.init.normal_(layer.experts[1].ada.weight, std=0.05)
    return m


def prompted(m, rows=1) -> KVCache:
    c = KVCache(m.cfg, rows=rows)
    extend(m, c, [[Segment("text", [5, 6, 7, 8])] for _ in range(rows)])
    return c


def test_extend_refuses_to_store_a_generated_image():
    """extend(store=True) put an image_gen segment's keys into the cache, where every later token saw
    them; encoded in one call, no later segment sees a generated image. The later text's hidden states
    differed by ~2 without a word. Now an error, before the cache changes; store=False + advance (what
    the sampler does) is the cached form of the one-call encoding."""
    m = tiny()
    cfg = m.cfg
    lat = torch.randn(cfg.latent_grid ** 2, cfg.latent_dim, generator=torch.Generator().manual_seed(0))
    segs = [Segment("text", [5, 6, 7]), Segment("image_gen", latents=lat, t=0.5), Segment("text", [8, 9])]
    with torch.no_grad():
        one_call = m(pack([segs], cfg))[0, -2:]
        c = KVCache(cfg)
        extend(m, c, [segs[0]])
        before = (c.length, list(c.next_pos))
        for stored in ([segs[1]], segs[1:], [[segs[1]]]):
            with pytest.raises(ValueError, match="an image_gen segment cannot be stored in the KV cache"):
                extend(m, c, stored)
        assert (c.length, list(c.next_pos)) == before
        extend(m, c, [segs[1]], store=False)
        c.advance()
        assert (extend(m, c, [segs[2]])[0][0] - one_call).abs().max() < 1e-5


def test_decode_step_refuses_ids_that_are_not_integers():
    """Float ids were truncated (5.7 decoded as token 5) and bools read as 0 / 1, silently; what pack
    refuses of a segment's ids. A list of ids failed with "'list' object has no attribute 'shape'"."""
    m = tiny()
    c = prompted(m)
    for bad in (torch.tensor([5.7]), torch.tensor([True]), torch.tensor([5.0], dtype=torch.float64)):
        with pytest.raises(ValueError, match="decode_step takes integer token ids"):
            decode_step(m, c.fork(), bad, TEXT)
    with pytest.raises(TypeError, match=r"decode_step takes its ids as a tensor of shape \(1,\), got list"):
        decode_step(m, c.fork(), [5], TEXT)
    length = c.length
    for ids in (torch.tensor([5]), torch.tensor([5], dtype=torch.int32)):
        assert decode_step(m, c.fork(), ids, TEXT).shape == (1, m.cfg.d_model)
    assert decode_step(m, c.fork(), torch.tensor([3], dtype=torch.uint8), VISUAL).shape == (1, m.cfg.d_model)
    assert c.length == length


def test_choose_refuses_negative_temperature_bad_top_k_and_bad_logits():
    """A negative temperature was read as 0 (argmax) without a word; top_k 2.5 or True failed inside
    torch.topk; 1-D logits gave a 0-d id at temperature 0 and an IndexError otherwise; NaN logits (NaN
    weights or inputs upstream) were chosen as token 0 at any temperature, a row all -inf too (greedy)."""
    lg = torch.tensor([[0.0, 5.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    for bad in (-1.0, -1e-9, float("-inf"), "1.0", None):
        with pytest.raises(ValueError, match="temperature must be a number >= 0"):
            choose(lg, bad, generator=g)
    for bad in (2.5, True, "3"):
        with pytest.raises(ValueError, match="top_k must be an integer"):
            choose(lg, 1.0, top_k=bad, generator=g)
    for t in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"logits must be a tensor \(rows, V\)"):
            choose(lg[0], t, generator=g)
        with pytest.raises(ValueError, match="logits hold NaN"):
            choose(torch.tensor([[float("nan"), 1.0]]), t, generator=g)
        for row in ([float("-inf")] * 2, [float("inf"), 1.0]):  # no choice: was token 0, or a NaN softmax
            with pytest.raises(ValueError, match="every row of logits needs a finite best token"):
                choose(torch.tensor([[0.0, 1.0], row]), t, generator=g)
    # valid inputs: as before (numpy numbers and a 0-d tensor temperature too)
    assert choose(lg).tolist() == [1] and choose(lg, 0).tolist() == [1]
    assert choose(lg, np.float64(1e-30), top_k=np.int64(2), generator=g).tolist() == [1]
    assert choose(lg, torch.tensor(1e-30), generator=g).tolist() == [1]
    masked = torch.tensor([[float("-inf"), 0.0, float("-inf")]])  # -inf masks a token: allowed
    assert choose(masked, 1.0, generator=g).tolist() == [1]


def test_generate_tokens_checks_stop_and_sampling_before_any_step():
    """stop=eos (one id, not a list) failed after the first token was computed ("argument of type
    'int' is not iterable"); a negative temperature decoded greedily. Both are errors now, before the
    cache moves; a tensor or numpy array of stop ids stops as the list does."""
    m = tiny()
    c = prompted(m)
    length = c.length
    for bad in (2, "2", [2.5], None):
        with pytest.raises(ValueError, match="stop must be a collection of integer token ids"):
            generate_tokens(m, c, 3, stop=bad)
    with pytest.raises(ValueError, match="temperature must be a number >= 0"):
        generate_tokens(m, c, 3, temperature=-0.5)
    with pytest.raises(ValueError, match="top_k must be an integer"):
        generate_tokens(m, c, 3, temperature=1.0, top_k=1.5)
    assert c.length == length
    free = generate_tokens(m, c.fork(), 6)[0]
    stop = free[2]
    want = free[:free.index(stop) + 1]
    want += [stop] * (6 - len(want))
    for ids in ([stop], (stop,), {stop}, torch.tensor([stop]), np.array([stop])):
        got = generate_tokens(m, c.fork(), 6, stop=ids)[0]
        assert got[:len(want)] == want[:len(got)] and got[-1] == stop


def test_segments_refuse_pixels_outside_the_unit_range_and_non_finite_latents():
    """uint8 pixels or floats in 0..255 were packed as patches far brighter than white, NaN pixels,
    latents, noise and sources as NaN inputs (every later hidden state NaN), all without a word; numpy
    pixels failed inside pack ("'numpy.ndarray' object has no attribute 'float'"); 2-D token ids inside
    numpy ("truth value of an array ... is ambiguous"); a noise level given as text was a TypeError, a
    fractional visual cell0 truncated into the cell indices."""
    cfg = OmniConfig(**SMALL)
    s, n, dim = cfg.image_size, cfg.latent_grid ** 2, cfg.latent_dim
    px = torch.rand(s, s, 3, generator=torch.Generator().manual_seed(0))
    nan_lat = torch.full((n, dim), float("nan"))
    bad = [
        (Segment("image_in", pixels=(px * 255).to(torch.uint8)), "image_in pixels must be float in"),
        (Segment("image_in", pixels=px * 255), r"image_in pixels must lie in \[0, 1\].*divide by 255"),
        (Segment("image_in", pixels=px - 0.5), r"image_in pixels must lie in \[0, 1\]"),
        (Segment("image_in", pixels=torch.full((s, s, 3), float("nan"))), "image_in pixels hold NaN"),
        (Segment("image_in", pixels=px.numpy()), "image_in pixels must be a torch.Tensor, got ndarray"),
        (Segment("image_in", pixels=px, pair=px * 255), r"image_in pair must lie in \[0, 1\]"),
        (Segment("image_clean", latents=nan_lat), "image_clean latents hold NaN"),
        (Segment("image_gen", latents=torch.zeros(n, dim).index_fill(0, torch.tensor([3]), float("inf")), t=0.5),
         "image_gen latents hold NaN or infinite"),
        (Segment("image_gen", latents=torch.zeros(n, dim), t=0.5, loss=True, noise=nan_lat), "image_gen noise hold"),
        (Segment("image_gen", latents=torch.zeros(n, dim), t=0.5, source=nan_lat), "image_gen source hold"),
        (Segment("text", np.array([[1, 2, 3]])), r"text token ids must be one flat sequence, got shape \(1, 3\)"),
        (Segment("image_gen", latents=torch.zeros(n, dim), t="0.5"), "noise level t must be a number in"),
        (Segment("image_gen", latents=torch.zeros(n, dim), t=float("nan")), "noise level t must be a number in"),
        (Segment("image_gen", latents=torch.zeros(n, dim), t=True), "noise level t must be a number in"),
        (Segment("visual", [1, 2], cell0=0.5), "visual cell0 must be an integer grid cell, got 0.5"),
        (Segment("visual", [1, 2], cell0=True), "visual cell0 must be an integer grid cell"),
    ]
    for seg, msg in bad:
        with pytest.raises(ValueError, match=msg):
            pack([[seg]], cfg)
    # within RANGE_TOLERANCE of [0, 1] (resampling, rounding), float64 and bf16 pixels: accepted, as before
    edge = px.clone()
    edge[0, 0, 0], edge[0, 0, 1] = -5e-4, 1 + 5e-4
    for ok in (edge, px.double(), px.bfloat16()):
        assert pack([[Segment("image_in", pixels=ok)]], cfg).patches.shape == (cfg.patch_grid ** 2, cfg.patch_dim)
    for t in (0, 1, np.float64(0.25)):  # whole numbers and numpy floats are noise levels, numpy ints cells
        pack([[Segment("image_gen", latents=torch.zeros(n, dim), t=t), Segment("visual", [1], cell0=np.int64(3))]], cfg)


def test_sample_latents_refuses_non_finite_noise_and_source():
    """NaN (or inf) in the noise or the source latents came back as an all-NaN image, silently."""
    m = tiny()
    c = prompted(m)
    shape = (1, m.cfg.latent_grid ** 2, m.cfg.latent_dim)
    nan = torch.zeros(shape).index_fill(1, torch.tensor([0]), float("nan"))
    with pytest.raises(ValueError, match="noise latents hold NaN or infinite values"):
        sample_latents(m, c.fork(), steps=1, noise=nan)
    with pytest.raises(ValueError, match="source latents hold NaN or infinite values"):
        sample_latents(m, c.fork(), steps=1, source=nan, start=0.5)
    x = sample_latents(m, c.fork(), steps=1, noise=torch.randn(shape), source=torch.randn(shape), start=0.5)
    assert torch.isfinite(x).all()


def test_patchify_refuses_patch_sizes_that_are_not_positive_integers():
    """patch 0 failed with "integer modulo by zero", a negative one inside reshape ("invalid shape
    dimension -2"), 2.0 in reshape's argument parsing (patchify) or as a token-count mismatch (unpatchify)."""
    img = torch.rand(1, 8, 8, 3)
    for bad in (0, -4, 2.0, True, None):
        with pytest.raises(ValueError, match="patch must be a positive integer"):
            patchify(img, bad)
        with pytest.raises(ValueError, match="patch must be a positive integer"):
            unpatchify(torch.rand(1, 4, 48), bad, 8, 8)
    tok = patchify(img, np.int64(4))
    assert torch.equal(unpatchify(tok, 4, 8, 8), img)


def test_save_pretrained_refuses_weights_beyond_float16(tmp_path):
    """dtype="float16" wrote a weight beyond 65504 as inf without a word, and loading the checkpoint
    then failed as "NaN or inf (a diverged run?)". Now an error naming the tensor, before the directory
    is touched (a checkpoint already there stays loadable); weights that fit still save in float16."""
    from omni.model.checkpoint import from_pretrained, save_pretrained

    m = tiny()
    save_pretrained(m, tmp_path, dtype="float16")
    ref = from_pretrained(tmp_path, with_tokenizers=False).tok_emb.weight.clone()
    assert torch.allclose(ref, m.tok_emb.weight, atol=1e-3)
    with torch.no_grad():
        m.tok_emb.weight[0, 0] = 2.0 ** 20  # beyond float16, exact in bfloat16
    with pytest.raises(ValueError, match=r"weights do not fit float16 .*\['tok_emb.weight'\]"):
        save_pretrained(m, tmp_path, dtype="float16")
    assert torch.equal(from_pretrained(tmp_path, with_tokenizers=False).tok_emb.weight, ref)
    save_pretrained(m, tmp_path, dtype="bfloat16")  # in range there
    assert from_pretrained(tmp_path, with_tokenizers=False).tok_emb.weight[0, 0] == 2.0 ** 20


def test_save_pretrained_refuses_diverged_weights_and_a_state_not_the_models(tmp_path):
    """NaN weights were written, then refused when loaded ("a diverged run?"), and a training run's
    keep-K rotation would delete good checkpoints for them; `state=` with keys or shapes not the
    model's wrote a checkpoint that failed only when loaded. Both refused before anything is written."""
    from omni.model.checkpoint import from_pretrained, save_pretrained

    m = tiny()
    save_pretrained(m, tmp_path)
    ref = {k: v.clone() for k, v in m.state_dict().items()}
    bad_states = [
        ({**ref, "tok_emb.weight": torch.full_like(ref["tok_emb.weight"], float("nan"))}, "hold NaN or inf"),
        ({k: v for k, v in ref.items() if k != "tok_emb.weight"}, r"missing \['tok_emb.weight'\]"),
        ({**ref, "extra.weight": torch.zeros(2)}, r"unknown \['extra.weight'\]"),
        ({**ref, "tok_emb.weight": ref["tok_emb.weight"][:-1]}, r"shapes differ \['tok_emb.weight'\]"),
    ]
    for state, msg in bad_states:
        with pytest.raises(ValueError, match=msg):
            save_pretrained(m, tmp_path / "new", state=state)
        assert not (tmp_path / "new").exists()
    with torch.no_grad():
        m.tok_emb.weight[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or inf \(a diverged run\?\): \['tok_emb.weight'\]"):
        save_pretrained(m, tmp_path)
    assert torch.equal(from_pretrained(tmp_path, with_tokenizers=False).tok_emb.weight, ref["tok_emb.weight"])
    save_pretrained(m, tmp_path / "full", state=ref)  # a state of the model's keys and shapes: fine
    assert torch.equal(from_pretrained(tmp_path / "full", with_tokenizers=False).tok_emb.weight, ref["tok_emb.weight"])


def test_generate_tokens_continues_a_visual_block_at_its_cell():
    """generate_tokens numbered its visual codes' grid cells from 0 whatever the cache held, so continuing
    a <vis> block whose first codes were encoded already put the new codes in the wrong cells on a
    visual_cells model (the helper's audit found it). cell0 says where the block stands: the cache then
    agrees with encoding the whole block in one segment."""
    torch.manual_seed(0)
    m = OmniModel(OmniConfig(**SMALL, visual_cells=True)).eval()
    with torch.no_grad():
        m.cell_vis.normal_(std=0.5)  # cells that matter
    head = [Segment("text", [5, 7]), Segment("visual", [1, 2, 3])]
    c = KVCache(m.cfg)
    extend(m, c, head)
    got = generate_tokens(m, c, 2, kind="visual", cell0=3)[0]
    whole = KVCache(m.cfg)
    extend(m, whole, [Segment("text", [5, 7]), Segment("visual", [1, 2, 3, *got])])  # both codes joined the cache
    assert c.length == whole.length and torch.allclose(c.last_hidden, whole.last_hidden, atol=1e-5)
    c0 = KVCache(m.cfg)
    extend(m, c0, head)
    generate_tokens(m, c0, 2, kind="visual")  # cell 0, as before: another state
    assert not torch.allclose(c0.last_hidden, whole.last_hidden, atol=1e-3)
    for bad, needle in ((-1, "cell0 must be >= 0"), (1.5, "cell0 must be an integer")):
        with pytest.raises(ValueError, match=needle):
            generate_tokens(m, c, 1, kind="visual", cell0=bad)
    with pytest.raises(ValueError, match="text has none"):
        generate_tokens(m, c, 1, cell0=2)


def test_a_half_precision_cache_needs_its_autocast():
    """KVCache(dtype=bfloat16) without torch.autocast failed deep inside attention ("Expected query, key,
    and value to have the same dtype", the helper's audit); now a ValueError that says what it needs, and
    under the matching autocast it runs as before."""
    m = tiny()
    c = KVCache(m.cfg, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="torch.bfloat16 KV cache holds what the model computes under torch.autocast"):
        extend(m, c, [Segment("text", [5, 6, 7])])
    assert c.length == 0
    with torch.autocast("cpu", dtype=torch.float16), pytest.raises(ValueError, match="without that autocast"):
        extend(m, c, [Segment("text", [5, 6, 7])])  # another autocast dtype than the cache's
    with torch.autocast("cpu", dtype=torch.bfloat16):
        extend(m, c, [Segment("text", [5, 6, 7])])
        ids = generate_tokens(m, c, 2)[0]
    assert c.length == 5 and len(ids) == 2 and torch.isfinite(c.last_hidden).all()
