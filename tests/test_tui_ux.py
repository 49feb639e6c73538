"""The app as people coming from llama.cpp, ollama and oterm expect it (issue 21): history, Ctrl+C,
sessions that come back, the palette, Tab, the new sampling knobs, and the fixes."""

from __future__ import annotations

import pytest
from conftest import SIZE, done, make_app, run_async, send, shown, until
from fake_backend import FakeBackend, FakeClock
from textual.command import CommandList, CommandPalette
from textual.widgets import Input

from model.generate.backend import Settings
from tui.app import GPTApp
from tui.backends import exported_from
from tui.switch import OpenedModel
from tui.widgets import PromptArea


def prompt(app) -> PromptArea:
    return app.query_one(PromptArea)


@run_async
async def test_prompt_history_walks_with_up_and_down_and_survives_a_restart(tmp_path):
    path = tmp_path / "history.jsonl"
    app = make_app(history_path=path)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "ROMEO:")
        await until(pilot, done(app))
        await send(pilot, "/show")
    app = make_app(history_path=path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"dr")
        await pilot.press("up")
        assert prompt(app).text == "/show"
        await pilot.press("up")
        assert prompt(app).text == "ROMEO:"
        await pilot.press("up")  # the oldest: stays
        assert prompt(app).text == "ROMEO:"
        await pilot.press("down", "down")
        assert prompt(app).text == "dr"  # past the newest: what was being typed
        prompt(app).load_text("a\nb")  # inside a multi-line prompt Up moves the cursor, not the history
        prompt(app).move_cursor(prompt(app).document.end)
        await pilot.press("up")
        assert prompt(app).text == "a\nb" and prompt(app).cursor_location[0] == 0


@run_async
async def test_ctrl_c_stops_a_generation_and_idle_does_not_quit():
    backend = FakeBackend(gated=True)
    app = make_app(backend, settings=Settings(max_new_tokens=5000, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+c")  # idle: Textual's own Ctrl+C (copy in the prompt box); still running
        assert app.is_running and app.current is None
        await send(pilot, "To")
        backend.allow(5)
        await until(pilot, lambda: len(app.current.text) == 3)
        await pilot.press("ctrl+c")
        backend.allow(1000)
        await until(pilot, done(app), timeout=2)
        assert app.current.stop_reason == "stopped" and len(app.current.text) < 10
        assert app.is_running


@run_async
async def test_a_session_is_autosaved_and_reloads_identically(tmp_path):
    app = make_app(tmp_path=tmp_path, settings=Settings(max_new_tokens=12, seed=3, top_k=5))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "To")
        await until(pilot, done(app))
        await pilot.press("ctrl+n")
        await until(pilot, done(app))
        await pilot.press("ctrl+r")
        await until(pilot, done(app))
        await send(pilot, "/step")
        await send(pilot, "AB")
        await send(pilot, "")
        await send(pilot, "")  # two stepped tokens: recorded as they are taken
        texts = [d.text for d in app.documents]
        screen = shown(app).replace("▍", "")
        saved = app.session.path
        assert saved.is_file()  # saved after each generation already
        await pilot.press("ctrl+q")
    assert app.session.path == saved and len(app.documents) == 2
    again = make_app(tmp_path=tmp_path, session_file=saved, settings=Settings())
    async with again.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert [d.text for d in again.documents] == texts == ["To" + app.documents[0].runs[0].text
                                                             + app.documents[0].runs[1].text, "ABTo"]
        assert again.settings == app.settings  # the seed was set: it comes back
        assert shown(again) == screen
        await send(pilot, "/load nowhere.jsonl")
        assert "could not load nowhere.jsonl" in again.notices[-1]
        await send(pilot, "/load")  # the latest other session in the folder
        assert "loaded" in again.notices[-1] or "no other session" in again.notices[-1]


@pytest.mark.parametrize("way", ["/quit", "/exit", "/bye", "ctrl+d"])
@run_async
async def test_quit_exit_bye_and_ctrl_d_on_an_empty_prompt_quit_and_save(tmp_path, way):
    app = make_app(tmp_path=tmp_path, settings=Settings(max_new_tokens=5, seed=1))
    exits: list[str] = []

    def exit_app(*args, _exit=app.exit, **kwargs):
        exits.append(way)
        _exit(*args, **kwargs)

    app.exit = exit_app
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "To")
        await until(pilot, done(app))
        prompt(app).load_text("typed")
        await pilot.press("ctrl+d")  # text in the box: Ctrl+D edits (deletes forward), no quitting
        assert not exits
        prompt(app).clear()
        if way == "ctrl+d":
            await pilot.press("ctrl+d")
        else:
            await send(pilot, way)
        assert exits == [way]
    assert app.session.path.is_file() and "To" in app.session.path.read_text()


