"""The trial store: one SQLite database (stdlib ``sqlite3``, WAL journal) holding studies and
their trials as rows of JSON — never pickles — so a search survives a kill and resumes.

``storage=None`` (or ``"sqlite:///:memory:"``) keeps everything in memory;
``storage="sqlite:///results/search.db"`` (relative) or ``"sqlite:////abs/path.db"`` (absolute)
writes a file. A database holds many studies, each named; a trial is the row
``(study, number)``. Only the driver process writes.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refnas.search.trial import RUNNING, WAITING, TrialRecord

__all__ = ["StorageError", "StudyInfo", "TrialStore", "parse_storage"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    signature TEXT NOT NULL,
    seed TEXT NOT NULL,
    direction TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    study_id INTEGER NOT NULL REFERENCES studies (study_id),
    number INTEGER NOT NULL,
    state TEXT NOT NULL,
    params TEXT NOT NULL,
    budget REAL,
    seed INTEGER,
    value REAL,
    test_scores TEXT,
    train_scores TEXT,
    fit_times TEXT,
    score_times TEXT,
    intermediate TEXT,
    meta TEXT,
    datetime_start REAL,
    datetime_complete REAL,
    traceback TEXT,
    heartbeat REAL,
    pid INTEGER,
    host TEXT,
    run_id TEXT,
    PRIMARY KEY (study_id, number)
);
"""
_JSON_COLUMNS = ("params", "test_scores", "train_scores", "fit_times", "score_times",
                 "intermediate", "meta")
_COLUMNS = ("number", "state", "params", "budget", "seed", "value", "test_scores",
            "train_scores", "fit_times", "score_times", "intermediate", "meta",
            "datetime_start", "datetime_complete", "traceback", "heartbeat", "pid", "host",
            "run_id")


class StorageError(ValueError):
    """The storage argument is malformed or the database cannot be opened for writing."""


@dataclass(frozen=True)
class StudyInfo:
    study_id: int
    name: str
    signature: dict[str, Any]
    seed: int
    direction: str


def parse_storage(storage: str | os.PathLike | None) -> Path | None:
    """The database file of a storage URL, or None for in-memory."""
    if storage is None:
        return None
    if isinstance(storage, os.PathLike):
        return Path(storage)
    if not isinstance(storage, str) or not storage.startswith("sqlite:///"):
        raise StorageError(f"storage must be None or a URL 'sqlite:///path.db', got {storage!r}")
    path = storage[len("sqlite:///"):]
    if path in ("", ":memory:"):
        return None
    return Path(path)


def _check_writable(path: Path, storage: Any) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise StorageError(f"storage={storage!r}: cannot create the database, directory "
                           f"'{parent}' does not exist (or is not a directory)")
    if path.exists() and (path.is_dir() or not os.access(path, os.R_OK | os.W_OK)):
        raise StorageError(f"storage={storage!r}: '{path}' is not a writable file")
    if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise StorageError(f"storage={storage!r}: directory '{parent}' is not writable")


class TrialStore:
    """Studies and trials in SQLite. Use as a context manager or call :meth:`close`."""

    def __init__(self, storage: str | os.PathLike | None = None) -> None:
        self.storage = storage
        self.path = parse_storage(storage)
        if self.path is not None:
            _check_writable(self.path, storage)
        try:
            self._db = sqlite3.connect(":memory:" if self.path is None else str(self.path),
                                       timeout=30.0)
            if self.path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"storage={storage!r}: cannot open the database: {exc}") from exc

    def __enter__(self) -> TrialStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # -- studies ---------------------------------------------------------------------------
    def study_names(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT name FROM studies ORDER BY study_id")]

    def find_study(self, name: str) -> StudyInfo | None:
        row = self._db.execute("SELECT study_id, name, signature, seed, direction FROM studies "
                               "WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return StudyInfo(row[0], row[1], json.loads(row[2]), int(row[3]), row[4])

    def create_study(self, name: str, signature: dict[str, Any], seed: int,
                     direction: str) -> StudyInfo:
        with self._db:
            cur = self._db.execute(
                "INSERT INTO studies (name, signature, seed, direction, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, json.dumps(signature, sort_keys=True), str(seed), direction, time.time()))
        return StudyInfo(cur.lastrowid, name, signature, seed, direction)

    # -- trials ----------------------------------------------------------------------------
    def load_trials(self, study_id: int) -> list[TrialRecord]:
        rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM trials WHERE study_id = ? "
                                f"ORDER BY number", (study_id,))
        records = []
        for row in rows:
            data = dict(zip(_COLUMNS, row))
            for key in _JSON_COLUMNS:
                data[key] = json.loads(data[key]) if data[key] is not None else None
            records.append(TrialRecord.from_dict(data))
        return records

    def save_trial(self, study_id: int, record: TrialRecord) -> None:
        """Insert or overwrite one trial (a single transaction)."""
        data = record.to_dict()
        values = [json.dumps(data[c]) if c in _JSON_COLUMNS else data[c] for c in _COLUMNS]
        with self._db:
            self._db.execute(f"INSERT OR REPLACE INTO trials (study_id, {', '.join(_COLUMNS)}) "
                             f"VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})",
                             [study_id, *values])

    def requeue(self, study_id: int, numbers: list[int]) -> None:
        """Put trials left ``running`` by a dead process back to ``waiting``."""
        with self._db:
            self._db.executemany("UPDATE trials SET state = ?, run_id = NULL WHERE study_id = ? "
                                 "AND number = ? AND state = ?",
                                 [(WAITING, study_id, n, RUNNING) for n in numbers])

    def start_heartbeat(self, run_id: str, interval: float) -> threading.Event | None:
        """Refresh the heartbeat of this run's running trials every ``interval`` seconds from a
        background thread (file databases only). Set the returned event to stop it."""
        if self.path is None:
            return None
        stop = threading.Event()
        path = str(self.path)

        def beat() -> None:
            db = sqlite3.connect(path, timeout=30.0)
            try:
                while not stop.wait(interval):
                    with db:
                        db.execute("UPDATE trials SET heartbeat = ? WHERE run_id = ? AND "
                                   "state = ?", (time.time(), run_id, RUNNING))
            finally:
                db.close()

        threading.Thread(target=beat, name="refnas-heartbeat", daemon=True).start()
        return stop
