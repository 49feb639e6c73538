"""The optimizer of a run: AdamW, or Muon for the blocks' weight matrices with AdamW for the rest.

AdamW (nanoGPT's choice) decays only matrices: embeddings and linear weights, not biases or norms.

Muon (Keller Jordan's, used by the modded-nanoGPT speedruns) takes SGD momentum and replaces each
update of a weight matrix by the nearest semi-orthogonal matrix (five Newton-Schulz iterations), so
that every direction of the matrix learns at the same rate however skewed its gradient is. It suits
the hidden layers' matrices only: embeddings are lookups, not maps, and the head's rows are tied to
them, so those, and the 1-D biases and norm gains, stay with AdamW, as in the speedruns. Its steps
are scaled to the RMS size of an AdamW step (``adjust_lr_fn="match_rms_adamw"``, Moonshot's rule), so
one ``--learning-rate`` and one schedule drive both halves.
"""

from __future__ import annotations

import torch

from model.train.config import SettingsError, TrainConfig


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    """The run's optimizer (``cfg.optimizer``) over ``model``'s trainable parameters."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return _adamw([p for _, p in named], cfg, device)
    if not hasattr(torch.optim, "Muon"):
        raise SettingsError(f"--optimizer muon needs torch 2.9 or newer (this is {torch.__version__}); "
                            "upgrade torch or pass --optimizer adamw")
    hidden = [p for n, p in named if _in_block(n) and p.dim() == 2]
    if not hidden:
        raise SettingsError("--optimizer muon trains the blocks' weight matrices, and this model has no "
                            "blocks (the bigram?); pass --optimizer adamw")
    kept = {id(p) for p in hidden}
    muon = torch.optim.Muon(hidden, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                            adjust_lr_fn="match_rms_adamw")
    return Optimizers(muon, _adamw([p for _, p in named if id(p) not in kept], cfg, device))


def _adamw(params: list[torch.nn.Parameter], cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embeddings, linear weights) only, fused on CUDA."""
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda"
    )


def _in_block(name: str) -> bool:
    """A parameter of a transformer block (``blocks.3.mlp.c_fc.weight``), DDP's or compile's prefix
    aside."""
    return ".blocks." in f".{name}"


class Optimizers:
    """Several optimizers stepped as one, over disjoint parameters: what the training loop (learning
    rate per group, step, zero_grad), the fp16 gradient scaler (param_groups, step) and checkpoints
    (state_dict) ask of an optimizer."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("Optimizers.step takes no closure")
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        parts = state.get("optimizers") if isinstance(state, dict) else None
        if not isinstance(parts, list) or len(parts) != len(self.optimizers):
            raise ValueError(f"the saved optimizer state is not that of {len(self.optimizers)} optimizers "
                             "(was the run started with another --optimizer?)")
        for opt, part in zip(self.optimizers, parts, strict=True):
            opt.load_state_dict(part)
