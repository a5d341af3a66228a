"""The sequence format: how inputs, contexts and outputs are written as segments.

One place for it, so that training sequences (omni.train.data) and the unrolling engine write the
same tokens: tags, <tag> text </tag> blocks, input images (<img> patches </img>), images written back
(<img> clean latents </img>), the source image of an image-to-image task (patches, and latents where
the config has source_latents), visual-token blocks (<vis> codes </vis>) and answers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from omni.model.batch import Segment
from omni.model.config import OmniConfig
from omni.tokens.text import TextTokenizer
from omni.tokens.visual import VisualTokenizer
from omni.world.camera import text_to_numbers

# the image-to-image tasks: the input image the generated image starts from
SOURCE_VIEW = {"nvs": "source", "edit": "before", "video": "frame0"}
VIEW_TAGS = {"up": "<look_up>", "down": "<look_down>", "left": "<look_left>", "right": "<look_right>"}
# each context block: opening tag, closing tag
BLOCKS = {"think": ("<think>", "</think>"), "layout": ("<layout>", "</layout>"), "caption": ("<caption>", "</caption>"),
          "depthcap": ("<depthcap>", "</depthcap>"), "campose": ("<campose>", "</campose>"),
          "question": ("<question>", "</question>"), "instruction": ("<instruction>", "</instruction>"),
          "answer": ("<answer>", "</answer>")}


class Format:
    def __init__(self, tok: TextTokenizer, vq: VisualTokenizer, cfg: OmniConfig):
        self.tok, self.vq, self.cfg = tok, vq, cfg

    def ids(self, *names: str) -> list[int]:
        return [self.tok.id(n) for n in names]

    def tags(self, *names: str, loss: bool = False) -> Segment:
        return Segment("text", self.ids(*names), loss=loss)

    def text(self, s: str, loss: bool = False) -> Segment:
        return Segment("text", self.tok.encode(s), loss=loss)

    def block(self, name: str, body: str, loss: bool = False, eos: bool = False) -> Segment:
        """<tag> body </tag> [<eos>] as one text segment (a loss covers everything after <tag>)."""
        open_tag, close_tag = BLOCKS[name]
        ids = self.ids(open_tag) + self.tok.encode(" " + body.strip()) + self.ids(close_tag)
        return Segment("text", ids + ([self.tok.eos] if eos else []), loss=loss)

    def pose_block(self, text: str, eos: bool = False) -> Segment:
        """<campose> tx ty tz rx ry rz </campose> [<eos>] with its CE loss; where the config has a pose
        head, its opening token also carries the six numbers as the head's target."""
        seg = self.block("campose", text, loss=True, eos=eos)
        if self.cfg.pose_head:
            seg.pose = torch.from_numpy(text_to_numbers(text)).float()
        return seg

    @staticmethod
    def pixels(rgb: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))

    def image(self, rgb: np.ndarray, depth: np.ndarray | None = None, valid: np.ndarray | None = None,
              tag: str | None = None, pair: np.ndarray | None = None) -> list[Segment]:
        """[<tag>] <img> pixel patches </img> (with a depth target for training; `pair`: the pixels
        of the view this one is compared with, `Segment.pair`)."""
        pre = self.ids(tag) if tag else []
        return [Segment("text", pre + self.ids("<img>")),
                Segment("image_in", pixels=self.pixels(rgb), depth=None if depth is None else torch.from_numpy(depth),
                        depth_valid=None if valid is None else torch.from_numpy(valid),
                        pair=None if pair is None else self.pixels(pair)),
                self.tags("</img>")]

    def view_pair(self, view1: np.ndarray, view2: np.ndarray) -> list[Segment]:
        """The two input views of a two-view task (pose, spatial): <img> view 1 </img> <img> view 2
        </img>, view 2's patches also taking view 1's (`Segment.pair`) where the config has pair_cond."""
        return self.image(view1) + self.image(view2, pair=view1 if self.cfg.pair_cond else None)

    def clean_image(self, latents: torch.Tensor, tag: str | None = None) -> list[Segment]:
        """[<tag>] <img> clean latents </img>: an image written back as context."""
        pre = self.ids(tag) if tag else []
        return [Segment("text", pre + self.ids("<img>")), Segment("image_clean", latents=latents), self.tags("</img>")]

    def source_latents(self, rgb: np.ndarray) -> torch.Tensor | None:
        """An image-to-image task's source image as latents, encoded once for `source_image` and
        `gen_source`, where the config has either source flag; None otherwise."""
        return self.latents([rgb])[0] if self.cfg.source_latents or self.cfg.source_cond else None

    def source_image(self, rgb: np.ndarray, latents: torch.Tensor | None = None) -> list[Segment]:
        """The input image of an image-to-image task (nvs, edit, video): <img> pixel patches </img>,
        then, where the model's config has source_latents, <img> its clean latents </img> (`latents`
        if given, from `source_latents`)."""
        segs = self.image(rgb)
        if self.cfg.source_latents:
            segs += self.clean_image(self.latents([rgb])[0] if latents is None else latents)
        return segs

    def gen_source(self, rgb: np.ndarray, latents: torch.Tensor | None = None) -> torch.Tensor | None:
        """The source latents an image-to-image task's generated image takes as an input per cell
        (`Segment.source`), where the config has source_cond; None otherwise (`latents` if given)."""
        if not self.cfg.source_cond:
            return None
        return self.latents([rgb])[0] if latents is None else latents

    def visual_block(self, codes: Sequence[int], loss: bool = False) -> list[Segment]:
        return [self.tags("<vis>"), Segment("visual", list(codes), loss=loss), self.tags("</vis>", loss=loss)]

    def latents(self, rgbs: Sequence[np.ndarray]) -> torch.Tensor:
        return self.vq.latents(torch.from_numpy(np.stack(rgbs)).float())

    def codes(self, rgbs: Sequence[np.ndarray]) -> torch.Tensor:
        return self.vq.encode(torch.from_numpy(np.stack(rgbs)).float())
