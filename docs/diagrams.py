"""Architecture diagrams (SVG) of the GPT: the whole model, one block, one attention head.

Every size and parameter count in them comes from a preset in ``model.config`` and from the real
modules of ``model.gpt`` (built on the meta device, so even GPT-2's 124M parameters cost nothing).
Each SVG carries its preset's config as JSON in ``<desc>``; tests/test_diagrams.py regenerates
them and checks the committed files still match the code.

    python docs/diagrams.py            # rewrite docs/diagrams/<preset>/{model,block,attention}.svg
"""

from __future__ import annotations

import json
import math
import sys
from html import escape
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere in a checkout
    sys.path.insert(0, str(ROOT))

from model.config import GPTConfig, preset  # noqa: E402
from model.gpt import build_model  # noqa: E402

OUT = Path(__file__).resolve().parent / "diagrams"
PRESETS = ("shakespeare-char", "gpt2-124m")  # the lecture's model and GPT-2 small
WIDTH = 760
FONT = "font-family='Helvetica, Arial, sans-serif'"
# fill colours by kind of layer, the same in all three pictures
COLOURS = {
    "data": "#f2f2f2", "embed": "#dbeafe", "norm": "#fef3c7", "attn": "#fde2e2",
    "mlp": "#dcfce7", "head": "#ede9fe", "op": "#ffffff",
}


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_model(config: GPTConfig):
    """The real model, shapes only: parameters on the meta device hold no memory."""
    with torch.device("meta"):
        return build_model(config)


class Canvas:
    """A tiny SVG writer: boxes, circles, arrows and text, in drawing order."""

    def __init__(self, title: str, config: GPTConfig, name: str):
        self.parts: list[str] = []
        self.title, self.config, self.name = title, config, name

    def text(self, x, y, s, size=13, weight="normal", anchor="middle", colour="#111"):
        self.parts.append(
            f"<text x='{x}' y='{y}' font-size='{size}' font-weight='{weight}' text-anchor='{anchor}' "
            f"fill='{colour}' {FONT}>{escape(s)}</text>"
        )

    def box(self, cx, y, w, h, label, detail="", kind="op", note=""):
        """A rounded box centred on cx with its top at y; ``note`` goes right of it (parameters)."""
        self.parts.append(
            f"<rect x='{cx - w / 2}' y='{y}' width='{w}' height='{h}' rx='7' fill='{COLOURS[kind]}' "
            "stroke='#444' stroke-width='1.2'/>"
        )
        if detail:
            self.text(cx, y + h / 2 - 3, label, weight="bold")
            self.text(cx, y + h / 2 + 13, detail, size=12, colour="#333")
        else:
            self.text(cx, y + h / 2 + 5, label, weight="bold")
        if note:
            self.text(cx + w / 2 + 12, y + h / 2 + 5, note, size=12, anchor="start", colour="#555")

    def plus(self, cx, cy, r=11):
        self.parts.append(
            f"<circle cx='{cx}' cy='{cy}' r='{r}' fill='#fff' stroke='#444' stroke-width='1.2'/>"
        )
        self.text(cx, cy + 5, "+", size=16, weight="bold")

    def arrow(self, *points, dashed=False):
        """A polyline through (x, y) points with an arrowhead at the last."""
        path = " ".join(f"{x},{y}" for x, y in points)
        dash = " stroke-dasharray='5,4'" if dashed else ""
        self.parts.append(
            f"<polyline points='{path}' fill='none' stroke='#444' stroke-width='1.4'{dash} "
            "marker-end='url(#head)'/>"
        )

    def svg(self, height: int) -> str:
        desc = json.dumps({"preset": self.name, "config": self.config.to_dict()}, sort_keys=True)
        head = (
            f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height}' "
            f"viewBox='0 0 {WIDTH} {height}'>\n"
            f"<title>{escape(self.title)}</title>\n<desc>{escape(desc)}</desc>\n"
            "<defs><marker id='head' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' "
            "markerHeight='7' orient='auto'><path d='M0,0 L10,5 L0,10 z' fill='#444'/></marker></defs>\n"
            f"<rect width='{WIDTH}' height='{height}' fill='#fff'/>\n"
        )
        return head + "\n".join(self.parts) + "\n</svg>\n"


