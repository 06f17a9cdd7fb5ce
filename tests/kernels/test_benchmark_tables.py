"""The benchmark suite's README table renders from its JSON, whichever contenders were missing."""
from __future__ import annotations

import pytest

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
        "block_ratios": [0.8, 0.9, 1.0],
        "kernel_share": {"numba": {"fraction": 0.8, "top_ms": {}}}}}), "python -m benchmarks")
    row = next(line for line in table.splitlines() if line.startswith("| cnn-s"))
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    # the paired cell: the blocks' median and, by linear interpolation, their 10th and 90th
    # percentiles (0.8 + 0.1 * 0.2, 0.8 + 0.9 * 0.2)
    assert cells[4:] == [f"{9.0 / 12.0:.2f}", "0.90 (0.82–0.98)", f"{30.0 / 12.0:.2f}", "80%"]


def test_paired_ratios_take_the_median_and_the_outer_deciles_of_many_blocks():
    ratios = [1.0] * 10 + [0.9] * 5 + [5.0]           # one block hit a slow patch
    table = markdown(_results({"mlp-m": {"numpy_ms": 2.0, "numba_ms": 1.0, "torch_ms": 1.0,
                                         "block_ratios": ratios}}), "python -m benchmarks")
    row = next(line for line in table.splitlines() if line.startswith("| mlp-m"))
    assert row.split("|")[6].strip() == "1.00 (0.90–1.00)"


def test_a_layer_reading_the_network_input_gets_a_row_with_and_without_its_input_gradient():
    """Training computes no input gradient for such a layer: its first row is forward + weight
    gradient, the second the figure with the input gradient as well; each row's sgemm
    reference covers the same passes."""
    conv = {
        "conv2d cnn-s x[64, 1, 28, 28] w[16, 1, 3, 3] s1 p1": {
            "input_grad_in_training": False,
            "matmul_gflops": 180.0,
            "numba": {"gflops": {"forward_backward": 60.0,
                                 "forward_backward_with_input_grad": 45.0},
                      "fraction_of_matmul": 60.0 / 180.0,
                      "fraction_of_matmul_with_input_grad": 45.0 / 180.0},
            "torch": None,
            "blas_products": {"gflops": {"forward_backward": 54.0,
                                         "forward_backward_with_input_grad": 50.0},
                              "fraction_of_matmul": 54.0 / 180.0,
                              "fraction_of_matmul_with_input_grad": 50.0 / 180.0}},
        "conv2d cnn-s x[64, 16, 14, 14] w[32, 16, 3, 3] s1 p1": {
            "input_grad_in_training": True,
            "numba": {"gflops": {"forward_backward": 120.0}, "fraction_of_matmul": 120 / 180.0},
            "torch": {"gflops": {"forward_backward": 90.0}, "fraction_of_matmul": 90 / 180.0}}}
    results = _results({})
    results["kernels"] = {"conv2d": conv, "memory": {}}
    rows = [line for line in markdown(results, "python -m benchmarks").splitlines()
            if line.startswith("| cnn-s x[")]
    cells = [[cell.strip() for cell in row.split("|")[1:-1]] for row in rows]
    assert [row[0] for row in cells] == [
        "cnn-s x[64, 1, 28, 28] w[16, 1, 3, 3] s1 p1 (no input gradient)",
        "cnn-s x[64, 1, 28, 28] w[16, 1, 3, 3] s1 p1 with its input gradient",
        "cnn-s x[64, 16, 14, 14] w[32, 16, 3, 3] s1 p1"]
    assert [row[2] for row in cells] == ["60.0", "45.0", "120.0"]
    # the matmul rate timed around the layer's calls (not recorded for the last layer)
    assert [row[4] for row in cells] == ["180", "180", "—"]
    assert [row[5] for row in cells] == [f"{60 / 180:.0%}", f"{45 / 180:.0%}", f"{120 / 180:.0%}"]
    assert [row[6] for row in cells] == ["—", "—", f"{90 / 180:.0%}"]
    # sgemm on the layer's products alone, for the same passes as the row (none measured for
    # the last layer)
    assert [row[7] for row in cells] == [f"{54 / 180:.0%}", f"{50 / 180:.0%}", "—"]


def test_only_the_layers_reading_the_network_input_skip_the_input_gradient():
    """Read off the models by their forward hooks: CNN-S's and ResNet-18's first convolution
    reads the image, every other one a tensor that needs a gradient."""
    from benchmarks.kernel_bench import conv_shapes
    for workload, first_x in (("cnn-s", (64, 1, 28, 28)), ("resnet18", (32, 3, 32, 32))):
        shapes = conv_shapes(workload)
        assert [s["x"] for s in shapes if not s["input_grad"]] == [first_x]
        assert len(shapes) > 1 and all(s["input_grad"] for s in shapes if s["x"] != first_x)


