"""--attention auto: the faster path, measured on the run's micro-step, stored concretely, kept on resume."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import TEXT, TINY, stored

from model.config import GPTConfig
from model.gpt import GPT
from model.train.attention_choice import PATHS, choose_attention
from model.train.cli import main

CPU = torch.device("cpu")


class FakeClock:
    """A clock that moves only when a model runs forward: by that model's cost."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def factory(config: GPTConfig, clock: FakeClock, cost: dict[str, float]):
    def build(path):
        model = GPT(config.replace(attention=path))
        model.register_forward_hook(lambda *_: setattr(clock, "now", clock.now + cost[path]))
        return model
    return build


def batch(config: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(config.vocab_size, (2, config.block_size + 1), generator=gen)
    return ids[:, :-1], ids[:, 1:]


@pytest.mark.parametrize("cost, expected", [
    ({"explicit": 1.0, "fused": 2.0}, "explicit"),
    ({"explicit": 2.0, "fused": 1.0}, "fused"),
    ({"explicit": 1.0, "fused": 1.0}, "fused"),  # a tie keeps nanoGPT's path
])
def test_a_fake_clock_makes_the_choice(tiny_config, cost, expected):
    clock = FakeClock()
    choice, medians = choose_attention(factory(tiny_config, clock, cost), batch(tiny_config), CPU,
                                       torch.float32, steps=3, clock=clock)
    assert choice == expected
    assert medians == cost


def test_timing_stops_at_the_budget_after_one_step_each(tiny_config, monkeypatch):
    clock = FakeClock()
    built = []

    def build(path):
        built.append(path)
        return factory(tiny_config, clock, {"explicit": 10.0, "fused": 10.0})(path)

    calls = []
    real = GPT.forward

    def counting(self, *args, **kwargs):
        calls.append(self.config.attention)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", counting)
    choose_attention(build, batch(tiny_config), CPU, torch.float32, steps=5, clock=clock, budget_s=1.0)
    assert sorted(built) == sorted(PATHS)
    assert len(calls) == 4  # one warm-up and one timed step per path, then the budget is spent


def test_the_models_weights_are_untouched(tiny_config):
    models = {}

    def build(path):
        torch.manual_seed(0)
        models[path] = GPT(tiny_config.replace(attention=path))
        return models[path]

    choose_attention(build, batch(tiny_config), CPU, torch.float32, steps=1)
    torch.manual_seed(0)
    fresh = GPT(tiny_config).state_dict()
    for model in models.values():
        assert all(torch.equal(fresh[k], v) for k, v in model.state_dict().items())
        assert all(p.grad is None for p in model.parameters())


def test_a_real_clock_picks_one_of_the_two(tiny_config):
    choice, medians = choose_attention(lambda p: GPT(tiny_config.replace(attention=p)), batch(tiny_config),
                                       CPU, torch.float32, steps=1)
    assert choice in PATHS and set(medians) == set(PATHS) and all(t > 0 for t in medians.values())


def test_auto_is_no_model_setting():
    with pytest.raises(ValueError, match="attention 'auto' is chosen by gpt-train --attention auto at the "
                                         "start of a run"):
        GPTConfig(attention="auto")


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT * 3)
    return path


def test_the_run_stores_the_choice_and_a_resumed_run_keeps_it(text, tmp_path, monkeypatch):
    out = tmp_path / "run"
    chosen = {"explicit": 0.001, "fused": 0.002}
    monkeypatch.setattr("model.train.loop.choose_attention", lambda *a, **k: ("explicit", chosen))
    first = CliRunner().invoke(main, ["--data", str(text), "--out", str(out), "--attention", "auto", *TINY])
    assert first.exit_code == 0, first.output
    assert ("attention auto: fused 2.0 ms, explicit 1.0 ms per micro-step (forward + backward, median, "
            "batch 3 x 16, float32 on cpu): training with explicit") in first.output
    ckpt = stored(out)
    assert ckpt["config"]["attention"] == "explicit"
    assert ckpt["train"]["config"]["attention_auto"] is True

    def refuse(*a, **k):
        raise AssertionError("a resumed run measured again")

    monkeypatch.setattr("model.train.loop.choose_attention", refuse)
    for extra in ([], ["--attention", "auto"]):  # auto on resume: keep the stored choice
        steps = str(6 + len(extra))
        more = CliRunner().invoke(main, ["--resume", "--out", str(out), "--data", str(text), "--max-iters",
                                         steps, *extra])
        assert more.exit_code == 0, more.output
        assert stored(out)["config"]["attention"] == "explicit"


def test_a_real_measurement_stores_a_concrete_path(text, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["--data", str(text), "--out", str(out), "--attention", "auto", *TINY])
    assert result.exit_code == 0, result.output
    assert "attention auto: " in result.output
    assert stored(out)["config"]["attention"] in PATHS


def test_a_forced_path_is_not_measured(text, tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("measured a forced path")

    monkeypatch.setattr("model.train.loop.choose_attention", refuse)
    out = tmp_path / "run"
    args = ["--data", str(text), "--out", str(out), "--attention", "explicit", *TINY]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "attention auto" not in result.output
    assert stored(out)["config"]["attention"] == "explicit"


def test_init_from_measures_the_checkpoints_model(text, tmp_path, tiny_ckpt, monkeypatch):
    seen = []

    def pick(factory, batch, *a, **k):
        seen.extend(factory(p).config.n_layer for p in PATHS)  # the checkpoint's model, each path
        return "explicit", {"explicit": 0.001, "fused": 0.002}

    monkeypatch.setattr("model.train.loop.choose_attention", pick)
    out = tmp_path / "run"
    args = ["--init-from", str(tiny_ckpt), "--data", str(text), "--out", str(out), "--attention", "auto",
            "--batch-size", "2", "--block-size", "16", "--max-iters", "2", "--eval-iters", "1",
            "--device", "cpu", "--dtype", "fp32", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert seen == [2, 2]
    assert stored(out)["config"]["attention"] == "explicit"


def test_measuring_leaves_the_run_as_if_the_path_had_been_forced(text, tmp_path, monkeypatch):
    """The weights, dropout and batches are seeded after the measurement: auto choosing fused trains
    exactly what --attention fused trains."""
    def pick(*a, **k):  # builds and runs both models (drawing from the random state), then says fused
        choose_attention(*a, **k, steps=1)
        return "fused", {"explicit": 2.0, "fused": 1.0}

    monkeypatch.setattr("model.train.loop.choose_attention", pick)
    for name, path in (("auto", "auto"), ("forced", "fused")):
        args = ["--data", str(text), "--out", str(tmp_path / name), "--attention", path, "--dropout", "0.1",
                *TINY]
        assert CliRunner().invoke(main, args).exit_code == 0
    auto, forced = stored(tmp_path / "auto")["model"], stored(tmp_path / "forced")["model"]
    assert all(torch.equal(auto[k], forced[k]) for k in forced)
