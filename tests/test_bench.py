"""The benchmarks run: bench/hog.py's busy processes end with their parent, and bench/decode.py's
--hog and --genai smoke runs (--quick) print their keys on the last line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from bench.hog import Hog

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes in /proc")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: it exists and is not a zombie (ended, not yet reaped by its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone(pids: list[int], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


def test_the_hog_spins_one_process_per_core_by_default_until_stopped():
    assert Hog().n == os.cpu_count()
    hog = Hog(2)
    try:
        hog.start()
        pids = hog.pids
        assert len(set(pids)) == 2 and all(alive(p) for p in pids)
        time.sleep(0.3)
        assert all(alive(p) for p in pids)  # they spin, they do not return
    finally:
        hog.stop()
    assert not any(alive(p) for p in pids) and hog.pids == []


def test_the_hog_ends_by_itself_when_its_parent_is_killed():
    code = ("import os, signal; from bench.hog import Hog; hog = Hog(2); hog.start(); "
            "print(*hog.pids, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    pids = [int(p) for p in proc.stdout.split()]
    try:
        assert proc.returncode == -signal.SIGKILL and len(pids) == 2, proc.stderr
        assert gone(pids), "the hog outlived the process that started it"
    finally:
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def run_decode_bench(*flags: str, pythonpath: tuple[str, ...] = ()) -> list[str]:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([*pythonpath, str(REPO)])}
    proc = subprocess.run([sys.executable, "bench/decode.py", "--quick", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


def keys(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in (kv.split("=") for kv in line.split())}


# a model's bench times the shipped checkpoint too when the repository has it
MODELS = 2 if (REPO / "checkpoints" / "shakespeare.pt").is_file() else 1


@pytest.mark.slow  # exports, quantizes and times each model's ONNX files, a minute or more
def test_decode_bench_under_a_hog_prints_quiet_and_hogged_ratios_and_leaves_no_hog(tmp_path):
    # onnxruntime_genai made unimportable: --genai then says so in one line and its keys stay out
    (tmp_path / "onnxruntime_genai.py").write_text("raise ImportError('hidden by the test')\n")
    lines = run_decode_bench("--hog", "1", "--genai", pythonpath=(str(tmp_path),))
    assert ("onnxruntime-genai: skipped, onnxruntime_genai does not import (hidden by the test; it is in "
            "the dev extra: pip install -e '.[dev]')") in lines
    pids = [int(p) for line in lines if (m := re.search(r"^  hog: 1 busy process\(es\), pids (\d+)$", line))
            for p in m.group(1).split()]
    assert len(pids) == MODELS  # started once per model, after its quiet runs
    assert not any(alive(p) for p in pids)  # stopped and reaped before the benchmark exits
    for path in ("cached", "onnx", "int4"):  # each path with the threads it ran on, quiet and hogged
        line = re.compile(rf"^  {path} +quiet +[\d.]+ tok/s on \d+ thread\(s\), "
                          r"under the hog +[\d.]+ on \d+: [\d.]+x quiet$")
        assert len([m for m in map(line.match, lines) if m]) == MODELS, path
    last = keys(lines[-1])
    assert {"hog_cached_vs_quiet", "hog_onnx_vs_quiet", "hog_int4_vs_quiet"} <= last.keys()
    assert all(v > 0 for v in last.values())
    assert not [k for k in last if "genai" in k]


@pytest.mark.slow  # exports, quantizes and times each model's ONNX files and folders, a minute or more
def test_decode_bench_times_onnxruntime_genai_on_our_folders_beside_our_loop():
    pytest.importorskip("onnxruntime_genai", reason="the dev extra: pip install -e '.[dev]'")
    lines = run_decode_bench("--genai")
    first, last = keys(lines[-2]), keys(lines[-1])
    assert {"genai_fp32_tok_s", "onnx_vs_genai_fp32", "genai_int4_tok_s", "int4_vs_genai_int4"} <= last.keys()
    # the ratios are of the rates beside them (each printed to 2 decimals)
    assert last["onnx_vs_genai_fp32"] == pytest.approx(first["onnx_tok_s"] / last["genai_fp32_tok_s"],
                                                       rel=0.01, abs=0.01)
    assert last["int4_vs_genai_int4"] == pytest.approx(last["onnx_int4_tok_s"] / last["genai_int4_tok_s"],
                                                       rel=0.01, abs=0.01)
    assert not [k for k in last if k.startswith("hog_")]


@pytest.mark.slow  # runs the benchmark until its hog starts, half a minute or more
def test_ctrl_c_during_the_hogged_runs_exits_130_and_ends_the_hog():
    # SIGINT's default action restored: a shell's background job inherits it ignored
    proc = subprocess.Popen([sys.executable, "bench/decode.py", "--quick", "--hog", "2"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pids: list[int] = []
    try:
        for line in proc.stdout:
            if m := re.search(r"^  hog: 2 busy process\(es\), pids (\d+) (\d+)$", line):
                pids = [int(p) for p in m.groups()]
                break
        assert pids and all(alive(p) for p in pids)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and err.splitlines()[-1] == "interrupted", err[-3000:]
        assert not any(alive(p) for p in pids)  # stopped and reaped in the benchmark's finally
    finally:
        proc.kill()
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)
