"""gpt-tui --batch: input formats, order, per-item errors, exit codes, stdin, seeds, flushing."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_backend import FakeBackend, FakeClock

from model.generate.backend import Settings
from tui.batch import EXIT_INTERRUPTED, EXIT_ITEMS_FAILED, EXIT_OK, Item, read_items, run_batch
from tui.cli import main

REPO = Path(__file__).resolve().parents[1]


def run(backend, text, settings=None, **kwargs):
    settings = settings or Settings(max_new_tokens=8, seed=1)
    out, log = io.StringIO(), []
    summary = run_batch(backend, read_items(io.StringIO(text)), settings, out, log.append,
                        clock=FakeClock(), **kwargs)
    return [json.loads(line) for line in out.getvalue().splitlines()], summary, log


def test_text_input_one_prompt_a_line_blank_lines_skipped():
    items = list(read_items(["ROMEO:\n", "\n", "  \n", "JULIET:\r\n"]))
    assert items == [Item(1, "ROMEO:"), Item(4, "JULIET:")]


def test_jsonl_input_and_its_errors():
    lines = ['{"id": "a", "prompt": "Hi", "temperature": 0}', '{"prompt": "Yo"}', "{not json",
             '["prompt"]', '{"id": 9}', '{"prompt": "x", "temp": 1}']
    a, b, bad_json, not_object, no_prompt, unknown = read_items(lines)
    assert (a.id, a.prompt, a.changes) == ("a", "Hi", {"temperature": 0})
    assert (b.id, b.prompt, b.error) == (2, "Yo", None)
    assert "line 3 is not valid JSON" in bad_json.error
    assert "must be a JSON object" in not_object.error
    assert no_prompt.id == 9 and '"prompt" must be a string' in no_prompt.error
    assert "unknown field(s) ['temp']" in unknown.error


def test_each_input_gives_one_line_in_order_with_every_field():
    rows, summary, log = run(FakeBackend(), "To\nbe\n\nor\n")
    assert [r["id"] for r in rows] == [1, 2, 4]
    assert [r["prompt"] for r in rows] == ["To", "be", "or"]
    r = rows[0]
    assert r["completion"] == "To be, o" and r["tokens"] == 8 and r["stop_reason"] == "max_tokens"
    assert r["settings"]["max_new_tokens"] == 8 and r["seed"] == 1 and r["error"] is None
    assert (r["backend"], r["checkpoint"]) == ("torch", "fake.pt")
    assert r["timing"] == {"ttft_s": 0.01, "total_s": 0.09, "tokens_per_s": 100.0}
    assert summary.exit_code == EXIT_OK and summary.done == 3
    assert log[-1].startswith("3 item(s): 3 ok, 0 failed; 24 tokens")


def test_per_item_settings_and_errors_do_not_stop_the_rest():
    text = "\n".join([
        '{"id": 1, "prompt": "ok", "max_new_tokens": 3}',
        '{"id": 2, "prompt": "caf\\u00e9"}',  # é is not in the vocabulary: "reject" refuses it
        '{"id": 3, "prompt": "caf\\u00e9", "unknown": "replace", "stop": [","]}',
        '{"id": 4, "prompt": "x", "top_p": 2}',
        '{"id": 5, "prompt": "boom"}',
    ])
    rows, summary, _ = run(FakeBackend(fail_on="boom"), text)
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["completion"] == "To " and rows[0]["error"] is None
    assert "not in the vocabulary: 'é'; remove them, or pass --unknown replace" in rows[1]["error"]
    assert rows[1]["completion"] is None
    assert rows[2]["completion"] == "To be" and rows[2]["stop_reason"] == "stop_string"  # the stop cut off
    assert "bad settings: top-p must be a number in (0, 1]" in rows[3]["error"]
    assert "backend failure" in rows[4]["error"]
    assert summary.failed == 3 and summary.exit_code == EXIT_ITEMS_FAILED


def test_items_take_frequency_and_presence_penalties():
    text = "\n".join([
        '{"prompt": "T", "temperature": 0, "max_new_tokens": 8}',
        '{"prompt": "T", "temperature": 0, "max_new_tokens": 8, "presence_penalty": 2}',
        '{"prompt": "T", "frequency_penalty": 2.5}',
    ])
    rows, summary, _ = run(FakeBackend(margin=1.0), text)
    assert rows[0]["completion"] == "To be, o"
    # the script's next character leads by 1.0; a second space loses 2, so greedy takes the first
    # of the tied rest ("\n"), and so on for every character the script repeats
    assert rows[1]["completion"] == "To be,\n!" and rows[1]["settings"]["presence_penalty"] == 2
    assert rows[0]["settings"]["frequency_penalty"] == 0.0
    assert rows[2]["error"] == ("bad settings: frequency-penalty must be a number from -2 to 2 (0 = off), "
                                "not 2.5")
    assert summary.failed == 1


def test_ctrl_c_keeps_the_lines_written_and_exits_130():
    class Interrupting(FakeBackend):
        def stream(self, prompt, settings):
            if prompt == "second":
                raise KeyboardInterrupt
            return super().stream(prompt, settings)

    rows, summary, log = run(Interrupting(), "first\nsecond\nthird\n")
    assert [r["prompt"] for r in rows] == ["first"]
    assert summary.interrupted and summary.exit_code == EXIT_INTERRUPTED == 130
    assert log[-1].endswith("(interrupted)")


def test_same_seed_same_output_and_a_fresh_seed_is_recorded(tiny_ckpt):
    from model.generate.torch_backend import load_backend

    backend = load_backend(tiny_ckpt)
    prompts = "ROMEO:\nJULIET:\n"
    a, _, _ = run(backend, prompts, Settings(max_new_tokens=20, seed=42))
    b, _, _ = run(backend, prompts, Settings(max_new_tokens=20, seed=42))
    assert [r["completion"] for r in a] == [r["completion"] for r in b]
    fresh, _, _ = run(backend, prompts, Settings(max_new_tokens=20))  # no seed: one is drawn and written
    replay, _, _ = run(backend, prompts, Settings(max_new_tokens=20, seed=fresh[0]["seed"]))
    assert replay[0]["completion"] == fresh[0]["completion"]


def test_cli_batch_decodes_fp32_unless_told_otherwise_and_says_so(tiny_ckpt, monkeypatch):
    from model.generate import torch_backend

    asked = []
    chosen = torch_backend.decode_precision
    monkeypatch.setattr(torch_backend, "decode_precision",
                        lambda model, precision: asked.append(precision) or chosen(model, precision))
    monkeypatch.delenv("GPT_TUI_PRECISION")  # as a user runs it
    base = ["--ckpt", str(tiny_ckpt), "--max-new-tokens", "5", "--seed", "3"]
    batch = CliRunner().invoke(main, [*base, "--batch", "-"], input="ROMEO:\n")
    assert batch.exit_code == 0, batch.output
    assert json.loads(batch.stdout)["precision"] == "fp32 weights (batch default)"  # nobody asked
    asked_fp32 = CliRunner().invoke(main, [*base, "--batch", "-", "--precision", "fp32"], input="x\n")
    assert json.loads(asked_fp32.stdout)["precision"] == "fp32 weights (asked for)"
    auto = CliRunner().invoke(main, [*base, "--batch", "-", "--precision", "auto"], input="x\n")
    assert auto.exit_code == 0
    assert CliRunner().invoke(main, [*base, "-p", "ROMEO:"]).exit_code == 0
    assert asked == ["fp32", "fp32", "auto", "auto"]  # the one-shot and the app keep auto


def test_cli_batch_from_a_file_stdin_and_to_an_output_file(tiny_ckpt, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ROMEO:\n\nJULIET:\n")
    base = ["--ckpt", str(tiny_ckpt), "--max-new-tokens", "5", "--seed", "3"]
    from_file = CliRunner().invoke(main, [*base, "--batch", str(prompts)])
    assert from_file.exit_code == 0, from_file.output
    rows = [json.loads(line) for line in from_file.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == ["ROMEO:", "JULIET:"]
    assert rows[0]["checkpoint_sha256"] and rows[0]["checkpoint"] == str(tiny_ckpt)
    assert "2 item(s): 2 ok, 0 failed" in from_file.stderr

    from_stdin = CliRunner().invoke(main, [*base, "--batch", "-", "--output", str(tmp_path / "o.jsonl")],
                                    input="ROMEO:\nJULIET:\n")
    assert from_stdin.exit_code == 0 and from_stdin.stdout == ""
    assert [json.loads(line)["completion"] for line in (tmp_path / "o.jsonl").read_text().splitlines()] \
        == [r["completion"] for r in rows]

    failing = CliRunner().invoke(main, [*base, "--batch", "-"], input="ROMEO:\ncafé\n")
    assert failing.exit_code == EXIT_ITEMS_FAILED


def test_cli_usage_errors_and_bad_checkpoints(tiny_ckpt, tmp_path):
    runner = CliRunner()
    no_batch = runner.invoke(main, ["--ckpt", str(tiny_ckpt), "--output", str(tmp_path / "x")])
    assert no_batch.exit_code == 2 and "--output and --format only apply with --batch" in no_batch.output
    missing = runner.invoke(main, ["--ckpt", "nope.pt", "--batch", "-"], input="x\n")
    assert missing.exit_code == 2
    assert "checkpoint nope.pt (nor " in missing.output and "checkpoints/nope.pt" in missing.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(tiny_ckpt.read_bytes()[:1000])
    damaged = runner.invoke(main, ["--ckpt", str(bad), "--batch", "-"], input="x\n")
    assert damaged.exit_code == 1 and "bad.pt is damaged (cut short or overwritten" in damaged.output
    no_onnx = runner.invoke(main, ["--ckpt", str(tiny_ckpt), "--onnx", str(tmp_path / "m.onnx"),
                                   "--batch", "-"], input="x\n")
    assert no_onnx.exit_code == 2 and "m.onnx' does not exist" in no_onnx.output
    assert runner.invoke(main, ["--temperature", "-1"]).exit_code == 2


@pytest.mark.slow  # a child process importing torch
def test_lines_are_flushed_as_each_prompt_finishes(tiny_ckpt):
    """Feed stdin one prompt at a time and read each answer before sending the next."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from tui.cli import main; main()", "--ckpt", str(tiny_ckpt), "--batch", "-",
         "--max-new-tokens", "4", "--seed", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        for prompt in ("ROMEO:", "JULIET:"):
            proc.stdin.write(prompt + "\n")
            proc.stdin.flush()
            assert json.loads(proc.stdout.readline())["prompt"] == prompt  # before stdin is closed
        _, err = proc.communicate(timeout=60)  # closes stdin: the batch ends
        assert proc.returncode == 0 and "2 item(s): 2 ok" in err
    finally:
        proc.kill()


