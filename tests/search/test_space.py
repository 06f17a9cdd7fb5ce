"""Search spaces: validation messages, grid order, sampling with and without replacement."""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy.stats import loguniform, randint
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import ParameterGrid, ParameterSampler

from refnas.search import RandomizedSearchCV, SpaceError
from refnas.search.space import (check_param_names, describe_space, grid_point, grid_size,
                                 iter_grid, mutate, sample_candidates, validate_space)


class NoRvs:
    def sample(self):  # not .rvs
        return 1


@pytest.mark.parametrize("space, message", [
    ({"C": []}, "param_distributions['C'] is an empty list"),
    ({"C": NoRvs()}, "param_distributions['C'] must be a list of values or a distribution "
                     "object with an .rvs method"),
    ({"C": "abc"}, "got the string 'abc'"),
    ({"C": np.zeros((2, 2))}, "one-dimensional"),
    ([], "param_distributions is an empty list"),
    ([{"C": [1]}, {"C": []}], "param_distributions[1]['C'] is an empty list"),
])
def test_bad_spaces_are_named_in_the_error(space, message):
    with pytest.raises(SpaceError) as info:
        validate_space(space)
    assert message in str(info.value)


def test_wrong_types_raise_type_errors():
    with pytest.raises(TypeError, match="must be a dict or a list of dicts, got int"):
        validate_space(3)
    with pytest.raises(TypeError, match=r"param_distributions\[0\] must be a dict"):
        validate_space([["C"]])
    with pytest.raises(TypeError, match="parameter names must be strings"):
        validate_space({1: [1, 2]})


def test_a_grid_refuses_distributions():
    with pytest.raises(SpaceError, match=r"param_grid\['C'\] is a distribution"):
        validate_space({"C": loguniform(1e-3, 1)}, name="param_grid", allow_distributions=False)


def test_unknown_parameter_names_suggest_the_closest():
    spaces = validate_space({"Cc": [1.0], "max_iter": [100]})
    with pytest.raises(SpaceError) as info:
        check_param_names(spaces, LogisticRegression())
    text = str(info.value)
    assert "unknown parameter 'Cc' for LogisticRegression" in text
    assert "Did you mean 'C'?" in text


def test_grid_order_equals_parameter_grid():
    space = [{"kernel": ["rbf"], "gamma": [1, 10], "C": [1, 2, 3]},
             {"kernel": ["linear"], "C": [5, 6]}]
    ours = [p for p, _ in iter_grid(validate_space(space))]
    assert ours == list(ParameterGrid(space))
    assert [grid_point(validate_space(space), i)[0] for i in range(8)] == ours
    assert grid_size(validate_space(space)) == 8


small_lists = st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True)
finite_spaces = st.dictionaries(st.sampled_from("abcd"), small_lists, min_size=1, max_size=3)


@given(finite_spaces, st.integers(0, 2 ** 32 - 1), st.integers(1, 30))
def test_finite_sampling_is_without_replacement_from_the_grid(space, seed, n):
    spaces = validate_space(space)
    size = grid_size(spaces)
    grid = [p for p, _ in iter_grid(spaces)]
    with pytest.warns(UserWarning, match="smaller than n_iter") if n > size else nullcontext():
        drawn = [p for p, _ in sample_candidates(spaces, n, np.random.default_rng(seed))]
    assert len(drawn) == min(n, size)
    assert all(p in grid for p in drawn)
    assert len({tuple(sorted(p.items())) for p in drawn}) == len(drawn)  # distinct


@given(finite_spaces, st.integers(0, 2 ** 32 - 1), st.integers(1, 10), st.integers(0, 5))
def test_candidates_are_a_prefix_of_a_longer_draw(space, seed, n, extra):
    spaces = validate_space(space)
    n = min(n, grid_size(spaces))
    more = min(n + extra, grid_size(spaces))
    short = sample_candidates(spaces, n, np.random.default_rng(seed))
    longer = sample_candidates(spaces, more, np.random.default_rng(seed))
    assert longer[:n] == short


def test_whole_grid_sampled_equals_parameter_sampler_set():
    space = {"a": [1, 2, 3], "b": ["x", "y"], "c": [None, 0.5]}
    ours = sample_candidates(validate_space(space), 12, np.random.default_rng(0))
    theirs = list(ParameterSampler(space, n_iter=12, random_state=0))
    key = lambda p: tuple(sorted(p.items(), key=str))  # noqa: E731
    assert sorted(map(key, (p for p, _ in ours)), key=str) == sorted(map(key, theirs), key=str)


def test_distributions_sample_within_their_support():
    spaces = validate_space({"lr": loguniform(1e-4, 1e-1), "k": randint(2, 5), "act": ["a", "b"]})
    draws = [p for p, _ in sample_candidates(spaces, 200, np.random.default_rng(1))]
    assert all(1e-4 <= p["lr"] <= 1e-1 and 2 <= p["k"] < 5 and p["act"] in "ab" for p in draws)
    assert len({p["lr"] for p in draws}) == 200  # continuous: with replacement, all distinct


def test_conditional_space_keeps_each_branch_keys():
    space = [{"kernel": ["rbf"], "gamma": loguniform(1e-3, 1)}, {"kernel": ["linear"]}]
    draws = sample_candidates(validate_space(space), 50, np.random.default_rng(2))
    for params, branch in draws:
        assert set(params) == ({"kernel", "gamma"} if branch == 0 else {"kernel"})
        assert params["kernel"] == ("rbf" if branch == 0 else "linear")
    assert {b for _, b in draws} == {0, 1}


@given(st.integers(0, 1000))
def test_mutation_changes_exactly_one_parameter(seed):
    spaces = validate_space({"a": [1, 2, 3], "b": [True, False], "c": ["only"]})
    parent = {"a": 1, "b": True, "c": "only"}
    child = mutate(spaces, parent, 0, np.random.default_rng(seed))
    changed = [k for k in parent if child[k] != parent[k]]
    assert len(changed) == 1 and changed[0] in ("a", "b")


def test_n_iter_above_the_grid_warns_and_runs_the_grid(iris):
    X, y = iris
    search = RandomizedSearchCV(LogisticRegression(max_iter=300), {"C": [0.1, 1.0, 10.0]},
                                n_iter=10, cv=3, random_state=0)
    with pytest.warns(UserWarning, match=r"total space of parameters 3 is smaller than "
                                         r"n_iter=10\. Running 3 iterations"):
        search.fit(X, y)
    assert sorted(p["C"] for p in search.cv_results_["params"]) == [0.1, 1.0, 10.0]


def test_space_description_is_stable_and_distinguishes_distributions():
    a = describe_space(validate_space({"C": loguniform(1e-3, 1), "k": [1, np.int64(2)]}))
    b = describe_space(validate_space({"C": loguniform(1e-3, 1), "k": [1, 2]}))
    c = describe_space(validate_space({"C": loguniform(1e-3, 10), "k": [1, 2]}))
    assert a == b and a != c
