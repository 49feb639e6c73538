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


def filler_bpe(vocab_size: int = 50257):
    """A tokenizer with GPT-2's vocabulary size for random-weight models: the 256 bytes, then
    placeholder tokens ("<t0>", ...) that decode to their own names, and the end-of-text marker last."""
    from model.bpe import ByteBPETokenizer, bytes_to_unicode

    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [f"<t{i}>" for i in range(vocab_size - 1 - len(byte_chars))]
    return ByteBPETokenizer(vocab, [], {"<|endoftext|>": vocab_size - 1})


def random_gpt2(shape: str = "124m") -> tuple[GPT, Tokenizer]:
    """GPT-2 124M's shape (tanh GELU, q/k/v bias, vocab 50257, block 1024) with seeded random
    weights; ``tiny`` keeps the vocabulary and shrinks the rest, to check a script runs."""
    config = preset("gpt2-124m").replace(qkv_bias=True, activation="gelu_tanh", dropout=0.0)
    if shape == "tiny":
        config = config.replace(n_layer=2, n_head=2, n_embd=16, block_size=64)
    torch.manual_seed(0)
    return GPT(config).eval(), filler_bpe(config.vocab_size)


def shipped_or_random() -> tuple[GPT, Tokenizer, str]:
    """(model, tokenizer, name): the shipped checkpoint when it exists, else the random 6 x 384."""
    if SHIPPED.is_file():
        model, tokenizer, _ = checkpoint.load_model(SHIPPED)
        return model, tokenizer, "shipped model"
    return *random_shakespeare_char(), "shakespeare-char, random weights"
