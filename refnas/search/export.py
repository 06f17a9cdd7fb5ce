"""Trial records to CSV and JSON files, and back. Files are written atomically (a temporary
file in the same folder, then ``os.replace``), so a reader never sees half a file.

CSV: one row per trial with readable columns (``number``, ``state``, ``value``, ``budget``,
``seed``, ``duration``, ``param_<name>``, ``mean_test_<metric>``) followed by JSON columns that
carry the full record (``params_json``, ``test_scores``, ...), which :func:`read_csv` uses.
JSON: ``{"study": name, "trials": [record, ...]}`` with NaN written as ``null``.
"""
from __future__ import annotations

import csv
import io
import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

from refnas.io import atomic_write
from refnas.search.trial import TrialRecord, encode_value

__all__ = ["atomic_open", "write_json", "read_json", "write_csv", "read_csv"]

_CSV_JSON_FIELDS = ("test_scores", "train_scores", "fit_times", "score_times", "intermediate",
                    "meta")
_CSV_PLAIN_FIELDS = ("datetime_start", "datetime_complete", "traceback", "heartbeat", "pid",
                     "host", "run_id")


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """:func:`refnas.io.atomic_write`, creating the folder and writing text as UTF-8."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    with atomic_write(path, mode, **text) as f:
        yield f


def write_json(trials: list[TrialRecord], path: str | Path, study_name: str | None = None) -> Path:
    """All records as standard JSON (NaN → null)."""
    with atomic_open(path) as f:
        json.dump({"study": study_name, "trials": [t.to_dict() for t in trials]}, f, indent=1,
                  allow_nan=False)
    return Path(path)


def read_json(path: str | Path) -> list[TrialRecord]:
    with open(path, encoding="utf-8") as f:
        return [TrialRecord.from_dict(d) for d in json.load(f)["trials"]]


def _cell(value: Any) -> Any:
    value = encode_value(value)
    if isinstance(value, float) and math.isnan(value):
        return ""
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def write_csv(trials: list[TrialRecord], path: str | Path) -> Path:
    """One row per trial; readable columns first, then the JSON that :func:`read_csv` reads."""
    names = sorted({k for t in trials for k in t.params})
    metrics = sorted({m for t in trials for m in t.test_scores})
    header = (["number", "state", "value", "budget", "seed", "duration"]
              + [f"param_{n}" for n in names] + [f"mean_test_{m}" for m in metrics]
              + ["params_json", *_CSV_JSON_FIELDS, *_CSV_PLAIN_FIELDS])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for t in trials:
        data = t.to_dict()
        means = [float(np.mean(t.test_scores[m])) if t.test_scores.get(m) else math.nan
                 for m in metrics]
        row = ([t.number, t.state, t.value, t.budget, t.seed, t.duration]
               + [t.params.get(n, "") for n in names] + means
               + [json.dumps(data["params"])]
               + [json.dumps(data[f]) for f in _CSV_JSON_FIELDS]
               + [data[f] for f in _CSV_PLAIN_FIELDS])
        writer.writerow(["" if v is None else _cell(v) for v in row])
    with atomic_open(path) as f:
        f.write(buffer.getvalue())
    return Path(path)


def _number(text: str, kind: type = float) -> Any:
    return None if text == "" else kind(text)


def read_csv(path: str | Path) -> list[TrialRecord]:
    """Records from :func:`write_csv` (the readable columns are derived and ignored)."""
    trials = []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            data: dict[str, Any] = {f: json.loads(row[f]) for f in _CSV_JSON_FIELDS}
            data.update(number=int(row["number"]), state=row["state"],
                        params=json.loads(row["params_json"]), value=_number(row["value"]),
                        budget=_number(row["budget"]), seed=_number(row["seed"], int),
                        datetime_start=_number(row["datetime_start"]),
                        datetime_complete=_number(row["datetime_complete"]),
                        heartbeat=_number(row["heartbeat"]), pid=_number(row["pid"], int),
                        traceback=row["traceback"] or None, host=row["host"] or None,
                        run_id=row["run_id"] or None)
            trials.append(TrialRecord.from_dict(data))
    return trials
