"""A malformed checkpoint is a ValueError (or OSError) naming the file and what is wrong in it, never a
raw traceback from deep inside the model, a misleading message or silently changed defaults; pickle
files are never opened."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omni.model import PRESETS, OmniConfig, OmniModel, preset
from omni.model.checkpoint import load_state
from omni.tokens.visual import VisualTokenizer

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "omni-tiny"


@pytest.fixture
def ck(tmp_path) -> Path:
    d = tmp_path / "ck"
    shutil.copytree(SHIPPED, d)
    return d


def edit(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def set_model(ck: Path, **kw) -> None:
    edit(ck / "config.json", lambda c: c["model"].update(kw))


def load(ck, **kw):
    return OmniModel.from_pretrained(ck, with_tokenizers=False, **kw)


# -- what must keep loading ----------------------------------------------------------------------


def test_shipped_checkpoints_and_presets_still_validate(ck):
    for d in sorted(p.parent for p in (ROOT / "checkpoints").glob("*/config.json")):
        assert isinstance(load(d), OmniModel)
    m = OmniModel.from_pretrained(ck)  # the copy, with its tokenizers
    assert m.tokenizer is not None and m.visual is not None
    for name in PRESETS:
        preset(name).validate()
    OmniConfig().validate()
    # floats may be written as ints
    cfg = OmniConfig.from_dict({**OmniConfig().to_dict(), "mlp_ratio": 3, "rope_theta": 10000, "w_text": 1})
    assert cfg.mlp_hidden == 768


def test_optional_fields_may_be_missing(ck):
    """The preset's name, the loss settings and later feature flags (visual_cells: the shipped
    config predates it) take their defaults."""
    def drop(c):
        for k in ("preset", "visual_cells", "w_text", "w_flow", "depth_loss"):
            c["model"].pop(k, None)

    edit(ck / "config.json", drop)
    m = load(ck)
    assert m.cfg.visual_cells is False and m.cfg.depth_loss == "silog"


# -- 1. model fields of the wrong type or value ------------------------------------------------


@pytest.mark.parametrize("field, value, match", [
    ("patch", 0, "patch must be positive"),
    ("n_heads", 0, "n_heads must be positive"),
    ("d_model", 256.0, "d_model must be an integer"),
    ("d_model", "256", "d_model must be an integer, got '256'"),
    ("d_model", True, "d_model must be an integer"),
    ("d_model", None, "d_model must be an integer"),
    ("d_model", 250, "d_model 250 must split into n_heads"),
    ("d_model", 260, "d_model 260 must split into n_heads 4 heads of even size"),  # head_dim 65
    ("n_layers", -2, "n_layers must be positive"),
    ("mlp_ratio", -1, "mlp_ratio must be positive"),
    ("mlp_ratio", 0.01, "mlp_ratio 0.01 gives"),
    ("mlp_ratio", "8/3", "mlp_ratio must be a number"),
    ("mlp_ratio", math.inf, "mlp_ratio must be a finite number"),
    ("rope_theta", math.nan, "rope_theta must be a finite number"),
    ("rope_theta", 0, "rope_theta must be positive"),
    ("norm_eps", -1e-5, "norm_eps must be positive"),
    ("max_seq", 0, "max_seq must be positive"),
    ("max_seq", 1024.5, "max_seq must be an integer"),
    ("max_seq", 10**13, "max_seq must be at most 1048576"),  # its KV cache failed to allocate 61 PB
    ("text_vocab", [640], "text_vocab must be an integer"),
    ("image_size", 30, "image_size 30 is not divisible by patch 4"),
    ("latent_dim", 0, "latent_dim must be positive"),
    ("moe_experts", -1, "moe_experts must be 0"),
    ("visual_cells", 1, "visual_cells must be true or false"),
    ("depth_loss", "l2", "depth_loss must be one of"),
    ("w_depth", -1.0, "w_depth must not be negative"),
    ("preset", 3, "preset must be a string"),
])
def test_bad_model_field(ck, field, value, match):
    set_model(ck, **{field: value})
    with pytest.raises(ValueError) as e:
        load(ck)
    msg = str(e.value)
    assert msg.startswith(f"{ck / 'config.json'}: bad model config: {field}"), msg
    assert match in msg


@pytest.mark.parametrize("field", ["text_vocab", "d_model", "latent_dim"])
def test_absurd_sizes_are_a_shape_error_before_any_allocation(ck, field):
    """A config whose sizes would take petabytes is checked against the weights' shapes on the meta
    device first: the error names the tensor (it was an allocation failure deep in nn.Embedding)."""
    set_model(ck, **{field: 2**40 if field != "d_model" else 2**24})
    with pytest.raises(ValueError, match=r"model.safetensors: tensor '.*' has shape .*, config.json implies"):
        load(ck)
    set_model(ck, d_model=2**30)  # too large for a tensor even to be described
    with pytest.raises(ValueError, match="config.json: bad model config: sizes no model can have"):
        load(ck)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"format": ' + "9" * 5000 + "}", "{\"a\": 1", "\xff"])
def test_unreadable_config_json_names_the_file(ck, text):
    """Nesting too deep (a RecursionError), an integer beyond Python's 4,300 digits, a truncated or
    undecodable file: each a ValueError naming config.json."""
    (ck / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=r"config.json: not valid JSON"):
        load(ck)


def test_bad_model_config_shape(ck):
    edit(ck / "config.json", lambda c: c.update(model=[1, 2]))
    with pytest.raises(ValueError, match="config.json: bad model config: expected a JSON object"):
        load(ck)
    edit(ck / "config.json", lambda c: c.pop("model"))
    with pytest.raises(ValueError, match="config.json: bad model config: no \"model\" entry"):
        load(ck)
    edit(ck / "config.json", lambda c: c.update(model={**json.loads((SHIPPED / "config.json").read_text())["model"],
                                                         "dmodel": 256}))
    with pytest.raises(ValueError, match=r"config.json: bad model config: unknown config fields: \['dmodel'\]"):
        load(ck)


def test_moe_top_k_range():
    base = {**OmniConfig().to_dict(), "moe_experts": 2}
    with pytest.raises(ValueError, match="^moe_top_k must lie in 1..moe_experts"):
        OmniConfig.from_dict({**base, "moe_top_k": 3})
    with pytest.raises(ValueError, match="^moe_top_k must be an integer"):
        OmniConfig.from_dict({**base, "moe_top_k": 1.0})
    assert OmniConfig.from_dict({**base, "moe_top_k": 1}).moe_top_k == 1


def test_model_constructor_validates_types():
    with pytest.raises(ValueError, match="^d_model must be an integer"):
        OmniModel(OmniConfig(d_model=256.0))
    with pytest.raises(ValueError, match="^n_heads must be positive"):
        preset("tiny", n_heads=0)


# -- 2. fields that set the weights' shapes or meaning have no defaults -----------------------


def test_missing_fields_are_an_error(ck):
    set_model(ck, max_seq=2048, rope_theta=5e5, norm_eps=1e-6)
    assert load(ck).cfg.max_seq == 2048

    def drop(c):
        for k in ("max_seq", "rope_theta", "norm_eps"):
            del c["model"][k]

    edit(ck / "config.json", drop)
    with pytest.raises(ValueError) as e:
        load(ck)
    msg = str(e.value)
    assert msg.startswith(f"{ck / 'config.json'}: bad model config: missing fields")
    assert all(k in msg for k in ("max_seq", "rope_theta", "norm_eps")), msg


@pytest.mark.parametrize("field", ["d_model", "n_layers", "n_heads", "mlp_ratio", "moe_experts", "moe_top_k",
                                   "text_vocab", "codebook_size", "image_size", "patch", "latent_grid",
                                   "latent_dim"])
def test_each_shape_field_is_required(ck, field):
    edit(ck / "config.json", lambda c: c["model"].pop(field))
    with pytest.raises(ValueError, match=rf"config.json: bad model config: missing fields \['{field}'\]"):
        load(ck)


# -- 3. the shard index ------------------------------------------------------------------------


def _index(ck):
    return ck / "model.safetensors.index.json"


@pytest.mark.parametrize("bad", [1, None, "", "..", "../x.safetensors", "sub/model-00001-of-00002.safetensors",
                                 "/etc/passwd", "ABSOLUTE"])
def test_shard_names_must_be_files_inside_the_checkpoint(ck, tmp_path, bad):
    if bad == "ABSOLUTE":  # a real shard outside the checkpoint: it must not be read
        outside = tmp_path / "outside.safetensors"
        shutil.copy(ck / "model-00001-of-00002.safetensors", outside)
        bad = str(outside)
    first = next(iter(json.loads(_index(ck).read_text())["weight_map"]))
    edit(_index(ck), lambda c: c["weight_map"].update({first: bad}))
    with pytest.raises(ValueError) as e:
        load(ck)
    assert str(e.value).startswith(f"{_index(ck)}: shard name must be a file name inside the checkpoint"), e.value
    with pytest.raises(ValueError, match="shard name must be a file name inside the checkpoint"):
        load_state(ck)  # what `omni train --init-from` reads


def test_shard_must_be_safetensors(ck):
    first = next(iter(json.loads(_index(ck).read_text())["weight_map"]))
    edit(_index(ck), lambda c: c["weight_map"].update({first: "pytorch_model.bin"}))
    with pytest.raises(ValueError, match="model.safetensors.index.json: shard 'pytorch_model.bin' is not a "
                                         r"\.safetensors file"):
        load(ck)


def test_weight_map_not_an_object(ck):
    edit(_index(ck), lambda c: c.update(weight_map=["model-00001-of-00002.safetensors"]))
    with pytest.raises(ValueError, match="model.safetensors.index.json: no weight_map"):
        load(ck)


# -- 4. visual_tokenizer.json ------------------------------------------------------------------


@pytest.mark.parametrize("field, value, match", [
    ("codebook_size", "256", "codebook_size must be an integer, got '256'"),
    ("codebook_size", 1, "codebook_size must be >= 2"),
    ("downsample", 0, "downsample must be a power of 2, got 0"),
    ("downsample", 3, "downsample must be a power of 2, got 3"),
    ("downsample", 4.0, "downsample must be an integer"),
    ("downsample", False, "downsample must be an integer"),
    ("image_size", 0, "image_size must be positive"),
    ("channels", -64, "channels must be positive"),
    ("code_dim", None, "code_dim must be an integer"),
    ("beta", "0.25", "beta must be a number"),
    ("beta", math.nan, "beta must be a finite number"),
    ("beta", -1, "beta must not be negative"),
    ("restart_every", 0, "restart_every must be positive"),
])
def test_bad_visual_tokenizer_field(ck, field, value, match):
    edit(ck / "visual_tokenizer.json", lambda c: c["config"].update({field: value}))
    for call in (lambda: VisualTokenizer.load(ck), lambda: OmniModel.from_pretrained(ck)):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert msg.startswith(f"{ck / 'visual_tokenizer.json'}: bad visual tokenizer config: {field}"), msg
        assert match in msg


def test_visual_tokenizer_config_missing_or_unknown_fields(ck):
    vt = ck / "visual_tokenizer.json"
    edit(vt, lambda c: c["config"].pop("image_size"))
    with pytest.raises(ValueError, match=r"visual_tokenizer.json: bad visual tokenizer config: missing fields "
                                         r"\['image_size'\]"):
        VisualTokenizer.load(ck)
    edit(vt, lambda c: c["config"].update(image_size=32, colour=1))
    with pytest.raises(ValueError, match=r"visual_tokenizer.json: bad visual tokenizer config: unknown fields "
                                         r"\['colour'\]"):
        VisualTokenizer.load(ck)
    edit(vt, lambda c: c.update(config="vq"))
    with pytest.raises(ValueError, match="visual_tokenizer.json: not a visual tokenizer config"):
        VisualTokenizer.load(ck)
    shipped = json.loads((SHIPPED / "visual_tokenizer.json").read_text())["config"]
    edit(vt, lambda c: c.update(config={k: v for k, v in shipped.items() if k not in ("beta", "restart_every")}))
    assert VisualTokenizer.load(ck).cfg.beta == 0.25  # training-only fields may take their defaults


def test_visual_tokenizer_of_absurd_sizes_allocates_nothing(ck):
    """A config whose sizes no weights match (a corrupt codebook_size of 10^13 asked torch for 640 TB;
    10^9, for 64 GB it could take): the weights' shapes are checked on the meta device first, so it is
    the file's shape that is named, at once. Loading draws from torch's random stream as it did."""
    edit(ck / "visual_tokenizer.json", lambda c: c["config"].update(codebook_size=10**13))
    with pytest.raises(ValueError, match=r"visual_tokenizer.safetensors: tensor 'codebook' has shape \(256, 16\), "
                                         r"the model expects \(10000000000000, 16\)"):
        VisualTokenizer.load(ck)
    cfg = VisualTokenizer.load(SHIPPED).cfg
    torch.manual_seed(0)
    VisualTokenizer.load(SHIPPED)
    after_load = torch.rand(3)
    torch.manual_seed(0)
    VisualTokenizer(cfg)  # one build's initial draws: the meta probe draws none
    assert torch.equal(after_load, torch.rand(3))


# -- 5. the path -------------------------------------------------------------------------------


def test_path_is_a_file(ck):
    with pytest.raises(NotADirectoryError, match="checkpoint path is a file, not a directory: .*config.json"):
        OmniModel.from_pretrained(ck / "config.json")
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        OmniModel.from_pretrained(ck / "nope")


@pytest.mark.parametrize("bad", [None, 3])
def test_path_of_the_wrong_type(bad):
    with pytest.raises(TypeError, match="needs the path of a checkpoint directory"):
        OmniModel.from_pretrained(bad)


def test_empty_path():
    with pytest.raises(ValueError, match="needs the path of a checkpoint directory"):
        OmniModel.from_pretrained("")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "last.ckpt", "MODEL.BIN"])
def test_pickle_checkpoints_are_refused_unopened(tmp_path, monkeypatch, name):
    def never(*a, **kw):
        raise AssertionError("a pickle file was opened")

    monkeypatch.setattr(torch, "load", never)
    only = tmp_path / "only"
    only.mkdir()
    (only / name).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(FileNotFoundError) as e:
        OmniModel.from_pretrained(only)
    msg = str(e.value)
    assert f"missing file: {only / 'model.safetensors'}" in msg and name in msg
    assert "pickle checkpoints are not loaded, only safetensors are" in msg
    with pytest.raises(FileNotFoundError, match="pickle checkpoints are not loaded"):
        load_state(only)


def test_pickle_beside_a_config(ck, monkeypatch):
    monkeypatch.setattr(torch, "load", lambda *a, **kw: pytest.fail("a pickle file was opened"))
    for p in list(ck.glob("model*.safetensors*")):
        p.unlink()
    (ck / "pytorch_model.bin").write_bytes(b"junk")
    with pytest.raises(FileNotFoundError, match="found pytorch_model.bin: pickle checkpoints are not loaded"):
        load(ck)
    (ck / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError) as e:  # no weights at all: the plain message
        load(ck)
    assert str(e.value) == f"missing file: {ck / 'model.safetensors'}"


# -- 6. the device -----------------------------------------------------------------------------


def test_unknown_device(ck):
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        load(ck, device="gpu")
    with pytest.raises(ValueError, match="unknown device"):
        load(ck, device=3.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(ck):
    for dev in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(ValueError, match="CUDA is not available on this machine"):
            load(ck, device=dev)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_index(ck):
    with pytest.raises(ValueError, match="CUDA device"):
        load(ck, device=f"cuda:{torch.cuda.device_count()}")
    m = OmniModel.from_pretrained(ck, device="cuda")
    assert next(m.parameters()).is_cuda and next(m.visual.parameters()).is_cuda


# -- the CLI: one clean line ---------------------------------------------------------------------


def test_cli_reports_one_line(ck, tmp_path):
    set_model(ck, d_model="256")
    r = subprocess.run([sys.executable, "-m", "omni.cli", "unroll", "vqa", "--checkpoint", str(ck),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr == f"error: {ck / 'config.json'}: bad model config: d_model must be an integer, got '256' (str)\n"


def test_weights_holding_nan_or_inf_are_named(ck):
    """A diverged run's weights (NaN or inf) loaded without a word and answered with NaN hidden states,
    which greedy decoding reads as token 0; the model's and the visual tokenizer's are checked."""
    from omni.io import read_safetensors, save_safetensors

    shard = sorted(ck.glob("model-*.safetensors"))[0]
    state = read_safetensors(shard)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name][0] = float("nan")
    save_safetensors(state, shard, {"format": "omni-checkpoint-v1"})
    with pytest.raises(ValueError, match=rf"model.safetensors: 1 tensor\(s\) hold NaN or inf.*{name}"):
        load(ck)
    shutil.copy(SHIPPED / shard.name, shard)
    vis = ck / "visual_tokenizer.safetensors"
    state = read_safetensors(vis)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = float("inf")
    save_safetensors(state, vis)
    with pytest.raises(ValueError, match="visual_tokenizer.safetensors: 1 tensor"):
        VisualTokenizer.load(ck)
    load(ck)  # the model's own weights are fine again


def test_an_empty_safetensors_file_reads_back(tmp_path):
    """save_safetensors({}) wrote a header safetensors cannot parse (its empty metadata dict), so a
    trainer state saved before any step read back as 'corrupt or truncated'."""
    from omni.io import read_safetensors, save_safetensors

    save_safetensors({}, tmp_path / "e.safetensors")
    assert read_safetensors(tmp_path / "e.safetensors") == {}
    save_safetensors({"a": torch.ones(2)}, tmp_path / "a.safetensors", {"format": "x"})
    assert torch.equal(read_safetensors(tmp_path / "a.safetensors")["a"], torch.ones(2))