def fmt(n: int) -> str:
    return f"{n:,}"


def millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def model_svg(name: str, c: GPTConfig) -> str:
    m = meta_model(c)
    total = numel(m)
    block = numel(m.blocks[0])
    cv = Canvas(f"GPT, preset {name}", c, name)
    cx = 300
    cv.text(WIDTH / 2, 28, f"The whole GPT: preset {name}, {millions(total)} parameters",
            size=16, weight="bold")
    cv.text(WIDTH / 2, 48, "B = batch, T = tokens in the context; every shape below is (B, T, ...)", size=12,
            colour="#555")
    y = 66
    cv.box(cx, y, 260, 44, "token ids", f"(B, T), T ≤ {c.block_size}, ids < {c.vocab_size}", "data")
    cv.arrow((cx - 60, y + 44), (cx - 130, y + 74))
    cv.arrow((cx + 60, y + 44), (cx + 130, y + 74))
    y += 76
    cv.box(cx - 130, y, 220, 44, "token embedding wte", f"{c.vocab_size} × {c.n_embd}", "embed")
    cv.box(cx + 130, y, 220, 44, "position embedding wpe", f"{c.block_size} × {c.n_embd}", "embed",
           note=fmt(numel(m.wpe)))
    cv.text(cx - 130, y + 60, f"{fmt(numel(m.wte))} parameters", size=12, colour="#555")
    cv.arrow((cx - 130, y + 44), (cx - 12, y + 86))
    cv.arrow((cx + 130, y + 44), (cx + 12, y + 86))
    y += 96
    cv.plus(cx, y)
    cv.text(cx + 22, y + 5, f"x: (B, T, {c.n_embd}), the residual stream", size=12, anchor="start")
    cv.arrow((cx, y + 11), (cx, y + 34))
    y += 34
    cv.box(cx, y, 260, 34, f"dropout {c.dropout:g}", kind="op")
    cv.arrow((cx, y + 34), (cx, y + 58))
    y += 58
    # the blocks, drawn as a stack of cards
    for i in (2, 1):
        cv.parts.append(
            f"<rect x='{cx - 170 + 6 * i}' y='{y + 6 * i}' width='340' height='112' rx='7' "
            "fill='#f8f8f8' stroke='#999'/>"
        )
    cv.parts.append(f"<rect x='{cx - 170}' y='{y}' width='340' height='112' rx='7' fill='#fff' stroke='#444' "
                    "stroke-width='1.2'/>")
    cv.text(cx, y + 22, f"Block × {c.n_layer}", size=15, weight="bold")
    cv.text(cx, y + 44, f"x + attention(LayerNorm(x)): {c.n_head} heads × {c.head_size}", size=12)
    cv.text(cx, y + 62, f"x + MLP(LayerNorm(x)): {c.n_embd} → {4 * c.n_embd} → {c.n_embd}", size=12)
    cv.text(cx, y + 84, f"in and out: (B, T, {c.n_embd})", size=12, colour="#333")
    cv.text(cx, y + 101, "see block.svg", size=11, colour="#2563eb")
    cv.text(cx + 194, y + 50, f"{c.n_layer} × {fmt(block)}", size=12, anchor="start", colour="#555")
    cv.text(cx + 194, y + 66, f"= {fmt(c.n_layer * block)}", size=12, anchor="start", colour="#555")
    cv.arrow((cx, y + 124), (cx, y + 146))
    y += 146
    cv.box(cx, y, 260, 40, "final LayerNorm ln_f", f"over {c.n_embd} features", "norm",
           note=fmt(numel(m.ln_f)))
    cv.arrow((cx, y + 40), (cx, y + 64))
    y += 64
    head_note = "tied to wte: 0 new" if c.tie_weights else fmt(m.lm_head.weight.numel())
    cv.box(cx, y, 260, 44, "lm_head (Linear, no bias)", f"{c.n_embd} → {c.vocab_size}", "head",
           note=head_note)
    if c.tie_weights:  # the same matrix reads tokens in and scores them out
        cv.arrow((cx - 130, y + 22), (40, y + 22), (40, 168), (cx - 240, 168), dashed=True)
        cv.text(48, y - 8, "same matrix", size=11, anchor="start", colour="#555")
    cv.arrow((cx, y + 44), (cx, y + 68))
    y += 68
    cv.box(cx, y, 260, 44, "logits", f"(B, T, {c.vocab_size}): a score per next token", "data")
    cv.arrow((cx, y + 44), (cx, y + 68))
    y += 68
    cv.box(cx, y, 260, 44, "softmax", "next-token probabilities", "data")
    cv.text(cx, y + 70, f"total {fmt(total)} parameters (a tied matrix counted once)", size=13, weight="bold")
    return cv.svg(y + 90)


