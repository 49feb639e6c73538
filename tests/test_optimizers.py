"""--optimizer muon: Muon for the blocks' weight matrices and AdamW for the rest, stored and resumed
exactly; refused where it cannot run. And the malloc that gpt-train runs under (model.allocator)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_run

from model.allocator import TUNABLES
from model.config import GPTConfig
from model.train.config import SettingsError
from model.train.loop import TrainConfig, train
from model.train.optimizers import Optimizers, make_optimizer


def tiny(text_file, out, **changes) -> TrainConfig:
    return tiny_run(text_file, out, **(dict(optimizer="muon", learning_rate=1e-2) | changes))


def losses(out) -> list[float]:
    rows = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in rows if "loss" in r]


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(tiny_model):
    opt = make_optimizer(tiny_model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    in_muon = sorted(names[id(p)] for g in muon.param_groups for p in g["params"])
    in_adamw = sorted(names[id(p)] for g in adamw.param_groups for p in g["params"])
    matrices = [n for n, p in tiny_model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
    assert in_muon == sorted(matrices)
    assert {"wte.weight", "wpe.weight", "ln_f.weight"} <= set(in_adamw)
    assert sorted(in_muon + in_adamw) == sorted(names.values())  # each parameter exactly once
    assert all(g["adjust_lr_fn"] == "match_rms_adamw" for g in muon.param_groups)


def test_the_schedule_sets_every_groups_learning_rate(tiny_model):
    opt = make_optimizer(tiny_model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    for group in opt.param_groups:
        group["lr"] = 0.125
    assert {g["lr"] for o in opt.optimizers for g in o.param_groups} == {0.125}


@pytest.mark.slow  # three short runs
def test_a_muon_run_learns_and_resumes_exactly(text_file, tmp_path):
    straight = train(tiny(text_file, tmp_path / "straight"), log=lambda m: None)
    train(tiny(text_file, tmp_path / "split", max_iters=10, lr_decay_iters=20), log=lambda m: None)
    ckpt = torch.load(tmp_path / "split" / "ckpt.pt", weights_only=True)  # Muon's state loads as plain data
    assert ckpt["train"]["config"]["optimizer"] == "muon"
    assert len(ckpt["train"]["optimizer"]["optimizers"]) == 2
    split = train(tiny(text_file, tmp_path / "split", resume=True, lr_decay_iters=20), log=lambda m: None)
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")
    for a, b in zip(split.model.state_dict().values(), straight.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    run = losses(tmp_path / "straight")
    assert sum(run[-5:]) / 5 < sum(run[:5]) / 5 - 0.3  # it learns


def test_a_state_of_another_optimizer_is_refused(tiny_model):
    opt = make_optimizer(tiny_model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    adamw_state = make_optimizer(tiny_model, TrainConfig(), torch.device("cpu")).state_dict()
    with pytest.raises(ValueError, match=r"not that of 2 optimizers \(was the run started with another"):
        opt.load_state_dict(adamw_state)


def test_muon_is_refused_where_it_cannot_run(tiny_model, monkeypatch):
    with pytest.raises(SettingsError, match=r"has no blocks \(the bigram\?\); pass --optimizer adamw"):
        from model.gpt import build_model

        make_optimizer(build_model(GPTConfig(kind="bigram", vocab_size=10)), TrainConfig(optimizer="muon"),
                       torch.device("cpu"))
    with pytest.raises(SettingsError, match="--optimizer muon needs whole weight matrices, and --fsdp shard"):
        TrainConfig(optimizer="muon", fsdp=True)
    with pytest.raises(SettingsError, match="--optimizer must be one of adamw, muon, got 'sgd'"):
        TrainConfig(optimizer="sgd")
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(SettingsError, match=r"--optimizer muon needs torch 2.9 or newer \(this is .*\); up"):
        make_optimizer(tiny_model, TrainConfig(optimizer="muon"), torch.device("cpu"))


def test_optimizers_step_and_clear_as_one(tiny_model):
    opt = make_optimizer(tiny_model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    assert isinstance(opt, Optimizers)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    x = torch.randint(0, tiny_model.config.vocab_size, (2, 8))
    tiny_model(x, x)[1].backward()
    opt.step()
    opt.zero_grad()
    moved = {n for n, p in tiny_model.named_parameters() if not torch.equal(p, before[n])}
    assert {"wte.weight", "blocks.0.attn.c_attn.weight", "blocks.0.ln_1.bias"} <= moved
    assert all(p.grad is None for p in tiny_model.parameters())


ALLOCATE = """
import os, resource, sys, torch
from model.allocator import relaunch_tuned

if sys.argv[1] == "tuned":
    relaunch_tuned()  # the first time, this process becomes the same command with the tunables set

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # 64 MiB, freed at once: an activation
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

for _ in range(3):  # the heap reaches its steady size
    faults()
print(os.environ.get("GLIBC_TUNABLES", "-"), faults())
"""


@pytest.mark.slow  # child processes: malloc is tuned for a whole process, from its start
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tunes glibc's malloc")
def test_gpt_train_starts_with_a_malloc_that_reuses_freed_activations(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)

    def child(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", ALLOCATE, mode], capture_output=True, text=True,
                             check=True)
        tunables, faults = out.stdout.split()
        return tunables, int(faults)

    (plain, default), (tunables, tuned) = child("plain"), child("tuned")
    assert plain == "-" and tunables == TUNABLES
    if default < 5 * 1_000:  # fresh mappings came as huge pages: too few faults to tell the two apart
        pytest.skip(f"this kernel faulted {default} times for 5 x 64 MiB of fresh memory")
    # 5 x 64 MiB of fresh pages each time by default (16,384 faults per 64 MiB); tuned, the same memory
    # comes back from the heap
    assert default > 5 * 10_000 and tuned < 1_000, (default, tuned)
