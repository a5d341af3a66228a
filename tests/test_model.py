import json
import math

import numpy as np
import pytest
import torch

from omni.model import KVCache, OmniConfig, OmniModel, Segment, attention_mask, extend, pack, preset
from omni.model.batch import IGNORE
from omni.model.sampling import choose, generate_tokens, sample_latents

SMALL = dict(d_model=64, n_layers=2, n_heads=4, max_seq=512)


def model(seed=0, **kw) -> OmniModel:
    torch.manual_seed(seed)
    m = OmniModel(OmniConfig(**{**SMALL, **kw})).eval()
    with torch.no_grad():  # adaLN-zero starts the generation expert at zero: make it matter
        for layer in m.layers:
            torch.nn.init.normal_(layer.experts[1].ada.weight, std=0.05)
        torch.nn.init.normal_(m.final_ada.weight, std=0.05)
        torch.nn.init.normal_(m.flow_head.weight, std=0.05)
        torch.nn.init.normal_(m.depth_head.weight, std=0.05)
    return m


def mixed_sequence(cfg: OmniConfig, seed=0) -> list[Segment]:
    g = torch.Generator().manual_seed(seed)
    n_lat = cfg.latent_grid ** 2

    def txt(n):
        return torch.randint(10, cfg.text_vocab, (n,), generator=g).tolist()

    return [Segment("text", txt(5)), Segment("image_in", pixels=torch.rand(32, 32, 3, generator=g)),
            Segment("text", txt(3)),
            Segment("image_gen", latents=torch.randn(n_lat, cfg.latent_dim, generator=g), t=0.6),
            Segment("text", txt(4)), Segment("visual", torch.randint(0, cfg.codebook_size, (6,), generator=g).tolist()),
            Segment("image_clean", latents=torch.randn(n_lat, cfg.latent_dim, generator=g)), Segment("text", txt(3))]


def run_incremental(m, segs, token_by_token):
    cache = KVCache(m.cfg)
    outs = []
    for s in segs:
        if s.kind == "image_gen":
            outs.append(extend(m, cache, [s], store=False)[0][0])
            cache.advance()
        elif token_by_token and s.kind in ("text", "visual"):
            for t in s.tokens:
                outs.append(extend(m, cache, [Segment(s.kind, [t])])[0][0])
        else:
            outs.append(extend(m, cache, [s])[0][0])
    return torch.cat(outs)


@pytest.mark.parametrize("moe", [0, 3])
def test_one_call_equals_incremental(moe):
    m = model(moe_experts=moe)
    segs = mixed_sequence(m.cfg)
    with torch.no_grad():
        full = m(pack([segs], m.cfg))[0]
        for tbt in (False, True):
            inc = run_incremental(m, segs, tbt)
            assert inc.shape == full.shape
            assert (inc - full).abs().max() < 1e-4


def test_packing_rows_equal_separate_runs():
    m = model()
    seqs = [mixed_sequence(m.cfg, s) for s in range(3)]
    with torch.no_grad():
        packed = pack(seqs, m.cfg, row_len=450)  # 213 tokens each: two share a row
        assert packed.shape[0] < 3  # some sequences share a row
        h = m(packed)
        for i, seq in enumerate(seqs):
            r, off, n = packed.where[i]
            alone = m(pack([seq], m.cfg))[0]
            assert (h[r, off:off + n] - alone).abs().max() < 1e-4


def test_masks():
    m = model()
    cfg = m.cfg
    segs = mixed_sequence(cfg)
    b = pack([segs], cfg)
    gen = (b.kind[0] == 2).nonzero().squeeze(1)
    after = gen[-1] + 1
    with torch.no_grad():
        base = m(b)[0]
        # perturbing the image_gen segment leaves every later position unchanged
        b2 = pack([segs], cfg)
        b2.latents[: len(gen)] += 3.0  # the image_gen latents come first among latents
        h2 = m(b2)[0]
        assert (h2[after:] - base[after:]).abs().max() == 0
        assert (h2[gen] - base[gen]).abs().max() > 1e-3
        # perturbing a later token leaves every earlier position unchanged
        segs3 = [*segs[:-1], Segment("text", [s + 1 for s in segs[-1].tokens])]
        h3 = m(pack([segs3], cfg))[0]
        k = len(base) - len(segs[-1].tokens)
        assert (h3[:k] - base[:k]).abs().max() == 0
        assert (h3[k:] - base[k:]).abs().max() > 1e-4
    mask = attention_mask(b)[0, 0]
    img = (b.kind[0] == 1).nonzero().squeeze(1)
    assert mask[img[0], img[-1]]  # full attention within an image
    txt = (b.kind[0] == 0).nonzero().squeeze(1)
    assert not mask[txt[0], txt[1]] and mask[txt[1], txt[0]]  # causal text
    assert not mask[after:, gen].any()  # nobody after sees the generated image
    u = pack([[Segment("text", [5, 6]), Segment("image_gen", latents=torch.zeros(64, cfg.latent_dim), t=0.5,
                                                 uncond=True)]], cfg)
    mu = attention_mask(u)[0, 0]
    assert not mu[2:, :2].any() and mu[2:, 2:].all()  # unconditional: sees only itself


def test_expert_routing_gradients():
    m = model()
    cfg = m.cfg
    segs = [Segment("text", [5, 6, 7, 8], loss=True), Segment("image_in", pixels=torch.rand(32, 32, 3),
                                                              depth=torch.full((32, 32), 4.0))]
    m.train()
    m.losses(pack([segs], cfg))["loss"].backward()
    for layer in m.layers:
        for p in layer.experts[1].parameters():
            assert p.grad is None or p.grad.abs().max() == 0
        assert any(p.grad is not None and p.grad.abs().max() > 0 for p in layer.experts[0].parameters())
    for p in list(m.time_mlp.parameters()) + list(m.final_ada.parameters()) + list(m.flow_head.parameters()):
        assert p.grad is None or p.grad.abs().max() == 0