def attention_params(m) -> tuple[int, int]:
    attn = m.blocks[0].attn
    return numel(attn.c_attn), numel(attn.c_proj)


def block_svg(name: str, c: GPTConfig) -> str:
    m = meta_model(c)
    b = m.blocks[0]
    qkv, proj = attention_params(m)
    cv = Canvas(f"One transformer block, preset {name}", c, name)
    cv.text(WIDTH / 2, 28, f"One block (of {c.n_layer}): preset {name}, {fmt(numel(b))} parameters",
            size=16, weight="bold")
    cv.text(WIDTH / 2, 48, "pre-LayerNorm: each branch reads a normalised copy and adds its result back",
            size=12, colour="#555")
    spine, branch = 150, 420
    y = 66
    cv.box(spine, y, 200, 40, "x in", f"(B, T, {c.n_embd})", "data")
    top = y + 40

    def sub_layer(y, boxes, label):
        """Leave the spine, run ``boxes`` in a column, come back into a + on the spine."""
        cv.text(spine - 16, y + 30, label, size=11, anchor="end", colour="#555")
        cv.arrow((spine, y + 10), (branch, y + 10), (branch, y + 24))
        y += 24
        for i, (h, args, note) in enumerate(boxes):
            cv.box(branch, y, 300, h, *args, note=note)
            y += h
            if i < len(boxes) - 1:
                cv.arrow((branch, y), (branch, y + 20))
                y += 20
        cv.arrow((branch, y), (branch, y + 22), (spine + 11, y + 22))
        return y + 22

    y = sub_layer(top + 8, [
        (40, ("LayerNorm ln_1", f"{c.n_embd} features", "norm"), fmt(numel(b.ln_1))),
        (56, ("causal self-attention", f"{c.n_head} heads × {c.head_size}; see attention.svg", "attn"),
         fmt(numel(b.attn))),
    ], "residual")
    cv.arrow((spine, top), (spine, y - 11))
    cv.plus(spine, y)
    first = y
    y = sub_layer(y + 11, [
        (40, ("LayerNorm ln_2", f"{c.n_embd} features", "norm"), fmt(numel(b.ln_2))),
        (40, ("Linear c_fc", f"{c.n_embd} → {4 * c.n_embd}", "mlp"), fmt(numel(b.mlp.c_fc))),
        (34, ("GELU",), ""),
        (40, ("Linear c_proj", f"{4 * c.n_embd} → {c.n_embd}", "mlp"), fmt(numel(b.mlp.c_proj))),
        (34, (f"dropout {c.dropout:g}",), ""),
    ], "residual")
    cv.arrow((spine, first + 11), (spine, y - 11))
    cv.plus(spine, y)
    cv.arrow((spine, y + 11), (spine, y + 34))
    y += 34
    cv.box(spine, y, 200, 40, "x out", f"(B, T, {c.n_embd})", "data")
    y += 64
    bias = "with" if c.qkv_bias else "without"
    cv.text(WIDTH / 2, y, f"attention: q, k, v projection {fmt(qkv)} ({bias} bias) + output projection "
            f"{fmt(proj)}", size=12, colour="#333")
    norms = numel(b.ln_1) + numel(b.ln_2)
    cv.text(WIDTH / 2, y + 20, f"MLP: {fmt(numel(b.mlp))}; the two LayerNorms: {fmt(norms)}",
            size=12, colour="#333")
    return cv.svg(y + 40)


