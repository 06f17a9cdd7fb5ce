"""``refnas search CONFIG.toml [--resume] [--out DIR]``: a search described by a TOML file.

The file (see ``examples/search_digits.toml``)::

    [data]                      # one of:
    name = "digits"             #   digits | iris | wine | breast_cancer (scikit-learn's)
    # csv = "train.csv"         #   a CSV with a header row; features are numbers
    # target = "label"          #   the label column (default: the last one)

    [estimator]
    class = "sklearn.linear_model.LogisticRegression"   # any importable dotted path
    params = { max_iter = 2000 }                        # fixed constructor parameters

    [space]                     # parameter = list, or a distribution table
    C = { dist = "loguniform", low = 1e-3, high = 1e2 }
    fit_intercept = [true, false]
    # dist: loguniform | uniform (low, high) | randint (low, high: high excluded)
    # a conditional space is an array of tables: [[space]] ... [[space]] ...

    [strategy]
    name = "random"             # grid | random | greedy | halving | hyperband | asha | evolution
    n_iter = 20                 # the strategy's settings (n_iter, factor, n_candidates,
                                # population_size, sample_size, batch_size, n_configs, ...)
    # resource = "n_samples"    # budgeted strategies: "n_samples" or a parameter ("epochs")
    # min_resources = "smallest"; max_resources = "auto"

    [cv]
    n_splits = 5                # stratified for classifiers
    # shuffle = true; random_state = 0
    # kind = "holdout"; test_size = 0.2; stratify = true

    [run]
    scoring = "accuracy"        # or a list: ["accuracy", "f1_macro"] with refit = "accuracy"
    random_state = 0
    n_jobs = 1
    verbose = 1
    # study_name = "..."        # default: the file name without .toml
    # storage = "sqlite:///study.db"   # default: DIR/study.db
    # error_score = nan; return_train_score = false

Relative paths (``csv``, a relative ``storage``) are read from the config file's folder.
``--out DIR`` (default ``refnas-out/search/<study>``) receives ``trials.csv``, ``trials.json``,
``best.json`` and the plots. Without ``--resume`` an existing study is an error; with it, the
finished trials are read back and the search continues.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_arguments", "run", "load_config", "build_search", "load_data", "ConfigError"]

DATASETS = ("digits", "iris", "wine", "breast_cancer")
SECTIONS = {"data", "estimator", "space", "strategy", "cv", "run"}
RUN_KEYS = {"scoring", "refit", "random_state", "n_jobs", "verbose", "study_name", "storage",
            "error_score", "return_train_score"}


class ConfigError(ValueError):
    """The TOML file does not describe a search (the message names the key)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="the search, as a TOML file")
    parser.add_argument("--resume", action="store_true",
                        help="continue the study if it exists in the storage")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for trials.csv/json, best.json and plots "
                             "(default refnas-out/search/<study>)")


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    unknown = set(config) - SECTIONS
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}; use {sorted(SECTIONS)}")
    for section in ("data", "estimator", "space"):
        if section not in config:
            raise ConfigError(f"missing [{section}] section")
    bad = set(config.get("run", {})) - RUN_KEYS
    if bad:
        raise ConfigError(f"[run]: unknown key(s) {sorted(bad)}; use {sorted(RUN_KEYS)}")
    return config


