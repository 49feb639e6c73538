"""The architecture diagrams in docs/diagrams/ show the sizes of the presets they name."""

from __future__ import annotations

import importlib.util
import json
import re
from html import unescape
from pathlib import Path

import pytest
import torch

from model.config import preset
from model.gpt import build_model, count_params

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("diagrams", REPO / "docs" / "diagrams.py")
diagrams = importlib.util.module_from_spec(spec)
spec.loader.exec_module(diagrams)

FILES = [(name, kind) for name in diagrams.PRESETS for kind in diagrams.DRAWINGS]


def committed(name: str, kind: str) -> str:
    return (diagrams.OUT / name / f"{kind}.svg").read_text(encoding="utf-8")


def texts(svg: str) -> str:
    """All the visible text of an SVG, one line per <text> element."""
    return "\n".join(unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg))


@pytest.mark.parametrize(("name", "kind"), FILES)
def test_committed_svg_is_what_the_code_draws_now(name, kind):
    assert committed(name, kind) == diagrams.render(name)[kind], (
        f"docs/diagrams/{name}/{kind}.svg is stale: run python docs/diagrams.py and commit it"
    )


@pytest.mark.parametrize(("name", "kind"), FILES)
def test_svg_names_the_preset_config_it_claims(name, kind):
    desc = re.search(r"<desc>(.*)</desc>", committed(name, kind)).group(1)
    claimed = json.loads(unescape(desc))
    assert claimed == {"preset": name, "config": preset(name).to_dict()}


@pytest.mark.parametrize("name", diagrams.PRESETS)
def test_sizes_in_the_pictures_match_the_config(name):
    c = preset(name)
    with torch.device("meta"):
        total = count_params(build_model(c))
    model, block, attention = (texts(committed(name, k)) for k in ("model", "block", "attention"))
    assert f"{c.vocab_size} × {c.n_embd}" in model  # wte
    assert f"{c.block_size} × {c.n_embd}" in model  # wpe
    assert f"Block × {c.n_layer}" in model
    assert f"total {total:,} parameters" in model
    assert f"{c.n_embd} → {4 * c.n_embd}" in block and f"{4 * c.n_embd} → {c.n_embd}" in block
    assert f"{c.n_head} heads × {c.head_size}" in block
    assert f"{c.n_embd} → 3 × {c.n_embd}" in attention
    assert f"(B, {c.n_head}, T, {c.head_size})" in attention
    assert f"× 1/√{c.head_size}" in attention


def test_a_changed_config_changes_the_picture():
    c = preset("shakespeare-char").replace(n_layer=3, n_head=4, n_embd=128)
    model = texts(diagrams.model_svg("custom", c))
    assert "Block × 3" in model and "4 heads × 32" in model
    assert f"total {count_params(build_model(c)):,} parameters" in model


def test_bigram_is_refused_with_the_presets_to_draw():
    with pytest.raises(ValueError, match="not a GPT; draw one of shakespeare-char"):
        diagrams.render("bigram")