def test_targets_and_losses_are_finite():
    m = model()
    cfg = m.cfg
    g = torch.Generator().manual_seed(1)
    segs = [Segment("text", [5, 6, 7], loss=True), Segment("visual", [1, 2, 3], loss=True),
            Segment("image_gen", latents=torch.randn(64, cfg.latent_dim, generator=g), t=0.3, loss=True,
                    noise=torch.randn(64, cfg.latent_dim, generator=g))]
    b = pack([segs], cfg)
    t = b.target[0]
    assert t[0] == 6 and t[1] == 7 and t[2] == cfg.text_vocab + 1  # the last text token predicts the 1st visual
    assert t[4] == cfg.text_vocab + 3 and t[5] == IGNORE
    out = m.losses(b)
    assert all(torch.isfinite(v) for v in out.values()) and out["flow_mse"] > 0 and out["visual_ce"] > 0
    with pytest.raises(ValueError, match="noise"):
        pack([[Segment("image_gen", latents=torch.zeros(64, cfg.latent_dim), t=0.5, loss=True)]], cfg)


def test_bad_segments():
    cfg = OmniConfig(**SMALL)
    with pytest.raises(ValueError, match="unknown segment kind"):
        Segment("audio")
    with pytest.raises(ValueError, match="pixels of shape"):
        pack([[Segment("image_in", pixels=torch.zeros(16, 16, 3))]], cfg)
    with pytest.raises(ValueError, match="token ids"):
        pack([[Segment("text", [cfg.text_vocab])]], cfg)
    with pytest.raises(ValueError, match="does not fit"):
        pack([[Segment("text", list(range(50)))]], cfg, row_len=10)
    with pytest.raises(ValueError, match="preset"):
        preset("huge")


def test_a_cache_on_another_device_is_named():
    """A cache built on another device than the model's is a clear error, not torch's mixed-device one
    ("meta" stands in for a GPU here); so is decoding into it."""
    m = model()
    c = KVCache(m.cfg, device="meta")
    with pytest.raises(ValueError, match="the KV cache is on meta and the model on cpu"):
        extend(m, c, [Segment("text", [5, 6, 7])])
    c.last_hidden = torch.zeros(1, m.cfg.d_model)  # as if a prompt were encoded: the first decoded token
    with pytest.raises(ValueError, match="the KV cache is on meta"):
        generate_tokens(m, c, 2, temperature=0.0)


def test_cache_fork_and_sampling_determinism():
    m = model()
    cfg = m.cfg
    c = KVCache(cfg)
    extend(m, c, [Segment("text", [5, 6, 7, 8])])
    f = c.fork()
    a = generate_tokens(m, c, 6, temperature=0.0)
    b = generate_tokens(m, f, 6, temperature=0.0)
    assert a == b and c.length == f.length  # forks continue identically
    # forks do not leak into each other: extending one leaves the other unchanged
    f2 = c.fork()
    before = f2.k[:, :, :, :f2.length].clone()
    extend(m, c, [Segment("text", [9, 9, 9])])
    assert f2.length + 3 == c.length and torch.equal(f2.k[:, :, :, :f2.length], before)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    v1 = generate_tokens(m, c.fork(), 5, kind="visual", temperature=1.0, top_k=8, generator=g1)
    v2 = generate_tokens(m, c.fork(), 5, kind="visual", temperature=1.0, top_k=8, generator=g2)
    assert v1 == v2 and all(0 <= v < cfg.codebook_size for v in v1[0])
    x1 = sample_latents(m, c.fork(), steps=3, cfg_scale=2.0, generator=torch.Generator().manual_seed(1))
    x2 = sample_latents(m, c.fork(), steps=3, cfg_scale=2.0, generator=torch.Generator().manual_seed(1))
    assert x1.shape == (1, cfg.latent_grid ** 2, cfg.latent_dim) and torch.equal(x1, x2)
    lg = torch.tensor([[0.0, 5.0, 1.0]])
    assert choose(lg).item() == 1 and choose(lg, 1.0, top_k=1, generator=torch.Generator()).item() == 1
    # a tiny temperature overflowed logits / T to inf and multinomial failed on NaN probabilities;
    # it is now the argmax, as the limit says
    for t in (1e-30, 1e-300):
        assert choose(lg, t, generator=torch.Generator()).tolist() == [1]
        assert choose(lg, t, top_k=2, generator=torch.Generator()).tolist() == [1]


def test_flow_sampler_shift_moves_the_steps_toward_pure_noise(monkeypatch):
    import omni.model.sampling as sampling

    m = model()
    seen = []
    real = sampling.extend

    def spy(model_, cache, segs, **kw):
        seen.append(round(segs[0][0].t, 6))
        return real(model_, cache, segs, **kw)

    monkeypatch.setattr(sampling, "extend", spy)
    c = KVCache(m.cfg)
    extend(m, c, [Segment("text", [5, 6, 7])])
    g = torch.Generator().manual_seed(0)
    sample_latents(m, c.fork(), steps=4, generator=g)
    assert seen == [1.0, 0.75, 0.5, 0.25]
    seen.clear()
    sample_latents(m, c.fork(), steps=4, generator=g, flow_shift=3.0)  # t' = 3t / (1 + 2t)
    assert seen == [1.0, 0.9, 0.75, 0.5]
    for bad in (0.0, 1e-10):  # 1e-10 made the grid 0 / 0 in float32: NaN levels
        with pytest.raises(ValueError, match="flow_shift must be >= 0.001"):
            sample_latents(m, c.fork(), steps=4, flow_shift=bad)