@run_async
async def test_the_palette_lists_commands_and_keys():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"/set")
        def listed() -> list[str]:
            return [str(o.prompt) for found in app.screen.query(CommandList) for o in found.options]

        await until(pilot, lambda: any("/set NAME VALUE" in p for p in listed()))
        await pilot.press("enter")  # it needs arguments: it goes to the prompt box to finish
        await until(pilot, lambda: prompt(app).text == "/set ")
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"conf")
        await until(pilot, lambda: any("F6  Confidence" in p for p in listed()))
        await pilot.press("enter")
        await until(pilot, lambda: app.output.colours)


@run_async
async def test_tab_completes_commands_and_setting_names():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        prompt(app).load_text("/se")
        prompt(app).move_cursor(prompt(app).document.end)
        await pilot.press("tab")
        assert prompt(app).text == "/set "
        await pilot.press(*"rep", "tab")
        assert prompt(app).text == "/set repetition-"
        await pilot.press("tab")  # ambiguous: a second Tab lists the candidates and keeps the focus
        assert prompt(app).has_focus and prompt(app).text == "/set repetition-"
        assert app.notices[-1] == "repetition-penalty  repetition-window"
        await pilot.press("p", "tab", *"1.3", "enter")
        assert app.settings.repetition_penalty == 1.3
        assert app.query_one("#set-repetition_penalty", Input).value == "1.3"
        assert prompt(app).has_focus


@run_async
async def test_min_p_and_repetition_penalty_from_set_and_the_panel():
    backend = FakeBackend(probs={"s": 0.5, "o": 0.4, " ": 0.1})
    app = make_app(backend, settings=Settings(temperature=0, max_new_tokens=6, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "x")
        await until(pilot, done(app))
        assert app.current.text == "ssssss"  # greedy loops
        await send(pilot, "/set repetition-penalty 2")
        await send(pilot, "/set repetition-window 1")
        await send(pilot, "x")
        await until(pilot, done(app))
        assert app.current.text == "sosososo"[:6]
        await pilot.press("f3")  # the last token, "o" after "s": the penalty moved greedy off "s"
        view = app.next_token.view
        assert [(r.text, r.kept) for r in view.rows[:2]] == [("s", False), ("o", True)]
        await send(pilot, "/set temperature 1")
        await send(pilot, "/set min-p 0.7")
        view = app.next_token.view  # redrawn for the new knobs: "s" (penalized: 0.25 against 0.4) goes
        assert view.kept == 1 and [r.kept for r in view.rows] == [False, True, False] + [False] * 7
        assert "min-p 0.7 · repetition penalty 2 over 1" in str(app.query_one("#next-token-body").content)
        assert app.query_one("#set-min_p", Input).value == "0.7"


@run_async
async def test_stop_strings_are_removed_unless_kept():
    for keep, tail in ((False, "To"), (True, "To be")):
        app = make_app(settings=Settings(max_new_tokens=40, seed=1, stop=(" be",)), keep_stop=keep)
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "/set stop \" be\",\" or, not\"")
            assert app.settings.stop == (" be", " or, not")  # a quoted stop string keeps its comma
            await send(pilot, "A")
            await until(pilot, done(app))
            assert app.current.stop_reason == "stop_string" and app.documents[-1].text == "A" + tail
            assert app.session.history[-1]["completion"] == tail


@run_async
async def test_refused_values_show_the_value_in_force_and_commands_come_back_selected():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        box = app.query_one("#set-max_new_tokens", Input)
        box.focus()
        box.value = "lots"
        await pilot.press("enter")
        assert box.value == "30" and box.has_class("-invalid")
        assert app.notices[-1] == "max-new-tokens must be a whole number, not 'lots'; still 30"
        prompt(app).focus()
        await send(pilot, "/set temperature -1")
        assert prompt(app).selected_text == "/set temperature -1"
        await pilot.press(*"/set temperature 1", "enter")  # typing replaces it
        assert app.settings.temperature == 1.0


@run_async
async def test_a_slash_prompt_on_a_vocabulary_without_a_slash_says_so():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "//etc")
        assert "vocabulary has no '/'" in app.notices[-1] and app.current is None