def _relative(path: str, base: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base / p


def load_data(section: dict[str, Any], base: Path) -> tuple[np.ndarray, np.ndarray]:
    """``X, y`` from a bundled scikit-learn data set or a CSV file."""
    if "name" in section:
        name = section["name"]
        if name not in DATASETS:
            raise ConfigError(f"[data] name: unknown data set {name!r}; use one of {DATASETS} "
                              f"or csv = 'path'")
        from sklearn import datasets

        return getattr(datasets, f"load_{name}")(return_X_y=True)
    if "csv" not in section:
        raise ConfigError("[data] needs name = 'digits' (iris, wine, breast_cancer) or csv = "
                          "'path.csv'")
    import csv

    path = _relative(section["csv"], base)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise ConfigError(f"[data] csv: cannot read {path}: {exc.strerror}") from None
    header, rows = rows[0], [r for r in rows[1:] if r]
    target = section.get("target", header[-1])
    if target not in header:
        raise ConfigError(f"[data] target: no column {target!r} in {path} (columns: {header})")
    t = header.index(target)
    try:
        X = np.array([[float(v) for i, v in enumerate(r) if i != t] for r in rows])
    except ValueError as exc:
        raise ConfigError(f"[data] csv: features must be numbers: {exc}") from None
    labels = [r[t] for r in rows]
    try:
        y = np.array([int(v) for v in labels])
    except ValueError:
        y = np.array(labels)
    return X, y


def _import(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"[estimator] class: cannot import {dotted!r}: {exc}") from None


def _distribution(key: str, spec: dict[str, Any]) -> Any:
    from scipy import stats

    makers = {"loguniform": lambda low, high: stats.loguniform(low, high),
              "uniform": lambda low, high: stats.uniform(low, high - low),
              "randint": lambda low, high: stats.randint(low, high)}
    name = spec.get("dist")
    if name not in makers:
        raise ConfigError(f"[space] {key}: unknown dist {name!r}; use one of {sorted(makers)}")
    if set(spec) != {"dist", "low", "high"}:
        raise ConfigError(f"[space] {key}: a distribution takes dist, low and high, got "
                          f"{sorted(spec)}")
    if not spec["low"] < spec["high"]:
        raise ConfigError(f"[space] {key}: need low < high, got {spec['low']} and {spec['high']}")
    return makers[name](spec["low"], spec["high"])


def _space(section: Any) -> Any:
    def branch(table: dict[str, Any]) -> dict[str, Any]:
        return {k: _distribution(k, v) if isinstance(v, dict) else v for k, v in table.items()}

    return [branch(t) for t in section] if isinstance(section, list) else branch(section)


def _cv(section: dict[str, Any]) -> Any:
    from refnas.search.cv import Holdout, KFold

    section = dict(section)
    kind = section.pop("kind", "kfold")
    if kind == "holdout":
        return Holdout(**section)
    if kind != "kfold":
        raise ConfigError(f"[cv] kind: use 'kfold' or 'holdout', got {kind!r}")
    n_splits = section.pop("n_splits", 5)
    if not section:
        return n_splits  # stratified for classifiers, as cv=k in scikit-learn
    return KFold(n_splits, **section)


def build_search(config: dict[str, Any], *, out: Path, base: Path, resume: bool,
                 default_name: str) -> Any:
    """The :class:`~refnas.search.facade.SearchCV` a config describes."""
    from refnas.search.facade import SearchCV

    estimator_section = config["estimator"]
    if "class" not in estimator_section:
        raise ConfigError("[estimator] needs class = 'package.module.Class'")
    estimator = _import(estimator_section["class"])(**estimator_section.get("params", {}))
    strategy = dict(config.get("strategy", {"name": "random"}))
    name = strategy.pop("name", "random")
    budget = {k: strategy.pop(k) for k in ("resource", "min_resources", "max_resources")
              if k in strategy}
    run_section = dict(config.get("run", {}))
    storage = run_section.pop("storage", None)
    if storage is None:
        storage = f"sqlite:///{out / 'study.db'}"
    elif storage.startswith("sqlite:///") and storage[len("sqlite:///"):] not in ("", ":memory:"):
        storage = f"sqlite:///{_relative(storage[len('sqlite:///'):], base)}"
    verbose = run_section.pop("verbose", 1)
    return SearchCV(estimator, _space(config["space"]), strategy=name, strategy_params=strategy,
                    cv=_cv(config.get("cv", {})), storage=storage,
                    study_name=run_section.pop("study_name", default_name),
                    load_if_exists=resume, verbose=verbose, **budget, **run_section)


def _plain(value: Any) -> Any:
    """A JSON scalar for a parameter value (NumPy scalars unwrapped, others as text)."""
    if isinstance(value, np.generic):
        return value.item()
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def _write_outputs(search: Any, out: Path) -> dict[str, Any]:
    from refnas.search.export import atomic_open

    search.to_csv(out / "trials.csv")
    search.to_json(out / "trials.json")
    search.save_plots(out)
    summary = {"study_name": search.study_name_, "storage": search.storage,
               "n_trials": len(search.trials_),
               "states": {s: sum(t.state == s for t in search.trials_)
                          for s in sorted({t.state for t in search.trials_})}}
    if hasattr(search, "best_index_"):
        best = search.trials_[search.best_index_]
        score = getattr(search, "best_score_", math.nan)
        summary.update(best_index=search.best_index_, best_trial=best.number,
                       best_score=None if math.isnan(score) else score,
                       best_params={k: _plain(v) for k, v in search.best_params_.items()})
    with atomic_open(out / "best.json") as f:
        json.dump(summary, f, indent=2)
    return summary


def run(args: argparse.Namespace) -> int:
    """Run the search a TOML file describes; 0 on success, 2 on a bad config."""
    from refnas.search.engine import SearchError, StudyExistsError
    from refnas.search.space import SpaceError
    from refnas.search.store import StorageError
    from refnas.search.strategy import StudyMismatchError

    try:
        config = load_config(args.config)
        base = Path(args.config).resolve().parent
        default_name = Path(args.config).stem
        study = config.get("run", {}).get("study_name", default_name)
        out = Path(args.out) if args.out is not None else Path("refnas-out/search") / study
        out.mkdir(parents=True, exist_ok=True)
        X, y = load_data(config["data"], base)
        search = build_search(config, out=out, base=base, resume=args.resume,
                              default_name=default_name)
        search.fit(X, y)
    except (ConfigError, SpaceError, StorageError, StudyExistsError, StudyMismatchError,
            SearchError, TypeError, ValueError) as exc:
        print(f"refnas search: error: {exc}", file=sys.stderr)
        return 2
    summary = _write_outputs(search, out)
    print(f"study {summary['study_name']!r}: {summary['n_trials']} trials {summary['states']}")
    if "best_params" in summary:
        print(f"best score {summary['best_score']} with {summary['best_params']} "
              f"(trial {summary['best_trial']})")
    print(f"wrote {out}/trials.csv, trials.json, best.json and plots")
    return 0
