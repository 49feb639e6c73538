"""Side panels that look inside the model: the next-token distribution, attention, backend A/B.

Each lives in the app's ``#panels``, hidden until its key is pressed. A ``SidePanel`` gets every
batch of streamed tokens while it is shown (``show_tokens``); a hidden one gets nothing and does
no work, and is handed the latest run when shown again (``catch_up``). All model text goes through
``Content`` (never markup) with control characters made visible.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from textual import on, work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Select, Static
from textual.worker import get_current_worker

from model.generate.backend import Settings, TokenEvent
from model.generate.compare import ABResult, compare_backends
from model.generate.insight import StepView, attention_weights, explain, piece
from model.generate.sampling import recent_ids
from model.terminal import visible
from tui.backends import Backends

if TYPE_CHECKING:
    from tui.transcript import Run

N_ROWS = 10  # candidates listed in the next-token panel
ATTENTION_CELLS = 64  # the attention view draws the last this many tokens of a longer window
BAR = 10  # cells of the widest probability bar
# a next-token row: the mark and rank, the piece, the bar and its number, the model's p and logit
ROW_FIXED = len("▶  1  ") + len("  ") + len("100.0%") + len("  100.0%  30.00")
PIECE_MIN = 6  # cells a token's piece keeps on the narrowest panel
_EIGHTHS = " ▏▎▍▌▋▊▉"

# confidence colouring: (lowest probability, colour), most confident first
CONFIDENCE = ((0.75, "#5fd75f"), (0.5, "#afd75f"), (0.25, "#ffd75f"), (0.1, "#ff875f"), (0.0, "#ff5f5f"))


def confidence_colour(prob: float) -> str:
    return next(colour for low, colour in CONFIDENCE if prob >= low)


def legend() -> Content:
    parts: list[str | tuple[str, str]] = [("confidence ", "dim")]
    for (low, colour), (high, _) in zip(CONFIDENCE, ((1.0, ""), *CONFIDENCE), strict=False):
        parts += [("██", colour), (f" {low:.0%}–{high:.0%}  " if low else f" <{high:.0%}  ", "dim")]
    parts.append(("· Alt+←/→ or the mouse: a token's alternatives", "dim"))
    return Content.assemble(*parts)


def token_label(shown: str, width: int = 6) -> str:
    """A token's display piece (model.generate.insight.piece) as one short cell run: long ones cut."""
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def wrapped(text: str, width: int, sep: str = " · ") -> list[str]:
    """``text``'s parts (joined by ``sep``) packed into lines of at most ``width`` cells, a line
    break only between parts."""
    lines: list[str] = []
    for part in text.split(sep):
        if lines and len(lines[-1]) + len(sep) + len(part) <= width:
            lines[-1] += sep + part
        else:
            lines.append(part)
    return lines


def bar(fraction: float, width: int = BAR) -> str:
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (_EIGHTHS[part] if part else "")).ljust(width)


def describe_knobs(s: Settings) -> str:
    extra = f" · min-p {s.min_p:g}" if s.min_p else ""
    if s.repetition_penalty != 1:
        extra += f" · repetition penalty {s.repetition_penalty:g} over {s.repetition_window}"
    if s.frequency_penalty:
        extra += f" · frequency penalty {s.frequency_penalty:g}"
    if s.presence_penalty:
        extra += f" · presence penalty {s.presence_penalty:g}"
    if s.temperature == 0:
        return "greedy (temperature 0)" + extra
    return f"temperature {s.temperature:g} · top-k {s.top_k or 'off'} · top-p {s.top_p:g}" + extra


def run_history(run: Run, index: int) -> list[int]:
    """The ids the model had seen before generated token ``index`` of ``run``."""
    return run.prompt_ids + run_generated(run, index)


def run_generated(run: Run, index: int) -> list[int]:
    """The ids ``run`` generated before its token ``index`` (what the frequency penalty counts)."""
    return [e.id for e in run.events[:index]]


class SidePanel(VerticalScroll, can_focus=False):
    """A panel beside the transcript; Tab reaches its fields, not the panel itself."""

    def show_tokens(self, run: Run, events: list[TokenEvent]) -> None:
        """New tokens of ``run`` while the panel is shown."""

    def catch_up(self, run: Run | None) -> None:
        """The panel has just been shown: draw what it skipped while hidden."""