def test_flow_sampler_rejects_bad_steps_scale_and_noise():
    """steps < 1 returned the starting noise as the image, a NaN cfg_scale NaN latents, and noise for
    two rows on a one-row cache came back as two "images" (the second never denoised): all errors now."""
    m = model()
    cfg = m.cfg
    c = KVCache(cfg)
    extend(m, c, [Segment("text", [5, 6, 7])])
    for bad, msg in ((0, "steps must be >= 1, got 0"), (-1, "steps must be >= 1, got -1"),
                     (2.5, "steps must be an integer, got 2.5"), (True, "steps must be an integer, got True")):
        with pytest.raises(ValueError, match=msg):
            sample_latents(m, c.fork(), steps=bad)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
            sample_latents(m, c.fork(), steps=2, cfg_scale=bad)
    n = cfg.latent_grid ** 2
    for shape in ((2, n, cfg.latent_dim), (n, cfg.latent_dim)):
        with pytest.raises(ValueError, match=rf"noise must be \(1, {n}, {cfg.latent_dim}\)"):
            sample_latents(m, c.fork(), steps=2, noise=torch.randn(shape))
    assert sample_latents(m, c.fork(), steps=np.int64(1), noise=torch.randn(1, n, cfg.latent_dim)).shape == (1, n, 16)


def test_choose_rejects_nan_temperature_and_negative_top_k():
    lg = torch.tensor([[0.0, 5.0, 1.0]])
    with pytest.raises(ValueError, match="temperature must be a number"):  # was multinomial's NaN error
        choose(lg, float("nan"), generator=torch.Generator())
    with pytest.raises(ValueError, match="top_k must be >= 0"):  # was "selected index k out of range"
        choose(lg, 1.0, top_k=-1, generator=torch.Generator())
    assert 0 <= choose(lg, 1.0, top_k=10, generator=torch.Generator()).item() < 3  # more than V: all of them


def test_segment_checks_noise_depth_valid_and_token_ids():
    cfg = OmniConfig(**SMALL)
    n = cfg.latent_grid ** 2
    x0 = torch.randn(n, cfg.latent_dim)
    # noise of another shape broadcast against the latents: a wrong x_t and flow target, silently
    with pytest.raises(ValueError, match="image_gen noise must be latents of shape"):
        pack([[Segment("image_gen", latents=x0, t=0.5, loss=True, noise=torch.randn(cfg.latent_dim))]], cfg)
    with pytest.raises(ValueError, match="image_in depth_valid must be"):
        pack([[Segment("image_in", pixels=torch.rand(32, 32, 3), depth=torch.rand(32, 32) + 0.1,
                       depth_valid=torch.ones(16, 16, dtype=torch.bool))]], cfg)
    # ids as a tensor or array: tensor([0]) was "no tokens" (its truth value), longer ones a numpy error
    for ids in (torch.tensor([0]), np.array([3, 4]), torch.tensor([7, 8, 9])):
        assert pack([[Segment("text", ids)]], cfg).token[0].tolist() == list(ids.tolist())
    with pytest.raises(ValueError, match="token ids must be integers"):  # 1.7 was truncated to id 1
        pack([[Segment("text", [1.7, 2])]], cfg)
    with pytest.raises(ValueError, match="has no tokens"):
        pack([[Segment("text", torch.tensor([], dtype=torch.long))]], cfg)


def test_empty_extend_and_rows_too_short_are_named():
    m = model()
    c = KVCache(m.cfg)
    with pytest.raises(ValueError, match="every cache row's list of segments is empty"):  # was an AttributeError
        extend(m, c, [[]])
    assert c.length == 0
    with pytest.raises(ValueError, match="a sequence of 4 tokens does not fit in rows of 2"):  # was numpy's
        pack([[Segment("text", [1, 2, 3, 4])]], m.cfg, row_len=2, start_pos=[0], start_seg=[0])


def test_decode_step_checks_its_ids():
    from omni.model.config import TEXT, VISUAL
    from omni.model.transformer import decode_step

    m = model()
    cfg = m.cfg
    c = KVCache(cfg, rows=2)
    extend(m, c, [[Segment("text", [1, 2])], [Segment("text", [3, 4])]])
    with pytest.raises(ValueError, match=r"one id per cache row: ids of shape \(2,\), got \(1,\)"):
        decode_step(m, c.fork(), torch.tensor([5]), TEXT)
    # a text id past the text vocabulary embedded a visual code, silently
    with pytest.raises(ValueError, match=rf"text token ids must lie in \[0, {cfg.text_vocab}\)"):
        decode_step(m, c.fork(), torch.tensor([5, cfg.text_vocab + 5]), TEXT)
    with pytest.raises(ValueError, match="visual token ids must lie"):
        decode_step(m, c.fork(), torch.tensor([-1, 0]), VISUAL)
    assert decode_step(m, c.fork(), torch.tensor([5, 6]), TEXT).shape == (2, cfg.d_model)

@pytest.mark.parametrize("moe", [0, 3])
def test_decode_step_equals_extend(moe):
    """The one-token fast path (transposed, norm-folded weights, rotary table) computes what extend
    computes for a one-token segment, for both experts, in two cache rows, and follows weight
    updates (its weight layout is rebuilt when a parameter changes)."""
    from omni.model.config import TEXT, VISUAL
    from omni.model.transformer import decode_step

    m = model(moe_experts=moe)
    c = KVCache(m.cfg, rows=2)
    extend(m, c, [[Segment("text", [5, 6, 7])], [Segment("text", [8, 9, 10])]])
    for kind, name, ids in ((TEXT, "text", [11, 12]), (VISUAL, "visual", [3, 4]), (TEXT, "text", [13, 14])):
        ref = c.fork()
        h_ref = extend(m, ref, [[Segment(name, [i])] for i in ids])[0][:, 0]
        h = decode_step(m, c, torch.tensor(ids), kind)
        assert (h - h_ref).abs().max() < 1e-5
        assert (c.k[:, :, :, :c.length] - ref.k[:, :, :, :ref.length]).abs().max() < 1e-5
        assert c.length == ref.length and c.next_pos == ref.next_pos
    with torch.no_grad():  # an in-place update (as an optimizer step does) must reach the fast path
        m.layers[0].experts[0].norm1.weight.mul_(3.0)
        m.layers[1].experts[1].qkv.weight.add_(0.1)
    for kind, name in ((TEXT, "text"), (VISUAL, "visual")):
        ref = c.fork()
        h_ref = extend(m, ref, [[Segment(name, [1])], [Segment(name, [2])]])[0][:, 0]
        assert (decode_step(m, c, torch.tensor([1, 2]), kind) - h_ref).abs().max() < 1e-5
    with pytest.raises(ValueError, match="text or visual"):
        decode_step(m, c, torch.tensor([1, 2]), 1)