@run_async
async def test_step_mode_counts_context_once_and_picking_end_of_text_ends_the_text():
    backend = FakeBackend(probs={"a": 0.6, "": 0.3, "b": 0.1})
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f7")
        await send(pilot, "AB")
        for _ in range(3):
            await pilot.press("f8")
        assert "context 5/64" in str(app.stats.content)
        await pilot.press("f9")
        assert "context 4/64" in str(app.stats.content)
        await send(pilot, "/pick 2")  # end-of-text is the second candidate
        assert app.step.stepper is None and app.current.stop_reason == "eot"
        assert "end of text" in app.notices[-1]
        assert app.session.history[-1]["completion"] == app.current.text != ""
        assert app.session.history[-1]["stop_reason"] == "eot" and len(app.session.history) == 1


@run_async
async def test_tokens_shows_what_the_model_saw():
    app = make_app(FakeBackend(block_size=8), settings=Settings(max_new_tokens=3, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/tokens")
        assert "no tokens to show" in app.notices[-1]
        await send(pilot, "To be, or not")  # cropped to the last 8 characters
        await until(pilot, done(app))
        await send(pilot, "/tokens")
        note = str(app.query("Note").last().content)
        space = app.backend.tokenizer.stoi[" "]
        assert note.startswith("fed 8 token(s) (id:text): ") and f"{space}:␣ " in note  # insight.piece
        assert note.splitlines()[1].startswith("generated 3: ")
        stoi = backend_stoi = app.backend.tokenizer.stoi  # noqa: F841
        assert f"{stoi['n']}:n {stoi['o']}:o {stoi['t']}:t" in note


@run_async
async def test_copy_a_clicked_document_says_sent_and_writes_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TMUX", "/tmp/tmux-0/default,1,0")
    app = make_app(tmp_path=tmp_path, settings=Settings(max_new_tokens=5, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "A")
        await until(pilot, done(app))
        await send(pilot, "B")
        await until(pilot, done(app))
        await pilot.click(app.documents[0].view)
        await pilot.press("ctrl+o")
        assert app.clipboard == app.documents[0].text
        assert app.notices[-1].startswith("sent 6 characters to the terminal's clipboard (OSC 52; tmux")
        assert (tmp_path / "clipboard.txt").read_text() == app.documents[0].text


@run_async
async def test_model_opens_another_checkpoint_and_file_names_stay_literal():
    other = FakeBackend(script="other ", name="/runs/[@click=app.quit]QUIT/ckpt\x1b.pt")
    opened = []

    def open_model(path):
        opened.append(path)
        if path == "missing.pt":
            raise ValueError("checkpoint missing.pt not found\x1b[2J")
        return OpenedModel({"torch": lambda progress: other})

    app = make_app(open_model=open_model, settings=Settings(max_new_tokens=6, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/model missing.pt")
        await until(pilot, lambda: "could not switch to missing.pt" in app.notices[-1])
        assert app.notices[-1].endswith("not found␛[2J")  # a control sequence is shown, not sent
        await send(pilot, "/model runs/x/ckpt.pt")
        await until(pilot, lambda: app.backend is other)
        top = str(app.query_one("#topbar").content)
        assert top.startswith("[@click=app.quit]QUIT/ckpt␛.pt  ·  backend torch")  # the run folder, as text
        await send(pilot, "a")
        await until(pilot, done(app))
        assert app.current.text == "other "
        assert app.is_running


@run_async
async def test_backend_torch_after_model_onnx_runs_the_checkpoint_it_was_exported_from(tmp_path):
    (tmp_path / "sc.pt").write_bytes(b"")
    (tmp_path / "sc.int8.onnx").write_bytes(b"")
    session_ckpt = tmp_path / "session.pt"
    source, why = exported_from(tmp_path / "sc.int8.onnx", session_ckpt)
    assert source == tmp_path / "sc.pt"
    assert why.endswith("sc.pt, the checkpoint sc.int8.onnx was exported from")
    source, why = exported_from(tmp_path / "other.onnx", session_ckpt)  # none beside it: the session's
    assert source == session_ckpt and why.endswith("session.pt, the session's --ckpt (other.onnx has no "
                                                   "other.pt beside it)")

    onnx = FakeBackend(script="onnx ", kind="onnx", name=str(tmp_path / "sc.int8.onnx"))
    torch = FakeBackend(script="torch ", name=str(tmp_path / "sc.pt"))
    made = []

    def open_model(path):
        source, why = exported_from(tmp_path / path, session_ckpt)
        makers = {"onnx": lambda progress: made.append("onnx") or onnx,
                  "torch": lambda progress: made.append(source.name) or torch}
        return OpenedModel(makers, "onnx", {"torch": why})

    app = make_app(open_model=open_model, settings=Settings(max_new_tokens=6, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/model sc.int8.onnx")  # started on torch: the .onnx is ONNX Runtime's
        await until(pilot, lambda: app.backend is onnx)
        assert app.backend_name == "onnx" and made == ["onnx"]
        await send(pilot, "/backend torch")
        await until(pilot, lambda: app.backend is torch)
        assert made == ["onnx", "sc.pt"]
        assert app.notices[-1] == (f"now generating with torch on cpu from {tmp_path / 'sc.pt'}, the "
                                   "checkpoint sc.int8.onnx was exported from")
        await send(pilot, "a")
        await until(pilot, done(app))
        assert app.current.text == "torch "


@run_async
async def test_small_screen_panels_take_turns_and_ab_shows_its_result():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        assert not app.controls.display  # the transcript first; F2 brings the controls
        await pilot.press("f2")
        assert app.controls.display
        await send(pilot, "/ab")
        ab = app.query_one("#ab")
        assert ab.display and not app.controls.display  # one panel at a time: the result is in view
        assert app.query_one("#panels").region.width > 0


def test_snapshot_main_screen_80x24(snap_compare):
    app = GPTApp(FakeBackend(), settings=Settings(max_new_tokens=120, seed=1), clock=FakeClock())

    async def generate(pilot):
        pilot.app.query_one("#prompt").cursor_blink = False
        await send(pilot, "ROMEO:")
        await until(pilot, done(app))
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=generate)


@run_async
async def test_at_80_by_24_the_bars_keep_ppl_and_vocab():
    # the case: a 256-token window filled, a 10-digit fresh seed, a run folder in the name
    backend = FakeBackend(name="out/shakespeare-char/ckpt.pt", block_size=256, device="CPUExecutionProvider")
    app = make_app(backend, settings=Settings(max_new_tokens=300), new_seed=lambda: 1234567890)
    async with app.run_test(size=(80, 24)) as pilot:
        await send(pilot, "ROMEO:")
        await until(pilot, done(app))
        stats = str(app.query_one("#stats").content)
        top = str(app.query_one("#topbar").content)
        assert len(stats) <= 78 and len(top) <= 78  # the bars' padding takes the other two columns
        assert stats.startswith("max tokens · 300 tok · ")
        assert stats.endswith(f"ppl {app.current.perplexity:.2f}")
        assert "seed" not in stats  # the 10-digit seed goes first (/show and the session keep it)
        assert top == "shakespeare-char/ckpt.pt · torch · CPUExecutionProvider · block 256 · vocab 61"
        await pilot.resize_terminal(120, 30)
        await pilot.pause()
        assert "seed 1234567890" in str(app.query_one("#stats").content)
        assert "backend torch  ·  device CPUExecutionProvider" in str(app.query_one("#topbar").content)


@run_async
async def test_a_prompt_sent_while_a_backend_loads_runs_on_it_once_it_is_ready():
    import threading

    ready = threading.Event()
    onnx = FakeBackend(script="onnx ", kind="onnx", device="CPUExecutionProvider")

    def slow_onnx(progress):
        ready.wait(10)
        return onnx

    app = make_app(factories={"onnx": slow_onnx}, settings=Settings(max_new_tokens=5, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/backend onnx")
        await send(pilot, "To")
        await pilot.pause()
        assert app.current is None and app.backend_name == "torch"  # waiting, not started on torch
        assert any("generates as soon as that is ready" in n for n in app.notices)
        ready.set()
        await until(pilot, lambda: app.current is not None and app.current.done)
        assert (app.current.info.backend, app.current.text, app.current.stop_reason) == ("onnx", "onnx ",
                                                                                        "max_tokens")
        assert onnx.prompts == ["To"]


@run_async
async def test_a_notice_lies_on_the_top_bar_not_on_the_transcript():
    app = GPTApp(FakeBackend(), settings=Settings(max_new_tokens=20, seed=1), clock=FakeClock())
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await send(pilot, "ROMEO:")
        await until(pilot, done(app))
        app.notify_text("now generating with torch on cpu")
        await until(pilot, lambda: len(app.screen.query("Toast")) == 1)
        toast = app.screen.query_one("Toast").region
        # the top bar's right end, as wide as its text
        assert (toast.y, toast.height, toast.width) == (0, 1, len("now generating with torch on cpu") + 3)
        assert not toast.overlaps(app.query_one("#output").region)
