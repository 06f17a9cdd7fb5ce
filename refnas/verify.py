"""The registry walk: gradcheck and gradgradcheck of every registered primitive.

Used by ``refnas verify`` and by the test suite (which drives the same walk with Hypothesis).
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from refnas.gradcheck import GradcheckResult, gradcheck, gradgradcheck
from refnas.ops import REGISTRY
from refnas.ops.registry import Primitive
from refnas.ops.sampling import Draw, RngDraw

__all__ = ["check_primitive", "verify_all"]


def check_primitive(op: Primitive, draw: Draw, order: int = 1) -> GradcheckResult:
    """Draw one example for ``op`` and check its derivative of ``order`` (1 or 2)."""
    args, kwargs = op.sample(draw)

    def apply(*tensors):
        return op(*tensors, **kwargs)

    apply.__name__ = op.name
    check = gradcheck if order == 1 else gradgradcheck
    return check(apply, list(args), name=op.name, raise_exception=False, **op.tolerance)


def verify_all(names: Iterable[str] | None = None, seed: int = 0, samples: int = 3,
               orders: tuple[int, ...] = (1, 2)) -> list[dict[str, Any]]:
    """One record per (op, order): the worst errors over ``samples`` drawn examples.

    Every differentiable registered op gets a record; one without a sampler or a VJP, or whose
    check raises, gets a failing one.
    """
    draw = RngDraw(np.random.default_rng(seed))
    records = []
    for name in sorted(names or REGISTRY):
        op = REGISTRY[name]
        if not op.differentiable:
            continue
        for order in orders:
            if order == 2 and not op.second_order:
                continue
            worst = _worst_over_samples(op, draw, order, samples)
            records.append(worst.as_record() | {"failures": worst.failures[:3]})
    return records


def _worst_over_samples(op: Primitive, draw: Draw, order: int, samples: int) -> GradcheckResult:
    worst = GradcheckResult(op=op.name, order=order)
    missing = "sampler" if op.sample is None else "VJP" if op.vjp_fn is None else None
    if missing:
        worst.ok = False
        worst.failures.append(f"{op.name}: registered without a {missing}; nothing to check")
        return worst
    for _ in range(samples):
        try:
            result = check_primitive(op, draw, order)
        except Exception as error:  # a crash is a failed check, reported with the others
            worst.ok = False
            worst.failures.append(f"{op.name}: order-{order} check raised "
                                  f"{type(error).__name__}: {error}")
            continue
        worst.max_abs_err = max(worst.max_abs_err, result.max_abs_err)
        worst.max_rel_err = max(worst.max_rel_err, result.max_rel_err)
        worst.ok &= result.ok
        worst.failures += result.failures
        worst.method = result.method
    return worst


# --------------------------------------------------------------------------------------------
# `refnas verify [--json]`
# --------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list of records")
    parser.add_argument("--op", action="append", help="check only this op (repeatable)")
    parser.add_argument("--samples", type=int, default=3, help="examples drawn per op and order")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    import json

    unknown = sorted(set(args.op or ()) - set(REGISTRY))
    if unknown:
        raise SystemExit(f"refnas verify: unknown op(s) {', '.join(unknown)}; registered: "
                         f"{', '.join(sorted(REGISTRY))}")
    records = verify_all(args.op, seed=args.seed, samples=args.samples)
    if args.json:
        print(json.dumps([{k: r[k] for k in ("op", "order", "max_abs_err", "max_rel_err", "ok")}
                          for r in records], indent=1))
    else:
        print(f"{'op':<32} {'order':>5} {'max abs err':>12} {'max rel err':>12}  ok")
        for r in records:
            print(f"{r['op']:<32} {r['order']:>5} {r['max_abs_err']:>12.2e} "
                  f"{r['max_rel_err']:>12.2e}  {'yes' if r['ok'] else 'NO'}")
            for failure in r["failures"]:
                print(f"    {failure}")
        failed = sum(not r["ok"] for r in records)
        print(f"\n{len(records) - failed} passed, {failed} failed")
    return 1 if any(not r["ok"] for r in records) else 0