def test_visual_cells():
    """With visual_cells, code i of a visual block carries cell i's embedding: the same code in
    another cell is another input; decode_step(cell=k) computes what extend computes for a segment
    starting at cell k; a rollout's codes, re-encoded as one block, give the cache decoding built.
    Without the flag the model has no such parameter (older checkpoints load unchanged)."""
    from omni.model.config import VISUAL
    from omni.model.transformer import decode_step

    assert not hasattr(model(), "cell_vis") and "cell_vis" not in model().state_dict()
    m = model(visual_cells=True)
    assert m.cell_vis.shape == (m.cfg.latent_grid ** 2, m.cfg.d_model) and m.cell_vis.abs().sum() > 0
    b = pack([[Segment("visual", [7, 7, 7], cell0=62)]], m.cfg)
    assert b.cell[0].tolist() == [62, 63, 0]  # wraps around the grid
    c = KVCache(m.cfg)
    extend(m, c, [Segment("text", [5, 6, 7])])
    h = [extend(m, c.fork(), [Segment("visual", [9], cell0=k)])[0][0, 0] for k in (0, 3)]
    assert (h[0] - h[1]).abs().max() > 1e-3
    ref = c.fork()
    h_ref = extend(m, ref, [Segment("visual", [9], cell0=3)])[0][0, 0]
    assert (decode_step(m, c.fork(), torch.tensor([9]), VISUAL, cell=3)[0] - h_ref).abs().max() < 1e-5
    roll = c.fork()
    codes = generate_tokens(m, roll, 5, kind="visual", temperature=0.0)[0]
    again = c.fork()
    extend(m, again, [Segment("visual", codes)])
    assert roll.length == again.length
    assert (roll.k[:, :, :, :roll.length] - again.k[:, :, :, :again.length]).abs().max() < 1e-5


@pytest.mark.parametrize("visual_cells", [False, True])
def test_recomputing_cache_is_the_cache_without_reuse(visual_cells):
    """RecomputingCache re-encodes its whole record before every call that reads it: the same tokens
    and latents as KVCache, every step paying for the whole context, forks independent."""
    from omni.model.cache import RecomputingCache

    m = model(visual_cells=visual_cells)
    calls = []
    run = m.run
    m.run = lambda b, *a, **kw: calls.append(b.kind.shape[1]) or run(b, *a, **kw)
    outs = []
    for cls in (KVCache, RecomputingCache):
        c = cls(m.cfg)
        extend(m, c, [Segment("text", [5, 6, 7, 8])])
        sample_latents(m, c, steps=2, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))  # one skipped position
        extend(m, c, [Segment("visual", [1, 2])])
        f = c.fork()
        calls.clear()
        txt = generate_tokens(m, c, 5, temperature=0.0)
        n_calls, lengths = len(calls), list(calls)
        vis = generate_tokens(m, f, 3, kind="visual", temperature=0.0)
        lat = sample_latents(m, c, steps=2, cfg_scale=1.0, generator=torch.Generator().manual_seed(1))
        outs.append((txt, vis, lat, c.length, c.next_pos, f.length, n_calls, lengths))
    (t1, v1, l1, n1, p1, f1, calls1, _), (t2, v2, l2, n2, p2, f2, calls2, lengths2) = outs
    assert t1 == t2 and v1 == v2 and (n1, p1, f1) == (n2, p2, f2)
    assert (l1 - l2).abs().max() < 1e-4
    # with reuse, the 5 decoding steps run no forward over the context; without, each first re-runs
    # it: the 4 prompt tokens, then (after the skipped image position) the 2 visual tokens and the
    # tokens decoded so far
    assert calls1 == 0 and lengths2 == [4, 2, 4, 3, 4, 4, 4, 5, 4, 6]