def test_the_sgemm_reference_computes_the_layers_three_products():
    """The plain-sgemm reference of a layer multiplies the operands a convolution's products
    have: forward (K, D) @ (D, P), input gradient (D, K) @ (K, P), weight gradient
    (K, P) @ (P, D), D = C*KH*KW and P = N*OH*OW, for a strided 1x1 layer and a padded 3x3."""
    import numpy as np

    from benchmarks.kernel_bench import _blas_products
    rng = np.random.default_rng(0)
    for shape, (k, d, p) in (
            ({"x": (4, 6, 9, 9), "w": (10, 6, 1, 1), "stride": (2, 2), "padding": (0, 0)},
             (10, 6, 4 * 5 * 5)),
            ({"x": (3, 2, 7, 7), "w": (5, 2, 3, 3), "stride": (1, 1), "padding": (1, 1)},
             (5, 18, 3 * 7 * 7))):
        products = _blas_products(shape, rng)
        assert [products[part]().shape for part in ("forward", "input_grad", "weight_grad")] \
            == [(k, p), (d, p), (k, d)]


def test_a_layers_fractions_are_of_the_matmul_rate_timed_around_its_calls(monkeypatch):
    """The reference matmul is timed just before and just after a layer's calls (every
    backend's and the sgemm reference's), and the layer's fractions are of the mean of the
    two, not of a rate taken minutes earlier."""
    from benchmarks import kernel_bench
    order = []
    rates = iter([150.0, 210.0])

    def matmul_gflops(repeats):
        order.append("matmul")
        return next(rates)

    def products(shape, rng):
        """The sgemm reference's calls, each noting that the layer's calls ran."""
        return {part: (lambda call=call: order.append("layer") or call())
                for part, call in real_products(shape, rng).items()}

    real_products = kernel_bench._blas_products
    small = {"x": (2, 3, 8, 8), "w": (4, 3, 3, 3), "stride": (1, 1), "padding": (1, 1),
             "input_grad": True, "count": 1}
    monkeypatch.setattr(kernel_bench.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(kernel_bench, "matmul_gflops", matmul_gflops)
    monkeypatch.setattr(kernel_bench, "_blas_products", products)
    monkeypatch.setattr(kernel_bench, "_torch_conv_child", lambda repeats, threads, windows: None)
    monkeypatch.setattr(kernel_bench, "conv_shapes",
                        lambda workload: [small] if workload == "cnn-s" else [])
    (entry,) = kernel_bench.conv_benchmarks(["numpy"], repeats=1).values()
    assert order[0] == "matmul" and order[-1] == "matmul" and "matmul" not in order[1:-1]
    assert "layer" in order
    assert entry["matmul_gflops"] == 180.0
    for who in ("numpy", "blas_products"):
        assert entry[who]["fraction_of_matmul"] == pytest.approx(
            entry[who]["gflops"]["forward_backward"] / 180.0)


def test_layers_are_timed_in_windows_taken_in_turn_and_their_medians_kept(monkeypatch):
    """With several windows the layers take turns (a, b, a, b, ...), each window between two
    matmuls; a layer keeps the median of its windows' seconds (per key) and of their matmul
    rates, so one window in a slow period of the machine does not decide its figures."""
    from benchmarks import kernel_bench
    events = []
    rates = iter([200.0, 200.0, 100.0, 120.0, 190.0, 210.0, 200.0, 200.0, 200.0, 200.0,
                  200.0, 200.0])
    monkeypatch.setattr(kernel_bench.time, "sleep", lambda s: None)
    monkeypatch.setattr(kernel_bench, "matmul_gflops",
                        lambda repeats: events.append("matmul") or next(rates))
    seconds = {"a": iter([1.0, 9.0, 2.0]), "b": iter([5.0, 5.0, 4.0])}

    def measure(name):
        events.append(name)
        return {("numba", "training"): next(seconds[name])}
    windowed = kernel_bench._windowed({"a": lambda: measure("a"), "b": lambda: measure("b")},
                                      windows=3)
    assert [e for e in events if e != "matmul"] == ["a", "b", "a", "b", "a", "b"]
    assert events[:3] == ["matmul", "a", "matmul"]
    # a's windows: matmul (200+200)/2, (190+210)/2, (200+200)/2; seconds 1, 9, 2
    assert windowed["a"] == ({("numba", "training"): 2.0}, 200.0)
    # b's: (100+120)/2 = 110 (a slow window), 200, 200; seconds 5, 5, 4
    assert windowed["b"] == ({("numba", "training"): 5.0}, 200.0)


def test_pytorchs_matmul_rate_is_timed_around_its_calls_after_its_threads_settle(monkeypatch):
    """In PyTorch's process the reference matmul is timed just before and just after a
    layer's calls, each time after a pause (PyTorch's OpenMP threads spin for milliseconds
    after its calls and slow a matmul timed in their wake); the rate is the mean of the two."""
    from benchmarks import kernel_bench
    events = []
    rates = iter([150.0, 210.0])
    monkeypatch.setattr(kernel_bench.time, "sleep", lambda s: events.append(("sleep", s)))
    monkeypatch.setattr(kernel_bench, "matmul_gflops",
                        lambda repeats: events.append("matmul") or next(rates))
    result, rate = kernel_bench._matmul_around(lambda: events.append("layer") or "timed", 0.02)
    assert (result, rate) == ("timed", 180.0)
    assert events == [("sleep", 0.02), "matmul", "layer", ("sleep", 0.02), "matmul"]


def _layer(workload, count, flops, passes, matmul, numba_ms, torch=None):
    return {"workload": workload, "count_in_model": count, "flops": flops, "passes": passes,
            "matmul_gflops": matmul, "numba": {"ms": {"training": numba_ms}}, "torch": torch}


def test_a_workloads_conv_totals_weigh_each_layer_by_its_count_and_its_matmul_rate():
    """Layer a: once, 2 passes of 1 GFLOP in 20 ms while the matmul ran at 200 GFLOP/s (it
    would have done 4 GFLOP); layer b: twice, 3 passes of 0.5 GFLOP in 10 ms each at 100
    GFLOP/s (2 x 1 GFLOP). Together 5 GFLOP in 40 ms, against 6 GFLOP of matmul: 125 GFLOP/s
    and 5/6. PyTorch, timed on layer a only, gets no total; another workload its own."""
    from benchmarks.kernel_bench import conv_totals
    conv = {"a": _layer("cnn-s", 1, 1e9, 2, 200.0, 20.0,
                        torch={"ms": {"forward_backward": 10.0}, "matmul_gflops": 150.0}),
            "b": _layer("cnn-s", 2, 0.5e9, 3, 100.0, 10.0),
            "c": _layer("resnet18", 3, 1e9, 3, 100.0, 30.0,
                        torch={"ms": {"forward_backward": 60.0}, "matmul_gflops": 50.0})}
    totals = conv_totals(conv)
    assert set(totals) == {"cnn-s", "resnet18"}
    cnn = totals["cnn-s"]
    assert (cnn["layers"], cnn["count"], "torch" in cnn) == (2, 3, False)
    assert cnn["numba"]["ms"] == pytest.approx(40.0)
    assert cnn["numba"]["gflops"] == pytest.approx(125.0)
    assert cnn["numba"]["fraction_of_matmul"] == pytest.approx(5 / 6)
    # 3 x 3 GFLOP in 3 x 60 ms, against 3 x 0.06 s x 50 GFLOP/s of matmul
    assert totals["resnet18"]["torch"]["gflops"] == pytest.approx(50.0)
    assert totals["resnet18"]["torch"]["fraction_of_matmul"] == pytest.approx(1.0)


def test_the_conv_totals_table_shows_each_workloads_totals():
    results = _results({})
    results["kernels"] = {"conv2d": {}, "memory": {}, "conv2d_totals": {
        "resnet18": {"layers": 11, "count": 20,
                     "numba": {"ms": 12.345, "gflops": 101.0, "fraction_of_matmul": 0.55},
                     "torch": {"ms": 15.0, "gflops": 88.0, "fraction_of_matmul": 0.483}},
        "cnn-s": {"layers": 2, "count": 2,
                  "numba": {"ms": 3.0, "gflops": 120.0, "fraction_of_matmul": 0.6}}}}
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in markdown(results, "python -m benchmarks").splitlines()
            if line.startswith(("| resnet18 |", "| cnn-s |"))}
    assert rows["resnet18"] == ["20 (11)", "12.35", "101.0", "55%", "15.00", "88.0", "48%"]
    assert rows["cnn-s"] == ["2 (2)", "3.00", "120.0", "60%", "—", "—", "—"]


def test_heading_names_the_cpu_and_the_vectors_of_numbas_code():
    results = _results({"mlp-s": {"numpy_ms": 0.9, "numba_ms": None, "torch_ms": None}})
    assert "2 cores, refnas" in markdown(results, "python -m benchmarks")
    results["machine"].update(cpu="znver4", numba_vectors="AVX2")
    assert "2 cores (znver4, Numba code AVX2), refnas" in markdown(results,
                                                                   "python -m benchmarks")


@pytest.mark.parametrize("features, vectors", [("+avx2,+fma,-avx512f", "AVX2"),
                                               ("+avx2,+avx512f,+avx512vl", "AVX-512"),
                                               ("+sse4.2,-avx2", "other")])
def test_the_vectors_of_numbas_code_follow_its_cpu_features(monkeypatch, features, vectors):
    from benchmarks.timing import _numba_target
    monkeypatch.setenv("NUMBA_CPU_FEATURES", features)
    monkeypatch.setenv("NUMBA_CPU_NAME", "skylake-avx512")
    assert _numba_target() == {"cpu": "skylake-avx512", "numba_vectors": vectors}
