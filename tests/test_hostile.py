"""Hostile text everywhere it enters: batch input (bytes, JSON, settings), what reaches the terminal,
the output file, and prompts through the BPE tokenizer. Property tests draw arbitrary unicode,
lone surrogates, control characters and raw bytes."""

import errno
import io
import json
import os
import re

import pytest
from click.testing import CliRunner
from fake_backend import CHARS, FakeBackend, FakeClock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.generate.backend import Settings
from model.terminal import visible
from tui import batch as batch_module
from tui.batch import EXIT_ITEMS_FAILED, LineFile, OutputError, json_line, read_items, run_batch
from tui.cli import main

# anything a terminal may act on: C0 controls but newline and tab, DEL, C1 controls, surrogates
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
SETTLE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(backend, lines, settings=None):
    out, log = io.StringIO(), []
    summary = run_batch(backend, read_items(lines), settings or Settings(max_new_tokens=4, seed=1), out,
                        log.append, clock=FakeClock())
    return [json.loads(line) for line in out.getvalue().splitlines()], summary, log


@SETTLE
@given(st.text())
def test_visible_leaves_nothing_a_terminal_acts_on(text):
    shown = visible(text)
    assert not UNSAFE.search(shown)
    shown.encode("utf-8")  # printable on any UTF-8 terminal: no lone surrogate left
    assert visible(shown) == shown  # and nothing to escape twice


def test_visible_shows_c1_controls_and_surrogates_as_escapes():
    assert visible("a\x1b]2;title\x07b\x9b31mc\ud800") == "a␛]2;title␇b\\x9b31mc\\ud800"


@SETTLE
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n"), max_size=6))
def test_any_bytes_give_one_item_or_error_per_line_and_never_raise(lines):
    items = list(read_items(lines))
    for item in items:
        assert (item.prompt is None) == (item.error is not None) or item.error is not None
        if item.prompt is not None:
            item.prompt.encode("utf-8")


@SETTLE
@given(st.lists(st.one_of(
    st.text(max_size=20).map(lambda t: json.dumps({"id": t, "prompt": t})),
    st.text(max_size=20).map(lambda t: json.dumps({"prompt": t}, ensure_ascii=False)),
    st.text(max_size=20),
), min_size=1, max_size=5))
def test_any_jsonl_gives_one_whole_safe_line_per_item(lines):
    """Ids and prompts of arbitrary unicode (lone surrogates arrive as \\ud800 escapes): every
    item gets exactly one line, valid JSON, and neither output nor log can drive a terminal."""
    text = "\n".join(["{}"] + [line.replace("\n", " ").replace("\r", " ") for line in lines])
    out, log = io.StringIO(), []
    run_batch(FakeBackend(), read_items(io.StringIO(text), "jsonl"), Settings(max_new_tokens=3, seed=1),
              out, log.append, clock=FakeClock())
    rows = out.getvalue().splitlines()
    assert len(rows) == len([line for line in text.split("\n") if line.strip()])
    for row in rows:
        json.loads(row)
        assert not UNSAFE.search(row)
    for message in log:
        assert not UNSAFE.search(message)


