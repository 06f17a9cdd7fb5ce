"""The study loop: ask the strategy, run trials on the executor, record them in the store.

::

    while the strategy has proposals or trials are running:
        fill the free workers with strategy.ask(history, free)
        wait for a trial to finish; write its record; update the history

Only this (driver) process writes to the store. Resuming is reading the store again: finished
trials are part of the history and are never re-run; trials left ``running`` by a process that
died (same host: its pid is gone; another host: no heartbeat for ``stale_after`` seconds) are
put back to ``waiting`` and run again with the same number, parameters and seed. Every check
that can fail happens before the first write.
"""
from __future__ import annotations

import math
import os
import socket
import time
import traceback
import uuid
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from refnas.search.asha import ASHA
from refnas.search.evolution import RegularizedEvolution
from refnas.search.executor import check_picklable, open_executor
from refnas.search.greedy import GreedySearch
from refnas.search.grid import GridSearch, RandomSearch
from refnas.search.halving import Hyperband, SuccessiveHalving
from refnas.search.objective import FunctionObjective
from refnas.search.space import describe_space, validate_space
from refnas.search.store import StudyInfo, TrialStore
from refnas.search.strategy import History, StudyMismatchError
from refnas.search.trial import (FAILED, FINISHED, RUNNING, WAITING, Trial, TrialRecord,
                                 TrialResult, execute_trial, trial_seed)

__all__ = ["SearchError", "StudyBusyError", "StudyExistsError", "STRATEGIES", "make_strategy",
           "seed_from", "check_error_score", "run_study", "optimize"]

STRATEGIES = {"grid": GridSearch, "random": RandomSearch, "greedy": GreedySearch,
              "halving": SuccessiveHalving, "hyperband": Hyperband, "asha": ASHA,
              "evolution": RegularizedEvolution}
HOST = socket.gethostname()
_ACTIVE_RUNS: set[str] = set()


class SearchError(RuntimeError):
    """Every trial of a search failed."""


class StudyBusyError(RuntimeError):
    """Another live process is running trials of this study."""


class StudyExistsError(ValueError):
    """The study exists and resuming it was not asked for."""


