"""``refnas search CONFIG.toml [--resume] [--out DIR]``."""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from refnas.search import cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

CONFIG = """
[data]
name = "iris"

[estimator]
class = "sklearn.linear_model.LogisticRegression"
params = { max_iter = 500 }

[space]
C = { dist = "loguniform", low = 1e-3, high = 1e2 }
fit_intercept = [true, false]

[strategy]
name = "random"
n_iter = 4

[cv]
n_splits = 3

[run]
scoring = ["accuracy", "f1_macro"]
refit = "accuracy"
random_state = 0
verbose = 0
"""


def _run(config: Path, out: Path, resume: bool = False) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    argv = [str(config), "--out", str(out)] + (["--resume"] if resume else [])
    return cli.run(parser.parse_args(argv))


def test_run_resume_and_outputs(tmp_path, capsys):
    config = tmp_path / "iris.toml"
    config.write_text(CONFIG)
    out = tmp_path / "out"
    assert _run(config, out) == 0
    best = json.loads((out / "best.json").read_text())
    assert best["study_name"] == "iris" and best["n_trials"] == 4
    assert best["states"] == {"complete": 4} and 0.8 < best["best_score"] <= 1.0
    for name in ("trials.csv", "trials.json", "history.png", "params.png", "study.db"):
        assert (out / name).stat().st_size > 0
    assert "best score" in capsys.readouterr().out

    assert _run(config, out) == 2  # the study exists and --resume was not given
    assert "already exists; resume it (--resume" in capsys.readouterr().err
    assert _run(config, out, resume=True) == 0
    assert json.loads((out / "best.json").read_text()) == best


@pytest.mark.parametrize("change, message", [
    (('dist = "loguniform"', 'dist = "logunif"'), "[space] C: unknown dist 'logunif'"),
    (('name = "iris"', 'name = "mnist"'), "[data] name: unknown data set 'mnist'"),
    (("LogisticRegression", "LogisticRegressor"), "cannot import"),
    (("[cv]", "[cvv]"), "unknown section(s) ['cvv']"),
    (("verbose = 0", "verbos = 0"), "[run]: unknown key(s) ['verbos']"),
    (("C = {", "Cx = {"), "unknown parameter 'Cx'"),
])
def test_bad_configs_are_reported(tmp_path, capsys, change, message):
    config = tmp_path / "bad.toml"
    config.write_text(CONFIG.replace(*change))
    assert _run(config, tmp_path / "out") == 2
    assert message in capsys.readouterr().err


def test_csv_data_and_holdout(tmp_path):
    rows = ["a,b,label"] + [f"{i % 7},{(i * 3) % 5},{'yes' if i % 7 > 3 else 'no'}"
                            for i in range(60)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    config = tmp_path / "csv.toml"
    config.write_text(CONFIG.replace('name = "iris"', 'csv = "data.csv"')
                      .replace("n_splits = 3", 'kind = "holdout"\ntest_size = 0.25')
                      .replace('scoring = ["accuracy", "f1_macro"]', 'scoring = "accuracy"')
                      .replace('refit = "accuracy"', ""))
    assert _run(config, tmp_path / "out") == 0
    trials = json.loads((tmp_path / "out" / "trials.json").read_text())["trials"]
    assert all(len(t["test_scores"]["score"]) == 1 for t in trials)


@pytest.mark.parametrize("name", ["search_digits.toml", "search_neural_net.toml"])
def test_example_configs_build(tmp_path, name):
    config = cli.load_config(EXAMPLES / name)
    estimator_path = config["estimator"]["class"]
    if importlib.util.find_spec(estimator_path.rpartition(".")[0]) is None:
        pytest.skip(f"{estimator_path} is not available yet")
    search = cli.build_search(config, out=tmp_path, base=EXAMPLES, resume=False,
                              default_name="x")
    assert search.strategy == config["strategy"]["name"]
