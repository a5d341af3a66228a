"""Model configuration. Sizes live in the presets here and nowhere else."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from omni.io import check_type

SEGMENT_KINDS = ("text", "image_in", "image_gen", "image_clean", "visual")
TEXT, IMAGE_IN, IMAGE_GEN, IMAGE_CLEAN, VISUAL = range(5)
PAD = -1
UND, GEN = 0, 1  # experts
# which expert each segment kind runs through: understanding (text, input images) or generation
# (images being generated or written back, and the discrete visual tokens the model rolls out)
EXPERT_OF_KIND = {TEXT: UND, IMAGE_IN: UND, IMAGE_GEN: GEN, IMAGE_CLEAN: GEN, VISUAL: GEN}
FULL_ATTENTION_KINDS = (IMAGE_IN, IMAGE_GEN, IMAGE_CLEAN)  # bidirectional within the segment


@dataclass
class OmniConfig:
    preset: str = "custom"
    # transformer
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    mlp_ratio: float = 8 / 3  # SwiGLU hidden = mlp_ratio * d_model (rounded to a multiple of 32)
    moe_experts: int = 0  # > 0: every expert's MLP is a mixture of this many MLPs
    moe_top_k: int = 2
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    max_seq: int = 1024  # longest context the KV cache holds
    # vocabularies: text tokens, then the visual codes
    text_vocab: int = 640
    codebook_size: int = 256
    # images
    image_size: int = 32
    patch: int = 4  # understanding images: p x p pixel patches
    latent_grid: int = 8  # generated images: the visual tokenizer's latent grid
    latent_dim: int = 16
    # visual tokens also carry a learned embedding of their grid cell (code i of a <vis> block: cell
    # i), so a generated latent of cell c can find the code of cell c by content, not by its 1D offset
    visual_cells: bool = False
    # the image-to-image tasks (nvs, edit, video) also see their source image as clean latents
    # (<img> latents </img>, the generation expert's own space) after its pixel patches, so a latent
    # being generated at cell c can copy and alter the source's cell c (BAGEL gives an edit both its
    # ViT and its VAE tokens); a format flag: training and the engine write what the weights expect
    source_latents: bool = False
    # ...and/or each latent being generated also takes the source image's latent of its own cell as an
    # input (through a learned map, zero at first), as InstructPix2Pix concatenates the source's
    # latents to the noisy ones: copying a cell needs no attention to be learned first
    source_cond: bool = False
    # the second input image of a two-view task (pose, spatial: view 2 after view 1) also takes, at
    # each patch, view 1's patch of the same cell as an input (through a learned map, zero at first),
    # as a CNN stacks two views channel on channel: a small model that must compare the views need not
    # first learn to find the matching cell by attention (omni.eval.probe: stacked, a 0.4 M CNN reads
    # the pose that omni-tiny, attending across the two images, never learned)
    pair_cond: bool = False
    # a pose head: a linear map from the hidden state of the <campose> token that opens a pose text to
    # its six numbers, trained by a regression loss (w_pose) beside the text's own CE, which only
    # reaches the pose through the digits' tokens; the engine writes the head's numbers as the pose
    # text (VGGT reads its cameras off a head likewise). Zero at first.
    pose_head: bool = False
    # rotary positions in 2D for image tokens (interleaved M-RoPE, as Qwen2-VL / Qwen3-VL): of each
    # head's rotary frequencies, every third turns with the image's position plus the token's row
    # offset from the image's centre, every third with its column offset, the rest with the position
    # alone; text and visual tokens turn every frequency with their position, as 1D rotary does. So
    # attention between two images sees their cells' relative offset (cell (r, c) of view 2 meets
    # view 1's cells (r, c +- 1) at a fixed rotation) instead of finding it through the learned cell
    # embeddings. No weights: a checkpoint trained without it loads and runs with it (differently)
    rope_2d: bool = False
    # an early-convolution stem on input images (channels; 0: none): a 3 x 3 convolution of the full-
    # resolution image to conv_stem channels and a GELU, whose features each patch also takes, through a
    # learned map (zero at first: a model trained without it runs unchanged until training finds a use
    # for it). A linear map of a 4 x 4 patch does not see an object's outline across patches, which
    # attention must assemble: a small transformer on such patches names the objects' shapes at 58 %
    # where the same with a convolution stem reaches 68 % and a CNN 74 % (omni.eval.probe --task shape)
    conv_stem: int = 0
    # losses
    w_text: float = 1.0
    w_visual: float = 1.0
    w_flow: float = 1.0
    w_depth: float = 1.0
    w_pose: float = 1.0  # the pose head's smooth-L1 loss (pose_head)
    w_moe_balance: float = 0.01
    depth_loss: str = "silog"  # "silog" (scale-invariant log, lambda 0.85) or "l1_log"

    @property
    def vocab_size(self) -> int:
        return self.text_vocab + self.codebook_size

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.mlp_ratio * self.d_model / 32)) * 32

    @property
    def patch_dim(self) -> int:
        return self.patch * self.patch * 3

    @property
    def patch_grid(self) -> int:
        return self.image_size // self.patch

    def validate(self) -> None:
        """ValueError, its message starting with the offending field's name, unless every field has
        its type (ints are ints, not bools; floats may be ints; finite) and a value the model can be
        built and run with."""
        for f in fields(self):
            check_type(f.name, getattr(self, f.name), f.type)
        for f in POSITIVE_INTS:
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be positive, got {getattr(self, f)}")
        if self.max_seq > MAX_SEQ:  # it sets no weight, but the KV cache's length
            raise ValueError(f"max_seq must be at most {MAX_SEQ}, got {self.max_seq}")
        if self.conv_stem < 0:
            raise ValueError(f"conv_stem must be 0 (none) or a number of channels, got {self.conv_stem}")
        if self.moe_experts < 0:
            raise ValueError(f"moe_experts must be 0 (no mixture) or positive, got {self.moe_experts}")
        if self.moe_experts and not 1 <= self.moe_top_k <= self.moe_experts:
            raise ValueError(f"moe_top_k must lie in 1..moe_experts ({self.moe_experts}), got {self.moe_top_k}")
        for f in ("mlp_ratio", "rope_theta", "norm_eps"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f} must be positive, got {getattr(self, f)}")
        for f in LOSS_WEIGHTS:
            if getattr(self, f) < 0:
                raise ValueError(f"{f} must not be negative, got {getattr(self, f)}")
        if self.d_model % self.n_heads or self.head_dim % 2:
            raise ValueError(f"d_model {self.d_model} must split into n_heads {self.n_heads} heads of even size")
        if self.mlp_hidden < 1:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} gives d_model {self.d_model} an MLP of no hidden units")
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch {self.patch}")
        if self.depth_loss not in DEPTH_LOSSES:
            raise ValueError(f"depth_loss must be one of {', '.join(DEPTH_LOSSES)}, got {self.depth_loss!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, complete: bool = False) -> OmniConfig:
        """A validated config from a dict (JSON). Unknown fields are an error; with complete=True
        (a checkpoint's config) so is a missing field that sets the weights' shapes or meaning
        (CHECKPOINT_FIELDS); the others take their defaults."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object of fields, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config fields: {unknown}")
        missing = [f for f in CHECKPOINT_FIELDS if f not in d] if complete else []
        if missing:
            raise ValueError(f"missing fields {missing} (a checkpoint's config must name every field that sets "
                             "the weights' shapes or meaning; there are no defaults for those)")
        cfg = cls(**d)
        cfg.validate()
        return cfg