def make_strategy(name: str, space: Any, **params: Any) -> Any:
    """A strategy by name: grid, random, greedy, halving, hyperband, asha, evolution."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy: unknown name {name!r}; use one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](space, **params)


def seed_from(random_state: Any) -> int:
    """The study's root seed: an int as given; None draws fresh entropy; a Generator or a
    RandomState contributes one draw."""
    if random_state is None:
        return int(np.random.SeedSequence().entropy)
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be non-negative, got {random_state}")
        return int(random_state)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2 ** 63))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2 ** 31))
    raise TypeError(f"random_state must be None, an int or a numpy Generator, got "
                    f"{type(random_state).__name__}")


def check_error_score(error_score: Any) -> None:
    if isinstance(error_score, str):
        if error_score != "raise":
            raise ValueError(f"error_score must be a number or 'raise', got {error_score!r}")
    elif not isinstance(error_score, (int, float, np.number)) or isinstance(error_score, bool):
        raise ValueError(f"error_score must be a number or 'raise', got {error_score!r}")


# -- liveness of trials left running ----------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped is a zombie: dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_stale(record: TrialRecord, stale_after: float) -> bool:
    if record.host == HOST and record.pid is not None:
        if record.pid == os.getpid():
            return record.run_id not in _ACTIVE_RUNS
        return not _pid_alive(record.pid)
    return time.time() - (record.heartbeat or 0.0) > stale_after


# -- opening the study ------------------------------------------------------------------------
def _signature_difference(stored: dict[str, Any], given: dict[str, Any]) -> str | None:
    labels = {"space": "search space", "strategy": "strategy settings",
              "objective": "estimator, data, cv or scoring", "direction": "direction"}
    for key in sorted(set(stored) | set(given)):
        if stored.get(key) != given.get(key):
            return (f"a different {labels.get(key, key)} (stored: {stored.get(key)!r}; "
                    f"given: {given.get(key)!r})")
    return None


def _open_study(store: TrialStore, name: str, signature: dict[str, Any], random_state: Any,
                load_if_exists: bool) -> tuple[StudyInfo | None, int]:
    """The existing study (checked) and its seed, or ``(None, seed)`` for a new one."""
    study = store.find_study(name)
    if study is None:
        return None, seed_from(random_state)
    where = f"study {name!r} in storage={store.storage!r}"
    if not load_if_exists:
        raise StudyExistsError(f"{where} already exists; resume it (--resume, or "
                               f"load_if_exists=True) or choose another study name")
    difference = _signature_difference(study.signature, signature)
    if difference:
        raise StudyMismatchError(f"{where} was created with {difference}. Use another "
                                 f"study_name (or storage) to start a new study; nothing "
                                 f"stored was changed.")
    if random_state is not None and seed_from(random_state) != study.seed:
        raise StudyMismatchError(f"{where} was created with random_state={study.seed}, not "
                                 f"{random_state!r}; leave random_state=None or pass the same "
                                 f"value to resume it")
    return study, study.seed


@dataclass
class _Run:
    """One pass of the loop over an opened study."""

    store: TrialStore
    study: StudyInfo
    history: History
    strategy: Any
    objective: Callable[[Trial], TrialResult]
    executor: Executor
    capacity: int
    error_score: Any
    pruner: Any
    on_trial: Callable[[TrialRecord], None] | None
    progress: Any

    def __post_init__(self) -> None:
        self.run_id = uuid.uuid4().hex
        self.running: dict[Future, TrialRecord] = {}
        self.finished = False

    def loop(self) -> None:
        self._fill()
        while self.running:
            done, _ = wait(list(self.running), return_when=FIRST_COMPLETED)
            for future in done:
                self._collect(future)
            self._fill()
        if not self.finished:
            raise RuntimeError(f"strategy {self.strategy.name!r} waits for trials but none is "
                               f"running")

    def _fill(self) -> None:
        while not self.finished and len(self.running) < self.capacity:
            proposals = self.strategy.ask(self.history, self.capacity - len(self.running))
            if proposals is None:
                self.finished = True
            if not proposals:
                return
            for proposal in proposals:
                self._submit(proposal)

    def _submit(self, proposal: Any) -> None:
        number = proposal.number if proposal.number is not None else self.history.next_number()
        record = self.history.get(number)
        if record is None:
            record = TrialRecord(number, proposal.params, budget=proposal.budget,
                                 seed=trial_seed(self.study.seed, number), meta=proposal.meta)
            self.history.records[number] = record
        record.params = proposal.params  # the originals (equal to the stored ones)
        now = time.time()
        record.state, record.run_id, record.pid, record.host = RUNNING, self.run_id, \
            os.getpid(), HOST
        record.heartbeat = record.datetime_start = now
        self.store.save_trial(self.study.study_id, record)
        reference = self.pruner.reference(self.history) if self.pruner is not None else None
        trial = Trial(number, record.params, record.budget, record.seed, self.study.seed,
                      self.pruner, reference)
        future = self.executor.submit(execute_trial, self.objective, trial, self.error_score)
        self.running[future] = record

    def _collect(self, future: Future) -> None:
        record = self.running.pop(future)
        try:
            result = future.result()
        except Exception as exc:
            failed = math.nan if isinstance(self.error_score, str) else float(self.error_score)
            result = TrialResult(state=FAILED, value=failed,
                                 traceback="".join(traceback.format_exception(exc)),
                                 datetime_start=record.datetime_start,
                                 datetime_complete=time.time())
            if isinstance(self.error_score, str):  # "raise": record the failure, then stop
                record.update(result)
                self.store.save_trial(self.study.study_id, record)
                raise
        record.update(result)
        self.store.save_trial(self.study.study_id, record)
        if self.on_trial is not None:
            self.on_trial(record)
        self.progress.update(record, self.history)


class _Progress:
    """tqdm bar: trials done / total and the best score so far."""

    def __init__(self, enabled: bool, total: int | None, initial: int, desc: str) -> None:
        self.bar = None
        self.best = -math.inf
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="trial",
                            dynamic_ncols=True)

    def update(self, record: TrialRecord, history: History) -> None:
        if self.bar is None:
            return
        self.best = max(self.best, history.score(record))
        if math.isfinite(self.best):
            self.bar.set_postfix_str(f"best={history.sign * self.best:.4g}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _first_failure(records: list[TrialRecord]) -> str:
    first = records[0]
    return (f"All {len(records)} trials failed. The first failure (trial {first.number}, "
            f"params {first.params}):\n{first.traceback}")


def run_study(strategy: Any, objective: Callable[[Trial], TrialResult], *,
              signature: dict[str, Any] | None = None, storage: Any = None,
              study_name: str | None = None, random_state: Any = None,
              direction: str = "maximize", n_jobs: int | None = None,
              executor: Executor | None = None, error_score: Any = math.nan, pruner: Any = None,
              load_if_exists: bool = True, progress_bar: bool = False,
              on_trial: Callable[[TrialRecord], None] | None = None,
              heartbeat_interval: float = 5.0, stale_after: float = 60.0
              ) -> tuple[list[TrialRecord], str, int]:
    """Run (or resume) a study; returns ``(trials by number, study name, seed)``.

    ``signature`` describes the space, strategy and objective; a stored study with another
    signature is refused (:class:`StudyMismatchError`) rather than mixed.
    """
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    check_error_score(error_score)
    signature = {"direction": direction, **(signature or {})}
    own_store = not isinstance(storage, TrialStore)
    store = TrialStore(storage) if own_store else storage
    try:
        name = study_name or "default"
        study, seed = _open_study(store, name, signature, random_state, load_if_exists)
        records = store.load_trials(study.study_id) if study else []
        running = [r for r in records if r.state == RUNNING]
        live = [r for r in running if not _is_stale(r, stale_after)]
        if live:
            r = live[0]
            raise StudyBusyError(f"study {name!r}: trial {r.number} is running in process "
                                 f"{r.pid} on host {r.host!r}; wait for it to finish (a trial "
                                 f"counts as abandoned after {stale_after:.0f} s without a "
                                 f"heartbeat)")
        with open_executor(n_jobs, executor) as (pool, capacity, processes):
            if processes:
                check_picklable(objective, "the objective")
            # -- from here on, the store changes --
            if study is None:
                study = store.create_study(name, signature, seed, direction)
            store.requeue(study.study_id, [r.number for r in running])
            for r in running:
                r.state, r.run_id = WAITING, None
            history = History(records, seed, direction)
            done = sum(r.state in FINISHED for r in records)
            progress = _Progress(progress_bar, getattr(strategy, "total", None), done, name)
            run = _Run(store, study, history, strategy, objective, pool, capacity, error_score,
                       pruner, on_trial, progress)
            _ACTIVE_RUNS.add(run.run_id)
            stop = store.start_heartbeat(run.run_id, heartbeat_interval)
            try:
                run.loop()
            finally:
                _ACTIVE_RUNS.discard(run.run_id)
                if stop is not None:
                    stop.set()
                progress.close()
        out = sorted(history, key=lambda r: r.number)
        if out and all(r.state == FAILED for r in out):
            raise SearchError(_first_failure(out))
        return out, name, seed
    finally:
        if own_store:
            store.close()


def optimize(fn: Callable[[dict[str, Any], Any, Trial], float], space: Any,
             strategy: str | Any = "random", *, direction: str = "maximize",
             storage: Any = None, study_name: str | None = None, random_state: Any = None,
             n_jobs: int | None = None, executor: Executor | None = None,
             error_score: Any = math.nan, pruner: Any = None, load_if_exists: bool = True,
             progress_bar: bool = False, **strategy_params: Any):
    """Search ``space`` for the parameters that maximise (or minimise) ``fn(params, budget,
    trial)``. ``strategy`` is a name (see :data:`STRATEGIES`; its settings as keyword
    arguments, e.g. ``n_iter=50``) or a strategy object. Returns a
    :class:`~refnas.search.results.SearchResult`."""
    from refnas.search.results import SearchResult

    objective = FunctionObjective(fn)
    if isinstance(strategy, str):
        strategy = make_strategy(strategy, space, **strategy_params)
    elif strategy_params:
        raise TypeError(f"strategy settings {sorted(strategy_params)} given with a strategy "
                        f"object; set them on the object")
    signature = {"space": describe_space(validate_space(space)),
                 "strategy": strategy.signature(),
                 "objective": objective.signature()}
    trials, name, seed = run_study(
        strategy, objective, signature=signature, storage=storage, study_name=study_name,
        random_state=random_state, direction=direction, n_jobs=n_jobs, executor=executor,
        error_score=error_score, pruner=pruner, load_if_exists=load_if_exists,
        progress_bar=progress_bar)
    return SearchResult(trials, direction=direction, study_name=name, seed=seed)
