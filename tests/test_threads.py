"""The default thread count: the cores this process may use, less those other work keeps busy."""

import os

import pytest
import torch

from model import threads


@pytest.mark.parametrize("load, cores, machine, expected", [
    (0.0, 8, None, 8),  # idle: every core
    (0.4, 2, None, 2),  # a core 40% busy is still worth a thread
    (0.6, 2, None, 1),  # more than half busy: left alone
    (1.0, 2, None, 1),  # one other process on a 2-core machine (the case that ran 3-5x slower)
    (2.0, 8, None, 6),
    (20.0, 8, None, 1),  # overloaded: one thread, never zero
    (0.0, 1, None, 1),
    (32.0, 4, 64, 2),  # 4 of 64 cores usable (affinity): half the machine busy is 2 of ours
    (-1.0, 4, None, 4),  # a nonsense load is no load
])
def test_default_threads_leaves_busy_cores_alone(load, cores, machine, expected):
    assert threads.default_threads(load, cores, machine) == expected


def test_asked_threads_come_from_the_flag_then_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.asked_threads(5) == 5 and threads.asked_threads() == 3 and threads.choose_threads() == 3
    for bad in ("", "0", "two", "-1"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert threads.asked_threads() is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "running_others", lambda: 1.0)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert threads.choose_threads() == 1  # nobody asked: what runs now decides
    monkeypatch.setattr(threads, "running_others", lambda: None)  # no /proc: the load average
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 0.5, 0.2))
    assert threads.choose_threads() == 1


def test_what_runs_now_is_read_from_proc_loadavg_less_this_process(tmp_path):
    """The count of runnable tasks, not the lagging averages: a command that just finished in this
    shell leaves a load average of ~2 on a 2-core machine but is not running any more."""
    path = tmp_path / "loadavg"
    path.write_text("2.10 1.80 0.90 1/180 4242\n")  # busy a minute ago, only us running now
    assert threads.running_others(samples=3, path=str(path)) == 0.0
    path.write_text("15.3 16.0 14.2 18/240 4242\n")
    assert threads.running_others(samples=1, path=str(path)) == 17.0
    assert threads.running_others(path=str(tmp_path / "missing")) is None


def test_set_threads_gives_pytorch_the_choice():
    before = torch.get_num_threads()
    try:
        assert threads.set_threads(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_apps_generation_process_keeps_a_core_for_the_screen(monkeypatch):
    from tui.remote import child_threads

    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "running_others", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert child_threads() == 7 and child_threads(3) == 3  # --threads is the child's own count
    monkeypatch.setattr(os, "getloadavg", lambda: (6.0, 0.0, 0.0))
    assert child_threads() == 1
