"""Processes and a Dask cluster give the serial run's results for the same seed."""
from __future__ import annotations

import logging
import sqlite3

import pytest
from scipy.stats import loguniform
from sklearn.linear_model import LogisticRegression

from refnas.search import HalvingRandomSearchCV, RandomizedSearchCV, optimize
from refnas.search.executor import SerialExecutor, executor_capacity

from .conftest import same_cv_results

SPACE = {"C": loguniform(1e-2, 1e2), "fit_intercept": [True, False]}


def _random_search(X, y, **kwargs):
    return RandomizedSearchCV(LogisticRegression(max_iter=500), SPACE, n_iter=6, cv=3,
                              random_state=4, **kwargs).fit(X, y)


def _quadratic(params, budget, trial):
    return -(params["a"] - 3) ** 2 - (params["b"] - 5) ** 2 + trial.rng.random() * 0.01


def test_two_processes_equal_serial(iris):
    X, y = iris
    serial = _random_search(X, y)
    parallel = _random_search(X, y, n_jobs=2)
    same_cv_results(serial.cv_results_, parallel.cv_results_)
    assert [t.seed for t in serial.trials_] == [t.seed for t in parallel.trials_]
    assert serial.best_params_ == parallel.best_params_


def test_adaptive_strategy_in_processes_equals_serial():
    space = {"a": list(range(8)), "b": list(range(8))}
    kwargs = dict(n_iter=16, population_size=4, sample_size=2, batch_size=2, random_state=0)
    serial = optimize(_quadratic, space, "evolution", **kwargs)
    parallel = optimize(_quadratic, space, "evolution", n_jobs=2, **kwargs)
    assert [(t.params, t.value, t.meta) for t in serial.trials] == \
        [(t.params, t.value, t.meta) for t in parallel.trials]


def test_unpicklable_objective_is_refused_before_anything_is_written(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    with pytest.raises(TypeError, match="must be picklable to run in worker processes"):
        optimize(lambda p, b, t: 1.0, {"x": [1, 2]}, "grid", n_jobs=2, storage=url)
    with sqlite3.connect(tmp_path / "p.db") as db:
        assert db.execute("SELECT count(*) FROM studies").fetchone() == (0,)


def test_serial_executor_delivers_results_and_exceptions():
    ex = SerialExecutor()
    assert ex.submit(pow, 2, 5).result() == 32
    with pytest.raises(ZeroDivisionError):
        ex.submit(lambda: 1 / 0).result()
    assert executor_capacity(ex) >= 1


@pytest.fixture(scope="module")
def dask_executor():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
    client = distributed.Client(cluster)
    try:
        yield client.get_executor()
    finally:
        client.close()
        cluster.close()


@pytest.mark.timeout(120)
def test_local_cluster_equals_serial(iris, dask_executor):
    X, y = iris
    serial = _random_search(X, y)
    on_dask = _random_search(X, y, executor=dask_executor)
    same_cv_results(serial.cv_results_, on_dask.cv_results_)
    assert executor_capacity(dask_executor) == 2


@pytest.mark.timeout(120)
def test_halving_on_a_local_cluster_equals_serial(iris, dask_executor):
    X, y = iris
    kwargs = dict(cv=3, factor=2, min_resources=30, random_state=2)
    serial = HalvingRandomSearchCV(LogisticRegression(max_iter=500), SPACE, **kwargs).fit(X, y)
    on_dask = HalvingRandomSearchCV(LogisticRegression(max_iter=500), SPACE,
                                    executor=dask_executor, **kwargs).fit(X, y)
    same_cv_results(serial.cv_results_, on_dask.cv_results_)
    assert sorted(set(serial.cv_results_["n_resources"])) == [30.0, 60.0, 120.0]