class NextTokenPanel(SidePanel):
    """The top candidates of one step: probability under the knobs (bar), the model's own
    probability, logit and rank; filtered ones struck out; entropy and surprisal above.
    It follows the app's settings (a reactive): new knobs redraw the step from its logits."""

    PANEL_WIDTH = 47  # its text's width in app.tcss, until the first layout tells

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.settings = Settings()
        self.piece: Callable[[int], str] = str  # id -> display piece (insight.piece)
        self.logits: torch.Tensor | None = None  # the step shown: its cached raw logits (V,)
        self.chosen: int | None = None
        self.title = ""
        self.event: TokenEvent | None = None  # a past step without logits: its top candidates
        self.history: list[int] = []  # the ids before the step shown, for the repetition penalty
        self.generated: list[int] = []  # those of them generated, for the frequency and presence ones
        self.view: StepView | None = None  # what is on screen, for tests

    def compose(self) -> ComposeResult:
        yield Static("next token: generate something", id="next-token-body")

    def on_mount(self) -> None:
        self.watch(self.app, "settings", self.preview)

    def show_tokens(self, run: Run, events: list[TokenEvent]) -> None:
        last = events[-1] if events else None
        if last is not None:
            self.show_event(last, f"token {last.index + 1}", run_history(run, last.index),
                            run_generated(run, last.index))

    def catch_up(self, run: Run | None) -> None:
        # a stepped run keeps this panel on its next step, shown or not
        if run is not None and run.generation is not None and run.events:
            last = run.events[-1]
            self.show_event(last, f"token {last.index + 1}", run_history(run, last.index),
                            run_generated(run, last.index))

    def show_event(self, event: TokenEvent, title: str, history: list[int] | None = None,
                   generated: list[int] | None = None) -> None:
        """A step taken; ``history``: the ids before it, ``generated``: those the run generated
        (None: unknown, the penalties are not shown)."""
        self.event, self.logits, self.chosen, self.title = event, event.logits, event.id, title
        self.history, self.generated = history or [], generated or []
        self.render_step()

    def show_next(self, logits: torch.Tensor, title: str, history: list[int] | None = None,
                  generated: list[int] | None = None) -> None:
        """The step about to be taken (step mode): nothing chosen yet."""
        self.event, self.logits, self.chosen, self.title = None, logits, None, title
        self.history, self.generated = history or [], generated or []
        self.render_step()

    def preview(self, settings: Settings) -> None:
        """New knobs: redraw the same step from its cached logits (no forward pass)."""
        self.settings = settings
        if self.display:
            self.render_step()

    def render_step(self) -> None:
        body = self.query_one("#next-token-body", Static)
        if self.logits is None:
            self.view = None
            if self.event is not None:  # no logits kept (a large vocabulary): the top few only
                lines = [Content(f"{self.title}: {token_label(self.piece(self.event.id))}")]
                lines += [Content(f"  {token_label(self.piece(c.id)):<6} {c.prob:6.1%}")
                          for c in self.event.top]
                body.update(Content("\n").join(lines))
            return
        recent = recent_ids(self.history, self.settings)
        view = self.view = explain(self.logits, self.piece, self.settings, self.chosen, N_ROWS, recent,
                                   Counter(self.generated))
        # the columns share the panel's width: the token's piece gets what the numbers leave, so a
        # BPE piece (␣Romeo, ␣therefore) shows whole; the bar shrinks first on a narrow panel
        width = body.content_region.width or self.PANEL_WIDTH
        bar_width = max(4, min(BAR, width - ROW_FIXED - PIECE_MIN))
        piece_width = max(PIECE_MIN, width - ROW_FIXED - bar_width)
        # the headers are lines of their own, each short enough for the panel: none is cut
        first, *more = wrapped(f"{self.title}  {describe_knobs(self.settings)}", width)
        lines = [Content.assemble((self.title, "bold"), (first.removeprefix(self.title), "dim"))]
        lines += [Content.styled(line, "dim") for line in more]
        if view.chosen is not None:
            took = token_label(view.chosen.text, width - 32)
            lines.append(Content(f"took {took} · rank {view.chosen.rank} · p {view.chosen.prob:.1%} · "
                                 f"{view.surprisal + 0.0:.2f} bits"))  # + 0.0: no "-0.00" for a sure token
        lines.append(Content(f"entropy {view.entropy:.2f} bits (model {view.model_entropy:.2f}) · "
                             f"keeps {view.kept}"))
        lines.append(Content.styled(f"   #  {'token':<{piece_width}}  {'sampled p':<{bar_width + 6}} model p"
                                    "  logit", "dim"))
        top = max((r.knob_prob for r in view.rows), default=0.0) or 1.0
        for r in view.rows:
            mark = "▶" if r.id == self.chosen else " "
            label = f"{mark}{r.rank:>3}  {token_label(r.text, piece_width):<{piece_width}}  "
            model = f"  {r.prob:6.1%} {r.logit:6.2f}"
            if r.kept:
                lines.append(Content.assemble(label, (bar(r.knob_prob / top, bar_width), "$accent"),
                                              f"{r.knob_prob:6.1%}", model))
            else:  # filtered out by the knobs: it cannot be sampled now
                lines.append(Content.assemble((label, "dim strike"),
                                              ("✗ filtered".ljust(bar_width + 6), "$error"), (model, "dim")))
        body.update(Content("\n").join(lines))


