"""The benchmark suite's README table renders from its JSON, whichever contenders were missing."""
from __future__ import annotations

from benchmarks.__main__ import markdown


def _results(workloads):
    return {"machine": {"load_average_1min": 0.1, "cpu_count": 2}, "threads": 2,
            "torch_threads": 2, "matmul_gflops": 180.0, "matmul_gflops_end": 181.0,
            "workloads": workloads}


def test_table_without_numba_or_torch_shows_dashes():
    table = markdown(_results({"mlp-s": {"numpy_ms": 0.9, "numba_ms": None, "torch_ms": None}}),
                     "python -m benchmarks")
    row = next(line for line in table.splitlines() if line.startswith("| mlp-s"))
    assert row.split("|")[1:-1] == [" mlp-s ", " 0.900 ", " — ", " — ", " — ", " — ", " — ",
                                    " — "]


def test_table_ratios_are_the_measured_quotients():
    table = markdown(_results({"cnn-s": {
        "numpy_ms": 30.0, "numba_ms": 9.0, "torch_ms": 12.0,
        "ms_per_round": {"numba": [9.0, 8.0, 11.0], "torch": [12.0, 10.0, 10.0]},
        "kernel_share": {"numba": {"fraction": 0.8, "top_ms": {}}}}}), "python -m benchmarks")
    row = next(line for line in table.splitlines() if line.startswith("| cnn-s"))
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    # rounds: 9/12, 8/10, 11/10; the per-round cell is their median (8/10) and range
    assert cells[4:] == [f"{9.0 / 12.0:.2f}",
                         f"{8.0 / 10.0:.2f} ({9.0 / 12.0:.2f}–{11.0 / 10.0:.2f})",
                         f"{30.0 / 12.0:.2f}", "80%"]


def test_even_number_of_rounds_takes_the_mean_of_the_middle_ratios():
    table = markdown(_results({"mlp-m": {
        "numpy_ms": 2.0, "numba_ms": 1.0, "torch_ms": 1.0,
        "ms_per_round": {"numba": [1.0, 1.2, 0.9, 3.0], "torch": [1.0, 1.0, 1.0, 1.0]}}}),
        "python -m benchmarks")
    row = next(line for line in table.splitlines() if line.startswith("| mlp-m"))
    assert row.split("|")[6].strip() == f"{(1.0 + 1.2) / 2:.2f} (0.90–3.00)"
