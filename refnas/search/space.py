r"""Search spaces: what may be tried, checked before anything runs.

A space is scikit-learn's ``param_distributions``: a dict mapping a parameter name to either a
non-empty list of values or a *distribution* — anything with an ``rvs(random_state=rng)``
method, such as ``scipy.stats.loguniform(1e-4, 1e-1)`` or ``scipy.stats.randint(1, 10)`` — or
a list of such dicts (a *conditional* space: each dict is a separate branch, e.g. one for
``kernel="rbf"`` with ``gamma`` and one for ``kernel="linear"`` without it).

Internally a space is always the list form. When every value is a list the space is *finite*;
its size is

.. math::
    |\Theta| = \sum_{d} \prod_{k \in d} |V_{d,k}|,

and its points are numbered like ``sklearn.model_selection.ParameterGrid``: branches in order,
keys sorted, the last key varying fastest.
"""
from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Mapping, Sequence
from itertools import product
from typing import Any

import numpy as np

__all__ = [
    "SpaceError", "validate_space", "check_param_names", "is_distribution", "is_finite",
    "grid_size", "grid_point", "iter_grid", "sample_point", "sample_candidates", "mutate",
    "describe_space",
]

Space = Mapping[str, Any] | Sequence[Mapping[str, Any]]


class SpaceError(ValueError):
    """A search space that cannot be searched (its message names the argument and the key)."""


def is_distribution(value: Any) -> bool:
    """True for objects that can be sampled with ``value.rvs(random_state=rng)``."""
    return callable(getattr(value, "rvs", None))


def _check_values(values: Any, where: str, allow_distributions: bool) -> Any:
    """One entry of a space: a distribution, or a non-empty list of values (returned as list)."""
    if is_distribution(values):
        if not allow_distributions:
            raise SpaceError(f"{where} is a distribution ({type(values).__name__}); a grid needs "
                             f"a list of values — use RandomizedSearchCV for distributions")
        return values
    if isinstance(values, (str, bytes)):
        raise SpaceError(f"{where} must be a list of values or a distribution with an .rvs "
                         f"method, got the string {values!r}; wrap it in a list: [{values!r}]")
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise SpaceError(f"{where}: an array of values must be one-dimensional, got shape "
                             f"{values.shape}")
        values = list(values)
    elif isinstance(values, (Sequence, range)):
        values = list(values)
    else:
        raise SpaceError(f"{where} must be a list of values or a distribution object with an "
                         f".rvs method (e.g. scipy.stats.loguniform(1e-3, 1e2)), got "
                         f"{type(values).__name__} {values!r}")
    if not values:
        raise SpaceError(f"{where} is an empty list; give at least one value")
    return values


def validate_space(space: Space, *, name: str = "param_distributions",
                   allow_distributions: bool = True) -> list[dict[str, Any]]:
    """Check a space and return it as a list of dicts with list values (distributions kept).

    ``name`` is the argument's name, used in error messages. Raises :class:`SpaceError`
    (a ``ValueError``) or ``TypeError`` naming the offending key.
    """
    if isinstance(space, Mapping):
        branches, indexed = [space], False
    elif isinstance(space, Sequence) and not isinstance(space, (str, bytes)):
        branches, indexed = list(space), True
        if not branches:
            raise SpaceError(f"{name} is an empty list; give at least one dict of parameters")
    else:
        raise TypeError(f"{name} must be a dict or a list of dicts, got {type(space).__name__}")
    checked = []
    for i, branch in enumerate(branches):
        prefix = f"{name}[{i}]" if indexed else name
        if not isinstance(branch, Mapping):
            raise TypeError(f"{prefix} must be a dict of parameter -> values, got "
                            f"{type(branch).__name__}")
        out = {}
        for key, values in branch.items():
            if not isinstance(key, str):
                raise TypeError(f"{prefix}: parameter names must be strings, got {key!r}")
            out[key] = _check_values(values, f"{prefix}[{key!r}]", allow_distributions)
        checked.append(out)
    return checked