@dataclass(frozen=True)
class AttentionSource:
    model: torch.nn.Module | None  # the PyTorch GPT; None when there is none to ask
    ids: list[int]  # the context the last token was predicted from (at most block_size)
    pieces: list[str]  # their display pieces (model.generate.insight.piece)
    note: str = ""  # e.g. why the ONNX backend is not the one asked


def attention_source(run: Run | None, backends: Backends) -> AttentionSource | None:
    """What the attention view needs for ``run``: the PyTorch model (loaded already; the ONNX graph
    does not output attention) and the context its last token was predicted from."""
    if run is None:
        return None
    torch_backend = backends.loaded.get("torch")
    model = torch_backend.torch_model() if torch_backend is not None else None
    note = ""
    if run.info.backend != "torch":
        note = ("attention comes from the PyTorch model (the ONNX graph does not output it)"
                + ("" if model is not None else "; /backend torch to load it"))
    reader = torch_backend or backends.loaded.get(run.info.backend)
    if reader is None:
        return AttentionSource(None, [], [], note)
    tokenizer = reader.tokenizer
    if run.prompt_ids:  # the ids the model was fed and gave: a BPE re-encoding of the text may differ
        ids = run_history(run, len(run.events))[-run.info.block_size:]
    else:  # a reloaded session keeps text, not ids
        text = run.document.text
        ids = tokenizer.encode(text, "replace")[-run.info.block_size:] if text else [tokenizer.eot_id]
    return AttentionSource(model, ids, [piece(tokenizer, i) for i in ids], note)


class AttentionPanel(SidePanel):
    """Where the last token looks: one cell per context token, shaded by its attention weight.

    A long context (GPT-2's 1024-token window) draws only its last ``ATTENTION_CELLS`` tokens as
    cells; the most attended list still ranks the whole window, by position."""

    REFRESH = 0.25  # s: at most this often while tokens stream (a forward pass each)

    def __init__(self, backends: Backends, **kwargs):
        super().__init__(**kwargs)
        self.backends = backends
        self.run: Run | None = None
        self.weights: torch.Tensor | None = None  # (L, H, 1, T): the last query's rows, for tests
        self.pieces: list[str] = []
        self.note = ""
        self._scheduled = False
        self._shape: tuple[int, int] | None = None

    def compose(self) -> ComposeResult:
        yield Select([("layer 0", 0)], value=0, allow_blank=False, id="attn-layer", compact=True)
        yield Select([("head 0", 0)], value=0, allow_blank=False, id="attn-head", compact=True)
        yield Static("attention: generate something", id="attention-body")

    def show_tokens(self, run: Run, events: list[TokenEvent]) -> None:
        self.run = run
        if not self._scheduled:
            self._scheduled = True
            self.set_timer(self.REFRESH, self.update_now)

    def catch_up(self, run: Run | None) -> None:
        self.run = run
        self.update_now()

    def update_now(self) -> None:
        self._scheduled = False
        src = attention_source(self.run, self.backends)
        body = self.query_one("#attention-body", Static)
        if src is None or not src.ids:
            body.update("attention: generate something")
            return
        self.note = src.note
        if src.model is None or not hasattr(src.model, "blocks"):
            self.weights = None
            body.update(Content(src.note or "attention needs the PyTorch GPT"))
            return
        self.weights, self.pieces = attention_weights(src.model, src.ids, last=1), src.pieces
        L, H = self.weights.shape[:2]
        if (L, H) != self._shape:  # a new model: new choices (the same one keeps the user's pick)
            self._shape = (L, H)
            self._options("#attn-layer", [(f"layer {i}", i) for i in range(L)])
            self._options("#attn-head", [(f"head {h}", h) for h in range(H)] + [("mean of heads", -1)])
        self.render_weights()

    def _options(self, selector: str, options: list[tuple[str, int]]) -> None:
        select = self.query_one(selector, Select)
        with select.prevent(Select.Changed):
            select.set_options(options)
            select.value = options[0][1]

    @on(Select.Changed)
    def _picked(self) -> None:
        if self.weights is not None:
            self.render_weights()

    def row(self) -> torch.Tensor:
        """The last token's weights (T,) for the selected layer and head (or the heads' mean)."""
        layer = int(self.query_one("#attn-layer", Select).value)  # type: ignore[arg-type]
        head = int(self.query_one("#attn-head", Select).value)  # type: ignore[arg-type]
        w = self.weights[layer, :, -1]  # (H, T)
        return w.mean(0) if head < 0 else w[head]

    def render_weights(self) -> None:
        w = self.row()
        top = float(w.max()) or 1.0
        start = max(0, len(self.pieces) - ATTENTION_CELLS)
        cells: list[str | tuple[str, str]] = []
        for shown, weight in zip(self.pieces[start:], w[start:].tolist(), strict=True):
            level = int(255 * weight / top)  # shade from black to orange, the darkest unseen
            shade = f"#ffffff on #{level:02x}{level * 140 // 255:02x}00"
            cells.append((token_label(shown, 8).replace("⏎", "⏎\n"), shade))
        best = torch.topk(w, min(5, w.numel()))
        lines = [Content.assemble(*cells), Content("")]
        if start:
            lines.insert(0, Content.styled(f"the last {ATTENTION_CELLS} of {len(self.pieces)} tokens "
                                           f"({w[:start].sum():.0%} of the weight is before them)", "dim"))
        if self.note:
            lines.append(Content.styled(self.note, "$warning"))
        lines.append(Content.styled("most attended:", "dim"))
        lines += [Content(f"  {i:>4} {token_label(self.pieces[i]):<6} {v:.3f}")
                  for v, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)]
        self.query_one("#attention-body", Static).update(Content("\n").join(lines))


