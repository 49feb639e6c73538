"""gpt-serve's command line: --help without PyTorch, one-line refusals, the documented commands,
and a real process that drains on SIGTERM and exits 0."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from conftest import FENCE, REPO, split_commands, unknown_flags

from serve import cli
from serve.cli import exposure_warning, main


def test_help_and_version_answer_without_importing_torch_or_the_web_stack():
    code = ("import sys; from serve.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('heavy:', [m for m in ('torch', 'numpy', 'fastapi', 'uvicorn') if m in sys.modules])")
    for flag in ("--help", "--version"):
        out = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, cwd=REPO,
                             timeout=60, env={"PYTHONPATH": str(REPO), "PATH": ""}).stdout
        assert out.rstrip().endswith("heavy: []"), out
    assert CliRunner().invoke(main, ["--version"]).output.startswith("gpt-serve, version ")


def test_without_the_extra_it_says_which_one_to_install(monkeypatch):
    monkeypatch.setattr(cli, "STACK", ("fastapi", "no_such_module_for_gpt_serve"))
    result = CliRunner().invoke(main, [])
    assert result.exit_code == 1
    assert result.output == ("Error: gpt-serve needs the serve extra (no_such_module_for_gpt_serve "
                             "missing): pip install 'gpt-from-scratch[serve]', or pip install -e '.[serve]' "
                             "in a clone\n")


def test_a_port_in_use_or_a_bad_host_is_one_line_before_the_model_loads():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["--ckpt", "no-such.pt", "--port", str(port)])
    assert result.exit_code == 1
    assert result.output == (f"Error: cannot listen on 127.0.0.1:{port} (Address already in use); pass "
                             "another --port, or stop what holds it\n")
    bad = CliRunner().invoke(main, ["--host", "no-such-host.invalid"])
    assert bad.exit_code == 2 and bad.output.startswith("Error: --host no-such-host.invalid: not an address "
                                                        "this machine has (")
    empty = CliRunner().invoke(main, ["--api-key", " "])
    assert empty.output == "Error: --api-key is empty; pass a key, or leave it out on loopback\n"


def test_anything_but_loopback_is_warned_about():
    assert exposure_warning("127.0.0.1", "http://127.0.0.1:8000", None) is None
    assert exposure_warning("::1", "http://[::1]:8000", None) is None
    assert exposure_warning("0.0.0.0", "http://0.0.0.0:8000", None) == (
        "warning: listening on http://0.0.0.0:8000, which other machines can reach: anyone who can connect "
        "may use the model; pass --api-key to require a key")
    assert exposure_warning("192.0.2.1", "http://192.0.2.1:8000", "k").endswith("may use the model")


def documented_calls() -> list[tuple[str, list[str]]]:
    """(where, words) of each gpt-serve call in a fenced bash block of README and docs/ (as
    tests/test_docs.py reads the other commands)."""
    calls = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for block in FENCE.finditer(text):
            for line in block.group(1).replace("\\\n", " \n").split("\n"):
                for part in split_commands(shlex.split(line, comments=True) if line.strip() else []):
                    if "gpt-serve" in part:
                        calls.append((path.name, part[part.index("gpt-serve") + 1:]))
    return calls


def test_every_documented_gpt_serve_flag_exists():
    calls = documented_calls()
    assert len(calls) >= 3
    wrong = [(where, args, unknown_flags(main, args)) for where, args in calls if unknown_flags(main, args)]
    assert wrong == []


def start(tiny_ckpt, *flags: str) -> tuple[subprocess.Popen, str]:
    """`gpt-serve` on the tiny checkpoint and a free port -> (process, base URL), once it serves."""
    args = ["--ckpt", str(tiny_ckpt), "--port", "0", "--device", "cpu", "--model-name", "tiny", *flags]
    proc = subprocess.Popen([sys.executable, "-c", "from serve.cli import main; main()", *args],
                            cwd=REPO, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONPATH": str(REPO)})
    for line in proc.stderr:
        found = re.search(r" on (http://127\.0\.0\.1:\d+)/v1 ", line)
        if found:
            return proc, found.group(1)
    raise AssertionError(f"gpt-serve did not start (exit {proc.wait()})")


def stream_lines(url: str, body: dict, out: list[str]) -> None:
    import httpx

    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        out.extend(line for line in response.iter_lines() if line)


@pytest.mark.slow  # starts gpt-serve processes
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_signal_drains_running_streams_then_the_process_exits(tiny_ckpt, sig, code):
    pytest.importorskip("fastapi")
    import httpx

    proc, url = start(tiny_ckpt, "--drain", "1")
    try:
        lines: list[str] = []
        body = {"model": "tiny", "prompt": "ROMEO:", "stream": True, "temperature": 0, "max_tokens": 100_000}
        reader = threading.Thread(target=stream_lines, args=(url, body, lines))
        reader.start()
        deadline = time.monotonic() + 30
        while len(lines) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(sig)
        if sig == signal.SIGTERM:  # draining: nothing new is taken
            time.sleep(0.3)
            refused = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x"}, timeout=10)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        reader.join(30)
        assert proc.wait(30) == code
    finally:
        proc.kill()
        proc.wait()
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "abort"
    assert "Traceback" not in proc.stderr.read()