def check_param_names(spaces: list[dict[str, Any]], estimator: Any,
                      name: str = "param_distributions") -> None:
    """Raise if a space names a parameter the estimator lacks (``get_params(deep=True)``)."""
    valid = set(estimator.get_params(deep=True))
    for branch in spaces:
        for key in sorted(branch):
            if key in valid:
                continue
            close = difflib.get_close_matches(key, sorted(valid), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SpaceError(f"{name}: unknown parameter {key!r} for {type(estimator).__name__}."
                             f"{hint} Valid parameters: {', '.join(sorted(valid))}")


# -- finite spaces ---------------------------------------------------------------------------
def is_finite(spaces: list[dict[str, Any]]) -> bool:
    """True when every value of every branch is a list (the space can be enumerated)."""
    return all(not is_distribution(v) for branch in spaces for v in branch.values())


def _branch_size(branch: dict[str, Any]) -> int:
    return math.prod(len(v) for v in branch.values())


def grid_size(spaces: list[dict[str, Any]]) -> int:
    r""":math:`|\Theta| = \sum_d \prod_k |V_{d,k}|` for a finite space."""
    return sum(_branch_size(b) for b in spaces)


def grid_point(spaces: list[dict[str, Any]], index: int) -> tuple[dict[str, Any], int]:
    """The ``index``-th point of a finite space and the branch it belongs to.

    Same order as ``sklearn.model_selection.ParameterGrid``: sorted keys, last key fastest.
    """
    for b, branch in enumerate(spaces):
        size = _branch_size(branch)
        if index < size:
            point = {}
            for key in sorted(branch, reverse=True):
                index, i = divmod(index, len(branch[key]))
                point[key] = branch[key][i]
            return dict(sorted(point.items())), b
        index -= size
    raise IndexError("grid index out of range")


def iter_grid(spaces: list[dict[str, Any]]):
    """Yield ``(params, branch)`` for every point of a finite space, in grid order."""
    for b, branch in enumerate(spaces):
        keys = sorted(branch)
        for values in product(*(branch[k] for k in keys)):
            yield dict(zip(keys, values)), b


# -- sampling --------------------------------------------------------------------------------
def _draw(values: Any, rng: np.random.Generator) -> Any:
    if is_distribution(values):
        return values.rvs(random_state=rng)
    return values[int(rng.integers(len(values)))]


def sample_point(spaces: list[dict[str, Any]],
                 rng: np.random.Generator) -> tuple[dict[str, Any], int]:
    """One random point: a branch uniformly, then each key (sorted) from its list or ``.rvs``."""
    b = int(rng.integers(len(spaces))) if len(spaces) > 1 else 0
    return {key: _draw(spaces[b][key], rng) for key in sorted(spaces[b])}, b


_PERMUTE_LIMIT = 1_000_000


def _distinct_indices(size: int, n: int, rng: np.random.Generator) -> list[int]:
    """``n`` distinct grid indices; a prefix of the draws for ``n + 1`` (so a study can grow)."""
    if size <= _PERMUTE_LIMIT:
        return [int(i) for i in rng.permutation(size)[:n]]
    seen: dict[int, None] = {}
    while len(seen) < n:
        seen.setdefault(int(rng.integers(size)), None)
    return list(seen)


def sample_candidates(spaces: list[dict[str, Any]], n: int, rng: np.random.Generator,
                      *, name: str = "n_iter") -> list[tuple[dict[str, Any], int]]:
    """``n`` random points, as scikit-learn's ``ParameterSampler``.

    When every value is a list the points are drawn *without replacement* from the grid; if
    ``n`` exceeds the grid size a ``UserWarning`` is issued and the whole grid is returned
    (in random order). Otherwise each point is drawn independently with :func:`sample_point`.
    """
    if is_finite(spaces):
        size = grid_size(spaces)
        if n > size:
            warnings.warn(f"The total space of parameters {size} is smaller than {name}={n}. "
                          f"Running {size} iterations. For exhaustive searches, use "
                          f"GridSearchCV.", UserWarning, stacklevel=3)
            n = size
        return [grid_point(spaces, i) for i in _distinct_indices(size, n, rng)]
    return [sample_point(spaces, rng) for _ in range(n)]


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # arrays and other objects without a truth value
        return a is b


def mutate(spaces: list[dict[str, Any]], params: dict[str, Any], branch: int,
           rng: np.random.Generator) -> dict[str, Any]:
    """A copy of ``params`` with one parameter changed (Real et al. 2019's mutation).

    The parameter is chosen uniformly among those that can change; a list parameter moves to
    a different value chosen uniformly, a distribution parameter is drawn afresh.
    """
    space = spaces[branch]
    keys = [k for k in sorted(space) if is_distribution(space[k]) or len(space[k]) > 1]
    child = dict(params)
    if not keys:
        return child
    key = keys[int(rng.integers(len(keys)))]
    values = space[key]
    if is_distribution(values):
        child[key] = values.rvs(random_state=rng)
    else:
        others = [v for v in values if not _same(v, params.get(key))] or values
        child[key] = others[int(rng.integers(len(others)))]
    return child


def describe_space(spaces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A JSON-ready description, used to recognise a study's space when it is resumed."""
    from refnas.search.trial import encode_value

    def describe(values: Any) -> Any:
        if not is_distribution(values):
            return [encode_value(v) for v in values]
        dist = getattr(values, "dist", None)
        if dist is not None and hasattr(values, "args"):  # a frozen scipy.stats distribution
            return {"dist": dist.name, "args": encode_value(list(values.args)),
                    "kwds": encode_value(dict(values.kwds))}
        text = repr(values)
        return {"dist": type(values).__qualname__, "repr": "" if " at 0x" in text else text}

    return [{key: describe(branch[key]) for key in sorted(branch)} for branch in spaces]
