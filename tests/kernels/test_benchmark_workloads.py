"""The workload benchmark's protocol: a contender's process runs blocks of steps on command
(:func:`benchmarks.workloads.serve`), and a round has the contenders' processes take turns
(:func:`benchmarks.__main__._round`). No timing assertions: only what is run and reported."""
from __future__ import annotations

import io
import json
import sys

import pytest

from benchmarks import __main__ as bench
from refnas import backend
from benchmarks import workloads


def _serve(commands: str, contender: str = "numpy") -> list:
    replies = io.StringIO()
    workloads.serve("mlp-s", contender, None, 2, io.StringIO(commands), replies)
    return [json.loads(line) for line in replies.getvalue().splitlines()]


def test_a_contender_reports_ready_then_runs_steps_for_the_seconds_asked():
    replies = _serve("0.05\n0\nquit\n0.05\n")
    assert replies[0] == {"ready": True}
    # steps for 0.05 s (a 0.3 ms step: many), then at least two even for no time at all; the
    # command after "quit" is never read
    assert len(replies) == 3
    assert len(replies[1]) > 2 and all(seconds > 0 for seconds in replies[1])
    assert len(replies[2]) == 2


def test_a_profile_reports_the_share_of_time_in_kernels_and_the_kernels_that_took_it():
    replies = _serve("profile 0.05\n")
    share, top = replies[1]["kernel_share"], replies[1]["top_kernels_ms"]
    assert 0 < share < 1
    # the four slowest of the kernels an MLP-S step calls (the update among them), by name
    assert 0 < len(top) <= 4 and set(top) <= set(backend.kernels("numpy"))
    assert "sgd_update" in top or len(top) == 4
    assert all(ms > 0 for ms in top.values())


def test_a_contender_that_cannot_run_says_so_and_stops(monkeypatch):
    monkeypatch.setattr(workloads, "torch_step", lambda name, threads: None)
    assert _serve("0.05\n", contender="torch") == [{"ready": False}]


def test_a_round_has_the_contenders_take_turns_in_blocks(monkeypatch):
    monkeypatch.setattr(bench, "BLOCK_S", 0.02)
    monkeypatch.setattr(bench, "MIN_BLOCKS", 3)
    result = bench._round("mlp-s", ["numpy", "numba"], repeats=1, budget_s=0.0, threads=1,
                          torch_threads=1, profile=True)
    assert set(result) == {"numpy", "numba"}
    for figures in result.values():
        # MIN_BLOCKS blocks (the budget is spent, the repeats met), each a median step time
        assert len(figures["blocks"]) == 3
        assert all(0 < seconds < 1 for seconds in figures["blocks"])
        assert 0 < figures["profile"]["kernel_share"] < 1


def test_a_round_runs_blocks_until_each_contender_has_its_repeats(monkeypatch):
    monkeypatch.setattr(bench, "BLOCK_S", 0.0)        # two steps a block: one timed
    monkeypatch.setattr(bench, "MIN_BLOCKS", 1)
    result = bench._round("mlp-s", ["numpy"], repeats=5, budget_s=60.0, threads=1,
                          torch_threads=1, profile=False)
    assert len(result["numpy"]["blocks"]) == 5
    assert "profile" not in result["numpy"]


def test_a_failing_contender_raises_with_its_error():
    with pytest.raises(RuntimeError, match="mlp-s/nosuch failed"):
        bench._round("mlp-s", ["nosuch"], repeats=1, budget_s=0.0, threads=1, torch_threads=1,
                     profile=False)


def test_a_child_skips_lines_that_are_not_its_replies(tmp_path):
    """A library printing to the child's stdout does not break the protocol."""
    script = tmp_path / "child.py"
    script.write_text('import sys\n'
                      'print("a banner from some library")\n'
                      'print(\'{"ready": true}\')\n'
                      'for line in sys.stdin:\n'
                      '    if line.strip() == "quit": break\n'
                      '    print("noise"); print("[0.5, 0.25]", flush=True)\n')
    contender = bench._Contender("fake/child", [sys.executable, str(script)])
    try:
        assert contender.ready() is True
        assert contender.steps(0.1) == [0.5, 0.25]
    finally:
        contender.close()
    assert contender.returncode == 0