def test_bad_bytes_cost_only_their_own_line_and_a_bom_is_skipped():
    lines = [b"\xef\xbb\xbfROMEO:\n", b"caf\xe9 latin-1\n", b"\x00\xff\xfe binary\n", b"JULIET:\n"]
    rows, summary, _ = run(FakeBackend(), lines)
    assert [r["id"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["prompt"] == "ROMEO:" and rows[0]["error"] is None  # the BOM is not part of it
    assert rows[1]["error"] == "line 2 is not valid UTF-8 (byte 0xe9 at column 4)"
    assert rows[2]["error"] == "line 3 is not valid UTF-8 (byte 0xff at column 2)"
    assert rows[3]["completion"] == "To b" and summary.exit_code == EXIT_ITEMS_FAILED


def test_a_lone_surrogate_is_an_error_line_not_a_crash():
    lines = ['{"prompt": "ok"}', '{"prompt": "\\ud800"}', '{"id": "\\udfff", "prompt": "x"}',
             '{"prompt": "ok"}']
    rows, summary, _ = run(FakeBackend(), lines)
    assert [r["error"] for r in rows] == [
        None,
        "line 2 holds a lone surrogate (\\ud800), which is not text; fix the \\u escapes",
        "line 3 holds a lone surrogate (\\udfff), which is not text; fix the \\u escapes",
        None,
    ]


def test_terminal_sequences_in_ids_and_text_never_reach_the_terminal_raw():
    osc = "\x1b]2;pwned\x07\x1b]52;c;Y2xpcA==\x07\x9b2J"
    rows, _, log = run(FakeBackend(script="a\x1b[31mb\x9bc"),
                       [json.dumps({"id": osc, "prompt": "ab"}), json.dumps({"id": 7, "prompt": "\x9b"})])
    assert rows[0]["id"] == osc  # the data is kept exactly in the JSON ...
    assert all(not UNSAFE.search(m) for m in log)  # ... the log shows it harmlessly
    assert log[0].startswith("[␛]2;pwned␇␛]52;c;Y2xpcA==␇\\x9b2J] ")
    line = json_line(rows[0])
    assert "\x9b" not in line and "\\u009b" in line and json.loads(line)["id"] == osc


@pytest.mark.parametrize("field, value, error", [
    ("seed", 2**70, "bad settings: seed must be a whole number from 0 to 2^63-1"),
    ("temperature", "0.5", "bad settings: temperature must be a number >= 0 (0 = greedy), not '0.5'"),
    ("top_k", "lots", "bad settings: top-k must be a whole number >= 1, or off, not 'lots'"),
    ("max_new_tokens", 10**9, "bad settings: max-new-tokens must be a whole number from 1 to 100000"),
    ("max_new_tokens", 3.0, "bad settings: max-new-tokens must be a whole number from 1 to 100000, not 3.0"),
    ("stop", {"a": 1}, "bad settings: stop must be a list of non-empty strings"),
    ("stop", ["a", 1], "bad settings: stop must be a list of non-empty strings"),
    ("unknown", None, "bad settings: unknown must be 'reject' or 'replace', not None"),
])
def test_item_settings_are_checked_where_they_enter(field, value, error):
    rows, _, _ = run(FakeBackend(), [json.dumps({"prompt": "To", field: value}), '{"prompt": "be"}'])
    assert rows[0]["error"].startswith(error) and rows[0]["completion"] is None
    assert rows[1]["error"] is None


def test_off_and_null_ids():
    lines = ['{"prompt": "To", "top_k": "off", "seed": "off"}', '{"id": null, "prompt": "be"}',
             '{"id": {"a": 1}, "prompt": "or"}', '{"id": true, "prompt": "or"}']
    rows, _, _ = run(FakeBackend(), lines, Settings(max_new_tokens=2, top_k=3, seed=1))
    assert rows[0]["error"] is None and rows[0]["settings"]["top_k"] is None
    assert rows[1]["id"] == 2 and rows[1]["error"] is None  # null: the line number, as without an id
    assert rows[2]["error"] == 'line 3: "id" must be a string or a number'
    assert rows[3]["error"] == 'line 4: "id" must be a string or a number'


def test_a_failed_write_leaves_only_complete_lines(tmp_path, monkeypatch):
    path = tmp_path / "out.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    out = LineFile(fd, str(path))
    out.write('{"id": 1}\n')
    real_write = os.write

    def disk_fills_half_way(fd, data):  # writes part of the line, then the disk is full
        if len(data) > 5:
            return real_write(fd, bytes(data[:5]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batch_module.os, "write", disk_fills_half_way)
    with pytest.raises(OutputError, match=r"cannot write to .*out.jsonl \(No space left on device\); the "
                                          "lines before this item are complete"):
        out.write('{"id": 2, "completion": "a long line"}\n')
    monkeypatch.undo()
    os.close(fd)
    assert path.read_text() == '{"id": 1}\n'


def test_cli_full_disk_is_one_line_and_exit_1(tiny_ckpt):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    result = CliRunner().invoke(main, ["--ckpt", str(tiny_ckpt), "--batch", "-", "--output", "/dev/full",
                                       "--max-new-tokens", "2"], input=b"ROMEO:\n")
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == ("Error: cannot write to /dev/full (No space left on device); "
                                              "the lines before this item are complete")


def test_cli_output_in_a_missing_folder_is_a_usage_error_before_loading(tiny_ckpt, tmp_path):
    result = CliRunner().invoke(main, ["--ckpt", str(tiny_ckpt), "--batch", "-", "--output",
                                       str(tmp_path / "no" / "such" / "out.jsonl")], input=b"ROMEO:\n")
    assert result.exit_code == 2 and "the folder of" in result.output and "does not exist" in result.output
    assert "loading" not in result.output


def test_cli_ctrl_c_while_loading_exits_130(tiny_ckpt, monkeypatch):
    def interrupted(*args, **kwargs):
        def make(progress):
            raise KeyboardInterrupt

        return {"torch": make, "onnx": make}

    monkeypatch.setattr("tui.backends.factories", interrupted)  # tui.cli imports it when it runs
    result = CliRunner().invoke(main, ["--ckpt", str(tiny_ckpt), "--batch", "-"], input=b"x\n")
    assert result.exit_code == 130 and result.output.strip() == "interrupted"


def test_cli_invalid_utf8_input_still_runs_the_good_lines(tiny_ckpt):
    result = CliRunner().invoke(main, ["--ckpt", str(tiny_ckpt), "--batch", "-", "--max-new-tokens", "2",
                                       "--seed", "1"], input=b"\xef\xbb\xbfROMEO:\n\xff\xfe\nJULIET:\n")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["prompt"], r["error"] is None) for r in rows] == [("ROMEO:", True), (None, False),
                                                                 ("JULIET:", True)]
    assert result.exit_code == EXIT_ITEMS_FAILED


@pytest.mark.parametrize("flags, message", [
    (["--seed", str(2**70)], "--seed"),
    (["--max-new-tokens", str(10**9)], "--max-new-tokens"),
    (["--stop", ""], "stop must be a list of non-empty strings"),
])
def test_cli_flags_are_checked_in_one_line(tiny_ckpt, flags, message):
    result = CliRunner().invoke(main, ["--ckpt", str(tiny_ckpt), "--batch", "-", *flags], input=b"x\n")
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_checkpoint_names_are_shown_literally(tmp_path):
    bad = tmp_path / "\x1b]2;title\x07.pt"
    bad.write_bytes(b"junk")
    result = CliRunner().invoke(main, ["--ckpt", str(bad), "--batch", "-"], input=b"x\n")
    assert result.exit_code == 1 and "\x1b" not in result.output and "␛]2;title␇.pt" in result.output


@SETTLE
@given(st.lists(st.sampled_from([*CHARS, "<|endoftext|>", "<|", "|>", "é"]), max_size=12).map("".join))
def test_a_prompt_never_injects_the_end_of_text_token(gpt2_bpe, text):
    tok = gpt2_bpe
    ids = tok.encode(text)
    assert tok.eot_id not in ids and tok.decode(ids) == text


@SETTLE
@given(st.text())
def test_tokenizers_take_any_text(gpt2_bpe, text):
    """Arbitrary unicode, surrogates included: the character tokenizer names what it lacks or
    replaces it one for one; byte-level BPE encodes everything and gives back what it can."""
    from model.tokenizer import CharTokenizer, UnknownCharactersError

    chars = CharTokenizer.from_text("abc \n")
    try:
        assert chars.decode(chars.encode(text)) == text
    except UnknownCharactersError as e:
        assert e.chars and all(c not in chars.stoi for c in e.chars)
    assert len(chars.encode(text, unknown="replace")) == len(text)
    bpe = gpt2_bpe
    ids = bpe.encode(text)
    if not re.search("[\ud800-\udfff]", text):
        assert bpe.decode(ids) == text


def test_gpt_train_and_gpt_export_show_a_hostile_file_name_visibly(tmp_path):
    from click.testing import CliRunner

    from export.cli import main as export_main
    from model.train.cli import report as report_main

    bad = tmp_path / "x\x1b]2;owned\x07.pt"
    bad.write_bytes(b"not a checkpoint")
    for cli, args in ((export_main, ["onnx", "--ckpt", str(bad)]), (report_main, ["losses", str(bad)])):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code in (1, 2) and "\x1b" not in result.output and "\x07" not in result.output
        assert "x␛]2;owned␇.pt" in result.output, result.output
