"""CSV / JSON export round trips; plots are written as PNG files, atomically."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import uniform
from sklearn.linear_model import LogisticRegression

from refnas.search import RandomizedSearchCV, TrialRecord, optimize, read_csv, read_json
from refnas.search.export import atomic_open
from refnas.search.plots import plot_history, plot_params, plot_rungs

PNG = b"\x89PNG\r\n\x1a\n"


def _records():
    return [
        TrialRecord(0, {"C": np.float64(0.5), "layers": (64, 32), "act": "relu"},
                    state="complete", budget=3.0, seed=123, value=0.75,
                    test_scores={"score": [0.7, 0.8]}, train_scores={"score": [0.9, 0.95]},
                    fit_times=[0.01, 0.02], score_times=[0.001, 0.002],
                    intermediate=[(0, 0, 0.5), (1, 0, 0.6)], meta={"rung": 1, "config": 4},
                    datetime_start=1000.5, datetime_complete=1001.25),
        TrialRecord(1, {"C": 2, "layers": (8,), "act": None}, state="failed", seed=7,
                    value=math.nan, test_scores={"score": [math.nan, math.nan]},
                    traceback='Traceback:\n  ValueError: "bad", really\n', pid=42, host="h"),
    ]


def _same(a: TrialRecord, b: TrialRecord) -> None:
    left, right = a.to_dict(), b.to_dict()  # NaN-safe comparison (NaN -> None)
    assert left == right


def test_json_round_trip(tmp_path):
    path = tmp_path / "out" / "trials.json"
    records = _records()
    from refnas.search import write_json

    write_json(records, path, study_name="s")
    text = path.read_text()
    assert "NaN" not in text  # standard JSON
    assert json.loads(text)["study"] == "s"
    back = read_json(path)
    for a, b in zip(records, back):
        _same(a, b)
    assert back[0].params["layers"] == (64, 32) and math.isnan(back[1].value)


def test_csv_round_trip_and_readable_columns(tmp_path):
    from refnas.search import write_csv

    path = tmp_path / "trials.csv"
    records = _records()
    write_csv(records, path)
    header = path.read_text().splitlines()[0].split(",")
    assert header[:6] == ["number", "state", "value", "budget", "seed", "duration"]
    assert {"param_C", "param_act", "param_layers", "mean_test_score"} <= set(header)
    back = read_csv(path)
    assert len(back) == 2
    for a, b in zip(records, back):
        _same(a, b)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_atomic_open_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def _budgeted(params, budget, trial):
    return params["x"] * math.log(budget + 1)


def test_plots_are_non_empty_pngs(tmp_path):
    result = optimize(_budgeted, {"x": uniform(0, 2), "kind": ["a", "b"]}, "hyperband",
                      min_resource=1, max_resource=9, random_state=0)
    for plot, name in ((plot_history, "h.png"), (plot_params, "p.png"), (plot_rungs, "r.png")):
        path = plot(result.trials, tmp_path / name)
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    paths = result.save_plots(tmp_path / "all")
    assert sorted(p.name for p in paths) == ["history.png", "params.png", "rungs.png"]


def test_facade_exports_and_plots(tmp_path, iris):
    X, y = iris
    search = RandomizedSearchCV(LogisticRegression(max_iter=300), {"C": [0.1, 1.0, 10.0]},
                                n_iter=3, cv=3, random_state=0).fit(X, y)
    back = read_json(search.to_json(tmp_path / "t.json"))
    assert [t.params for t in back] == list(search.cv_results_["params"])
    assert [t.value for t in read_csv(search.to_csv(tmp_path / "t.csv"))] == \
        list(search.cv_results_["mean_test_score"])
    names = sorted(p.name for p in search.save_plots(tmp_path / "plots"))
    assert names == ["history.png", "params.png"]
    assert all((tmp_path / "plots" / n).read_bytes().startswith(PNG) for n in names)