def attention_svg(name: str, c: GPTConfig) -> str:
    m = meta_model(c)
    qkv, proj = attention_params(m)
    C, H, D = c.n_embd, c.n_head, c.head_size
    cv = Canvas(f"Causal self-attention, one head, preset {name}", c, name)
    cv.text(WIDTH / 2, 28, f"Causal self-attention: preset {name}, {H} heads of size {D}",
            size=16, weight="bold")
    cv.text(WIDTH / 2, 48, "heads are a batch dimension: every head runs the middle column at once", size=12,
            colour="#555")
    cx = WIDTH / 2
    y = 66
    cv.box(cx, y, 280, 40, "x (after ln_1)", f"(B, T, {C})", "data")
    cv.arrow((cx, y + 40), (cx, y + 62))
    y += 62
    cv.box(cx, y, 280, 44, "Linear c_attn", f"{C} → 3 × {C} (q, k, v at once)", "attn", note=fmt(qkv))
    cols = {"q": cx - 220, "k": cx, "v": cx + 220}
    for x in cols.values():
        cv.arrow((cx, y + 44), (x, y + 74))
    y += 76
    what = {"q": "query: what I look for", "k": "key: what I hold", "v": "value: what I give"}
    for n, x in cols.items():
        cv.box(x, y, 200, 44, f"{n}, {what[n]}", f"(B, {H}, T, {D}) = {H} heads of {D}", "attn")
    y += 44
    v_bottom = y
    cv.arrow((cols["q"], y), (cx - 20, y + 30))
    cv.arrow((cols["k"], y), (cx, y + 30))
    y += 30
    steps = [
        ("scores = q kᵀ", f"(B, {H}, T, {D}) @ (B, {H}, {D}, T) → (B, {H}, T, T)", 44),
        (f"× 1/√{D} = {1 / math.sqrt(D):.4g}", "keeps the scores' variance near 1", 44),
        ("causal mask", "key j > query i → −∞: no peeking ahead", 44),
        ("softmax over keys", "each row sums to 1: attention weights", 44),
    ]
    if c.dropout:
        steps.append((f"dropout {c.dropout:g}", "on the weights, in training only", 40))
    cv.text(cx - 162, y + 26, "one head:", size=12, anchor="end", colour="#555")
    cv.text(cx - 162, y + 42, f"(T × {D}) · ({D} × T)", size=12, anchor="end", colour="#555")
    cv.text(cx - 162, y + 58, "→ T × T, entry (i, j) =", size=12, anchor="end", colour="#555")
    cv.text(cx - 162, y + 74, "query i · key j", size=12, anchor="end", colour="#555")
    for i, (label, detail, h) in enumerate(steps):
        cv.box(cx, y, 300, h, label, detail, "op")
        y += h
        if i < len(steps) - 1:
            cv.arrow((cx, y), (cx, y + 18))
            y += 18
    cv.arrow((cx, y), (cx, y + 30))
    cv.arrow((cols["v"], v_bottom), (cols["v"], y + 52), (cx + 150, y + 52))
    y += 30
    cv.box(cx, y, 300, 44, "weights @ v", f"(B, {H}, T, T) @ (B, {H}, T, {D}) → (B, {H}, T, {D})", "attn")
    cv.arrow((cx, y + 44), (cx, y + 66))
    y += 66
    cv.box(cx, y, 300, 44, f"concatenate the {H} heads", f"(B, T, {H} × {D} = {C})", "data")
    cv.arrow((cx, y + 44), (cx, y + 66))
    y += 66
    cv.box(cx, y, 300, 44, "Linear c_proj, dropout", f"{C} → {C}, back into the residual stream", "attn",
           note=fmt(proj))
    y += 70
    cv.text(cx, y, "fused path: F.scaled_dot_product_attention(q, k, v, is_causal=True) does the middle "
            "column in one kernel", size=12, colour="#333")
    return cv.svg(y + 24)


DRAWINGS = {"model": model_svg, "block": block_svg, "attention": attention_svg}


def render(name: str) -> dict[str, str]:
    """The three SVGs of a preset, as text: {"model": ..., "block": ..., "attention": ...}."""
    config = preset(name)
    if config.kind != "gpt":
        raise ValueError(f"preset {name!r} is not a GPT; draw one of {', '.join(PRESETS)}")
    return {kind: draw(name, config) for kind, draw in DRAWINGS.items()}


def write(out: Path = OUT) -> list[Path]:
    paths = []
    for name in PRESETS:
        for kind, svg in render(name).items():
            path = out / name / f"{kind}.svg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(svg, encoding="utf-8")
            paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write():
        print(p.relative_to(ROOT))
