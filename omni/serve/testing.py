"""Helpers for trying and testing the server without a trained model: a randomly initialised, very
small checkpoint (its outputs are noise; only the plumbing is real) and a server on a free loopback
port in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import torch

from omni.model import OmniConfig, OmniModel
from omni.tokens.text import TextTokenizer
from omni.tokens.visual import VisualTokenizer, VQConfig

SHIPPED_VISUAL = Path(__file__).resolve().parents[2] / "checkpoints" / "visual-tokenizer"


def random_tiny_model(seed: int = 0, max_seq: int = 2048) -> OmniModel:
    """d_model 64, 2 layers, with the shipped text tokenizer and the shipped visual tokenizer (a random
    one when the source checkout's checkpoints/visual-tokenizer is absent)."""
    torch.manual_seed(seed)
    if (SHIPPED_VISUAL / "visual_tokenizer.json").is_file():
        vq = VisualTokenizer.load(SHIPPED_VISUAL)
    else:
        vq = VisualTokenizer(VQConfig()).eval()
    m = OmniModel(OmniConfig(preset="random-tiny", d_model=64, n_layers=2, n_heads=4, max_seq=max_seq,
                             codebook_size=vq.cfg.codebook_size, latent_dim=vq.cfg.code_dim, latent_grid=vq.cfg.grid))
    with torch.no_grad():  # make the untrained generation path non-trivial
        for layer in m.layers:
            torch.nn.init.normal_(layer.experts[1].ada.weight, std=0.05)
        torch.nn.init.normal_(m.flow_head.weight, std=0.05)
    m.tokenizer = TextTokenizer.default()
    object.__setattr__(m, "visual", vq)
    return m.eval()


def random_tiny_checkpoint(directory: str | Path, seed: int = 0) -> Path:
    """Write `random_tiny_model(seed)` as a checkpoint directory (safetensors + JSON)."""
    return random_tiny_model(seed).save_pretrained(directory)


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """An app served by uvicorn in a background thread on a free loopback port (tests, demos):
    `with LiveServer(app) as srv: httpx.get(srv.url + "/healthz")`."""

    def __init__(self, app, port: int | None = None):
        import uvicorn

        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="omni-serve-live", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
