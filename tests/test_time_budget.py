"""gpt-train --time-budget: durations, the steps that fit, a measurement that leaves the run as it was,
and a budgeted run that is an ordinary run from there (stored, resumed without measuring again)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_run
from hypothesis import given
from hypothesis import strategies as st

from model.train.cli import main
from model.train.config import SettingsError, format_duration, parse_duration
from model.train.loop import TrainConfig, setup, time_budget, train, train_step


def tiny(text_file, out, **changes) -> TrainConfig:
    return tiny_run(text_file, out, **(dict(eval_interval=50, log_interval=10) | changes))


@pytest.mark.parametrize("text, seconds", [("2h", 7200), ("150m", 9000), ("1h30m", 5400), ("90s", 90),
                                           ("1.5h", 5400), ("5400", 5400), (" 2H ", 7200), ("1m30s", 90)])
def test_durations_read_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "3x", "0", "-5m", "h", "1h1h", "inf", "nan", "2 h", "400d", "1e9"])
def test_what_is_not_a_duration_says_the_form(text):
    with pytest.raises(ValueError, match="is not a duration up to a year; write it as 2h, 150m, 1h30m"):
        parse_duration(text)


def test_durations_print_shortest():
    shown = [format_duration(s) for s in (7200, 9000, 5400.4, 725, 40, 0.5)]
    assert shown == ["2h", "2h30m", "1h30m", "12m5s", "40s", "0.5s"]


@given(budget=st.floats(100, 1e5), startup=st.floats(0, 50), step=st.floats(0.01, 10),
       evaluation=st.floats(0, 100), interval=st.integers(1, 1000))
def test_the_planned_steps_are_the_most_that_fit(budget, startup, step, evaluation, interval):
    left = budget * (1 - time_budget.MARGIN) - startup

    def cost(n):
        return n * step + time_budget.evaluations(n, interval) * evaluation

    try:
        n = time_budget.plan_steps(budget, startup, step, evaluation, interval, warmup_iters=0)
    except SettingsError:
        assert cost(1) > left
        return
    assert cost(n) <= left < cost(n + 1)


def test_evaluations_count_every_interval_and_the_end():
    assert [time_budget.evaluations(n, 250) for n in (1, 249, 250, 251, 500, 1690)] == [1, 1, 1, 2, 2, 7]


def test_a_budget_too_short_for_warmup_and_one_evaluation_says_what_would_fit():
    with pytest.raises(SettingsError, match=r"--time-budget 1m is too short: start-up took 5 s, a step "
                                            r"takes 1.00 s and an evaluation ~10.0 s, so it fits 43 steps, "
                                            r"not the 100 warmup steps and one evaluation; give at least "
                                            r"1m59s, or lower "):
        time_budget.plan_steps(60, 5, 1.0, 10.0, 250, warmup_iters=100)


def test_measuring_leaves_the_run_exactly_as_it_was(text_file, tmp_path):
    """A run that timed its steps first continues bit for bit as one that did not."""
    cfg = tiny(text_file, tmp_path)
    measured, _ = setup(cfg, log=lambda m: None)
    step_s, eval_s = time_budget.measure(measured, train_step, 2 * cfg.eval_iters)
    assert step_s > 0 and eval_s > 0 and measured.step == 0
    measured_losses = [train_step(measured) for _ in range(4)]
    plain, _ = setup(cfg, log=lambda m: None)  # reseeds: the same weights and random streams
    assert [train_step(plain) for _ in range(4)] == measured_losses
    weights = zip(measured.model.state_dict().items(), plain.model.state_dict().values(), strict=True)
    for (name, a), b in weights:
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.slow  # two short runs and a resume
def test_a_budgeted_run_stores_its_plan_and_resumes_without_measuring(text_file, tmp_path, monkeypatch):
    monkeypatch.setattr(time_budget, "out_of_time", lambda *a: False)  # the deadline: the test below
    lines: list[str] = []
    tr = train(tiny(text_file, tmp_path / "b", time_budget=3.0, eval_interval=10**6), log=lines.append)
    plan = tr.cfg.budget_plan
    assert plan is not None and plan["max_iters"] == tr.cfg.max_iters == tr.step > 3
    assert any(line.startswith("time budget 3s: a step takes") and f"--max-iters {tr.step}," in line
               for line in lines)
    ckpt = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)
    assert ckpt["train"]["config"]["time_budget"] == 3.0 and ckpt["train"]["config"]["budget_plan"] == plan
    assert ckpt["meta"]["train_seconds"] > 0
    # the same steps without a budget: the same weights (the measured steps were undone)
    straight = train(tiny(text_file, tmp_path / "s", max_iters=tr.step, eval_interval=10**6),
                     log=lambda m: None)
    for a, b in zip(tr.model.state_dict().values(), straight.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a resumed budgeted run is an ordinary one: it keeps its steps, and extending it measures nothing
    resumed_lines: list[str] = []
    more = train(TrainConfig(out_dir=str(tmp_path / "b"), resume=True, max_iters=tr.step + 2),
                 log=resumed_lines.append, given={"max_iters": tr.step + 2, "data": str(text_file)})
    assert more.step == tr.step + 2 and not any("a step takes" in line for line in resumed_lines)
    assert any(line.startswith("time budget 3s:") and "fixed when the run started" in line
               for line in resumed_lines)


def test_the_deadline_counts_start_up_training_one_more_step_and_the_closing_evaluation():
    plan = {"budget_s": 100.0, "startup_s": 10.0, "eval_s": 5.0}
    assert not time_budget.out_of_time(plan, seconds=80.0, step_s=5.0)  # 10 + 80 + 5 + 5 = 100: fits
    assert time_budget.out_of_time(plan, seconds=80.5, step_s=5.0)
    assert time_budget.out_of_time(plan, seconds=70.0, step_s=15.5)  # a slower step ends it sooner


@pytest.mark.slow  # three short runs
def test_a_run_whose_machine_slows_stops_at_its_deadline_evaluated_and_saved(text_file, tmp_path,
                                                                             monkeypatch):
    checks = []

    def deadline_after_five_steps(plan, seconds, step_s):
        checks.append(seconds)
        return len(checks) > 5

    monkeypatch.setattr(time_budget, "out_of_time", deadline_after_five_steps)
    lines: list[str] = []
    tr = train(tiny(text_file, tmp_path, time_budget=3.0, eval_interval=10**6), log=lines.append)
    planned = tr.cfg.max_iters
    assert tr.step == 5 < planned and tr.saved[0] == 5
    assert any(line.startswith(f"time budget 3s spent: stopping at step 5 of {planned} (steps now take")
               for line in lines)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["train"]["step"] == 5 and ckpt["meta"]["steps"] == 5
    # resumed, the budget is still spent: nothing is trained or rewritten
    before = (tmp_path / "ckpt.pt").stat().st_mtime_ns
    again: list[str] = []
    resumed = train(TrainConfig(out_dir=str(tmp_path), resume=True), log=again.append,
                    given={"data": str(text_file)})
    assert resumed.step == 5 and (tmp_path / "ckpt.pt").stat().st_mtime_ns == before
    assert f"the time budget 3s was spent at step 5 of {planned}: nothing to do (pass a --max-iters " \
           f"above {planned} to train on past the budget)" in again
    # --max-iters makes it an ordinary run, with no deadline
    extended = train(TrainConfig(out_dir=str(tmp_path), resume=True, max_iters=planned + 1),
                     log=lambda m: None, given={"max_iters": planned + 1, "data": str(text_file)})
    assert extended.step == planned + 1


def test_the_cli_takes_a_budget_or_max_iters_not_both(tmp_path):
    result = CliRunner().invoke(main, ["--out", str(tmp_path), "--time-budget", "2h", "--max-iters", "10"])
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: --time-budget fixes --max-iters from timed steps; "
                                     "pass one of them")
    bad = CliRunner().invoke(main, ["--out", str(tmp_path), "--time-budget", "soon"])
    assert bad.exit_code == 2 and "'soon' is not a duration up to a year" in bad.output


def test_a_budget_replaces_the_presets_decay_steps():
    from model.train.config import fresh

    assert fresh("cpu", {}).lr_decay_iters == 2000
    assert fresh("cpu", {"time_budget": 60.0}).lr_decay_iters is None
    assert fresh("cpu", {"time_budget": 60.0, "lr_decay_iters": 500}).lr_decay_iters == 500


@pytest.mark.slow  # a real (tiny) run through the CLI
def test_a_budget_too_short_is_a_usage_error_from_the_cli(text_file, tmp_path):
    result = CliRunner().invoke(main, ["--data", str(text_file), "--out", str(tmp_path / "r"), "--n-layer",
                                       "2", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
                                       "--device", "cpu", "--no-progress", "--time-budget", "0.5s"])
    assert result.exit_code == 2, result.output
    assert "Error: --time-budget 0.5s is too short: start-up took" in result.output
    assert "warmup steps and one evaluation; give at least" in result.output
    assert not (tmp_path / "r" / "ckpt.pt").exists()
