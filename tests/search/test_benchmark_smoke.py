"""The search benchmark runs (tiny sizes) and reports every figure."""
from __future__ import annotations

from benchmarks import search_overhead


def test_benchmark_functions_report():
    overhead = search_overhead.engine_overhead(20)
    assert overhead["n_trials"] == 20
    assert 0 < overhead["sqlite_file_ms_per_trial"] < 1000
    speedup = search_overhead.parallel_speedup(2, 1000, repeats=1)
    assert speedup["speedup"] > 0
    text = search_overhead.report({"cpu_count": 2, "overhead": overhead, "speedup": speedup,
                                   "network": {"skipped": "not here"}})
    assert "ms/trial" in text and "skipped: not here" in text
