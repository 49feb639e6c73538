"""The shipped checkpoint: loads safely, has the stated shape, and scores what its model card says."""

import re

import pytest
import torch

from model.checkpoint import DEFAULT_CKPT, SHIPPED_DIR, load_model, resolve_ckpt
from model.data.corpus import open_corpus
from model.generate.backend import Settings
from model.generate.torch_backend import TorchBackend
from model.train.report import full_val_loss

SHIPPED = SHIPPED_DIR / DEFAULT_CKPT
CARD = SHIPPED_DIR / "README.md"
# the shape the model card states
CONFIG = dict(kind="gpt", vocab_size=66, block_size=256, n_layer=6, n_head=6, n_embd=384, tie_weights=True)


def card_val_loss() -> float:
    found = re.search(r"val loss over the whole validation split: \*\*(\d+\.\d+)\*\*", CARD.read_text())
    assert found, f"{CARD} does not state the whole-split val loss"
    return float(found.group(1))


def test_loads_with_weights_only_and_is_slim():
    raw = torch.load(SHIPPED, weights_only=True, map_location="cpu")
    assert "train" not in raw  # no optimizer state shipped
    assert SHIPPED.stat().st_size <= 25 * 2**20
    assert resolve_ckpt("shakespeare.pt") == SHIPPED  # the tools' default finds it
    model, tokenizer, meta = load_model(SHIPPED)
    assert {k: model.config.to_dict()[k] for k in CONFIG} == CONFIG
    assert tokenizer.vocab_size == 66 and meta["steps"] > 0


@pytest.mark.slow
def test_val_loss_on_fixed_windows_matches_the_model_card(shakespeare_available):
    model, tokenizer, _ = load_model(SHIPPED)
    _, splits = open_corpus("shakespeare", tokenizer)
    val, block = splits.split("val"), model.config.block_size
    # a quick, fixed check: 16 runs of 4 consecutive windows, spread evenly over the split (the
    # split's start alone is easier text and scores ~0.12 lower than the whole)
    span = 4 * block
    starts = [i * (len(val) - span - 1) // 15 for i in range(16)]
    with torch.inference_mode():
        loss = sum(full_val_loss(model, val[s:s + span + 1], block) for s in starts) / len(starts)
    assert loss == pytest.approx(card_val_loss(), abs=0.02)


@pytest.mark.slow  # 200 tokens on the shipped model
def test_greedy_text_is_in_the_vocabulary_and_not_degenerate():
    model, tokenizer, _ = load_model(SHIPPED)
    text = "".join(e.text for e in TorchBackend(model, tokenizer).stream(
        "ROMEO:\n", Settings(temperature=0.0, max_new_tokens=200)))
    assert len(text) == 200 and not tokenizer.unknown_chars(text)
    assert len(set(text.split())) > 10  # words, not one character repeated
