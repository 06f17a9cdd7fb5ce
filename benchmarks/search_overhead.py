"""What the model-search engine costs, measured on this machine.

1. **overhead** — milliseconds per trial spent by the engine itself (strategy, SQLite writes,
   bookkeeping) with a trivial objective, a file store (WAL) and, for comparison, the
   in-memory store. Goal: at most 5 ms per trial.
2. **speed-up** — wall time of CPU-bound trials (a pure-Python loop) run serially and with
   ``n_jobs=2`` processes, and the ratio. Goal: at least 1.6× on two cores.
3. **network search** — a random search of 20 ``refnas.estimators.NeuralNetClassifier``
   configurations with 3-fold cross-validation on the bundled digits: wall time and best
   score (skipped when ``refnas.estimators`` is not available).

    python -m benchmarks.search_overhead [--quick] [--json PATH] [--skip-network]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

if __package__ in (None, ""):  # run as a script path: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scipy.stats import loguniform, uniform  # noqa: E402

from benchmarks.timing import interleaved_medians  # noqa: E402
from refnas.search import RandomizedSearchCV, optimize  # noqa: E402


def trivial(params: dict, budget: Any, trial: Any) -> float:
    return params["x"]


def busy(params: dict, budget: Any, trial: Any) -> float:
    """About ``params["n"]`` additions in pure Python: CPU-bound, no BLAS, no GIL release."""
    total = 0
    for i in range(params["n"]):
        total += i % 7
    return float(total)


def engine_overhead(n_trials: int) -> dict[str, float]:
    """ms per trial with a trivial objective, file store and in-memory store."""
    space = {"x": uniform(0, 1)}
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for label, storage in (("sqlite_file", f"sqlite:///{folder}/overhead.db"),
                               ("memory", None)):
            start = time.perf_counter()
            result = optimize(trivial, space, "random", n_iter=n_trials, storage=storage,
                              study_name="overhead", random_state=0)
            elapsed = time.perf_counter() - start
            assert len(result.trials) == n_trials
            out[f"{label}_ms_per_trial"] = 1000 * elapsed / n_trials
    out["n_trials"] = n_trials
    return out


def parallel_speedup(n_trials: int, loop: int, repeats: int) -> dict[str, float]:
    """Serial vs two processes on CPU-bound trials (process start-up included): median wall
    times of ``repeats`` rounds, the two runs interleaved so that load from other processes
    falls on both alike."""
    space = {"n": [loop], "k": list(range(n_trials))}
    runs = {label: (lambda n_jobs=n_jobs: optimize(busy, space, "grid", n_jobs=n_jobs))
            for label, n_jobs in (("serial", None), ("two_processes", 2))}
    medians = interleaved_medians(runs, repeats, warmup=0)
    return {"serial_s": medians["serial"], "two_processes_s": medians["two_processes"],
            "speedup": medians["serial"] / medians["two_processes"], "n_trials": n_trials,
            "repeats": repeats, "seconds_per_trial_serial": medians["serial"] / n_trials}


def network_search(n_iter: int = 20, cv: int = 3) -> dict[str, Any]:
    """Random search of NeuralNetClassifier configurations on digits, or why it was skipped."""
    try:
        from refnas.estimators import NeuralNetClassifier
    except ImportError as exc:
        return {"skipped": f"refnas.estimators is not available ({exc})"}
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    space = {"lr": loguniform(1e-4, 3e-2), "hidden_sizes": [(32,), (64,), (128,), (128, 64)],
             "activation": ["relu", "tanh"], "weight_decay": [0.0, 1e-4],
             "epochs": [5, 10, 20], "batch_size": [32, 64]}
    search = RandomizedSearchCV(NeuralNetClassifier(), space, n_iter=n_iter, cv=cv,
                                random_state=0, refit=False)
    start = time.perf_counter()
    search.fit(X / 16.0, y)
    wall = time.perf_counter() - start
    best = int(search.cv_results_["rank_test_score"].argmin())
    return {"n_iter": n_iter, "cv": cv, "wall_s": wall,
            "best_score": float(search.cv_results_["mean_test_score"][best]),
            "best_params": {k: (v.item() if hasattr(v, "item") else v)
                            for k, v in search.cv_results_["params"][best].items()}}


def run(quick: bool = False, network: bool = True) -> dict[str, Any]:
    results: dict[str, Any] = {"cpu_count": os.cpu_count()}
    try:
        results["load_average_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    results["overhead"] = engine_overhead(300 if quick else 2000)
    results["speedup"] = parallel_speedup(6 if quick else 8, 10_000_000, 3 if quick else 5)
    if network:
        results["network"] = network_search()
    return results


def report(results: dict[str, Any]) -> str:
    o, s = results["overhead"], results["speedup"]
    lines = [
        "| measure | value | goal |",
        "|---|---|---|",
        f"| engine overhead, SQLite file store ({o['n_trials']} trials) | "
        f"{o['sqlite_file_ms_per_trial']:.2f} ms/trial | <= 5 ms |",
        f"| engine overhead, in-memory store | {o['memory_ms_per_trial']:.2f} ms/trial | |",
        f"| {s['n_trials']} CPU-bound trials ({s['seconds_per_trial_serial']:.2f} s each), "
        f"serial / n_jobs=2, median of {s['repeats']} | {s['serial_s']:.2f} s / "
        f"{s['two_processes_s']:.2f} s = "
        f"{s['speedup']:.2f}x | >= 1.6x |",
    ]
    net = results.get("network")
    if net is not None and "skipped" in net:
        lines.append(f"| NeuralNetClassifier search | skipped: {net['skipped']} | |")
    elif net is not None:
        lines.append(f"| NeuralNetClassifier random search, {net['n_iter']} configs x "
                     f"{net['cv']}-fold, digits | {net['wall_s']:.1f} s, best accuracy "
                     f"{net['best_score']:.4f} | |")
    lines.append(f"\n{results['cpu_count']} CPUs, 1-min load average "
                 f"{results.get('load_average_1min')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer trials and repeats (about 25 s without the network search)")
    parser.add_argument("--skip-network", action="store_true",
                        help="skip the NeuralNetClassifier search")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    results = run(args.quick, network=not args.skip_network)
    print(report(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
