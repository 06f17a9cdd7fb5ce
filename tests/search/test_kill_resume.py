"""kill -9 a search half-way, start it again: nothing finished is lost or repeated, and the
result equals an uninterrupted run with the same seed."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import refnas.search

REPO = Path(refnas.search.__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import os, sys, time
    from refnas.search import optimize

    def slow(params, budget, trial):
        time.sleep(0.15)
        with open(os.environ["TRIAL_LOG"], "a") as f:
            f.write(f"{trial.number} {os.getpid()}\\n")
        return params["x"] + trial.rng.random()

    if __name__ == "__main__":
        optimize(slow, {"x": list(range(50))}, "random", n_iter=10,
                 storage=f"sqlite:///{sys.argv[1]}", study_name="k", random_state=11)
""")


def _start(script: Path, db: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "TRIAL_LOG": str(log), "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(script), str(db)], env=env)


def _rows(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=10) as con:
            return con.execute("SELECT number, state, params, value, seed FROM trials "
                               "ORDER BY number").fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []


@pytest.mark.timeout(180)
def test_kill_minus_nine_then_resume(tmp_path):
    script = tmp_path / "search.py"
    script.write_text(SCRIPT)
    db, log = tmp_path / "killed.db", tmp_path / "trials.log"

    proc = _start(script, db, log)
    deadline = time.time() + 90
    while sum(r[1] == "complete" for r in _rows(db)) < 3:
        assert proc.poll() is None, "the search ended before it could be killed"
        assert time.time() < deadline, "the search made no progress"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = _rows(db)
    done_before = {r[0] for r in at_kill if r[1] == "complete"}
    assert 3 <= len(done_before) < 10
    assert [r[1] for r in at_kill if r[0] not in done_before] == ["running"]

    assert _start(script, db, log).wait(timeout=90) == 0
    resumed = _rows(db)
    assert [r[0] for r in resumed] == list(range(10))
    assert all(r[1] == "complete" for r in resumed)
    assert {r[:5] for r in at_kill if r[0] in done_before} <= set(resumed)  # kept as they were

    runs = [line.split() for line in log.read_text().splitlines()]
    second_pid = runs[-1][1]
    rerun = [int(n) for n, pid in runs if pid == second_pid]
    assert not set(rerun) & done_before, "a finished trial was run again"
    assert sorted(rerun) == sorted(set(range(10)) - done_before)

    clean = tmp_path / "clean.db"
    assert _start(script, clean, tmp_path / "clean.log").wait(timeout=90) == 0
    assert _rows(clean) == resumed
