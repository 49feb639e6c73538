"""Hostile input to gpt-tui (issue 34): escapes from files and models never reach the terminal raw,
Ctrl+C at start-up is one line and exit 130, a huge number costs one batch line, a malformed
session file is refused in one line."""

from __future__ import annotations

import io
import json
import re

import pytest
from click.testing import CliRunner
from conftest import SIZE, make_app, run_async, until
from fake_backend import FakeBackend, FakeClock

from model.generate.backend import Settings
from tui import cli
from tui.bars import StatsBar
from tui.batch import read_items, run_batch
from tui.oneshot import run_oneshot
from tui.session import SessionError, read_session, save_jsonl
from tui.widgets import PromptArea

ESC_SEQUENCES = "\x1b]0;pwned\x07 \x1b]52;c;ZWNobyBoaQ==\x07 \x9b31m"
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
HUGE = "1" + "0" * 5000  # past Python's 4300-digit limit for int(): json.loads raises ValueError


# ---- -p: raw to a pipe, visible to a terminal ------------------------------------------------

class _Event:
    def __init__(self, text: str):
        self.text = text


class _Generation:
    """A stream of fixed pieces, as model.generate.engine.Generation iterates them."""

    def __init__(self, pieces: list[str]):
        self.pieces, self.prompt_ids, self.stop_reason = pieces, [1], "max_tokens"

    def __iter__(self):
        return (_Event(p) for p in self.pieces)

    def close(self) -> None:
        pass


class _EscapingBackend:
    def __init__(self, pieces: list[str]):
        self.pieces = pieces

    def stream(self, prompt, settings):
        return _Generation(self.pieces)

    def info(self):
        return type("Info", (), {"block_size": 64})()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("out, raw", [(io.StringIO(), True), (_Terminal(), False)])
def test_oneshot_is_byte_exact_to_a_pipe_and_visible_to_a_terminal(out, raw):
    pieces = ["ok\n", "\x1b]0;pw", "ned\x07", "\tend\x9b"]  # a sequence split across tokens too
    run_oneshot(_EscapingBackend(pieces), "x", Settings(seed=1), out)
    if raw:
        assert out.getvalue() == "".join(pieces)
    else:
        assert not UNSAFE.search(out.getvalue())
        assert out.getvalue() == "ok\n␛]0;pwned␇\tend\\x9b"  # newline and tab kept


# ---- text from files in the app --------------------------------------------------------------

@run_async
async def test_session_errors_and_recalled_history_are_drawn_visibly(tmp_path):
    session = tmp_path / "hostile.jsonl"
    save_jsonl([{"prompt": "ROMEO:", "completion": "x", "error": ESC_SEQUENCES, "tokens": 1,
                 "stop_reason": None, "seed": 1}], session)
    history = tmp_path / "history.jsonl"
    history.write_text(json.dumps("evil " + ESC_SEQUENCES) + "\n", encoding="utf-8")
    app = make_app(tmp_path=tmp_path, session_file=session, history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.current is not None)
        stats = str(app.query_one(StatsBar).render())
        assert "pwned" in stats and not UNSAFE.search(stats)
        await pilot.press("up")
        recalled = app.query_one(PromptArea).text
        assert recalled.startswith("evil ") and not UNSAFE.search(recalled)
        app.output.add_note("checkpoint " + ESC_SEQUENCES)  # /show quotes paths and metadata
        await pilot.pause()
        notes = " ".join(str(n.render()) for n in app.query(".note, Note"))
        assert "checkpoint" in notes and not UNSAFE.search(notes)


# ---- Ctrl+C at start-up ----------------------------------------------------------------------

def test_ctrl_c_while_options_are_parsed_is_one_line_and_130(monkeypatch):
    # PyTorch is first imported by an option's callback, before the command runs
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_defaults", interrupt)
    result = CliRunner().invoke(cli.main, ["-p", "x"])
    assert result.exit_code == 130 and "Aborted" not in result.output
    assert result.output.strip() == "interrupted"


def test_ctrl_c_while_the_model_loads_is_one_line_and_130(monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "resolve_ckpt", interrupt)
    result = CliRunner().invoke(cli.main, ["-p", "x"])
    assert result.exit_code == 130 and result.output.strip() == "interrupted"


