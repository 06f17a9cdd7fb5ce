"""The SQLite store: persistence, resume, abandoned trials, refusals that lose nothing."""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from refnas.search import (RandomizedSearchCV, SpaceError, StorageError, StudyBusyError,
                           StudyExistsError, StudyMismatchError, TrialRecord, TrialStore,
                           optimize)
from refnas.search.trial import RUNNING, decode_value, encode_value, trial_seed

CALLS: list[int] = []


def _count(params, budget, trial):
    CALLS.append(trial.number)
    return params["x"] * 10 + trial.rng.random()


def _url(tmp_path, name="s.db"):
    return f"sqlite:///{tmp_path / name}"


def _stored(tmp_path, name="s.db"):
    with sqlite3.connect(tmp_path / name) as db:
        return db.execute("SELECT number, state, value FROM trials ORDER BY number").fetchall()


def test_a_finished_study_is_read_back_not_rerun(tmp_path):
    CALLS.clear()
    first = optimize(_count, {"x": [1, 2, 3, 4, 5]}, "random", n_iter=5,
                     storage=_url(tmp_path), study_name="s", random_state=3)
    assert sorted(CALLS) == [0, 1, 2, 3, 4]
    CALLS.clear()
    again = optimize(_count, {"x": [1, 2, 3, 4, 5]}, "random", n_iter=5,
                     storage=_url(tmp_path), study_name="s")
    assert CALLS == []
    assert [(t.params, t.value, t.seed) for t in again.trials] == \
        [(t.params, t.value, t.seed) for t in first.trials]


def test_a_study_can_grow(tmp_path):
    CALLS.clear()
    small = optimize(_count, {"x": list(range(20))}, "random", n_iter=5,
                     storage=_url(tmp_path), study_name="g", random_state=0)
    CALLS.clear()
    big = optimize(_count, {"x": list(range(20))}, "random", n_iter=8,
                   storage=_url(tmp_path), study_name="g", random_state=0)
    assert sorted(CALLS) == [5, 6, 7]
    assert [t.params for t in big.trials[:5]] == [t.params for t in small.trials]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _abandon(tmp_path, number: int, pid: int, heartbeat: float | None = None):
    """Mark trial ``number`` as running in process ``pid`` (as a killed search leaves it)."""
    with TrialStore(_url(tmp_path)) as store:
        study = store.find_study("s")
        record = next(t for t in store.load_trials(study.study_id) if t.number == number)
        record.state, record.pid, record.value = RUNNING, pid, np.nan
        record.host = socket.gethostname()
        record.heartbeat = heartbeat
        store.save_trial(study.study_id, record)


def test_a_trial_left_running_by_a_dead_process_is_rerun(tmp_path):
    space = {"x": [1, 2, 3, 4]}
    first = optimize(_count, space, "grid", storage=_url(tmp_path), study_name="s",
                     random_state=1)
    _abandon(tmp_path, 2, _dead_pid())
    CALLS.clear()
    resumed = optimize(_count, space, "grid", storage=_url(tmp_path), study_name="s")
    assert CALLS == [2]
    assert [(t.params, t.value, t.state) for t in resumed.trials] == \
        [(t.params, t.value, t.state) for t in first.trials]


def test_a_trial_of_a_live_process_is_not_taken_over(tmp_path):
    space = {"x": [1, 2]}
    optimize(_count, space, "grid", storage=_url(tmp_path), study_name="s", random_state=1)
    _abandon(tmp_path, 1, os.getppid())
    before = _stored(tmp_path)
    with pytest.raises(StudyBusyError, match=f"trial 1 is running in process {os.getppid()}"):
        optimize(_count, space, "grid", storage=_url(tmp_path), study_name="s")
    assert _stored(tmp_path) == before


def test_another_hosts_trial_is_stale_after_its_heartbeat_stops(tmp_path):
    space = {"x": [1, 2]}
    optimize(_count, space, "grid", storage=_url(tmp_path), study_name="s", random_state=1)
    with TrialStore(_url(tmp_path)) as store:
        study = store.find_study("s")
        record = store.load_trials(study.study_id)[1]
        record.state, record.host, record.pid, record.heartbeat = RUNNING, "elsewhere", 1, 0.0
        store.save_trial(study.study_id, record)
    CALLS.clear()
    optimize(_count, space, "grid", storage=_url(tmp_path), study_name="s")
    assert CALLS == [1]


def test_a_different_space_is_refused_and_nothing_is_lost(tmp_path):
    optimize(_count, {"x": [1, 2, 3]}, "grid", storage=_url(tmp_path), study_name="s")
    before = _stored(tmp_path)
    with pytest.raises(StudyMismatchError) as info:
        optimize(_count, {"x": [1, 2, 5]}, "grid", storage=_url(tmp_path), study_name="s")
    assert "study 's'" in str(info.value)
    assert "different search space" in str(info.value)
    assert "nothing stored was changed" in str(info.value)
    assert _stored(tmp_path) == before


