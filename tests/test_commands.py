"""Typed commands, settings as text, session files and timing: the app's pure parts."""

import json
from pathlib import Path

import pytest

from model.generate.backend import Settings
from tui import commands
from tui import settings as settings_text
from tui.session import file_sha256, load_jsonl, save_jsonl, to_markdown
from tui.stats import Timing, status_line

S = Settings(temperature=0.8, top_k=None, seed=None)


@pytest.mark.parametrize("line, field, value", [
    ("/set temperature 0.5", "temperature", 0.5),
    ("/set temp 0", "temperature", 0.0),
    ("/set top-k 40", "top_k", 40),
    ("/set top_k off", "top_k", None),
    ("/set top-p 0.9", "top_p", 0.9),
    ("/set max-new-tokens 64", "max_new_tokens", 64),
    ("/set seed 7", "seed", 7),
    ("/set seed random", "seed", None),
    ("/set stop \\n\\n,THE END", "stop", ("\n\n", "THE END")),
    ("/set unknown replace", "unknown", "replace"),
    ("/SET Temperature 1.2", "temperature", 1.2),
    ("/set frequency-penalty 0.5", "frequency_penalty", 0.5),
    ("/set presence -1.5", "presence_penalty", -1.5),
])
def test_set_changes_one_setting(line, field, value):
    command = commands.parse(line, S)
    assert command.name == "set"
    assert getattr(command.settings, field) == value
    assert command.settings.max_new_tokens == S.max_new_tokens or field == "max_new_tokens"


@pytest.mark.parametrize("line, message", [
    ("/set temperature hot", "temperature must be a number, not 'hot'"),
    ("/set temperature -1", "temperature must be a number >= 0 (0 = greedy), not -1.0"),
    ("/set top-k 0", "top-k must be a whole number >= 1, or off, not 0"),
    ("/set seed 1180591620717411303424", "seed must be a whole number from 0 to 2^63-1"),
    ("/set max-new-tokens 1000000000", "max-new-tokens must be a whole number from 1 to 100000"),
    ("/set top-k 2.5", "top-k must be a whole number or 'off', not '2.5'"),
    ("/set top-p 0", "top-p must be a number in (0, 1]"),
    ("/set max-new-tokens 0", "max-new-tokens must be a whole number from 1"),
    ("/set unknown ignore", "unknown must be 'reject'"),
    ("/set colour blue", "unknown setting 'colour'"),
    ("/set frequency-penalty 3", "frequency-penalty must be a number from -2 to 2 (0 = off), not 3.0"),
    ("/set presence-penalty lots", "presence-penalty must be a number, not 'lots'"),
    ("/set temperature", "usage: /set NAME VALUE"),
    ("/frobnicate", "unknown command /frobnicate; /help lists the commands"),
    ("/", "empty command"),
    ("/show all", "usage: /show or /show model"),
    ("/backend tensorflow", "usage: /backend torch|onnx"),
])
def test_bad_commands_say_what_to_type(line, message):
    with pytest.raises(commands.CommandError) as e:
        commands.parse(line, S)
    assert message in str(e.value)


def test_commands_and_prompts_that_start_with_a_slash():
    assert commands.is_command("/help") and not commands.is_command("//etc/passwd")
    assert not commands.is_command("ROMEO:")
    assert commands.prompt_text("//etc") == "/etc" and commands.prompt_text("x") == "x"
    assert commands.parse("/save my session.jsonl", S).args == ("my session.jsonl",)
    assert commands.parse("/export", S).args == ()
    assert commands.parse("/backend ONNX", S).args == ("onnx",)
    assert all(f"/{name}" in commands.help_text() for name in commands.COMMANDS)


def test_settings_from_json_values():
    s = settings_text.replace(S, {"temperature": 0, "top_k": 5, "stop": "\n", "unknown": "reject"})
    assert (s.temperature, s.top_k, s.stop, s.unknown) == (0, 5, ("\n",), "reject")
    for bad in ({"top_k": 2.0}, {"max_new_tokens": True}, {"top_p": "0.9"}, {"temperature": None}):
        with pytest.raises(ValueError):
            settings_text.replace(S, bad)
    assert settings_text.to_dict(s)["stop"] == ["\n"]
    assert settings_text.unescape(r"a\nb\tc\\n \d \x") == "a\nb\tc\\n \\d \\x"
    shown = settings_text.describe(s)
    assert "top-k  5" in shown and "seed  random" in shown and "unknown  reject" in shown


def test_timing_with_a_fake_clock():
    ticks = iter([10.0, 10.5, 10.6, 10.7, 11.0])
    t = Timing(lambda: next(ticks))
    t.token(), t.token(), t.token()
    t.finish()
    assert (t.ttft, t.total, t.tokens) == (0.5, 1.0, 3)
    assert t.tokens_per_s == pytest.approx(2 / 0.2)
    line = status_line(t, "eot", 40, 256, 7, generating=False)
    assert line.split("  ·  ") == ["end of text", "3 tokens", "10.0 tok/s", "first token 500 ms",
                                   "context 40/256", "seed 7"]


