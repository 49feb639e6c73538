import json

import pytest
import torch
from conftest import tiny_run

from model.config import GPTConfig
from model.train.loop import NonFiniteError, TrainConfig, evaluate, get_lr, setup, train, train_step
from model.train.report import full_val_loss


def train_losses(out) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110)
    assert get_lr(0, cfg) == pytest.approx(1 / 11)
    assert get_lr(10, cfg) == pytest.approx(1.0)
    assert get_lr(60, cfg) == pytest.approx(0.55)  # half way down the cosine
    assert get_lr(110, cfg) == pytest.approx(0.1)
    assert get_lr(500, cfg) == pytest.approx(0.1)


@pytest.mark.slow  # three short training runs
def test_resume_continues_exactly(text_file, tmp_path):
    log = lambda m: None  # noqa: E731
    train(tiny_run(text_file, tmp_path / "straight"), log)
    train(tiny_run(text_file, tmp_path / "split", max_iters=10, lr_decay_iters=20), log)
    train(tiny_run(text_file, tmp_path / "split", resume=True, lr_decay_iters=20), log)
    straight, split = train_losses(tmp_path / "straight"), train_losses(tmp_path / "split")
    assert len(straight) == len(split) == 20
    torch.testing.assert_close(torch.tensor(split), torch.tensor(straight), rtol=0, atol=1e-6)


def test_non_finite_loss_stops_before_the_update(text_file, tmp_path):
    tr, _ = setup(tiny_run(text_file, tmp_path), log=lambda m: None)
    train_step(tr)
    with torch.no_grad():
        tr.model.ln_f.weight[0] = float("nan")
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    with pytest.raises(NonFiniteError, match="step 1: loss nan / gradient norm nan is not finite"):
        train_step(tr)
    for k, v in tr.model.state_dict().items():
        torch.testing.assert_close(v, before[k], equal_nan=True, rtol=0, atol=0)
    assert tr.step == 1


def test_checkpoint_holds_what_resume_and_inference_need(text_file, tmp_path):
    tr = train(tiny_run(text_file, tmp_path, max_iters=5), log=lambda m: None)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["train"]["step"] == 5
    assert ckpt["meta"]["steps"] == 5 and ckpt["meta"]["tokens_seen"] == 5 * 4 * 16
    assert ckpt["config"] == tr.model.config.to_dict()


def test_best_pt_keeps_the_weights_of_the_lowest_val_loss(text_file, tmp_path, monkeypatch):
    """A run that passes its best (val 2.0 at step 10, then worse) leaves those weights in best.pt,
    slim, while ckpt.pt holds the last state to resume."""
    import model.train.loop as train_module
    from model import checkpoint

    scripted, seen = iter([3.0, 2.0, 2.5, 2.8]), {}

    def evaluate(tr, iters=None):
        seen[tr.step] = {k: v.clone() for k, v in tr.model.state_dict().items()}
        return {"train": 1.0, "val": next(scripted)}

    monkeypatch.setattr(train_module, "evaluate", evaluate)
    said = []
    train(tiny_run(text_file, tmp_path), log=said.append)
    best = checkpoint.load(tmp_path / "best.pt")
    assert "train" not in best and best["meta"]["steps"] == 10 and best["meta"]["val_loss"] == 2.0
    for k, v in best["model"].items():
        torch.testing.assert_close(v, seen[10][k], rtol=0, atol=0)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["train"]["step"] == 20
    assert said[-1].endswith(f"{tmp_path / 'best.pt'} holds the weights of the lowest, 2.0000")


@pytest.mark.slow
def test_short_real_run_beats_the_bigram(shakespeare_available, tmp_path):
    """A 2-layer GPT trained briefly on Tiny Shakespeare ends below the bigram trained as long."""
    common = dict(data="shakespeare", batch_size=32, max_iters=250, warmup_iters=20, eval_interval=250,
                  eval_iters=20, device="cpu", progress=False, log_interval=50)
    bigram = train(TrainConfig(model=GPTConfig(kind="bigram", block_size=64), out_dir=str(tmp_path / "b"),
                               learning_rate=0.1, min_lr=0.01, **common), log=lambda m: None)
    gpt = train(TrainConfig(model=GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=64, dropout=0.0),
                            out_dir=str(tmp_path / "g"), learning_rate=6e-3, min_lr=6e-4, **common),
                log=lambda m: None)
    bigram_val, gpt_val = evaluate(bigram)["val"], evaluate(gpt)["val"]
    assert 2.4 < bigram_val < 2.8  # the bigram's ceiling is ~2.45-2.5 on this split
    assert gpt_val < bigram_val - 0.05
    whole = full_val_loss(gpt.model, gpt.splits.val, 64)
    assert abs(whole - gpt_val) < 0.1  # the quick estimate agrees with the whole split
