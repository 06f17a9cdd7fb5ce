"""Strategies against tables computed by hand from the papers (not from this code's output)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.stats import uniform

from refnas.search import ASHA, hyperband_brackets, optimize
from refnas.search.evolution import population_window
from refnas.search.halving import halving_rungs
from refnas.search.trial import trial_seed

# Li et al. 2018, Table 1 (R = 81, eta = 3): for each bracket s, the rungs (n_i, r_i).
HYPERBAND_81_3 = {
    4: [(81, 1), (27, 3), (9, 9), (3, 27), (1, 81)],
    3: [(34, 3), (11, 9), (3, 27), (1, 81)],
    2: [(15, 9), (5, 27), (1, 81)],
    1: [(8, 27), (2, 81)],
    0: [(5, 81)],
}


def test_hyperband_brackets_match_the_paper():
    brackets = hyperband_brackets(81, 3)
    assert brackets == [HYPERBAND_81_3[s] for s in (4, 3, 2, 1, 0)]


def _constant(params, budget, trial):
    return params["x"]


def test_a_hyperband_run_spends_exactly_the_table():
    result = optimize(_constant, {"x": uniform(0, 1)}, "hyperband", min_resource=1,
                      max_resource=81, random_state=0)
    counts = Counter((t.meta["bracket"], t.budget) for t in result.trials)
    expected = Counter({(s, float(r)): n for s, rungs in HYPERBAND_81_3.items()
                        for n, r in rungs})
    assert counts == expected
    assert len(result.trials) == 206
    # each bracket starts from its own fresh candidates; later rungs reuse earlier ones
    for s, rungs in HYPERBAND_81_3.items():
        first = {t.meta["config"] for t in result.trials
                 if t.meta["bracket"] == s and t.meta["rung"] == 0}
        assert len(first) == rungs[0][0]


def _flip(params, budget, trial):
    """Rung 0 prefers large x, rung 1 small x."""
    return params["x"] if budget == 1 else -params["x"]


def test_successive_halving_promotions_by_hand():
    # 9 candidates x = 0..8, eta = 3, budgets 1, 3, 9:
    # rung 0 keeps floor(9/3) = 3 best by x -> {6, 7, 8}; rung 1 keeps floor(3/3) = 1 best by
    # -x -> {6}; rung 2 runs x = 6 at budget 9.
    result = optimize(_flip, {"x": list(range(9))}, "halving", n_candidates=9, min_resource=1,
                      max_resource=9, factor=3, random_state=0)
    by_budget = {b: sorted(t.params["x"] for t in result.trials if t.budget == b)
                 for b in (1.0, 3.0, 9.0)}
    assert by_budget == {1.0: list(range(9)), 3.0: [6, 7, 8], 9.0: [6]}
    assert result.best_params == {"x": 6}
    assert halving_rungs(9, 1, 9, 3) == [(9, 1), (3, 3), (1, 9)]
    assert halving_rungs(10, 1, 27, 3) == [(10, 1), (3, 3), (1, 9)]  # 10 -> 3 -> 1
    assert halving_rungs(100, 2, 10, 3) == [(100, 2), (33, 6)]  # 2 * 9 > 10: two rungs


def _x(params, budget, trial):
    return params["x"]


def test_asha_serial_schedule_by_hand():
    # Li et al. 2020, Algorithm 2, serial, eta = 3, rungs at r = 1, 3, 9; score = x.
    # Worked through by hand: promote from the highest rung whose top floor(|rung|/3) holds a
    # candidate not yet promoted, else start the next candidate.
    order = [5, 3, 8, 1, 9, 2, 7, 4, 6]
    strategy = ASHA({"x": order}, n_configs=9, min_resource=1, max_resource=9, factor=3,
                    candidates=[{"x": v} for v in order])
    result = optimize(_x, {"x": order}, strategy, random_state=0)
    got = [(t.params["x"], t.budget) for t in result.trials]
    assert got == [(5, 1), (3, 1), (8, 1), (8, 3), (1, 1), (9, 1), (9, 3), (2, 1), (7, 1),
                   (4, 1), (6, 1), (7, 3), (9, 9)]


def test_population_windows_by_hand():
    # P = 3, one child at a time: the oldest member leaves as each child arrives.
    assert [list(population_window(c, 3)) for c in (3, 4, 5, 6)] == \
        [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]]
    # P = 3, two children per batch, bred from the same population.
    assert [list(population_window(c, 3, 2)) for c in (3, 4, 5, 6, 7)] == \
        [[0, 1, 2], [0, 1, 2], [2, 3, 4], [2, 3, 4], [4, 5, 6]]


def _sum(params, budget, trial):
    return params["a"] + 0.1 * params["b"]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_evolution_ages_out_the_oldest_and_picks_the_best_of_the_sample(batch_size):
    P = 5
    result = optimize(_sum, {"a": list(range(10)), "b": list(range(10))}, "evolution",
                      n_iter=30, population_size=P, sample_size=3, batch_size=batch_size,
                      random_state=1)
    trials = result.trials
    assert len(trials) == 30
    assert all(t.meta["parent"] is None for t in trials[:P])
    for child in trials[P:]:
        window = set(population_window(child.number, P, batch_size))
        sample, parent = child.meta["sample"], child.meta["parent"]
        assert set(sample) <= window and parent in sample
        assert trials[parent].value == max(trials[n].value for n in sample)
        changed = [k for k in ("a", "b") if child.params[k] != trials[parent].params[k]]
        assert len(changed) == 1


def _table(params, budget, trial):
    T = [[0, 1, 5], [2, 3, 4], [1, 0, 0]]
    return T[params["a"]][params["b"]]


def test_greedy_coordinate_ascent_by_hand():
    # start (0,0)=0; sweep 1: a -> (1,0)=2 (vs (2,0)=1); b -> (1,2)=4 (vs (1,1)=3);
    # sweep 2: a -> (0,2)=5 (vs (2,2)=0); b: (0,1)=1 is worse; sweep 3: all cached, stop.
    result = optimize(_table, {"a": [0, 1, 2], "b": [0, 1, 2]}, "greedy", random_state=0)
    got = [(t.params["a"], t.params["b"]) for t in result.trials]
    assert got == [(0, 0), (1, 0), (2, 0), (1, 1), (1, 2), (0, 2), (2, 2), (0, 1)]
    assert result.best_params == {"a": 0, "b": 2}


def test_greedy_respects_the_trial_cap():
    result = optimize(_table, {"a": [0, 1, 2], "b": [0, 1, 2]}, "greedy", n_iter=4,
                      random_state=0)
    assert len(result.trials) == 4


def test_trial_seeds_are_seed_sequence_spawns():
    children = np.random.SeedSequence(42).spawn(6)
    assert [trial_seed(42, k) for k in range(6)] == \
        [int(c.generate_state(1)[0]) for c in children]


def _seeded(params, budget, trial):
    return float(trial.rng.random())


def test_a_trial_sees_its_seed():
    result = optimize(_seeded, {"x": [1, 2, 3, 4]}, "grid", random_state=5)
    for t in result.trials:
        assert t.value == np.random.default_rng(trial_seed(5, t.number)).random()


def test_minimize_direction():
    result = optimize(_x, {"x": [3, 1, 2]}, "grid", direction="minimize")
    assert result.best_params == {"x": 1}


def test_a_strategy_object_can_run_twice():
    strategy = ASHA({"x": [1, 2, 3]}, n_configs=3, min_resource=1, max_resource=3)
    first = optimize(_x, {"x": [1, 2, 3]}, strategy, random_state=0)
    second = optimize(_x, {"x": [1, 2, 3]}, strategy, random_state=0)
    assert [(t.params, t.budget) for t in first.trials] == \
        [(t.params, t.budget) for t in second.trials]
    from refnas.search import RandomSearch

    random = RandomSearch({"x": uniform(0, 1)}, n_iter=3)
    a = optimize(_x, {"x": uniform(0, 1)}, random, random_state=1)
    b = optimize(_x, {"x": uniform(0, 1)}, random, random_state=2)
    assert len(b.trials) == 3 and a.trials[0].params != b.trials[0].params