def test_a_different_seed_or_strategy_is_refused(tmp_path):
    optimize(_count, {"x": [1, 2, 3]}, "random", n_iter=2, storage=_url(tmp_path),
             study_name="s", random_state=1)
    with pytest.raises(StudyMismatchError, match="created with random_state=1, not 2"):
        optimize(_count, {"x": [1, 2, 3]}, "random", n_iter=2, storage=_url(tmp_path),
                 study_name="s", random_state=2)
    with pytest.raises(StudyMismatchError, match="different strategy settings"):
        optimize(_count, {"x": [1, 2, 3]}, "grid", storage=_url(tmp_path), study_name="s")
    assert len(_stored(tmp_path)) == 2


def test_load_if_exists_false_refuses_an_existing_study(tmp_path):
    optimize(_count, {"x": [1]}, "grid", storage=_url(tmp_path), study_name="s")
    with pytest.raises(StudyExistsError, match="already exists; resume it"):
        optimize(_count, {"x": [1]}, "grid", storage=_url(tmp_path), study_name="s",
                 load_if_exists=False)


def test_unwritable_or_malformed_storage_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="does not exist"):
        optimize(_count, {"x": [1]}, "grid", storage=f"sqlite:///{blocker}/s.db")
    with pytest.raises(StorageError, match="storage must be None or a URL 'sqlite:///path.db'"):
        optimize(_count, {"x": [1]}, "grid", storage="postgresql://db/s")
    with pytest.raises(StorageError, match="cannot open the database"):
        optimize(_count, {"x": [1]}, "grid", storage=f"sqlite:///{blocker}")
    assert blocker.read_text() == "not a folder"


def test_errors_before_any_write_leave_the_store_as_it_was(tmp_path, iris):
    X, y = iris
    url = _url(tmp_path)
    RandomizedSearchCV(LogisticRegression(max_iter=300), {"C": [0.1, 1.0]}, n_iter=2, cv=3,
                       storage=url, study_name="kept", random_state=0).fit(X, y)
    before = _stored(tmp_path)
    bad = [
        ({"Cx": [1.0]}, {}, SpaceError),                      # unknown parameter
        ({"C": []}, {}, SpaceError),                          # empty list
        ({"C": [1.0]}, {"error_score": "ignore"}, ValueError),  # bad error_score
        ({"C": [1.0]}, {"cv": 1}, ValueError),                # bad cv
    ]
    for space, extra, error in bad:
        search = RandomizedSearchCV(LogisticRegression(max_iter=300), space, n_iter=1,
                                    storage=url, study_name="new", **extra)
        with pytest.raises(error):
            search.fit(X, y)
    assert _stored(tmp_path) == before
    with TrialStore(url) as store:
        assert store.study_names() == ["kept"]


def test_records_are_json_never_pickles(tmp_path):
    optimize(_count, {"x": [np.int64(1), 2]}, "grid", storage=_url(tmp_path), study_name="s")
    with sqlite3.connect(tmp_path / "s.db") as db:
        types = db.execute("SELECT DISTINCT typeof(params), typeof(meta), typeof(test_scores) "
                           "FROM trials").fetchall()
        assert types == [("text", "text", "text")]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_parameter_values_round_trip_through_json():
    values = {"a": np.int64(3), "b": (64, 32), "c": [1.5, None], "d": np.float32(0.5),
              "e": {"k": (1,)}, "f": "text", "g": True, "h": np.array([1, 2])}
    back = decode_value(encode_value(values))
    assert back["a"] == 3 and type(back["a"]) is int
    assert back["b"] == (64, 32) and back["e"] == {"k": (1,)}
    assert back["c"] == [1.5, None] and back["d"] == 0.5 and back["g"] is True
    np.testing.assert_array_equal(back["h"], [1, 2])
    assert encode_value(LogisticRegression()) == {"__repr__": "LogisticRegression()"}


def test_store_saves_and_loads_a_full_record(tmp_path):
    record = TrialRecord(3, {"x": (1, 2)}, state="complete", budget=9.0, seed=trial_seed(0, 3),
                         value=0.5, test_scores={"score": [0.4, np.nan]}, fit_times=[0.1, 0.2],
                         intermediate=[(0, 1, 0.3)], meta={"rung": 2}, traceback="tb")
    with TrialStore(_url(tmp_path)) as store:
        study = store.create_study("s", {"space": []}, 0, "maximize")
        store.save_trial(study.study_id, record)
        loaded, = store.load_trials(study.study_id)
    assert loaded.params == {"x": (1, 2)} and loaded.intermediate == [(0, 1, 0.3)]
    assert loaded.test_scores["score"][0] == 0.4 and np.isnan(loaded.test_scores["score"][1])
    assert (loaded.budget, loaded.seed, loaded.value, loaded.meta, loaded.traceback) == \
        (9.0, record.seed, 0.5, {"rung": 2}, "tb")