def test_save_load_identical_and_errors(tmp_path):
    from omni.tokens.text import TextTokenizer

    m = model()
    segs = mixed_sequence(m.cfg)
    m.tokenizer = TextTokenizer.default()
    m.cfg.text_vocab = m.tokenizer.vocab_size  # matches the default tokenizer's vocabulary
    m.save_pretrained(tmp_path / "ck")
    with torch.no_grad():
        ref = m(pack([segs], m.cfg))
        back = OmniModel.from_pretrained(tmp_path / "ck", with_tokenizers=False)
        assert torch.equal(back(pack([segs], m.cfg)), ref)
    cfgj = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfgj["format"] == "omni-checkpoint-v1" and cfgj["model"]["d_model"] == 64
    # sharded files load the same
    m.save_pretrained(tmp_path / "sh", max_shard_mb=0.2)
    assert len(list((tmp_path / "sh").glob("model-*.safetensors"))) > 1
    with torch.no_grad():
        assert torch.equal(OmniModel.from_pretrained(tmp_path / "sh", with_tokenizers=False)(pack([segs], m.cfg)), ref)
    # a truncated weights file: a clear error naming it
    w = tmp_path / "ck" / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        OmniModel.from_pretrained(tmp_path / "ck", with_tokenizers=False)
    w.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="model.safetensors"):
        OmniModel.from_pretrained(tmp_path / "ck", with_tokenizers=False)
    w.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        OmniModel.from_pretrained(tmp_path / "ck", with_tokenizers=False)
    # a config that does not match the weights
    m.save_pretrained(tmp_path / "mm")
    c = json.loads((tmp_path / "mm" / "config.json").read_text())
    c["model"]["d_model"] = 128
    (tmp_path / "mm" / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match="shape"):
        OmniModel.from_pretrained(tmp_path / "mm", with_tokenizers=False)
    (tmp_path / "mm" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        OmniModel.from_pretrained(tmp_path / "mm", with_tokenizers=False)


def test_save_pretrained_meta_cannot_overwrite_the_config(tmp_path):
    """meta={"model": ...} replaced the model config in config.json (a checkpoint that no longer loads),
    meta={"dtype": ...} misstated the weights' dtype: both are errors, and nothing is written."""
    m = model()
    for key in ("model", "dtype", "format"):
        with pytest.raises(ValueError, match=f"meta must not set '{key}'"):
            m.save_pretrained(tmp_path / key, meta={key: "x", "training": {}})
        assert not (tmp_path / key).exists()
    m.save_pretrained(tmp_path / "ok", meta={"training": {"step": 1}})
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["training"] == {"step": 1}
    OmniModel.from_pretrained(tmp_path / "ok", with_tokenizers=False)



def test_save_pretrained_without_tokenizers_removes_an_older_checkpoints_tokenizers(tmp_path):
    """A model without tokenizers saved over a checkpoint that had them left the old tokenizer files
    beside the new weights, and from_pretrained loaded them as this model's."""
    from omni.serve.testing import random_tiny_model

    d = random_tiny_model().save_pretrained(tmp_path / "ck")
    assert (d / "tokenizer.json").is_file() and (d / "visual_tokenizer.json").is_file()
    bare = random_tiny_model(seed=1)
    bare.tokenizer = None
    object.__setattr__(bare, "visual", None)
    bare.save_pretrained(d)
    assert not any((d / n).exists() for n in ("tokenizer.json", "visual_tokenizer.json",
                                              "visual_tokenizer.safetensors"))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        OmniModel.from_pretrained(d)
    back = OmniModel.from_pretrained(d, with_tokenizers=False)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in bare.state_dict().items())


def test_a_model_cast_to_bf16_is_a_named_error():
    """model.to(torch.bfloat16) failed deep inside the embedding (fp32 timestep features against bf16
    weights); it is a TypeError saying to keep float32 weights and use autocast."""
    m = model().to(torch.bfloat16)
    with pytest.raises(TypeError, match="float32 weights.*autocast"):
        m(pack([mixed_sequence(m.cfg)], m.cfg))


def test_cache_sizes_and_guidance_interval_are_checked():
    """KVCache(max_len=0) silently meant max_seq and a negative one failed in torch.zeros; rows 0 made a
    cache nothing could fill. sample_latents took a cfg_interval with lo > hi (or NaN), which turned
    guidance off without a word (the engine checked it, the function did not)."""
    m = model()
    assert KVCache(m.cfg).max_len == m.cfg.max_seq and KVCache(m.cfg, max_len=7).max_len == 7
    for kw, msg in (({"max_len": 0}, "KVCache max_len must be >= 1, got 0"),
                    ({"max_len": -3}, "KVCache max_len must be >= 1, got -3"),
                    ({"max_len": 2.5}, "KVCache max_len must be an integer, got 2.5"),
                    ({"rows": 0}, "KVCache rows must be >= 1, got 0"),
                    ({"rows": True}, "KVCache rows must be an integer, got True")):
        with pytest.raises(ValueError, match=msg):
            KVCache(m.cfg, **kw)
    c = KVCache(m.cfg)
    extend(m, c, [Segment("text", [5, 6, 7])])
    for bad in ((0.8, 0.2), (float("nan"), 1.0), (-0.1, 0.5), (0.0, 1.5), (0.5,), "ab"):
        with pytest.raises(ValueError, match="cfg_interval"):
            sample_latents(m, c.fork(), steps=2, cfg_scale=2.0, cfg_interval=bad)
    g = torch.Generator().manual_seed(0)
    a = sample_latents(m, c.fork(), steps=2, cfg_scale=2.0, cfg_interval=(0.0, 1.0), generator=g)
    b = sample_latents(m, c.fork(), steps=2, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)

def test_presets_sizes():
    tiny = OmniModel(preset("tiny"))
    assert 2e6 < tiny.num_params() < 15e6
    assert preset("small").d_model > preset("tiny").d_model
    und = sum(p.numel() for layer in tiny.layers for p in layer.experts[0].parameters())
    assert np.isclose(tiny.num_params(0), und)


@pytest.mark.parametrize("moe", [0, 3])
def test_bf16_autocast_losses_and_grads(moe):
    """The CUDA training path runs the model under bf16 autocast, which no machine here has run:
    the same code under the CPU's bf16 autocast must give finite losses close to fp32 and fp32
    gradients (the autocast policy differs between devices, but a dtype mismatch in the model
    — bf16 activations written into fp32 buffers, fp32 targets against bf16 heads — fails both)."""
    m = model(moe_experts=moe, moe_top_k=2 if moe else 1)
    cfg = m.cfg
    g = torch.Generator().manual_seed(2)
    segs = [Segment("text", [5, 6, 7], loss=True), Segment("image_in", pixels=torch.rand(32, 32, 3, generator=g),
                                                          depth=torch.full((32, 32), 3.0)),
            Segment("visual", [1, 2, 3], loss=True),
            Segment("image_gen", latents=torch.randn(64, cfg.latent_dim, generator=g), t=0.7, loss=True,
                    noise=torch.randn(64, cfg.latent_dim, generator=g)),
            Segment("image_clean", latents=torch.randn(64, cfg.latent_dim, generator=g)), Segment("text", [8, 9])]
    b = pack([segs, segs[:3]], cfg)
    m.train()
    ref = {k: float(v.detach()) for k, v in m.losses(b).items()}
    m.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.losses(b)
    out["loss"].backward()
    for k, v in out.items():
        v = float(v.detach())
        assert math.isfinite(v) and abs(v - ref[k]) <= 0.05 * abs(ref[k]) + 0.02, (k, v, ref[k])
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(gr.dtype == torch.float32 and torch.isfinite(gr).all() for gr in grads)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # and the sampler, as served on a GPU
        m.eval()
        cache = KVCache(cfg)
        extend(m, cache, [segs[0]])
        x = sample_latents(m, cache, steps=2, cfg_scale=3.0, generator=torch.Generator().manual_seed(0))
        ids = generate_tokens(m, cache, 3, "text", temperature=0.0)
    assert torch.isfinite(x).all() and len(ids[0]) == 3


