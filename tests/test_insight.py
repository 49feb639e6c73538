"""The views into the model (issue 8), driven by a Pilot against scripted fake backends and the
real tiny model: next-token panel, knob preview, confidence colouring, step mode, attention, A/B."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import SIZE, done, make_app, no_blink, run_async, send, until
from fake_backend import FakeBackend, FakeClock
from textual.widgets import Select

from model import gpt as gpt_module
from model.generate.backend import Settings
from model.generate.compare import ABResult, Side, compare_backends
from model.generate.insight import attention_weights, explain, perplexity, piece
from model.gpt import GPT, count_params
from tui.app import GPTApp
from tui.panels import ABPanel, AttentionPanel, NextTokenPanel
from tui.step import Stepper

# a scripted distribution: every step, these probabilities (the rest of the vocabulary ~0)
PROBS = {"a": 0.5, "b": 0.25, "c": 0.15, "d": 0.1}


def scripted() -> FakeBackend:
    return FakeBackend(probs=PROBS)


def panel_text(app) -> str:
    return str(app.query_one("#next-token-body").content)


@run_async
async def test_next_token_panel_shows_the_scripted_probabilities_and_marks_top_k():
    app = make_app(scripted(), settings=Settings(max_new_tokens=5, seed=1, top_k=2))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await send(pilot, "x")
        await until(pilot, done(app))
        await pilot.pause()
        view = app.query_one(NextTokenPanel).view
        rows = {r.text: r for r in view.rows}
        for char, p in PROBS.items():
            assert rows[char].prob == pytest.approx(p, abs=1e-6)
        assert [r.text for r in view.rows[:4]] == list("abcd")
        assert rows["a"].kept and rows["b"].kept and not rows["c"].kept and not rows["d"].kept
        assert rows["a"].knob_prob == pytest.approx(0.5 ** 1.25 / (0.5 ** 1.25 + 0.25 ** 1.25), abs=1e-5)
        text = panel_text(app)
        assert "50.0%" in text and "25.0%" in text and text.count("✗ filtered") == N_FILTERED
        assert view.chosen is not None and view.surprisal == pytest.approx(-math.log2(view.chosen.prob))


N_FILTERED = 8  # of the 10 rows, top-k 2 keeps two


@run_async
async def test_changing_temperature_redraws_the_last_step_without_the_model():
    backend = scripted()
    app = make_app(backend, settings=Settings(max_new_tokens=5, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await send(pilot, "x")
        await until(pilot, done(app))
        await pilot.pause()
        feeds = backend.feeds
        before = app.query_one(NextTokenPanel).view
        await send(pilot, "/set temperature 2")
        after = app.query_one(NextTokenPanel).view
        assert backend.feeds == feeds  # no forward pass
        assert after.rows[0].knob_prob < before.rows[0].knob_prob and after.entropy > before.entropy
        await send(pilot, "/set temperature 0")
        greedy = app.query_one(NextTokenPanel).view
        assert greedy.rows[0].knob_prob == 1.0 and greedy.kept == 1 and backend.feeds == feeds


@run_async
async def test_hidden_panels_get_no_tokens():
    app = make_app(scripted(), settings=Settings(max_new_tokens=5, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "x")
        await until(pilot, done(app))
        assert app.query_one(NextTokenPanel).view is None  # never drawn while hidden
        await pilot.press("f3")  # shown: it catches up with the last token
        assert app.query_one(NextTokenPanel).view is not None


@run_async
async def test_confidence_colouring_perplexity_and_the_token_cursor():
    app = make_app(scripted(), settings=Settings(max_new_tokens=6, seed=3))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "x")
        await until(pilot, done(app))
        run = app.current
        ppl = perplexity([PROBS[c] for c in run.text])
        assert f"ppl {ppl:.2f}" in str(app.query_one("#stats").content)
        await pilot.press("f6")
        assert app.query_one("#legend").display
        spans = app.documents[-1].view.content.spans
        assert len([s for s in spans if getattr(s.style, "meta", {}).get("token") is not None]) == 6
        await pilot.press("alt+left")  # the last token, then the one before
        await pilot.press("alt+left")
        assert app.output.cursor == 4
        panel = app.query_one(NextTokenPanel)
        assert panel.display and panel.view.chosen.text == run.text[4]


@run_async
async def test_step_mode_takes_the_picked_candidate_and_undoes():
    backend = scripted()
    app = make_app(backend, settings=Settings(max_new_tokens=50, seed=1, top_k=1))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/step")
        await send(pilot, "x")
        assert app.step.stepper is not None and app.current.text == ""
        await pilot.press("f8")  # top-k 1: samples "a"
        await send(pilot, "/pick 3")  # the third most likely: "c", filtered or not
        await send(pilot, "")  # Enter on an empty line: the next sampled token
        assert app.current.text == "aca"
        assert [t.sampled for t in app.step.stepper.taken] == [True, False, True]
        feeds = backend.feeds
        await pilot.press("f9")
        assert app.current.text == "ac" and backend.feeds == feeds  # undo needs no forward pass
        assert "ac" in str(app.documents[-1].view.content)
        assert app.query_one(NextTokenPanel).view.chosen is None  # the next step, not yet taken


def test_attention_rows_sum_to_one_and_are_causal(tiny_model):
    ids = list(range(20))
    w = attention_weights(tiny_model, ids)
    L, H = tiny_model.config.n_layer, tiny_model.config.n_head
    assert w.shape == (L, H, 20, 20)
    torch.testing.assert_close(w.sum(-1), torch.ones(L, H, 20))
    assert (w.triu(diagonal=1) == 0).all()


def test_attention_weights_are_the_ones_the_model_uses(tiny_config, monkeypatch):
    """The explicit path's own softmax outputs, recorded during a forward, equal the view's."""
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(tiny_config, attention="explicit")).eval()
    seen = []

    def recording_softmax(x, dim):
        seen.append(torch.softmax(x, dim))
        return seen[-1]

    ids = list(range(20))
    with torch.no_grad(), monkeypatch.context() as m:
        m.setattr(gpt_module.F, "softmax", recording_softmax)
        model(torch.tensor([ids]))
    torch.testing.assert_close(attention_weights(model, ids), torch.stack([a[0] for a in seen]))
    last_two = torch.stack([a[0, :, -2:] for a in seen])  # (L, H, 2, T)
    torch.testing.assert_close(attention_weights(model, ids, last=2), last_two)


def test_explain_marks_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    view = explain(logits, str, Settings(temperature=1.0, top_p=0.7), chosen=2, n=4)
    assert [r.kept for r in view.rows] == [True, True, False, False]
    assert view.chosen.rank == 3 and view.surprisal == pytest.approx(-math.log2(0.15), abs=1e-5)


@run_async
async def test_attention_panel_on_the_tiny_model(tiny_ckpt):
    from model.generate.torch_backend import load_backend

    app = make_app(load_backend(tiny_ckpt), settings=Settings(max_new_tokens=8, seed=0))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await send(pilot, "ROMEO:")
        await until(pilot, done(app))
        panel = app.query_one(AttentionPanel)
        panel.update_now()
        tokenizer = app.backend.tokenizer
        assert panel.weights.shape == (2, 2, 1, 14)
        assert panel.pieces == [piece(tokenizer, i) for i in tokenizer.encode("ROMEO:" + app.current.text)]
        assert panel.row().sum().item() == pytest.approx(1.0, abs=1e-5)
        app.query_one("#attn-layer", Select).value = 1
        app.query_one("#attn-head", Select).value = 1
        await pilot.pause()
        torch.testing.assert_close(panel.row(), panel.weights[1, 1, -1])
        app.query_one("#attn-head", Select).value = -1  # the mean over heads
        await pilot.pause()
        torch.testing.assert_close(panel.row(), panel.weights[1, :, -1].mean(0))
        assert "most attended:" in str(app.query_one("#attention-body").content)
        await send(pilot, "/show model")
        note = str(list(app.query("Note"))[-1].content)
        assert "2 layers · 2 heads · width 16" in note and "block size  32" in note
        assert "steps 0" in note


def test_snapshot_next_token_panel(snap_compare):
    app = GPTApp(scripted(), settings=Settings(max_new_tokens=20, seed=1, top_k=3), clock=FakeClock())

    async def generate(pilot):
        pilot.app.query_one("#prompt").cursor_blink = False
        await pilot.press("f3", "f6")
        await send(pilot, "x")
        await until(pilot, done(app))
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 30), run_before=generate)


@pytest.fixture(scope="module")
def tiny_onnx(tiny_ckpt, tmp_path_factory):
    from export.onnx_export import export_onnx

    return export_onnx(tiny_ckpt, tmp_path_factory.mktemp("onnx") / "tiny.onnx", validate=False)


@pytest.mark.slow  # exports the tiny model to ONNX
@run_async
async def test_ab_agrees_fully_for_greedy_decoding_on_the_tiny_model(tiny_ckpt, tiny_onnx):
    from export.ort_backend import load_ort_backend
    from model.generate.torch_backend import load_backend

    factories = {"onnx": lambda progress: load_ort_backend(tiny_onnx, "cpu")}
    app = make_app(load_backend(tiny_ckpt), factories=factories,
                   settings=Settings(temperature=0, max_new_tokens=40, seed=0))
    async with app.run_test(size=SIZE) as pilot:
        panel = app.query_one(ABPanel)
        await send(pilot, "/ab ROMEO:")
        await until(pilot, lambda: panel.result is not None, timeout=60)
        r = panel.result
        assert r.agreement == 1.0 and len(r.agree) == 40 and r.first_divergence is None
        assert r.a.text == r.b.text and r.max_logit_diff < 1e-3
        assert r.a.tokens_per_s > 0 and r.b.tokens_per_s > 0
        body = str(app.query_one("#ab-body").content)
        assert "agreement 100% (40/40 steps)" in body
        # and what it compared: each side's file and weights
        assert f"torch: {tiny_ckpt.name}, fp32 weights" in body and f"onnx: {tiny_onnx.name}, " in body
        await pilot.press("f4")  # ONNX active: attention says where it comes from
        await send(pilot, "/backend onnx")
        await send(pilot, "To")
        await until(pilot, done(app))
        attention = app.query_one(AttentionPanel)
        attention.update_now()
        assert "ONNX graph does not output it" in attention.note and attention.weights is not None
        await send(pilot, "/show model")  # ONNX: parameters counted from the config
        note = str(list(app.query("Note"))[-1].content)
        params = count_params(app.backends.loaded["torch"].torch_model())
        assert f"parameters  {params:,}" in note and "onnx on" in note


@run_async
async def test_hovering_a_token_shows_its_alternatives():
    app = make_app(scripted(), settings=Settings(max_new_tokens=6, seed=3))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "x")
        await until(pilot, done(app))
        await pilot.press("f6")
        await pilot.hover(app.documents[-1].view, offset=(3, 0))  # "x", then tokens 0, 1, 2, ...
        await pilot.pause()
        assert app.output.cursor == 2
        assert app.query_one(NextTokenPanel).view.chosen.text == app.current.text[2]


# ---- snapshots of the other panels ----------------------------------------------------------

def quiet(app: GPTApp) -> GPTApp:
    app.notify = lambda *args, **kwargs: None  # toasts would cover the panels
    return app


def test_snapshot_step_mode(snap_compare):
    app = quiet(GPTApp(scripted(), settings=Settings(seed=1, top_k=2), clock=FakeClock()))

    async def steps(pilot):
        no_blink(pilot)
        await send(pilot, "/step")
        await send(pilot, "x")
        await pilot.press("f8")
        await send(pilot, "/pick 4")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 30), run_before=steps)


def test_snapshot_attention_panel(snap_compare, tiny_ckpt):
    from model.generate.torch_backend import load_backend

    app = GPTApp(load_backend(tiny_ckpt), settings=Settings(max_new_tokens=12, seed=0), clock=FakeClock())

    async def generate(pilot):
        no_blink(pilot)
        await pilot.press("f2", "f4")
        await send(pilot, "ROMEO:")
        await until(pilot, done(app))
        app.query_one(AttentionPanel).update_now()
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 30), run_before=generate)


def test_snapshot_ab_panel(snap_compare):
    # a made-up result, so the numbers on screen are fixed (the real A/B is tested above)
    result = ABResult("ROMEO:", Settings(temperature=0.8, seed=7),
                      Side("torch", "\nWhat light through yonder", (), 210.5),
                      Side("onnx", "\nWhat light throw yonder", (), 305.25),
                      agree=(True,) * 17 + (False,) * 6, logit_diff=(2e-6,) * 18)
    app = GPTApp(FakeBackend(), settings=Settings(seed=1), clock=FakeClock())

    async def show(pilot):
        no_blink(pilot)
        await pilot.press("f2", "f5")
        app.query_one(ABPanel).show_result(result)
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 30), run_before=show)


def test_compare_backends_finds_the_first_divergence():
    a, b = FakeBackend(script="abcabc"), FakeBackend(script="abdabd")
    r = compare_backends(a, b, "x", Settings(temperature=0, max_new_tokens=6, seed=1))
    assert r.agree == (True, True, False, True, True, False)
    assert r.first_divergence == 2 and r.agreement == pytest.approx(4 / 6)
    assert r.logit_diff == (0.0, 0.0, 30.0) and r.max_logit_diff == 30.0  # compared up to step 3
    with pytest.raises(ValueError, match="fixed seed"):
        compare_backends(a, b, "x", Settings(seed=None))


def test_stepper_undo_rewinds_the_sampler():
    backend = scripted()
    stepper = Stepper(backend, "x", Settings(temperature=1.0, seed=5))
    first = [stepper.step().id for _ in range(6)]
    passes = backend.feeds
    for _ in range(3):
        stepper.undo()
    assert backend.feeds == passes  # undo brings back the cached logits
    assert [stepper.step().id for _ in range(3)] == first[3:]  # the same draws again
    assert stepper.step(stepper.next_logits().argmin().item()).text not in "abcd"  # any token may be taken
