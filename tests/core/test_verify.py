"""`refnas verify [--json]`: a record per (op, order), a table, and the exit code."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from refnas import cli, ops, verify
from refnas.gradcheck import GradcheckResult
from refnas.ops import REGISTRY
from refnas.ops.registry import Primitive
from refnas.verify import verify_all

KEYS = {"op", "order", "max_abs_err", "max_rel_err", "ok"}


def _broken() -> Primitive:
    def broken_double(x):
        r""":math:`z = 2x`, with a VJP that forgets the 2."""
        return 2.0 * x

    op = Primitive(broken_double, sample=lambda draw: ((np.array([1.0, -2.0]),), {}))
    op.defvjp(lambda g, out, x: g)
    return op


def test_json_records_and_zero_exit_for_passing_ops(capsys):
    code = cli.main(["verify", "--json", "--op", "mul", "--op", "relu", "--samples", "2"])
    records = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [(r["op"], r["order"]) for r in records] == [("mul", 1), ("mul", 2), ("relu", 1),
                                                        ("relu", 2)]
    for r in records:
        assert set(r) == KEYS and r["ok"] is True and r["max_abs_err"] < 1e-5


def test_failing_op_gives_failing_record_and_nonzero_exit(capsys, monkeypatch):
    monkeypatch.setitem(REGISTRY, "broken_double", _broken())
    code = cli.main(["verify", "--json", "--op", "broken_double"])
    records = json.loads(capsys.readouterr().out)
    assert code == 1
    first = records[0]
    assert first["op"] == "broken_double" and first["order"] == 1 and first["ok"] is False
    assert first["max_abs_err"] == pytest.approx(1.0, rel=1e-6)   # analytic 1, numeric 2


def test_op_without_sampler_fails_instead_of_being_skipped(monkeypatch):
    op = _broken()
    op.sample = None
    monkeypatch.setitem(REGISTRY, "broken_double", op)
    records = verify_all(["broken_double"])
    assert records and all(not r["ok"] and "without a sampler" in r["failures"][0]
                           for r in records)


def test_table_output_names_failures(capsys, monkeypatch):
    monkeypatch.setitem(REGISTRY, "broken_double", _broken())
    code = cli.main(["verify", "--op", "broken_double", "--op", "exp"])
    out = capsys.readouterr().out
    assert code == 1
    assert "broken_double" in out and "NO" in out and "exp" in out
    assert "order-1 derivative w.r.t. argument 0" in out
    # order 2 passes: the broken VJP is a consistent (if wrong) function of its inputs
    assert "3 passed, 1 failed" in out


def test_unknown_op_is_rejected():
    with pytest.raises(SystemExit, match="unknown op"):
        cli.main(["verify", "--op", "no_such_op"])


def test_full_walk_covers_every_registered_op_and_exit_code_agrees(capsys, monkeypatch):
    """Every registered op gets both records (the checks themselves are the registry walk's
    tests; here a stub stands in for them, failing one op, to keep this test fast)."""
    def stub(op, draw, order=1):
        return GradcheckResult(op=op.name, order=order, ok=op.name != "exp")

    monkeypatch.setattr(verify, "check_primitive", stub)
    code = cli.main(["verify", "--json", "--samples", "1"])
    records = json.loads(capsys.readouterr().out)
    covered = {(r["op"], r["order"]) for r in records}
    for name, op in REGISTRY.items():
        if op.differentiable:
            assert (name, 1) in covered
            assert (name, 2) in covered or not op.second_order
    assert code == 1 and [r["op"] for r in records if not r["ok"]] == ["exp", "exp"]


def test_console_entry_point_in_a_subprocess():
    result = subprocess.run([sys.executable, "-m", "refnas.cli", "verify", "--json", "--op", "exp"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert {r["op"] for r in records} == {"exp"} and all(set(r) == KEYS for r in records)
    assert ops.exp is REGISTRY["exp"]
