"""Checkpoints: ONE ``.npz`` file with the arrays and a JSON document; no pickle; atomic writes.

Layout of a checkpoint archive:

* ``model/<name>`` — every entry of ``model.state_dict()`` (parameters and buffers);
* ``optimizer/<i>`` — the arrays of the optimizer state (momentum buffers, Adam moments);
* ``__refnas__`` — a uint8 array holding UTF-8 JSON: the format name and version, the model's
  class and architecture ``config`` (so :func:`load_checkpoint` can rebuild it), the optimizer's
  and scheduler's class, hyperparameters and scalar state (arrays appear there as
  ``{"__array__": "optimizer/3"}``), and the caller's ``metadata``.

Writes go to a temporary file in the target's folder, are flushed and fsync'ed, and then
``os.replace``'d over the target: a save that fails at any point leaves an existing file
byte-identical. Reads use ``np.load(allow_pickle=False)``.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from collections import OrderedDict
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import IO, Any, Iterator

import numpy as np

from refnas.nn.models import build_model
from refnas.nn.module import Module, StateDictError
from refnas.optim import LRScheduler, Optimizer

__all__ = ["save_checkpoint", "load_checkpoint", "Checkpoint", "CheckpointError", "atomic_write",
           "FORMAT_VERSION"]

FORMAT = "refnas-checkpoint"
FORMAT_VERSION = 1
_DOCUMENT = "__refnas__"
_ARRAY = "__array__"


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read, or does not fit the model / optimizer given."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read (and, when given or rebuilt, the loaded model)."""

    path: str
    model: Module | None
    config: dict[str, Any] | None
    state: "OrderedDict[str, np.ndarray]"
    optimizer_state: dict[str, Any] | None
    scheduler_state: dict[str, Any] | None
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION
    document: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------