def test_a_base_seed_gives_each_item_its_own_seed_written_out():
    backend = FakeBackend(script="x", margin=1.0)
    text = '{"prompt": "a"}\n{"prompt": "a"}\n{"prompt": "a", "seed": 1}\n'
    rows, _, _ = run(backend, text, Settings(max_new_tokens=30, seed=1))
    assert [r["seed"] for r in rows] == [1, 2, 1]  # base + index; an item's own seed wins
    assert rows[0]["completion"] != rows[1]["completion"]
    assert rows[0]["completion"] == rows[2]["completion"]  # each line replays alone


def test_stop_strings_are_cut_from_completions_unless_kept():
    settings = Settings(max_new_tokens=30, seed=1, stop=(" or",))
    cut, _, _ = run(FakeBackend(), "To\n", settings)
    kept, _, _ = run(FakeBackend(), "To\n", settings, keep_stop=True)
    assert (cut[0]["completion"], kept[0]["completion"]) == ("To be,", "To be, or")
    assert cut[0]["stop_reason"] == "stop_string"


@pytest.mark.slow  # two child processes
@pytest.mark.parametrize("mode", [["-p", "ROMEO:", "-n", "20000"], ["--batch", "-", "-n", "200"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(tiny_ckpt, mode):
    """`gpt-tui -p ... | head -c 5`: no "Broken pipe" error, the exit code SIGPIPE would give."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from tui.cli import main; main()", "--ckpt", str(tiny_ckpt), "--seed", "1",
         *mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        proc.stdin.write(b"ROMEO:\n" * 1000)  # batch: more lines than the reader will take
        proc.stdin.close()
        assert len(proc.stdout.read(5)) == 5
        proc.stdout.close()  # as head does once it has its bytes
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 141, err
        assert "Broken pipe" not in err and "Traceback" not in err
    finally:
        proc.kill()


def test_logprobs_in_each_line_are_the_models_own_before_the_knobs():
    import math

    probs = {"a": 0.5, "b": 0.25, "c": 0.125, "": 0.125}  # "" is end-of-text
    text = '{"prompt": "x", "max_new_tokens": 4, "temperature": 0.3, "top_k": 1}\n{"prompt": "x", "top_p": 5}'
    rows, _, _ = run(FakeBackend(probs=probs), text, logprobs=2)
    lp = rows[0]["logprobs"]
    assert rows[0]["completion"] == "aaaa" and lp["tokens"] == ["a"] * 4 and len(lp["token_ids"]) == 4
    # under the model, not under temperature 0.3 and top-k 1 (which gave "a" probability 1)
    assert lp["token_logprobs"] == pytest.approx([math.log(0.5)] * 4, abs=1e-6)
    assert [list(top) for top in lp["top_logprobs"]] == [["a", "b"]] * 4
    assert lp["top_logprobs"][0]["b"] == pytest.approx(math.log(0.25), abs=1e-6)
    assert rows[1]["error"] and rows[1]["logprobs"] is None  # a failed item has none
    plain, _, _ = run(FakeBackend(probs=probs), text)
    assert "logprobs" not in plain[0]  # only when asked for
    zero, _, _ = run(FakeBackend(probs=probs), text, logprobs=0)
    assert zero[0]["logprobs"]["top_logprobs"] is None and len(zero[0]["logprobs"]["token_logprobs"]) == 4