def test_pair_cond():
    """With pair_cond, an input image's patch also takes its paired view's patch of the same cell as an
    input (Segment.pair, packed per image_in token; zeros where a segment has none): at the map's
    initial zero the hidden states are the flagless model's; once trained, changing view 1 moves view
    2's own tokens in the first layer's input, cell by cell. Bad pairs are refused."""
    cfg = OmniConfig(**SMALL)
    s, g = cfg.image_size, torch.Generator().manual_seed(0)
    v1, v2, v1b = (torch.rand(s, s, 3, generator=g) for _ in range(3))

    def seqs(first, pair):
        return [[Segment("text", [5]), Segment("image_in", pixels=first), Segment("text", [6]),
                 Segment("image_in", pixels=v2, pair=pair), Segment("text", [7, 8])]]

    assert "pair_in.weight" not in model().state_dict()
    plain, on = model(), model(pair_cond=True)
    assert on.pair_in.weight.abs().sum() == 0
    on.load_state_dict({**plain.state_dict(), "pair_in.weight": on.pair_in.weight}, strict=True)
    b = pack(seqs(v1, v1), cfg)
    n = cfg.patch_grid ** 2
    assert b.pair.shape == b.patches.shape and b.pair[:n].abs().sum() == 0 and torch.equal(b.pair[n:], b.patches[:n])
    assert (on(b) - plain(b)).abs().max() < 1e-6
    with torch.no_grad():
        torch.nn.init.normal_(on.pair_in.weight, std=0.1)
    x_a, _ = on.embed(pack(seqs(v1, v1), cfg))
    x_b, _ = on.embed(pack(seqs(v1b, v1b), cfg))
    second = slice(2 + n, 2 + 2 * n)  # view 2's tokens: they now differ with view 1, by pair_in of its patches
    d = x_a[0, second] - x_b[0, second]
    want = on.pair_in(pack(seqs(v1, v1), cfg).patches[:n]) - on.pair_in(pack(seqs(v1b, v1b), cfg).patches[:n])
    assert d.abs().max() > 1e-3 and torch.allclose(d, want, atol=1e-5)
    assert torch.equal(x_a[0, 1:1 + n], on.embed(pack(seqs(v1, None), cfg))[0][0, 1:1 + n])  # view 1's own: unchanged
    for bad, needle in ((Segment("image_in", pixels=v2, pair=v1[:4]), "pair must be pixels of shape"),
                        (Segment("image_clean", latents=torch.zeros(cfg.latent_grid ** 2, cfg.latent_dim), pair=v1),
                         "a pair is given to image_in segments only")):
        with pytest.raises(ValueError, match=needle):
            pack([[bad]], cfg)


def test_conv_stem():
    """conv_stem: each input patch also takes the features of a 3 x 3 convolution of its whole image,
    cut as the patches are (the same as convolving the image and cutting the result); at stem_in's
    initial zero the model is the stemless one, a checkpoint without the stem initialises it (its
    convolution drawn, so the first step's gradient reaches stem_in); a patch's features see its
    neighbours' pixels; images cut apart are refused; a negative stem is a config error."""
    from omni.model.checkpoint import fit_state
    from omni.tokens.image import patchify

    cfg = OmniConfig(**SMALL, conv_stem=8)
    s, g = cfg.image_size, torch.Generator().manual_seed(0)
    a, b = (torch.rand(s, s, 3, generator=g) for _ in range(2))
    seqs = [[Segment("text", [5]), Segment("image_in", pixels=a), Segment("text", [6]), Segment("image_in", pixels=b),
             Segment("text", [7, 8])]]
    plain, on = model(), model(conv_stem=8)
    assert on.stem_in.weight.abs().sum() == 0 and on.stem_conv.weight.abs().sum() > 0
    state = fit_state(plain.state_dict(), on.state_dict(), "plain", "the stem model",
                      optional=OmniModel.FEATURE_PARAMS, own_init=OmniModel.FEATURE_OWN_INIT)
    assert torch.equal(state["stem_conv.weight"], on.stem_conv.weight) and state["stem_in.weight"].abs().sum() == 0
    with pytest.raises(ValueError, match="missing \\['stem_conv.bias'"):
        fit_state(plain.state_dict(), on.state_dict(), "plain", "the stem model", optional=OmniModel.FEATURE_PARAMS)
    on.load_state_dict(state)
    bt = pack(seqs, cfg)
    assert (on(bt) - plain(bt)).abs().max() < 1e-6
    # the features, patch by patch, are the convolution of each image cut into patches
    n = cfg.patch_grid ** 2
    feats = on._stem(bt.patches, torch.arange(n).repeat(2))
    for k, img in enumerate((a, b)):
        conv = torch.nn.functional.gelu(on.stem_conv(img.permute(2, 0, 1)[None]))[0].permute(1, 2, 0)
        assert torch.allclose(feats[k * n:(k + 1) * n], patchify(conv[None], cfg.patch)[0], atol=1e-6)
    # a pixel changed moves the features of the patch beside it (the stem sees across the patch's edge)
    b2 = b.clone()
    b2[cfg.patch, 0] += 1.0  # the first pixel of the second row of patches: its neighbour above is patch 0's
    moved = on._stem(patchify(b2[None], cfg.patch)[0], torch.arange(n)) - feats[n:]
    assert moved[0].abs().max() > 1e-3 and moved[2].abs().max() < 1e-6  # patch 2: two patches away
    # a gradient step reaches stem_in, and through it the convolution, from a stemless start
    on.train()
    loss = on(bt).pow(2).mean()
    loss.backward()
    assert on.stem_in.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="whole input images"):
        on._stem(bt.patches[:n - 1], torch.arange(n - 1))
    with pytest.raises(ValueError, match="whole input images"):
        on._stem(bt.patches[:n], torch.arange(n).flip(0))
    with pytest.raises(ValueError, match="conv_stem must be 0"):
        OmniConfig(**SMALL, conv_stem=-1).validate()


