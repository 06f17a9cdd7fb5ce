"""Autograd overhead per recorded op: refnas against PyTorch CPU on the same chain of tiny ops.

The chain applies ``n_ops`` cheap elementwise ops (mul, add, tanh, sub with a scalar, in turn)
to a (4, 4) float32 array and one final ``sum``; each repeat runs forward and backward. On
arrays this small the arithmetic costs next to nothing, so the time per op is the framework's
own bookkeeping: building the graph node, dispatching the op, running its VJP and accumulating.

Run::

    python -m benchmarks.autograd_overhead [--json PATH]   # or: python benchmarks/autograd_overhead.py

It prints µs per op (median over repeats) for refnas (in grad mode, and under ``no_grad`` for the
forward alone) and for PyTorch with ``torch.set_num_threads(2)`` when torch is installed, plus the
ratio refnas / PyTorch.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

if __package__ in (None, ""):  # run as a script path: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import refnas as rn  # noqa: E402
from refnas.io import atomic_write  # noqa: E402


def _chain(x, w, n_ops: int, tanh: Callable):
    """``n_ops`` elementwise ops, then a sum: the same code drives refnas and torch tensors."""
    y = x
    for i in range(n_ops):
        step = i % 4
        if step == 0:
            y = y * w
        elif step == 1:
            y = y + x
        elif step == 2:
            y = tanh(y)
        else:
            y = y - 0.5
    return y.sum()


def _median_us_per_op(run_once: Callable[[], Any], n_ops: int, repeats: int,
                      warmup: int = 3) -> float:
    for _ in range(warmup):
        run_once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / (n_ops + 1) * 1e6  # + 1: the final sum


def _measure(make_leaf: Callable, tanh: Callable, no_grad: Callable, n_ops: int, repeats: int,
             shape=(4, 4)) -> dict[str, float]:
    """Time the chain with one framework's leaf constructor, tanh and no_grad context."""
    rng = np.random.default_rng(0)
    x = make_leaf(rng.standard_normal(shape).astype(np.float32))
    w = make_leaf(rng.standard_normal(shape).astype(np.float32))

    def forward_backward():
        x.grad = w.grad = None
        _chain(x, w, n_ops, tanh).backward()

    def forward_only():
        with no_grad():
            _chain(x, w, n_ops, tanh)

    return {"forward_backward_us_per_op": _median_us_per_op(forward_backward, n_ops, repeats),
            "no_grad_forward_us_per_op": _median_us_per_op(forward_only, n_ops, repeats)}


def measure_refnas(n_ops: int, repeats: int) -> dict[str, float]:
    return _measure(lambda a: rn.tensor(a, requires_grad=True), rn.tanh, rn.no_grad, n_ops,
                    repeats)


def measure_torch(n_ops: int, repeats: int) -> dict[str, Any] | None:
    """PyTorch CPU on two threads, or None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)
    timings = _measure(lambda a: torch.tensor(a, requires_grad=True), torch.tanh, torch.no_grad,
                       n_ops, repeats)
    return {**timings, "version": torch.__version__}


def run(n_ops: int = 100, repeats: int = 200) -> dict[str, Any]:
    """Measure both frameworks in one run; the ratio is refnas / PyTorch (lower is better)."""
    ours = measure_refnas(n_ops, repeats)
    theirs = measure_torch(n_ops, repeats)
    result: dict[str, Any] = {"n_ops": n_ops, "shape": [4, 4], "dtype": "float32",
                              "repeats": repeats, "refnas": ours, "torch": theirs}
    if theirs is not None:
        result["ratio_forward_backward"] = (ours["forward_backward_us_per_op"]
                                            / theirs["forward_backward_us_per_op"])
        result["ratio_no_grad_forward"] = (ours["no_grad_forward_us_per_op"]
                                           / theirs["no_grad_forward_us_per_op"])
    return result


def _report(result: dict[str, Any]) -> str:
    lines = [f"autograd overhead: chain of {result['n_ops']} ops + sum on a (4, 4) float32 array, "
             f"median of {result['repeats']} repeats, µs per recorded op",
             f"{'':24} {'refnas':>10} {'PyTorch':>10} {'ratio':>8}"]
    for key, label in (("forward_backward_us_per_op", "forward + backward"),
                       ("no_grad_forward_us_per_op", "forward under no_grad")):
        ours = result["refnas"][key]
        if result["torch"] is None:
            lines.append(f"{label:24} {ours:10.2f} {'n/a':>10} {'n/a':>8}")
        else:
            theirs = result["torch"][key]
            lines.append(f"{label:24} {ours:10.2f} {theirs:10.2f} {ours / theirs:8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON here")
    parser.add_argument("--ops", type=int, default=100, help="ops in the chain (default 100)")
    parser.add_argument("--repeats", type=int, default=200, help="timed repeats (default 200)")
    args = parser.parse_args(argv)
    result = run(args.ops, args.repeats)
    print(_report(result))
    if args.json:
        with atomic_write(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