# ---- batch: numbers ---------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("seed", HUGE), ("max_new_tokens", HUGE), ("id", HUGE), ("temperature", "1" + "0" * 4000),
    ("top_k", "1" + "0" * 4000), ("temperature", "1e999"), ("top_p", "NaN"), ("min_p", "-Infinity"),
    ("seed", "-1"), ("max_new_tokens", "0"), ("repetition_window", "-5"), ("top_k", "2.5"),
    ("seed", "[1]"), ("stop", "{\"a\": 1}"), ("max_new_tokens", "true"),
])
def test_a_bad_number_costs_only_its_own_line(field, value):
    bad = f'{{"prompt": "ROMEO:", "{field}": {value}}}'
    lines = ['{"prompt": "ROMEO:"}', bad, '{"prompt": "JULIET:"}']
    out, log = io.StringIO(), []
    summary = run_batch(FakeBackend(), read_items(lines), Settings(max_new_tokens=3, seed=1), out,
                        log.append, clock=FakeClock())
    results = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(results) == 3 and summary.failed == 1
    assert results[0]["error"] is None and results[2]["error"] is None and results[2]["tokens"] == 3
    assert results[1]["error"] and "\n" not in results[1]["error"] and len(results[1]["error"]) < 300


# ---- sessions ---------------------------------------------------------------------------------

GOOD = {"prompt": "ROMEO:", "completion": "x", "tokens": 1, "seed": 1}
HOSTILE_SESSIONS = {
    "a list": b"[1, 2]\n",
    "a string": b'"prompt"\n',
    "no prompt": b'{"completion": "x"}\n',
    "no completion": b'{"prompt": "x"}\n',
    "prompt a number": b'{"prompt": 1, "completion": "x"}\n',
    "settings a list": json.dumps(GOOD | {"settings": [1]}).encode(),
    "document a list": json.dumps(GOOD | {"document": [1]}).encode(),
    "backend a list": json.dumps(GOOD | {"backend": ["torch"]}).encode(),
    "error a dict": json.dumps(GOOD | {"error": {"a": 1}}).encode(),
    "stop reason a list": json.dumps(GOOD | {"stop_reason": []}).encode(),
    "tokens a string": json.dumps(GOOD | {"tokens": "5"}).encode(),
    "tokens NaN": b'{"prompt": "x", "completion": "y", "tokens": NaN}\n',
    "seed huge": b'{"prompt": "x", "completion": "y", "seed": ' + HUGE.encode() + b'}\n',
    "seed too big": json.dumps(GOOD | {"seed": 2**64, "fixed_seed": True}).encode(),
    "seed negative": json.dumps(GOOD | {"seed": -1, "fixed_seed": True}).encode(),
    "fixed seed a string": json.dumps(GOOD | {"fixed_seed": "yes"}).encode(),
    "lone surrogate": b'{"prompt": "\\ud800", "completion": "y"}\n',
    "latin-1": '{"prompt": "café", "completion": "y"}\n'.encode("latin-1"),
    "binary": bytes(range(256)),
    "not json": b"ROMEO:\n",
    "deep": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("name", HOSTILE_SESSIONS)
def test_a_malformed_session_file_is_refused_in_one_line(tmp_path, name):
    path = tmp_path / "s.jsonl"
    path.write_bytes(HOSTILE_SESSIONS[name])
    with pytest.raises(SessionError) as refused:
        read_session(path)
    message = str(refused.value)
    assert str(path) in message and "\n" not in message and len(message) < 400


def test_a_huge_session_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr("tui.session.MAX_SESSION_BYTES", 100)
    path = tmp_path / "s.jsonl"
    save_jsonl([GOOD] * 10, path)
    with pytest.raises(SessionError, match="too big"):
        read_session(path)


def test_a_session_file_the_app_wrote_is_read_back(tmp_path):
    path = save_jsonl([GOOD | {"document": 0, "run": 0, "fixed_seed": True, "settings": {},
                               "error": None, "stop_reason": "eot"}], tmp_path / "s.jsonl")
    assert read_session(path)[0]["prompt"] == "ROMEO:"


def test_a_malformed_session_on_the_command_line_exits_1_before_loading(tmp_path, monkeypatch):
    path = tmp_path / "s.jsonl"
    path.write_bytes(HOSTILE_SESSIONS["seed huge"])
    monkeypatch.setattr(cli, "resolve_ckpt", lambda name: pytest.fail("the model must not load"))
    result = CliRunner().invoke(cli.main, ["--session", str(path)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: could not load") and result.output.count("\n") == 1


@run_async
async def test_load_of_a_malformed_session_keeps_the_current_work(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(HOSTILE_SESSIONS["document a list"])
    app = make_app(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        app.query_one(PromptArea).load_text("ROMEO:")
        await pilot.press("enter")
        await until(pilot, lambda: app.current is not None and app.current.done)
        app.action_load(str(bad))
        await pilot.pause()
        assert "could not load" in app.notices[-1]
        assert len(app.documents) == 1 and app.session.path != bad
