"""What the benchmarks share: the shipped model, or the shakespeare-char shape with random weights
(speed does not depend on what a model learned)."""

from __future__ import annotations

import torch

from model import checkpoint
from model.checkpoint import DEFAULT_CKPT, SHIPPED_DIR
from model.config import preset
from model.gpt import GPT
from model.tokenizer import CharTokenizer, Tokenizer

SHIPPED = SHIPPED_DIR / DEFAULT_CKPT
SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def random_shakespeare_char() -> tuple[GPT, CharTokenizer]:
    """The lecture's 6 x 384 model with seeded random weights, and Tiny Shakespeare's characters."""
    torch.manual_seed(0)
    return GPT(preset("shakespeare-char")).eval(), CharTokenizer(SHAKESPEARE_CHARS)


def shipped_or_random() -> tuple[GPT, Tokenizer, str]:
    """(model, tokenizer, name): the shipped checkpoint when it exists, else the random 6 x 384."""
    if SHIPPED.is_file():
        model, tokenizer, _ = checkpoint.load_model(SHIPPED)
        return model, tokenizer, "shipped model"
    return *random_shakespeare_char(), "shakespeare-char, random weights"