def test_session_jsonl_and_markdown(tmp_path):
    rec = {"prompt": "A", "completion": "```code```", "tokens": 3, "stop_reason": "max_tokens",
           "settings": {"temperature": 0.8, "top_k": None, "top_p": 1.0}, "seed": 1, "backend": "torch",
           "checkpoint": "x.pt", "checkpoint_sha256": None}
    path = save_jsonl([rec, rec], tmp_path / "s" / "session.jsonl")
    assert load_jsonl(path) == [rec, rec]
    assert json.loads(path.read_text().splitlines()[0])["completion"] == "```code```"
    md = to_markdown([rec])
    assert "````\n```code```\n````" in md  # a fence longer than the text's backticks
    assert "max tokens" in md and "seed 1" in md
    (tmp_path / "f").write_bytes(b"abc")
    assert file_sha256(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert file_sha256(tmp_path / "missing") is None


def test_commands_keys_help_and_readme_come_from_one_table():
    from tui.app import GPTApp

    for name, spec in commands.COMMANDS.items():  # every command runs an action of the app
        assert callable(getattr(GPTApp, f"action_{spec.action}", None)), name
    keys = [(b.key, b.action, b.description) for b in GPTApp.BINDINGS]
    text = commands.help_text(keys)
    assert "/clear                clear the output (Ctrl+L)" in text  # the key bound to the same action
    assert "/step                 step mode on/off: one token at a time (F7)" in text
    assert "keys: Enter send · Ctrl+J newline · ↑/↓ earlier prompts · Tab complete a /command · " \
           "Ctrl+D quit · Ctrl+P palette · Esc stop · Ctrl+C stop · F2 controls" in text
    assert "F5 A/B · F6 confidence" in text and "Alt+← previous token · Alt+→ next token" in text
    assert "Ctrl+P palette" in text
    guide = (Path(__file__).resolve().parents[1] / "docs" / "app.md").read_text(encoding="utf-8")
    # the app guide's tables are made from the same tables: paste these when they change
    for table in (commands.key_table(keys), commands.command_table()):
        assert table in guide, "docs/app.md's table is out of date; it should read:\n" + table


@pytest.mark.parametrize("line, completed", [
    ("/se", "/set "), ("/st", "/step"), ("/s", None), ("/set rep", "/set repetition-"),
    ("/set min", "/set min-p "), ("/backend o", "/backend onnx "), ("/x", None), ("hello", None),
    ("/help", None), ("/set temperature 0", None),
])
def test_tab_completion(line, completed):
    assert commands.complete(line) == completed


def test_tab_completes_paths_for_the_commands_that_take_one(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    for name in ("shakespeare.pt", "shakespeare.onnx", "notes.txt", "s1.jsonl", ".hidden.pt"):
        (tmp_path / name).write_text("")
    monkeypatch.chdir(tmp_path)
    assert commands.candidates("/model s") == ["shakespeare.onnx", "shakespeare.pt"]  # only what /model opens
    assert commands.complete("/model s") == "/model shakespeare."
    assert commands.complete("/model r") == "/model runs/"  # a folder: its slash, ready for the next Tab
    assert commands.candidates("/load ") == ["runs/", "s1.jsonl"]
    assert commands.candidates("/export n") == ["notes.txt"]
    assert commands.candidates("/model .h") == [".hidden.pt"]
    assert commands.candidates(f"/model {tmp_path}/sh") == [f"{tmp_path}/shakespeare.onnx",
                                                            f"{tmp_path}/shakespeare.pt"]
    assert commands.candidates("/model nowhere/x") == [] and commands.complete("/model zzz") is None
    assert commands.candidates("/set rep") == ["repetition-penalty", "repetition-window"]


def test_set_stop_alone_says_how_to_give_or_clear_stop_strings():
    with pytest.raises(commands.CommandError, match=r"usage: /set stop TEXT \(several: comma-separated, .*"
                                                    r"or /set stop off"):
        commands.parse("/set stop", S)
    assert commands.parse("/set stop off", Settings(stop=("x",))).settings.stop == ()
    assert commands.parse("/bye", S).name == commands.parse("/exit", S).name == "quit"


def test_stop_strings_split_at_commas_unless_quoted():
    assert settings_text.split_stops('"a, b",\\n\\n, c') == ("a, b", "\n\n", " c")
    assert commands.parse('/set stop "x,y"', S).settings.stop == ("x,y",)
    assert commands.parse("/set min-p 0.1", S).settings.min_p == 0.1
    assert commands.parse("/set repetition-window 8", S).settings.repetition_window == 8
    with pytest.raises(commands.CommandError, match="repetition-window must be a whole number"):
        commands.parse("/set repetition-window 1.5", S)
    with pytest.raises(commands.CommandError, match="usage: /model PATH"):
        commands.parse("/model", S)
