"""The PyTorch backend: decoders over a GPT (with the KV cache, or nanoGPT's recompute) and the
``Backend`` that streams through model.engine.Generation."""

from __future__ import annotations

from pathlib import Path

import torch

from model.backend import BackendInfo, Settings
from model.checkpoint import load_model
from model.device import Device, resolve_device
from model.engine import Generation
from model.gpt import GPT, Bigram
from model.kv_cache import KVCache
from model.tokenizer import CharTokenizer, Tokenizer


def _ready(model: GPT | Bigram, device: torch.device | str | None) -> GPT | Bigram:
    """The model on device (default: where its weights are), in eval mode: dropout off."""
    device = device if device is not None else next(model.parameters()).device
    return model.to(device).eval()


class TorchDecoder:
    """A PyTorch GPT or bigram with a KV cache: the prompt in one pass, then one position a token."""

    def __init__(self, model: GPT | Bigram, device: torch.device | str | None = None):
        self.model = _ready(model, device)
        weight = next(self.model.parameters())
        self.device = weight.device
        self.block_size = model.config.block_size
        self.cache = KVCache(model.config, 1, self.device, weight.dtype)

    @property
    def pos(self) -> int:
        return self.cache.pos

    def reset(self) -> None:
        self.cache.reset()

    @torch.inference_mode()
    def feed(self, ids: list[int]) -> torch.Tensor:
        idx = torch.tensor([ids], device=self.device)  # (1, T)
        logits, _ = self.model(idx, cache=self.cache)  # (1, T, V); the cache advances by T
        return logits[0, -1].float().cpu()  # sampling runs on the CPU, the same on every device


class RecomputeDecoder:
    """No cache: every feed re-runs the model over the whole window, as nanoGPT's ``generate``.

    The reference the cached decoder is tested against, and the benchmark's baseline."""

    def __init__(self, model: GPT | Bigram, device: torch.device | str | None = None):
        self.model = _ready(model, device)
        self.device = next(self.model.parameters()).device
        self.block_size = model.config.block_size
        self.window: list[int] = []

    @property
    def pos(self) -> int:
        return len(self.window)

    def reset(self) -> None:
        self.window = []

    @torch.inference_mode()
    def feed(self, ids: list[int]) -> torch.Tensor:
        if self.pos + len(ids) > self.block_size:
            raise ValueError(
                f"{self.pos} + {len(ids)} positions exceed block_size {self.block_size}; "
                "reset() and re-feed the last part of the context (model.engine does this)"
            )
        self.window += ids
        logits, _ = self.model(torch.tensor([self.window], device=self.device))  # (1, pos, V)
        return logits[0, -1].float().cpu()


class TorchBackend:
    """model.backend.Backend over a PyTorch model: each stream gets its own decoder and cache."""

    def __init__(
        self, model: GPT | Bigram, tokenizer: Tokenizer, path: str = "<model>", meta: dict | None = None
    ):
        self.model = _ready(model, None)
        self.tokenizer = tokenizer
        self.path = path
        self.meta = dict(meta or {})

    def info(self) -> BackendInfo:
        config = self.model.config
        return BackendInfo(
            backend="torch",
            path=self.path,
            vocab_size=config.vocab_size,
            block_size=config.block_size,
            device=str(next(self.model.parameters()).device),
            vocab=self.tokenizer.chars if isinstance(self.tokenizer, CharTokenizer) else None,
            config=config.to_dict(),
            meta=self.meta,
        )

    def unknown_chars(self, prompt: str) -> list[str]:
        return self.tokenizer.unknown_chars(prompt)

    def decoder(self) -> TorchDecoder:
        # a fresh cache per decoder (a few MB): streams never share state, and closing one frees it
        return TorchDecoder(self.model)

    def torch_model(self) -> GPT | Bigram:
        return self.model

    def stream(self, prompt: str, settings: Settings) -> Generation:
        return Generation(self.decoder(), self.tokenizer, prompt, settings)


def load_backend(path: str | Path, device: Device = "cpu") -> TorchBackend:
    """A slim or full training checkpoint -> a PyTorch backend on cpu, cuda, mps (or auto)."""
    model, tokenizer, meta = load_model(path, resolve_device(device))
    return TorchBackend(model, tokenizer, path=str(path), meta=meta)
