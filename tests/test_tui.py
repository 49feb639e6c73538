"""The Textual app driven by a Pilot, against a fake deterministic backend and the real tiny model."""

from __future__ import annotations

import sys
import types

import pytest
from conftest import SIZE, done, make_app, no_blink, run_async, send, shown, until
from fake_backend import FakeBackend, FakeClock
from textual.widgets import Input, Select

from model.generate.backend import Settings
from tui.app import GPTApp
from tui.backends import BackendError, OnnxFactory
from tui.output import OutputView
from tui.session import load_jsonl
from tui.widgets import START


@run_async
async def test_typing_a_prompt_streams_the_completion():
    backend = FakeBackend(gated=True)
    app = make_app(backend, settings=Settings(max_new_tokens=60, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"ROMEO", "ctrl+j", ":")  # Ctrl+J adds a newline, Enter sends
        assert app.query_one("#prompt").text == "ROMEO\n:"
        await pilot.press("enter")
        backend.allow(7)  # the fake clock ticks 10 ms a token: the UI gets them in threes
        await until(pilot, lambda: len(app.current.text) == 6)
        assert not app.current.done and shown(app) == "ROMEO\n:To be,▍"  # text arrives while it runs
        backend.allow(100)
        await until(pilot, done(app))
        assert backend.prompts == ["ROMEO\n:"]
        assert app.current.text == ("To be, or not to be: that is the question.\n" * 2)[:60]
        assert shown(app) == "ROMEO\n:" + app.current.text
        assert app.query_one("#prompt").text == ""  # the prompt box is ready for the next one


@run_async
async def test_esc_stops_at_once_and_keeps_the_text():
    backend = FakeBackend(gated=True)
    app = make_app(backend, settings=Settings(max_new_tokens=5000, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "To")
        backend.allow(10)
        await until(pilot, lambda: len(app.current.text) == 9)
        await pilot.press("escape")  # while the model computes token 11
        backend.allow(1000)
        await until(pilot, done(app), timeout=1)
        run = app.current
        assert run.stop_reason == "stopped" and len(run.text) == 11  # the one in flight, no more
        assert shown(app).endswith(run.text + " ⏹ stopped")
        assert str(app.query_one("#stats").content).startswith("stopped  ·  ")
        assert app.session.history[-1]["stop_reason"] == "stopped"


@run_async
async def test_temperature_from_the_controls_applies_mid_generation():
    # logits favour "x" only a little: at temperature 1 most tokens are other letters, greedy is all x
    backend = FakeBackend(script="x", margin=1.0, gated=True)
    app = make_app(backend, settings=Settings(temperature=1.0, max_new_tokens=80, seed=0))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "a")
        backend.allow(40)
        await until(pilot, lambda: len(app.current.text) == 39)
        box = app.query_one("#set-temperature", Input)
        box.focus()
        box.value = "0"
        await pilot.press("enter")
        backend.allow(100)
        await until(pilot, done(app))
        assert app.settings.temperature == 0 and app.current.generation.settings.temperature == 0
        text = app.current.text
        assert text[:41].count("x") < 15  # sampled at temperature 1 (token 41 was in flight)
        assert text[41:] == "x" * 39  # greedy from the next token on


@run_async
async def test_set_top_k_applies_and_shows_in_the_controls():
    backend = FakeBackend(script="x", margin=1.0)
    app = make_app(backend, settings=Settings(temperature=1.0, max_new_tokens=50, seed=0))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/set top-k 1")
        assert app.settings.top_k == 1 and app.query_one("#set-top_k", Input).value == "1"
        await send(pilot, "a")
        await until(pilot, done(app))
        assert app.current.text == "x" * 50


@run_async
async def test_bad_set_values_are_refused_with_a_message():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        before = app.settings
        await send(pilot, "/set temperature hot")
        assert app.notices[-1] == "temperature must be a number, not 'hot'"
        assert app.query_one("#prompt").text == "/set temperature hot"  # kept, to fix it
        await pilot.press("ctrl+u")
        await send(pilot, "/set top-p 2")
        assert "top-p must be a number in (0, 1]" in app.notices[-1]
        box = app.query_one("#set-max_new_tokens", Input)
        box.focus()
        box.value = "lots"
        await pilot.press("enter")
        assert "max-new-tokens must be a whole number" in app.notices[-1] and box.has_class("-invalid")
        assert app.settings == before


@run_async
async def test_commands_show_help_clear_regen_continue_copy_save_export(tmp_path):
    app = make_app(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/help")
        await send(pilot, "/show")
        notes = [str(n.content) for n in app.query("Note")]
        assert "/set NAME VALUE" in notes[0] and "Esc stop" in notes[0]
        assert "temperature  0.8" in notes[1] and "backend  torch on cpu" in notes[1]
        await send(pilot, "To")
        await until(pilot, done(app))
        first = app.current.text
        await pilot.press("ctrl+n")  # continue: the model is fed the prompt and everything so far
        await until(pilot, done(app))
        assert app.documents[-1].text == "To" + first + app.current.text
        assert app.current.context == "To" + first
        await pilot.press("ctrl+r")  # regenerate the last part: same context, replaces it
        await until(pilot, done(app))
        assert len(app.documents[-1].runs) == 2 and app.current.context == "To" + first
        await pilot.press("ctrl+o")
        assert app.clipboard == app.documents[-1].text
        await send(pilot, "/save")
        records = load_jsonl(app.session.path)
        assert len(records) == 3 and records[1]["prompt"] == "To" + first
        assert set(records[0]) >= {"prompt", "completion", "settings", "seed", "backend", "checkpoint",
                                   "checkpoint_sha256", "timing", "stop_reason", "tokens"}
        await send(pilot, f"/export {tmp_path / 'out.md'}")
        assert (tmp_path / "out.md").read_text().startswith("# gpt-tui session")
        await send(pilot, "/clear")
        assert not app.query(".document") and not app.query("Note") and len(app.session.history) == 3
        await send(pilot, "/regen")
        assert "nothing to regenerate" in app.notices[-1]


@run_async
async def test_unknown_characters_rejected_or_replaced_and_empty_prompt():
    app = make_app(settings=Settings(max_new_tokens=5, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "café ☕")
        assert "not in the model's vocabulary: 'é' '☕'" in app.notices[-1] and app.current is None
        assert app.query_one("#prompt").text == "café ☕"
        await pilot.press("ctrl+u")
        await send(pilot, "/set unknown replace")
        await send(pilot, "café")
        await until(pilot, done(app))
        assert "replaced 1 unknown character(s): 'é'" in app.notices[-1]
        assert shown(app).startswith("café")  # shown as typed
        await send(pilot, "")  # an empty prompt starts from the start-of-text token
        await until(pilot, done(app))
        assert app.current.context == "" and shown(app).endswith(START + app.current.text)


@run_async
async def test_a_prompt_longer_than_the_context_is_cropped_with_a_notice():
    app = make_app(FakeBackend(block_size=16), settings=Settings(max_new_tokens=3, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "To be, or not to be")
        await until(pilot, done(app))
        assert "the model sees only its last 16 tokens" in app.notices[-1]
        assert "context 16/16" in str(app.query_one("#stats").content)


@run_async
async def test_switching_backend_with_injected_factories():
    onnx = FakeBackend(script="onnx ", kind="onnx", device="CPUExecutionProvider", name="fake.onnx")
    progress_seen = []

    def make_onnx(progress):
        progress("exporting fake.pt to fake.onnx")
        progress_seen.append(True)
        return onnx

    def broken(progress):
        raise BackendError("fake.onnx is damaged")

    app = make_app(factories={"onnx": make_onnx}, settings=Settings(max_new_tokens=5, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        assert "backend torch  ·  device cpu" in str(app.query_one("#topbar").content)
        app.query_one("#backend", Select).value = "onnx"  # the control in the panel
        await until(pilot, lambda: app.backend_name == "onnx")
        assert progress_seen and "exporting fake.pt to fake.onnx" in app.notices
        assert "backend onnx  ·  device CPUExecutionProvider" in str(app.query_one("#topbar").content)
        await send(pilot, "a")
        await until(pilot, done(app))
        assert app.current.text == "onnx " and app.session.history[-1]["backend"] == "onnx"
        await send(pilot, "/backend torch")  # loaded before: switching back is instant
        assert app.backend_name == "torch" and app.query_one("#backend", Select).value == "torch"
        app.backends.factories["onnx"] = broken
        del app.backends.loaded["onnx"]
        await send(pilot, "/backend onnx")
        await until(pilot, lambda: "could not switch to onnx: fake.onnx is damaged" in app.notices[-1])
        assert app.backend_name == "torch" and app.query_one("#backend", Select).value == "torch"


@pytest.mark.slow  # waits out a switch, ~4 s
@run_async
async def test_a_generation_the_backend_switch_ends_says_why():
    torch_side = FakeBackend(gated=True)
    onnx = FakeBackend(script="onnx ", kind="onnx", device="CPUExecutionProvider", name="fake.onnx")
    app = make_app(torch_side, factories={"onnx": lambda progress: onnx},
                   settings=Settings(max_new_tokens=500, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "To")
        torch_side.allow(3)
        await until(pilot, lambda: len(app.current.text) >= 3)
        await send(pilot, "/backend onnx")
        await until(pilot, lambda: app.backend_name == "onnx")
        assert app.current.done and app.current.stop_reason == "stopped"
        assert any(n.startswith("the generation stopped: the backend changed while it ran")
                   for n in app.notices)


def test_onnx_factory_exports_once_into_a_cache_beside_the_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    exports, loads = [], []

    def export_onnx(src, out, opset=None, progress=None):
        progress("tracing")
        exports.append(src)
        out.write_bytes(b"onnx")
        return out

    monkeypatch.setitem(sys.modules, "export.onnx_export", types.SimpleNamespace(export_onnx=export_onnx))
    load = lambda p, provider, threads: loads.append(p) or "ort"  # noqa: E731
    monkeypatch.setitem(sys.modules, "export.ort_backend", types.SimpleNamespace(load_ort_backend=load))
    notices = []
    make = OnnxFactory(ckpt)
    assert make(notices.append) == "ort" and make(notices.append) == "ort"
    assert exports == [ckpt] and loads == [tmp_path / "model.onnx"] * 2  # exported on first use only
    assert notices[0].startswith("exporting model.pt to") and "tracing" in notices


@run_async
async def test_a_long_document_streams_in_chunks_and_only_the_last_is_redrawn():
    line = "To be, or not.\n"
    backend = FakeBackend(script=line, gated=True)
    app = make_app(backend, settings=Settings(max_new_tokens=len(line) * 40, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "A")
        backend.allow(len(line) * 20)
        await until(pilot, lambda: app.current.text.count("\n") == 20)
        view = app.documents[-1].view
        first = view.children[0].content
        assert len(view.children) == 2 and str(first) == "A" + line * 15 + line[:-1]  # 16 lines
        backend.allow(len(line) * 20)
        await until(pilot, done(app))
        assert view.children[0].content is first  # not re-wrapped while the rest streamed in
        assert str(view.content) == "A" + line * 40
        # on screen as one text: 16 + 16 + 8 lines and the empty one after the last newline
        assert [chunk.size.height for chunk in view.children] == [16, 16, 9]


@run_async
async def test_the_stats_bar_fills_in():
    app = make_app(settings=Settings(max_new_tokens=20, seed=5))
    async with app.run_test(size=SIZE) as pilot:
        assert str(app.query_one("#stats").content) == "ready"
        await send(pilot, "To")
        await until(pilot, done(app))
        # the fake clock ticks 10 ms a read: first token after one tick, then one token a tick
        assert str(app.query_one("#stats").content).split("  ·  ") == [
            "max tokens", "20 tokens", "100.0 tok/s", "first token 10 ms", "context 22/64", "seed 5",
            "ppl 1.00"]  # the fake model is sure of every token


@run_async
async def test_output_follows_the_end_until_the_user_scrolls_away():
    # 35 lines: more than the view holds
    app = make_app(FakeBackend(script="l\n"), settings=Settings(max_new_tokens=70, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        output = app.query_one(OutputView)
        await send(pilot, "a")
        await until(pilot, done(app))
        await pilot.pause()
        assert output.max_scroll_y > 0 and output.scroll_y == output.max_scroll_y
        output.focus()
        await pilot.press("home")  # the user scrolls up: stay there while more text arrives
        await pilot.press("ctrl+n")
        await until(pilot, done(app))
        await pilot.pause()
        assert output.scroll_y == 0 < output.max_scroll_y


@run_async
async def test_real_tiny_model(tiny_ckpt):
    from model.generate.torch_backend import load_backend

    app = make_app(load_backend(tiny_ckpt), settings=Settings(max_new_tokens=12, seed=0))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "ROMEO:")
        await until(pilot, done(app))
        run = app.current
        assert run.stop_reason in ("max_tokens", "eot") and run.timing.tokens == len(run.text) <= 12
        assert shown(app) == "ROMEO:" + run.text
        topbar = str(app.query_one("#topbar").content)
        assert "tiny.pt  ·  backend torch  ·  device cpu  ·  block 32" in topbar


# ---- snapshots: the main screen, with a frozen clock and a fixed seed -------------------------

def test_snapshot_start_screen(snap_compare):
    app = GPTApp(FakeBackend(), settings=Settings(seed=1), clock=FakeClock())
    assert snap_compare(app, terminal_size=SIZE, run_before=no_blink)


def test_snapshot_after_a_generation(snap_compare):
    app = GPTApp(FakeBackend(), settings=Settings(max_new_tokens=120, seed=1), clock=FakeClock())

    async def generate(pilot):
        no_blink(pilot)
        await send(pilot, "ROMEO:")
        await until(pilot, done(app))
        await send(pilot, "/show")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=generate)