def test_rope_2d():
    """rope_2d: a zero offset is 1D rotary; an image token's angles carry its cell's row and column,
    so the angle between two image tokens depends only on their positions' and cells' differences;
    text-only sequences run as without the flag, images do not; the cache still equals one call."""
    from omni.model.transformer import cell_offsets, rope_tables

    pos = torch.arange(7)[None]
    flat, zero = rope_tables(pos, 16, 1e4), rope_tables(pos, 16, 1e4, torch.zeros(1, 7, 2))
    assert all(torch.equal(a, b) for a, b in zip(flat, zero, strict=True))

    def ang(p, r, c):
        cos, sin = rope_tables(torch.tensor([p]), 16, 1e4, torch.tensor([[r, c]], dtype=torch.float32))
        return torch.atan2(sin, cos)[0]

    wrap = lambda a: torch.remainder(a + math.pi, 2 * math.pi) - math.pi  # noqa: E731
    same = wrap(ang(9, 1.5, -0.5) - ang(4, 0.5, 2.5)), wrap(ang(15, 2.5, 0.5) - ang(10, 1.5, 3.5))
    assert torch.allclose(*same, atol=1e-4)  # both: 5 positions, one row down, three columns left
    other = wrap(ang(15, 2.5, 1.5) - ang(10, 1.5, 3.5))  # two columns left: only the column frequencies move
    moved = ~torch.isclose(other, same[0], atol=1e-4)
    assert moved.tolist() == [i % 3 == 2 for i in range(8)]

    plain, on = model(), model(rope_2d=True)
    on.load_state_dict(plain.state_dict())
    segs = mixed_sequence(on.cfg)
    b = pack([segs], on.cfg)
    off = cell_offsets(b, on.cfg)[0]
    kinds = b.kind[0]
    assert off[kinds == 0].abs().sum() == 0 and off[kinds == 4].abs().sum() == 0  # text, visual: none
    first = (kinds == 1).nonzero()[0, 0]
    g = on.cfg.patch_grid
    assert off[first].tolist() == [-(g - 1) / 2] * 2 and off[first + g + 1].tolist() == [-(g - 3) / 2] * 2
    with torch.no_grad():
        text_only = pack([[Segment("text", list(range(10, 30)))]], on.cfg)
        assert torch.equal(on(text_only), plain(text_only))
        full = on(b)[0]
        assert (full - plain(b)[0]).abs().max() > 1e-3
        assert (run_incremental(on, segs, True) - full).abs().max() < 1e-4


def test_pose_head():
    """With pose_head, a text segment's pose target (Segment.pose) is packed at the segment's first
    token (the <campose> that opens a pose text) and a smooth-L1 loss trains a head on that token's
    hidden state to the target standardised by the world's pose spread, weighted by w_pose; at the
    head's initial zero nothing else changes and its gradient reaches the layers once the head is not
    zero. Bad targets are refused."""
    import torch.nn.functional as F

    from omni.world.tasks import POSE_CENTRE, POSE_SPREAD

    cfg = OmniConfig(**SMALL)
    s, g = cfg.image_size, torch.Generator().manual_seed(0)
    v1, v2 = (torch.rand(s, s, 3, generator=g) for _ in range(2))
    target = torch.tensor([1.5, -0.2, 0.3, 0.0, -0.6, 0.1])

    def seqs():
        return [[Segment("text", [5]), Segment("image_in", pixels=v1), Segment("image_in", pixels=v2),
                 Segment("text", [19, 30, 31, 32], loss=True, pose=target)],
                [Segment("text", [7, 8, 9], loss=True)]]

    plain, on = model(), model(pose_head=True)
    assert "pose_head.weight" not in plain.state_dict() and on.pose_head.weight.abs().sum() == 0
    on.load_state_dict({**on.state_dict(), **plain.state_dict()}, strict=True)
    b = pack(seqs(), cfg, row_len=200)
    first = 1 + 2 * cfg.patch_grid ** 2  # the pose text's first token, row 0
    assert b.pose_rows.tolist() == [first] and torch.equal(b.pose_target, target[None])
    assert b.token.reshape(-1)[first] == 19
    z = (target - torch.tensor(POSE_CENTRE)) / torch.tensor(POSE_SPREAD)  # the head's standardised target
    lp, lo = plain.losses(b), on.losses(b)
    assert float(lp["pose"].detach()) == 0.0 and torch.allclose(lo["pose"], F.smooth_l1_loss(torch.zeros(6), z))
    for k in ("text_ce", "depth", "flow_mse"):
        assert torch.allclose(lp[k], lo[k])
    assert torch.allclose(lo["loss"], lp["loss"] + on.cfg.w_pose * lo["pose"])
    with torch.no_grad():
        torch.nn.init.normal_(on.pose_head.weight, std=0.1)
    h = on(b).reshape(-1, cfg.d_model)[first]
    out = on.losses(b)
    assert torch.allclose(out["pose"], F.smooth_l1_loss(on.pose(h, standardised=True), z))
    assert torch.allclose(on.pose(h), on.pose(h, standardised=True) * torch.tensor(POSE_SPREAD)
                          + torch.tensor(POSE_CENTRE))
    out["pose"].backward()
    assert on.layers[0].experts[0].proj.weight.grad.abs().sum() > 0  # it shapes the hidden states
    with pytest.raises(ValueError, match="no pose head"):
        plain.pose(h)
    for bad in (Segment("text", [19, 30], pose=target[:5]), Segment("image_in", pixels=v1, pose=target)):
        with pytest.raises(ValueError, match="a pose target is given to text segments only"):
            pack([[bad]], cfg)


