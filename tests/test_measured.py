"""Timings that decide something are taken once per machine and remembered (model.measured): the
cache's rules, and the decode precision that no longer flips between two runs."""

from __future__ import annotations

import json

import pytest
import torch

from model import measured
from model.config import GPTConfig
from model.generate import torch_backend
from model.gpt import GPT

CPU = torch.device("cpu")


def never() -> dict[str, float]:
    raise AssertionError("measured again although the answer is kept")


def test_a_measurement_is_taken_once_and_kept_per_question_and_key():
    value, kept = measured.remembered("q", {"shape": 1}, CPU, lambda: {"s": 0.5})
    assert (value, kept) == ({"s": 0.5}, False)
    assert measured.remembered("q", {"shape": 1}, CPU, never) == ({"s": 0.5}, True)
    assert measured.remembered("q", {"shape": 2}, CPU, lambda: {"s": 0.7}) == ({"s": 0.7}, False)
    assert measured.remembered("other", {"shape": 1}, CPU, lambda: {"s": 0.9})[0] == {"s": 0.9}
    stored = json.loads(measured.path().read_text())
    assert len(stored) == 3 and all("torch" in key and "threads" in key for key in stored)  # per machine


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"k": "v"}', '{"k": {"s": "fast"}}',
                                     '{"k": {"s": NaN}}', '{"k": {"s": true}}', "\udcff"])
def test_a_damaged_cache_is_ignored_and_rewritten(content):
    measured.path().write_text(content, encoding="utf-8", errors="surrogateescape")
    assert measured.remembered("q", {}, CPU, lambda: {"s": 1.0}) == ({"s": 1.0}, False)
    assert measured.remembered("q", {}, CPU, never) == ({"s": 1.0}, True)


def test_auto_precision_is_decided_once_so_a_busier_second_run_decodes_alike(monkeypatch):
    model = GPT(GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=16, vocab_size=10)).eval()
    monkeypatch.setattr(torch_backend, "bf16_worth_timing", lambda device: True)
    steps = {torch.float32: 1.0, torch.bfloat16: 0.5}  # bf16 twice as fast: chosen
    monkeypatch.setattr(torch_backend, "step_seconds", lambda m: steps[next(m.parameters()).dtype])
    first, why = torch_backend.decode_precision(model, "auto")
    assert next(first.parameters()).dtype == torch.bfloat16
    assert why == "bf16 weights (a step: fp32 1000.0 ms, bf16 500.0 ms; timed now, and kept for later runs)"
    steps[torch.bfloat16] = 2.0  # the machine is busy now: timed again, fp32 would win
    again, why = torch_backend.decode_precision(model, "auto")
    assert next(again.parameters()).dtype == torch.bfloat16
    assert why.endswith("; as timed earlier on this machine)")
    assert torch_backend.decode_precision(model, "fp32")[1] == "fp32 weights (asked for)"
