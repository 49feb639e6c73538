"""gpt-tui's command line: --help and --version without PyTorch, one-shot -p, the config file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import REPO

from tui.cli import main
from tui.config import config_path

# every console script, as pyproject.toml names it, and the function it runs
COMMANDS = {"gpt-tui": "tui.cli:main", "gpt-train": "model.train.cli:main",
            "gpt-report": "model.train.cli:report", "gpt-prepare": "model.data.cli:main",
            "gpt-export": "export.cli:main", "gpt-import": "model.hf.cli:main"}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_and_version_answer_without_importing_torch_or_textual(command):
    module, function = COMMANDS[command].split(":")
    code = (f"import sys; from {module} import {function} as main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('heavy:', [m for m in ('torch', 'numpy', 'textual.app') if m in sys.modules])")
    for flag in ("--help", "--version"):
        out = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, cwd=REPO,
                             timeout=60, env={"PYTHONPATH": str(REPO), "PATH": ""}).stdout
        assert out.rstrip().endswith("heavy: []"), out
        if flag == "--version":
            assert out.startswith(f"{command}, version "), out
    assert "gpt-tui, version" in CliRunner().invoke(main, ["--version"]).output
    assert "--repetition-penalty" in CliRunner().invoke(main, ["--help"]).output


def test_one_shot_prints_the_completion_and_cuts_the_stop(tiny_ckpt):
    runner = CliRunner()
    base = ["--ckpt", str(tiny_ckpt), "-n", "40", "--seed", "1", "--temperature", "0"]
    full = runner.invoke(main, [*base, "-p", "ROMEO:"])
    assert full.exit_code == 0, full.output
    text = full.output
    assert 0 < len(text) <= 40  # greedy on a random tiny model: some characters, no prompt echo
    stop = text[5:7]
    cut = runner.invoke(main, [*base, "-p", "ROMEO:", "--stop", stop])
    kept = runner.invoke(main, [*base, "-p", "ROMEO:", "--stop", stop, "--keep-stop"])
    assert cut.output == text[:text.index(stop)] and kept.output == text[:text.index(stop) + len(stop)]
    refused = runner.invoke(main, [*base, "-p", "café"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert refused.output.strip() == ("Error: 1 character(s) of the prompt are not in the model's "
                                      "vocabulary: 'é'; remove them, or pass --unknown replace")
    assert runner.invoke(main, [*base, "-p", "x", "--batch", "-"]).exit_code == 2


def test_the_config_file_sets_defaults_that_flags_override(tiny_ckpt):
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'ckpt = "{tiny_ckpt}"\ntemperature = 0\nmax-new-tokens = 12\nseed = 5\n',
                    encoding="utf-8")
    runner = CliRunner()
    configured = runner.invoke(main, ["-p", "ROMEO:"])
    flagged = runner.invoke(main, ["--ckpt", str(tiny_ckpt), "--temperature", "0", "-n", "12",
                                   "-p", "ROMEO:"])
    assert configured.exit_code == 0 and configured.output == flagged.output
    assert runner.invoke(main, ["-p", "ROMEO:", "-n", "3"]).output == flagged.output[:3]  # a flag wins
    path.write_text("colour = 'blue'\n", encoding="utf-8")
    bad = runner.invoke(main, ["--help"])
    assert bad.exit_code == 2 and "unknown key 'colour'" in bad.output and str(path) in bad.output
    path.write_text("temperature = -2\n", encoding="utf-8")
    refused = runner.invoke(main, ["-p", "x", "--ckpt", str(tiny_ckpt)])
    assert refused.exit_code == 2
    assert refused.output.strip() == (f"Error: {path}: temperature = -2: -2.0 is not in the range x>=0; "
                                      "fix or remove it")


def test_precision_reaches_the_pytorch_backend(tiny_ckpt, monkeypatch):
    import torch

    from tui.backends import factories

    factory = factories(tiny_ckpt, "cpu", precision="bf16")["torch"]
    made = factory(lambda message: None)
    assert made.decode_model.lm_head.weight.dtype == torch.bfloat16
    assert made.info().precision == "bf16 weights (asked for)"
    # the app's child process rebuilds the backend with the choice this one made, not a new timing
    auto = factories(tiny_ckpt, "cpu", precision="auto")["torch"]
    assert auto.settled(made).precision == "bf16"
    assert factory.settled(factories(tiny_ckpt, "cpu", precision="fp32")["torch"](print)).precision == "fp32"
    monkeypatch.delenv("GPT_TUI_PRECISION")  # as a user runs it: the flag's default is auto
    runner = CliRunner()
    base = ["--ckpt", str(tiny_ckpt), "-n", "20", "--seed", "1", "--temperature", "0", "-p", "ROMEO:"]
    auto = runner.invoke(main, base)
    assert auto.exit_code == 0 and 0 < len(auto.output) <= 20
    bad = runner.invoke(main, [*base, "--precision", "fp16"])
    assert bad.exit_code == 2 and "'fp16' is not one of 'auto', 'fp32', 'bf16'" in bad.output


def test_compile_reaches_the_generation_process_not_the_ui_one(tiny_ckpt):
    from tui.backends import factories

    factory = factories(tiny_ckpt, "cpu", precision="fp32", step="build")["torch"]
    assert factory.step == "build"
    assert factory.for_ui().step == "eager"  # the app's own process decodes only step mode and views
    local = factory.for_ui()(lambda message: None)
    assert local.step == "eager" and factory.settled(local).step == "build"
    assert local.info().precision == "fp32 weights (asked for)"


@pytest.mark.parametrize("flags, app, step", [
    ([], True, "build"), ([], False, "auto"), (["--compile"], False, "compile"),
    (["--no-compile"], True, "eager")])
def test_the_app_builds_the_compiled_step_by_default_and_one_shots_use_it_once_kept(
        tiny_ckpt, monkeypatch, flags, app, step):
    import tui.backends

    made = []

    def factories(*args, **kwargs):
        made.append(args[5])  # the step its backends are made with
        raise KeyboardInterrupt  # and no further

    monkeypatch.setattr(tui.backends, "factories", factories)
    result = CliRunner().invoke(main, ["--ckpt", str(tiny_ckpt), *flags, *([] if app else ["-p", "x"])])
    assert result.exit_code == 130
    assert made == [step]


@pytest.mark.slow
def test_a_compiled_step_prints_the_eager_completion(tiny_ckpt):
    from tui.backends import factories

    runner = CliRunner()
    base = ["--ckpt", str(tiny_ckpt), "-n", "40", "--seed", "1", "--temperature", "0", "-p", "ROMEO:"]
    eager = runner.invoke(main, base)
    compiled = runner.invoke(main, [*base, "--compile"])
    assert compiled.exit_code == 0, compiled.output
    assert compiled.output == eager.output and len(eager.output) > 0
    made = factories(tiny_ckpt, "cpu", precision="fp32", step="compile")["torch"](lambda message: None)
    assert made.info().precision == "fp32 weights (asked for); compiled one-token step"


@pytest.mark.slow  # inductor is imported
def test_compile_without_a_compiler_is_a_one_line_error(tiny_ckpt, monkeypatch):
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", ("/nonexistent/g++",))
    result = CliRunner().invoke(main, ["--ckpt", str(tiny_ckpt), "-p", "ROMEO:", "-n", "5", "--compile"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: compiling the one-token decode step failed: " in result.output
    assert "No working C++ compiler" in result.output and "or pass --no-compile" in result.output
    # the app's default asks for the step but does without it
    from tui.backends import factories

    said = []
    backend = factories(tiny_ckpt, "cpu", precision="fp32", step="build")["torch"](said.append)
    assert backend.compiled is None and backend.decoder().step == "eager"
    assert said[-1].startswith("compiling the one-token decode step failed: ") and said[-1].endswith(
        "; decoding without it")


def test_frequency_and_presence_penalties_from_flags_and_the_config_file(tiny_ckpt):
    runner = CliRunner()
    base = ["--ckpt", str(tiny_ckpt), "-n", "30", "--seed", "1", "--temperature", "0", "-p", "ROMEO:"]
    plain = runner.invoke(main, base)
    flagged = runner.invoke(main, [*base, "--frequency-penalty", "2", "--presence-penalty", "1"])
    assert flagged.exit_code == 0 and 0 < len(flagged.output) <= 30 and flagged.output != plain.output
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("frequency-penalty = 2.0\npresence-penalty = 1.0\n", encoding="utf-8")
    assert runner.invoke(main, base).output == flagged.output
    path.write_text("presence-penalty = 3\n", encoding="utf-8")
    bad = runner.invoke(main, base)
    assert bad.exit_code == 2
    assert bad.output == (f"Error: {path}: presence-penalty = 3: 3.0 is not in the range -2<=x<=2; "
                          "fix or remove it\n")


def test_one_shot_logprobs_on_stderr_or_in_a_json_file(tiny_ckpt, tmp_path):
    import torch

    from model.checkpoint import load_model

    runner = CliRunner()
    base = ["--ckpt", str(tiny_ckpt), "-n", "6", "--seed", "2", "-p", "ROMEO:", "--logprobs", "3"]
    shown = runner.invoke(main, base)
    assert shown.exit_code == 0 and 0 < len(shown.stdout) <= 6
    table = shown.stderr.splitlines()
    assert table[0] == "logprobs (natural log, the model's own distribution before any sampling knob):"
    assert len(table) == 1 + len(shown.stdout)  # a character model: one token a character
    path = tmp_path / "lp.json"
    written = runner.invoke(main, [*base, "--logprobs-json", str(path)])
    assert written.stdout == shown.stdout and "logprobs" not in written.stderr
    lp = json.loads(path.read_text(encoding="utf-8"))
    assert "".join(lp["tokens"]) == shown.stdout and all(len(top) == 3 for top in lp["top_logprobs"])
    # the first token's: the model's log-softmax after the prompt, whatever sampling did
    model, tokenizer, _ = load_model(tiny_ckpt)
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokenizer.encode("ROMEO:")]))
    expected = torch.log_softmax(logits[0, -1], dim=-1)
    assert lp["token_logprobs"][0] == pytest.approx(float(expected[lp["token_ids"][0]]), abs=1e-5)
    best = torch.topk(expected, 3)
    assert list(lp["top_logprobs"][0].values()) == pytest.approx(best.values.tolist(), abs=1e-5)
    assert list(lp["top_logprobs"][0]) == [tokenizer.decode([i]) for i in best.indices.tolist()]
    app = runner.invoke(main, ["--ckpt", str(tiny_ckpt), "--logprobs", "2"])
    assert app.exit_code == 2 and "--logprobs applies with -p or --batch" in app.output
    alone = runner.invoke(main, ["--ckpt", str(tiny_ckpt), "-p", "x", "--logprobs-json", str(path)])
    assert alone.exit_code == 2 and "--logprobs-json goes with -p and --logprobs N" in alone.output
    assert runner.invoke(main, [*base[:-1], "21"]).exit_code == 2  # OpenAI's limit, 20


def test_a_token_that_is_part_of_a_character_is_named_by_its_bytes():
    from tui.logprobs import token_name

    class Bytes:
        def token_bytes(self, token):
            return {0: b"\xe2\x80", 1: b" the"}[token]

    assert token_name(Bytes(), 0) == "bytes:\\xe2\\x80" and token_name(Bytes(), 1) == " the"