def test_source_cond():
    """With source_cond, a generated latent takes its source image's latent of the same cell as an
    input (Segment.source, packed per latent token; zeros where a segment has none): at the map's
    initial zero the velocity is the flagless model's, once trained the source moves it, cell by
    cell. Bad sources are refused; without the flag the model has no such parameter."""
    cfg = OmniConfig(**SMALL)
    g, n = torch.Generator().manual_seed(0), cfg.latent_grid ** 2
    x, src = torch.randn(n, cfg.latent_dim, generator=g), torch.randn(n, cfg.latent_dim, generator=g)
    ctx = [Segment("text", [5, 6, 7])]

    def velocity(m, source):
        b = pack([ctx + [Segment("image_gen", latents=x, t=0.7, source=source)]], m.cfg)
        return m.velocity(m(b)[0, 3:]), b

    assert "source_in.weight" not in model().state_dict()
    plain, on = model(), model(source_cond=True)
    assert on.source_in.weight.abs().sum() == 0  # starts at zero: changes nothing
    on.load_state_dict({**plain.state_dict(), "source_in.weight": on.source_in.weight}, strict=True)
    v0, b = velocity(on, src)
    assert torch.equal(b.source, src) and (velocity(plain, None)[0] - v0).abs().max() < 1e-6
    with torch.no_grad():
        torch.nn.init.normal_(on.source_in.weight, std=0.1)
    v1, _ = velocity(on, src)
    assert (v1 - v0).abs().max() > 1e-3 and (velocity(on, None)[0] - v0).abs().max() < 1e-6
    b = pack([ctx, [Segment("image_clean", latents=src), Segment("image_gen", latents=x, t=0.5)]], cfg)
    assert b.source.shape == b.latents.shape and b.source.abs().sum() == 0
    for bad, needle in ((Segment("image_gen", latents=x, source=src[:5]), "a source is given to image_gen"),
                        (Segment("image_clean", latents=x, source=src), "image_gen segments only")):
        with pytest.raises(ValueError, match=needle):
            pack([[bad]], cfg)


def test_flow_sampler_starts_from_the_noised_source():
    """start < 1 (SDEdit): the flow begins at t0 from (1 - t0) source + t0 noise and steps over the grid
    from start down to 0; start 1 is the plain sampler; a start near 0 keeps the source; start < 1
    without a source, or outside (0, 1], is an error."""
    import omni.model.sampling as sampling

    m = model()
    cfg = m.cfg
    c = KVCache(cfg)
    extend(m, c, [Segment("text", [5, 6, 7])])
    src = torch.randn(1, cfg.latent_grid ** 2, cfg.latent_dim, generator=torch.Generator().manual_seed(4))
    plain = sample_latents(m, c.fork(), steps=3, generator=torch.Generator().manual_seed(1))
    same = sample_latents(m, c.fork(), steps=3, generator=torch.Generator().manual_seed(1), start=1.0)
    assert torch.equal(plain, same)
    seen = []
    real = sampling.extend

    def spy(model_, cache, segs, **kw):
        seen.append((round(segs[0][0].t, 6), segs[0][0].latents.clone()))
        return real(model_, cache, segs, **kw)

    noise = torch.randn(1, cfg.latent_grid ** 2, cfg.latent_dim, generator=torch.Generator().manual_seed(2))
    sampling.extend = spy
    try:
        sample_latents(m, c.fork(), steps=4, noise=noise, source=src, start=0.5)
    finally:
        sampling.extend = real
    assert [t for t, _ in seen] == [0.5, 0.375, 0.25, 0.125]
    assert torch.allclose(seen[0][1], 0.5 * src[0] + 0.5 * noise[0])
    near = sample_latents(m, c.fork(), steps=2, generator=torch.Generator().manual_seed(1), source=src, start=1e-4)
    far = sample_latents(m, c.fork(), steps=2, generator=torch.Generator().manual_seed(1), source=src)
    assert (near - src).abs().max() < 0.05 < (far - src).abs().max()
    with pytest.raises(ValueError, match="needs source"):
        sample_latents(m, c.fork(), steps=2, start=0.5)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="start must be in"):
            sample_latents(m, c.fork(), steps=2, source=src, start=bad)


def test_generate_tokens_checks_the_room_first():
    """A generation that filled the KV cache midway stopped with "KV cache full" and lost every token it
    had made; the room is checked before any compute (the message keeps the phrase the server maps to
    context_full)."""
    m = model()
    c = KVCache(m.cfg, max_len=10)
    extend(m, c, [Segment("text", [5, 6, 7, 8])])
    with pytest.raises(ValueError, match=r"KV cache full: max_new 7 tokens may not fit \(4 of 10 positions used, "
                                         r"room for 6\)"):
        generate_tokens(m, c, 7)
    assert c.length == 4
    for bad, msg in ((-1, "max_new must be >= 0, got -1"), (2.0, "max_new must be an integer, got 2.0"),
                     (True, "max_new must be an integer, got True")):
        with pytest.raises(ValueError, match=msg):
            generate_tokens(m, c, bad)
    assert len(generate_tokens(m, c, 6)[0]) <= 6 and c.length <= 10