class ABPanel(SidePanel):
    """The last /ab: both backends' text side by side, agreement, logit difference, speed.
    It runs the comparison itself, in its own worker."""

    def __init__(self, backends: Backends, **kwargs):
        super().__init__(**kwargs)
        self.backends = backends
        self.result: ABResult | None = None

    def compose(self) -> ComposeResult:
        yield Static("A/B: /ab [PROMPT] runs it through torch and onnx", id="ab-body")

    def run(self, prompt: str, settings: Settings) -> None:
        """Generate from ``prompt`` with both backends (loading them if need be) and compare."""
        self.display = True
        self.show_status("A/B: loading the backends and running both…")
        self._compare(prompt, settings)

    @work(thread=True, exclusive=True, group="ab")
    def _compare(self, prompt: str, settings: Settings) -> None:
        worker = get_current_worker()
        try:
            for name in ("torch", "onnx"):
                if name not in self.backends.names:
                    raise ValueError(f"no {name} backend here: A/B needs a checkpoint (for both)")
            torch_backend, onnx_backend = self.backends.get("torch"), self.backends.get("onnx")
            result = compare_backends(torch_backend, onnx_backend, prompt, settings)
        except Exception as e:  # a failed export or load: say so in the panel
            if not worker.is_cancelled:
                self.app.call_from_thread(self.show_status, f"A/B failed: {e}")
            return
        if not worker.is_cancelled:
            self.app.call_from_thread(self.show_result, result)

    def show_status(self, text: str) -> None:
        self.query_one("#ab-body", Static).update(Content(visible(text)))  # may quote an error

    def show_result(self, r: ABResult) -> None:
        self.result = r

        def rate(x: float | None) -> str:
            return "-" if x is None else f"{x:.1f} tok/s"

        div = r.first_divergence
        lines = [
            Content.styled(f"A/B  seed {r.settings.seed} · {describe_knobs(r.settings)}", "bold"),
            Content(f"agreement {r.agreement:.0%} ({sum(r.agree)}/{len(r.agree)} steps)"
                    + ("" if div is None else f", first differs at step {div + 1}")),
            Content(f"max |Δlogit| {r.max_logit_diff:.2e}"),
            Content(f"{r.a.name} {rate(r.a.tokens_per_s)} · {r.b.name} {rate(r.b.tokens_per_s)}"),
            # what was compared: a bf16 side differs from an fp32 one by bf16's rounding
            *(Content(visible(f"{side.name}: {os.path.basename(side.path) or '?'}, "
                              f"{side.precision or 'weights not recorded'}")) for side in (r.a, r.b)),
            Content(""),
            Content.styled(f"{r.a.name:<18} {r.b.name}", "dim"),
        ]
        a, b = (visible(s.text).replace("\n", "⏎") for s in (r.a, r.b))
        for i in range(0, max(len(a), len(b)), 18):
            left, right = a[i:i + 18], b[i:i + 18]
            if left == right:
                lines.append(Content(f"{left:<18} {right}"))
            else:  # the backends disagree somewhere in these characters
                lines.append(Content.assemble((left.ljust(18), "$error"), " ", (right, "$error")))
        self.query_one("#ab-body", Static).update(Content("\n").join(lines))