@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **options: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and ``os.replace`` it over
    ``path``; on any exception delete it, leaving ``path`` untouched. ``options`` go to
    ``open`` (e.g. ``encoding``, ``newline``)::

        with atomic_write("summary.json", "w") as f:
            json.dump(summary, f)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"atomic_write: cannot write {path}: the folder {folder} does "
                                f"not exist")
    permissions = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                                     suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **options) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, permissions)
        os.replace(temporary, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Arrays inside JSON documents
# --------------------------------------------------------------------------------------------
def _split_arrays(value: Any, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    """JSON-able copy of ``value``; each array moves to ``arrays`` and leaves a reference."""
    if isinstance(value, dict):
        return {str(k): _split_arrays(v, prefix, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split_arrays(v, prefix, arrays) for v in value]
    if hasattr(value, "shape") and hasattr(value, "dtype") and np.ndim(value) > 0:
        key = f"{prefix}/{len(arrays)}"
        arrays[key] = np.asarray(value.get() if hasattr(value, "get") else value)
        return {_ARRAY: key}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _join_arrays(value: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    if isinstance(value, dict):
        if set(value) == {_ARRAY}:
            if value[_ARRAY] not in arrays:
                raise CheckpointError(f"load_checkpoint: {path} refers to a missing array entry "
                                      f"{value[_ARRAY]!r} (the file is damaged)")
            return arrays[value[_ARRAY]]
        return {k: _join_arrays(v, arrays, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_arrays(v, arrays, path) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# --------------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, model: Module, optimizer: Optimizer | None = None,
                    scheduler: LRScheduler | None = None,
                    metadata: dict[str, Any] | None = None) -> str:
    """Write ``model`` (and optionally optimizer, scheduler, JSON-able ``metadata``) to ``path``.

    Everything is serialised in memory first; the file is then written atomically, so an
    existing checkpoint at ``path`` survives any failure unchanged. Returns the path.
    """
    from refnas import __version__

    path = os.fspath(path)
    arrays: dict[str, np.ndarray] = {f"model/{k}": v for k, v in model.state_dict().items()}
    optimizer_arrays: dict[str, np.ndarray] = {}
    document = {
        "format": FORMAT, "version": FORMAT_VERSION, "refnas_version": __version__,
        "model": {"class": type(model).__name__, "config": getattr(model, "config", None),
                  "state_keys": list(model.state_dict())},
        "optimizer": None if optimizer is None else {
            "class": type(optimizer).__name__,
            "hyperparameters": optimizer.hyperparameters(),
            "state": _split_arrays(optimizer.state_dict(), "optimizer", optimizer_arrays)},
        "scheduler": None if scheduler is None else {
            "class": type(scheduler).__name__,
            "hyperparameters": scheduler.hyperparameters(), "state": scheduler.state_dict()},
        "metadata": metadata or {},
    }
    try:
        text = json.dumps(document, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"save_checkpoint: cannot write {path}: the metadata or state is "
                              f"not JSON-serialisable ({error}); the existing file, if any, is "
                              f"unchanged") from error
    arrays.update(optimizer_arrays)
    arrays[_DOCUMENT] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    with atomic_write(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------
def _read(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON document and the arrays of a checkpoint, or a CheckpointError naming the file."""
    if not os.path.exists(path):
        raise CheckpointError(f"load_checkpoint: no checkpoint at {path} (file not found)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise CheckpointError(f"load_checkpoint: {path} holds a single array, not a "
                                      f"refnas checkpoint (.npz archive)")
            arrays = {name: archive[name] for name in archive.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError) as error:
        raise CheckpointError(f"load_checkpoint: {path} is corrupt or truncated (not a readable "
                              f"refnas .npz checkpoint): {type(error).__name__}: "
                              f"{error}") from error
    if _DOCUMENT not in arrays:
        raise CheckpointError(f"load_checkpoint: {path} is an .npz archive but not a refnas "
                              f"checkpoint (no {_DOCUMENT!r} entry)")
    try:
        document = json.loads(arrays.pop(_DOCUMENT).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"load_checkpoint: {path} has a damaged JSON document: "
                              f"{error}") from error
    if document.get("format") != FORMAT:
        raise CheckpointError(f"load_checkpoint: {path} is not a refnas checkpoint (format "
                              f"{document.get('format')!r})")
    if document.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"load_checkpoint: {path} has checkpoint format version "
                              f"{document.get('version')!r}; this refnas reads version "
                              f"{FORMAT_VERSION}")
    return document, arrays


def _config_differences(saved: dict[str, Any] | None, current: dict[str, Any] | None) -> list[str]:
    """Architecture entries that differ (the seed only changes the initial weights: ignored)."""
    if saved is None or current is None:
        return []
    if saved.get("name") != current.get("name"):
        return [f"model: checkpoint {saved.get('name')!r}, model {current.get('name')!r}"]
    keys = (set(saved) | set(current)) - {"seed"}
    return [f"config {k}: checkpoint {saved.get(k)!r}, model {current.get(k)!r}"
            for k in sorted(keys) if saved.get(k) != current.get(k)]


def load_checkpoint(path: str | os.PathLike, model: Module | None = None,
                    optimizer: Optimizer | None = None,
                    scheduler: LRScheduler | None = None) -> Checkpoint:
    """Read a checkpoint; load it into ``model`` (rebuilt from its config when None), and into
    ``optimizer`` / ``scheduler`` when given.

    Raises :class:`CheckpointError` for a missing, corrupt or truncated file, a wrong format
    version, or a checkpoint of another architecture (the differing config entries and the
    missing, unexpected and mis-shaped state keys are listed). Nothing is loaded on error.
    """
    path = os.fspath(path)
    document, arrays = _read(path)
    state = OrderedDict((key[len("model/"):], arrays[f"model/{key[len('model/'):]}"])
                        for key in arrays if key.startswith("model/"))
    config = document["model"].get("config")
    if model is None:
        if config is None:
            raise CheckpointError(f"load_checkpoint: {path} stores no architecture config (a "
                                  f"{document['model'].get('class')}); pass model=")
        model = build_model(config)
    _check_model(path, model, config, state)
    optimizer_state = _optimizer_state(path, document, arrays, optimizer)
    scheduler_state = _scheduler_state(path, document, scheduler)
    try:  # each load_state_dict checks before it changes anything
        if optimizer is not None:
            optimizer.load_state_dict(optimizer_state)
        if scheduler is not None and scheduler_state is not None:
            scheduler.load_state_dict(scheduler_state)
    except (ValueError, KeyError, IndexError) as error:
        raise CheckpointError(f"load_checkpoint: the optimizer / scheduler state in {path} does "
                              f"not fit the ones given: {error}") from error
    model.load_state_dict(state)
    return Checkpoint(path=path, model=model, config=config, state=state,
                      optimizer_state=optimizer_state, scheduler_state=scheduler_state,
                      metadata=document.get("metadata") or {}, version=document["version"],
                      document=document)


def _check_model(path: str, model: Module, config: dict | None, state: dict) -> None:
    """Raise a CheckpointError listing config differences and state-key mismatches, if any."""
    problems = _config_differences(config, getattr(model, "config", None))
    try:
        model.check_state_dict(state)
    except StateDictError as error:
        problems += str(error).splitlines()[1:]
    if problems:
        raise CheckpointError(f"load_checkpoint: {path} holds another architecture than the "
                              f"{type(model).__name__} given (nothing was loaded):\n  "
                              + "\n  ".join(p.strip() for p in problems))


def _optimizer_state(path: str, document: dict, arrays: dict,
                     optimizer: Optimizer | None) -> dict | None:
    saved = document.get("optimizer")
    if saved is None:
        if optimizer is not None:
            raise CheckpointError(f"load_checkpoint: {path} holds no optimizer state, but an "
                                  f"optimizer ({type(optimizer).__name__}) was given")
        return None
    if optimizer is not None and saved["class"] != type(optimizer).__name__:
        raise CheckpointError(f"load_checkpoint: {path} holds a {saved['class']} state, the "
                              f"optimizer given is a {type(optimizer).__name__}")
    return _join_arrays(saved["state"], arrays, path)


def _scheduler_state(path: str, document: dict, scheduler: LRScheduler | None) -> dict | None:
    saved = document.get("scheduler")
    if saved is None:
        return None
    if scheduler is not None and saved["class"] != type(scheduler).__name__:
        raise CheckpointError(f"load_checkpoint: {path} holds a {saved['class']} state, the "
                              f"scheduler given is a {type(scheduler).__name__}")
    if scheduler is not None and len(saved["state"]["base_lrs"]) != len(scheduler.base_lrs):
        raise CheckpointError(f"load_checkpoint: {path} schedules {len(saved['state']['base_lrs'])}"
                              f" param groups, the scheduler given {len(scheduler.base_lrs)}")
    return saved["state"]