DEPTH_LOSSES = ("silog", "l1_log")
MAX_SEQ = 1 << 20  # positions; a KV cache row of the tiny preset at this length takes 12 GB
POSITIVE_INTS = ("d_model", "n_layers", "n_heads", "max_seq", "text_vocab", "codebook_size", "image_size", "patch",
                 "latent_grid", "latent_dim")
LOSS_WEIGHTS = ("w_text", "w_visual", "w_flow", "w_depth", "w_pose", "w_moe_balance")
# what a checkpoint's config.json must name: every field that sets the weights' shapes or what they
# mean. Not required: the preset's name, the training losses' settings, and feature flags added after
# checkpoints were shipped whose default (off) is what those checkpoints were trained with.
CHECKPOINT_FIELDS = ("d_model", "n_layers", "n_heads", "mlp_ratio", "moe_experts", "moe_top_k", "rope_theta",
                     "norm_eps", "max_seq", "text_vocab", "codebook_size", "image_size", "patch", "latent_grid",
                     "latent_dim")


PRESETS: dict[str, dict] = {
    # a few million parameters: trains on a 2-core CPU
    "tiny": dict(d_model=256, n_layers=6, n_heads=4, max_seq=1024),
    # a GPU run
    "small": dict(d_model=512, n_layers=12, n_heads=8, max_seq=2048),
}


def preset(name: str, **overrides) -> OmniConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    cfg = OmniConfig(preset=name, **{**PRESETS[name], **overrides})
    cfg.validate()
    return cfg
