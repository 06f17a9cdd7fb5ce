"""Where trials run: any ``concurrent.futures.Executor``.

* serial (the default): :class:`SerialExecutor` runs each trial as it is submitted;
* ``n_jobs=k``: a ``ProcessPoolExecutor`` with ``k`` processes (``-1`` = every CPU);
* ``executor=``: any executor you bring, e.g. a Dask cluster's
  ``distributed.Client(...).get_executor()`` to spread trials over machines.

Workers only compute; the driver process alone writes to the trial store.
"""
from __future__ import annotations

import os
import pickle
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator

__all__ = ["SerialExecutor", "open_executor", "executor_capacity", "check_picklable"]


class SerialExecutor(Executor):
    """Runs ``fn`` at once in the calling thread and returns a finished future."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # delivered through the future; Ctrl-C still interrupts
            future.set_exception(exc)
        return future


def _check_n_jobs(n_jobs: Any) -> int:
    if n_jobs is None:
        return 1
    if not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs == 0 or n_jobs < -1:
        raise ValueError(f"n_jobs must be None, -1 or a positive integer, got {n_jobs!r}")
    return (os.cpu_count() or 1) if n_jobs == -1 else n_jobs


def executor_capacity(executor: Executor) -> int:
    """How many trials to keep in flight on a user's executor."""
    workers = getattr(executor, "_max_workers", None)
    if workers:
        return int(workers)
    client = getattr(executor, "_client", None)  # distributed.cfexecutor.ClientExecutor
    if client is not None:
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # noqa: BLE001 - fall back to the local CPU count
            pass
    return os.cpu_count() or 1


def check_picklable(obj: Any, what: str) -> None:
    """Raise a clear ``TypeError`` if ``obj`` cannot be sent to worker processes."""
    try:
        pickle.dumps(obj)
    except Exception as exc:
        raise TypeError(f"{what} must be picklable to run in worker processes (n_jobs > 1): "
                        f"{exc}. Define it at module level (not a lambda or a local "
                        f"function), or run serially.") from exc


def _limit_threads(n: int) -> None:
    """Worker initializer: at most ``n`` BLAS/OpenMP threads per worker, so that ``n_jobs``
    processes do not oversubscribe the CPUs (as joblib does)."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass


@contextmanager
def open_executor(n_jobs: Any = None, executor: Executor | None = None
                  ) -> Iterator[tuple[Executor, int, bool]]:
    """Yield ``(executor, capacity, uses_processes)``; an executor made here is shut down."""
    if executor is not None:
        if not isinstance(executor, Executor) and not callable(getattr(executor, "submit", None)):
            raise TypeError(f"executor must be a concurrent.futures.Executor, got "
                            f"{type(executor).__name__}")
        capacity = _check_n_jobs(n_jobs) if n_jobs is not None else executor_capacity(executor)
        yield executor, capacity, isinstance(executor, ProcessPoolExecutor)
        return
    jobs = _check_n_jobs(n_jobs)
    if jobs == 1:
        yield SerialExecutor(), 1, False
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_limit_threads, initargs=(threads,))
    try:
        yield pool, jobs, True
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
