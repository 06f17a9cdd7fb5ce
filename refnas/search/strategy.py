"""What every strategy shares: proposals, the history it reads, and the batch driver.

A strategy answers one question, ``ask(history, n)``: *which (at most n) trials next?* It returns
a list of :class:`Proposal` (``[]`` = wait for running trials, ``None`` = the search is over).
Because it reads everything from the history (which the store reloads on resume), a killed
search picks up where it stopped.

Most strategies are synchronous — they propose a batch, wait for all of it, then decide. They
are written as plain generators (see :class:`BatchStrategy`)::

    def batches(self, rng):
        outcomes = yield [Proposal(p) for p in candidates]     # run these, tell me how they did
        ...

The driver numbers the trials of batch after batch consecutively, so a generator replayed from
the start on resume meets its finished trials again (by number) and skips them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Generator, Iterable, Iterator

import numpy as np

from refnas.search.trial import FINISHED, WAITING, TrialRecord, params_key

__all__ = ["Proposal", "Outcome", "History", "BatchStrategy", "StudyMismatchError", "best_indices",
           "interleave"]


class StudyMismatchError(ValueError):
    """The stored study was made with other settings than the ones given now."""


@dataclass(frozen=True)
class Proposal:
    """A trial to run: parameters, an optional budget (epochs, samples, ...), bookkeeping."""

    params: dict[str, Any]
    budget: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    number: int | None = None


@dataclass(frozen=True)
class Outcome:
    """A finished trial as a strategy sees it: ``score`` is oriented so that higher is better,
    with ``-inf`` for failures and NaN."""

    number: int
    params: dict[str, Any]
    budget: float | None
    score: float
    state: str
    meta: dict[str, Any]


class History:
    """The trials of a study, by number, as strategies read them."""

    def __init__(self, records: Iterable[TrialRecord], seed: int,
                 direction: str = "maximize") -> None:
        self.records: dict[int, TrialRecord] = {r.number: r for r in records}
        self.seed = seed
        self.sign = 1.0 if direction == "maximize" else -1.0

    def __contains__(self, number: int) -> bool:
        return number in self.records

    def __iter__(self) -> Iterator[TrialRecord]:
        return iter(self.records.values())

    def __len__(self) -> int:
        return len(self.records)

    def get(self, number: int) -> TrialRecord | None:
        return self.records.get(number)

    def next_number(self) -> int:
        return max(self.records, default=-1) + 1

    def finished(self, number: int) -> bool:
        record = self.records.get(number)
        return record is not None and record.state in FINISHED

    def score(self, record: TrialRecord) -> float:
        value = self.sign * record.value
        return -math.inf if math.isnan(value) else value

    def outcome(self, number: int) -> Outcome:
        r = self.records[number]
        return Outcome(r.number, r.params, r.budget, self.score(r), r.state, r.meta)

    def waiting(self) -> list[TrialRecord]:
        """Trials created but not running (e.g. re-queued after a crash), by number."""
        return sorted((r for r in self if r.state == WAITING), key=lambda r: r.number)

    def check_same(self, number: int, proposal: Proposal) -> None:
        """Raise :class:`StudyMismatchError` if trial ``number`` was stored with other settings."""
        r = self.records[number]
        if params_key(r.params) != params_key(proposal.params) or r.budget != proposal.budget:
            raise StudyMismatchError(
                f"trial {number} of this study was stored with params {r.params} and budget "
                f"{r.budget}, but the strategy now proposes {proposal.params} with budget "
                f"{proposal.budget}: the study was created with different settings. Use a new "
                f"study_name (or storage) to start a new study.")


def best_indices(outcomes: list[Outcome], k: int) -> list[int]:
    """Positions of the ``k`` best outcomes, best first; ties go to the lower trial number."""
    order = sorted(range(len(outcomes)), key=lambda j: (-outcomes[j].score, outcomes[j].number))
    return order[:k]


Batches = Generator[list[Proposal], list[Outcome], None]


class BatchStrategy:
    """Base of the synchronous strategies: subclasses write ``batches(rng)``, a generator that
    yields lists of proposals and receives their outcomes (in the same order).

    ``max_trials`` (if set) ends the search after that many trials, cutting the last batch.
    """

    name = "batch"
    max_trials: int | None = None

    def batches(self, rng: np.random.Generator) -> Batches:  # pragma: no cover - abstract
        raise NotImplementedError

    def signature(self) -> dict[str, Any]:
        """Settings that must not change when a study is resumed."""
        return {"name": self.name}

    @property
    def total(self) -> int | None:
        """Number of trials if known in advance (for progress bars)."""
        return None

    # -- the driver ------------------------------------------------------------------------
    def ask(self, history: History, n: int) -> list[Proposal] | None:
        if getattr(self, "_history", None) is not history:  # a new run: replay from the start
            self._history = history
            rng = np.random.default_rng(np.random.SeedSequence(history.seed))
            self._generator = self.batches(rng)
            self._start, self._cursor, self._done = 0, 0, 0
            self._batch = self._advance(None)
        while self._batch is not None:
            out = self._hand_out(history, n)
            if out or self._cursor < len(self._batch):
                return out
            while self._done < len(self._batch) and history.finished(self._start + self._done):
                self._done += 1
            if self._done < len(self._batch):
                return []
            outcomes = [history.outcome(self._start + i) for i in range(len(self._batch))]
            self._start += len(self._batch)
            self._batch = self._advance(outcomes)
        return None

    def _advance(self, outcomes: list[Outcome] | None) -> list[Proposal] | None:
        """Next batch from the generator (cut to ``max_trials``), or None when it is done."""
        if self.max_trials is not None and self._start >= self.max_trials:
            return None
        try:
            batch = next(self._generator) if outcomes is None else self._generator.send(outcomes)
        except StopIteration:
            return None
        self._cursor = self._done = 0
        if self.max_trials is not None:
            batch = batch[:self.max_trials - self._start]
        return list(batch)

    def _hand_out(self, history: History, n: int) -> list[Proposal]:
        """Up to ``n`` proposals of the current batch that have not been run yet."""
        out = []
        while self._cursor < len(self._batch) and len(out) < n:
            number = self._start + self._cursor
            proposal = replace(self._batch[self._cursor], number=number)
            record = history.get(number)
            if record is not None:
                history.check_same(number, proposal)
            if record is None or record.state == WAITING:
                out.append(proposal)
            self._cursor += 1
        return out


def interleave(generators: list[Batches]) -> Batches:
    """Run several batch generators side by side: each round yields the union of their current
    batches and hands each one back its own outcomes (Hyperband's brackets run this way)."""
    live = []
    for g in generators:
        try:
            live.append((g, next(g)))
        except StopIteration:
            pass
    while live:
        outcomes = yield [p for _, batch in live for p in batch]
        following, start = [], 0
        for g, batch in live:
            mine, start = outcomes[start:start + len(batch)], start + len(batch)
            try:
                following.append((g, g.send(mine)))
            except StopIteration:
                pass
        live = following
