"""Per-kernel microbenchmarks on the shapes that the training workloads actually meet.

The convolution shapes are read off the workload models by a forward hook on every Conv2d (one
entry per distinct geometry), so they cannot drift from the networks. Compute-bound kernels
(convolution) report GFLOP/s, memory-bound ones GB/s (bytes read + written once), and every
convolution rate is also given as a fraction of NumPy's float32 matmul GFLOP/s, timed just
before and just after that layer's calls in the same run (:func:`_matmul_around`).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

import refnas
from refnas import nn
from refnas.backend import available, kernel
from refnas.ops.conv import output_hw
from benchmarks.timing import interleaved_medians, matmul_gflops
from benchmarks.workloads import WORKLOADS, refnas_model


def conv_shapes(workload: str) -> list[dict[str, Any]]:
    """Distinct (input shape, weight shape, stride, padding) of the Conv2d layers of a workload,
    and whether a training step computes the layer's input gradient (not for a layer that
    reads the network's input: nothing needs it)."""
    model = refnas_model(workload)
    seen: dict[tuple, dict[str, Any]] = {}

    def record(module, inputs, output):
        key = (tuple(inputs[0].shape), tuple(module.weight.shape), module.stride, module.padding,
               bool(inputs[0].requires_grad))
        seen.setdefault(key, {"x": key[0], "w": key[1], "stride": module.stride,
                              "padding": module.padding, "input_grad": key[4],
                              "count": 0})["count"] += 1

    handles = [m.register_forward_hook(record) for m in model.modules()
               if isinstance(m, nn.Conv2d)]
    x = np.zeros((WORKLOADS[workload].batch, *WORKLOADS[workload].input_shape), np.float32)
    model(refnas.tensor(x))         # with a graph: the hooks see which inputs need gradients
    for handle in handles:
        handle.remove()
    return list(seen.values())


def _conv_flops(x_shape, w_shape, out_hw) -> int:
    """Multiply-adds x 2 of one forward convolution (each gradient costs the same)."""
    n, (o, cg, kh, kw) = x_shape[0], w_shape
    return 2 * n * o * out_hw[0] * out_hw[1] * cg * kh * kw


def _shape_flops(shape: dict[str, Any]) -> int:
    """:func:`_conv_flops` of a shape read off a workload (groups 1, dilation 1)."""
    out_hw = output_hw("conv2d", shape["x"], shape["w"][2:], shape["stride"], shape["padding"])
    return _conv_flops(shape["x"], shape["w"], out_hw)


def _conv_case(shape: dict[str, Any], backend: str, rng) -> dict[str, Callable]:
    x = rng.standard_normal(shape["x"]).astype(np.float32)
    w = rng.standard_normal(shape["w"]).astype(np.float32)
    geometry = (shape["stride"], shape["padding"], (1, 1), 1)
    y = kernel("conv2d_forward", "numpy")(x, w, *geometry)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    forward, input_grad, weight_grad, backward = (kernel(k, backend) for k in (
        "conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_backward"))

    def with_input_grad():
        """Forward and backward as conv2d and its VJP run them in a training step: the forward
        keeps what the backward can reuse (x's padded planes, im2col's columns, or x̂^T)."""
        _, kept = forward(x, w, *geometry, keep_columns=True)
        backward(gy, x, w, *geometry, columns=kept)

    def without_input_grad():
        """The same for a layer whose input needs no gradient: the weight gradient alone."""
        _, kept = forward(x, w, *geometry, keep_columns=True)
        weight_grad(x, gy, w.shape, *geometry, columns=kept)

    calls = {"forward": lambda: forward(x, w, *geometry),
             "input_grad": lambda: input_grad(gy, w, x.shape, *geometry),
             "weight_grad": lambda: weight_grad(x, gy, w.shape, *geometry),
             "training": with_input_grad if shape["input_grad"] else without_input_grad}
    if not shape["input_grad"]:
        calls["training_with_input_grad"] = with_input_grad
    return calls


_PRODUCTS = "blas_products"      # the sgemm reference's key among a layer's timings


def _blas_products(shape: dict[str, Any], rng) -> dict[str, Callable]:
    """The layer's three products as one NumPy sgemm each, on operands already laid out:
    forward W (K, D) @ X (D, P), input gradient W^T (D, K) @ Ȳ (K, P), weight gradient
    Ȳ @ X^T (P, D), with D = C*KH*KW and P = N*OH*OW. No gather, no scatter, no im2col: what
    BLAS makes of the arithmetic alone, a ceiling for the convolution's rate."""
    out_hw = output_hw("conv2d", shape["x"], shape["w"][2:], shape["stride"], shape["padding"])
    k, d = shape["w"][0], int(np.prod(shape["w"][1:]))
    p = shape["x"][0] * out_hw[0] * out_hw[1]
    w, cols, gy = (rng.standard_normal(size).astype(np.float32)
                   for size in ((k, d), (d, p), (k, p)))
    w_t, cols_t = np.ascontiguousarray(w.T), np.ascontiguousarray(cols.T)
    return {"forward": lambda: w @ cols, "input_grad": lambda: w_t @ gy,
            "weight_grad": lambda: gy @ cols_t}


def _passes(shape: dict[str, Any]) -> int:
    """Convolution-sized passes of a training step: forward, weight gradient, and the input
    gradient where the step needs it."""
    return 3 if shape["input_grad"] else 2


def _conv_name(workload: str, shape: dict[str, Any]) -> str:
    return (f"conv2d {workload} x{list(shape['x'])} w{list(shape['w'])} "
            f"s{shape['stride'][0]} p{shape['padding'][0]}")


_WITH_INPUT_GRAD = " with the input gradient"     # PyTorch's figures: name + this
_WITH_INPUT_GRAD_KEY = "_with_input_grad"           # the JSON's keys: figure + this


def torch_conv_seconds(repeats: int, threads: int,
                       windows: int = 1) -> dict[str, dict[str, Any]] | None:
    """Median seconds of PyTorch's conv2d forward + backward on the same shapes, or None
    without torch: the input gradient only where a training step needs it (autograd skips it
    for an input that does not require a gradient), and for the other layers also with it
    (under the name + _WITH_INPUT_GRAD); each under "seconds", with NumPy's matmul rate
    timed just before and just after the layer's calls under "matmul_gflops"
    (:func:`_matmul_around`), both over ``windows`` windows of ``repeats`` rounds
    (:func:`_windowed`). Run in a process of its own (see ``python -m
    benchmarks.kernel_bench``): PyTorch's OpenMP threads and BLAS's spin against each other in
    one process on two cores."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    measures: dict[str, Callable[[], dict[str, float]]] = {}
    for workload in ("cnn-s", "resnet18"):
        for shape in conv_shapes(workload):
            x_data = rng.standard_normal(shape["x"]).astype(np.float32)
            w = torch.from_numpy(rng.standard_normal(shape["w"]).astype(np.float32))
            w.requires_grad_(True)
            with torch.no_grad():
                gy = torch.randn_like(torch.nn.functional.conv2d(
                    torch.from_numpy(x_data), w, stride=shape["stride"],
                    padding=shape["padding"]))

            def step(x, w=w, gy=gy, shape=shape):
                torch.nn.functional.conv2d(x, w, stride=shape["stride"],
                                           padding=shape["padding"]).backward(gy)
            name = _conv_name(workload, shape)
            # suffix -> whether x requires a gradient
            variants = {"": True} if shape["input_grad"] else {"": False, _WITH_INPUT_GRAD: True}
            calls = {}
            for suffix, needs in variants.items():
                x = torch.from_numpy(x_data.copy()).requires_grad_(needs)
                calls[name + suffix] = lambda step=step, x=x: step(x)
            # each variant timed on its own (one does not warm the other's caches)
            measures[name] = lambda calls=calls: {
                variant: interleaved_medians({variant: call}, repeats)[variant]
                for variant, call in calls.items()}
    timed: dict[str, Any] = {}
    for seconds, matmul in _windowed(measures, windows).values():
        for variant, value in seconds.items():
            timed[variant] = {"seconds": value, "matmul_gflops": matmul}
    return timed


def _matmul_around(measure: Callable[[], Any], settle_s: float = 0.02) -> tuple[Any, float]:
    """``measure()``, and the mean of NumPy's float32 1024^2 matmul GFLOP/s timed just before
    and just after it: the rate a layer's figures are given as fractions of. The machine's
    speed drifts over minutes (the run's first and last matmul have differed by 20%); a rate
    timed around each layer's own calls follows it. (Timed *in* the layer's interleaved
    rounds instead, the matmul's 12 MB evicted what the small layers' next calls needed:
    the first shortcut 30% instead of 43-48%, its plain-sgemm reference 29% instead of ~50%.)
    Each matmul comes after ``settle_s`` of sleep: PyTorch's OpenMP threads spin for
    milliseconds after its calls, and a matmul timed in their wake ran at 97 GFLOP/s, 173
    after 20 ms."""
    time.sleep(settle_s)
    before = matmul_gflops(repeats=10)
    result = measure()
    time.sleep(settle_s)
    return result, (before + matmul_gflops(repeats=10)) / 2


def _windowed(measures: dict[str, Callable[[], dict[Any, float]]],
              windows: int) -> dict[str, tuple[dict[Any, float], float]]:
    """Each layer's ``measure()`` (seconds by key) in ``windows`` windows, the layers taking
    turns (round-robin), each window between two matmuls (:func:`_matmul_around`); per layer,
    the median over its windows of every seconds value and of the matmul rate. A slow period
    of this shared machine that falls on one window of a layer is outvoted by the other two
    (one window per layer had left single layers of a run at 40-48% of the matmul rate when
    they read 56-61% in the other runs and timed alone, their own sgemm reference slowed as
    much)."""
    runs: dict[str, list[tuple[dict[Any, float], float]]] = {name: [] for name in measures}
    for _ in range(windows):
        for name, measure in measures.items():
            runs[name].append(_matmul_around(measure))
    return {name: ({key: statistics.median(seconds[key] for seconds, _ in taken)
                    for key in taken[0][0]},
                   statistics.median(rate for _, rate in taken))
            for name, taken in runs.items()}


def _torch_conv_child(repeats: int, threads: int,
                      windows: int = 1) -> dict[str, dict[str, Any]] | None:
    command = [sys.executable, "-m", "benchmarks.kernel_bench", str(repeats), str(threads),
               str(windows)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(command, capture_output=True, text=True, cwd=root, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"PyTorch convolution benchmark failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _training_figures(figures: dict[str, Any], passes: int, flops: int, seconds: float,
                      matmul: float, suffix: str = "") -> None:
    """Put the rate of ``passes`` convolution-sized passes done in ``seconds`` into
    ``figures``: GFLOP/s under gflops["forward_backward" + suffix], the fraction of the matmul
    rate ``matmul`` (timed around the layer's calls) under "fraction_of_matmul" + suffix."""
    rate = passes * flops / seconds / 1e9
    figures.setdefault("gflops", {})["forward_backward" + suffix] = rate
    figures["fraction_of_matmul" + suffix] = rate / matmul


def conv_benchmarks(backends: list[str], repeats: int, torch_threads: int = 2,
                    windows: int = 1) -> dict[str, Any]:
    """GFLOP/s of conv2d forward, input and weight gradient each alone, and of the passes a
    training step runs (the forward keeping its planes or columns for ``conv2d_backward``,
    or, for a layer that reads the network's input, for the weight gradient alone; such a
    layer also gets the figure with its input gradient, "..._with_input_grad"); and of
    PyTorch's forward + backward on the same shapes (null without torch); and of the same
    products as plain sgemm calls on operands laid out beforehand ("blas_products", see
    :func:`_blas_products`). Each layer's rates are also given as fractions of the matmul
    rate timed just before and after its calls (its "matmul_gflops"; PyTorch's, in its own
    process, around PyTorch's calls: :func:`_matmul_around`). Every figure is the median of
    ``windows`` windows of ``repeats`` interleaved rounds, the layers taking turns
    (:func:`_windowed`)."""
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {}
    torch_seconds = _torch_conv_child(repeats, torch_threads, windows) or {}
    layers: dict[str, tuple[str, dict[str, Any]]] = {}
    measures: dict[str, Callable[[], dict[tuple[str, str], float]]] = {}
    for workload in ("cnn-s", "resnet18"):
        for shape in conv_shapes(workload):
            name = _conv_name(workload, shape)
            layers[name] = workload, shape
            # who -> part -> call: each backend's, and the plain sgemm products'
            calls = {**{backend: _conv_case(shape, backend, rng) for backend in backends},
                     _PRODUCTS: _blas_products(shape, rng)}
            measures[name] = lambda calls=calls: {
                (who, part): seconds for who, parts in calls.items()
                for part, seconds in interleaved_medians(parts, repeats).items()}
    windowed = _windowed(measures, windows)
    for name, (workload, shape) in layers.items():
        flops, passes = _shape_flops(shape), _passes(shape)
        entry: dict[str, Any] = {"workload": workload, "count_in_model": shape["count"],
                                 "input_grad_in_training": shape["input_grad"],
                                 "flops": flops, "passes": passes}
        medians, matmul = windowed[name]
        per_backend = {backend: {part: seconds for (who, part), seconds in medians.items()
                                 if who == backend} for backend in backends}
        products = {part: seconds for (who, part), seconds in medians.items()
                    if who == _PRODUCTS}
        entry["matmul_gflops"] = matmul
        for backend, seconds in per_backend.items():
            figures = {"gflops": {part: flops / s / 1e9 for part, s in seconds.items()
                                  if not part.startswith("training")},
                       "ms": {part: s * 1e3 for part, s in seconds.items()}}
            # the passes as a training step runs them (what PyTorch's figure times)
            _training_figures(figures, passes, flops, seconds["training"], matmul)
            if "training_with_input_grad" in seconds:
                _training_figures(figures, 3, flops, seconds["training_with_input_grad"],
                                  matmul, _WITH_INPUT_GRAD_KEY)
            entry[backend] = figures
        # the same products as plain sgemm calls (the input gradient's where training
        # computes it), for scale
        figures = {"ms": {part: s * 1e3 for part, s in products.items()}}
        _training_figures(figures, passes, flops, products["forward"] + products["weight_grad"]
                          + (products["input_grad"] if shape["input_grad"] else 0.0), matmul)
        if not shape["input_grad"]:
            _training_figures(figures, 3, flops, sum(products.values()), matmul,
                              _WITH_INPUT_GRAD_KEY)
        entry[_PRODUCTS] = figures
        entry["torch"] = None
        timed = torch_seconds.get(name)
        if timed:
            figures = entry["torch"] = {"ms": {"forward_backward": timed["seconds"] * 1e3},
                                        "matmul_gflops": timed["matmul_gflops"]}
            _training_figures(figures, passes, flops, timed["seconds"],
                              timed["matmul_gflops"])
            timed = torch_seconds.get(name + _WITH_INPUT_GRAD)
            if timed:
                _training_figures(figures, 3, flops, timed["seconds"],
                                  timed["matmul_gflops"], _WITH_INPUT_GRAD_KEY)
                figures["matmul_gflops" + _WITH_INPUT_GRAD_KEY] = timed["matmul_gflops"]
                figures["ms"]["forward_backward" + _WITH_INPUT_GRAD_KEY] = \
                    timed["seconds"] * 1e3
        results[name] = entry
    return results


_CONTENDERS = {"numpy": "training", "numba": "training", "torch": "forward_backward"}


def conv_totals(conv2d: dict[str, Any]) -> dict[str, Any]:
    r"""Each workload's convolutions as a whole, as a training step runs them: for each
    contender timed on all of the workload's layers, the milliseconds of one step's conv2d
    passes (each layer's, times its count in the model), their GFLOP/s, and the fraction of
    the matmul rate

    .. math:: \frac{\sum_l n_l F_l}{\sum_l n_l t_l R_l},

    with :math:`F_l` the FLOP of layer l's passes, :math:`t_l` their seconds, :math:`R_l` the
    matmul rate timed around the layer's calls: the work done over what the matmul would have
    done in the same time at its rate of the moment (so a layer timed while the machine was
    slow is compared with the matmul of that moment, as each row of the per-layer table is)."""
    sums: dict[str, dict[str, dict[str, float]]] = {}
    layers: dict[str, int] = {}
    counts: dict[str, int] = {}
    for entry in conv2d.values():
        workload, count = entry["workload"], entry["count_in_model"]
        layers[workload] = layers.get(workload, 0) + 1
        counts[workload] = counts.get(workload, 0) + count
        for who, part in _CONTENDERS.items():
            figures = entry.get(who)
            if not figures:
                continue
            seconds = count * figures["ms"][part] / 1e3
            rate = figures.get("matmul_gflops", entry["matmul_gflops"])
            total = sums.setdefault(workload, {}).setdefault(
                who, {"layers": 0, "flop": 0.0, "seconds": 0.0, "matmul_flop": 0.0})
            total["layers"] += 1
            total["flop"] += count * entry["flops"] * entry["passes"]
            total["seconds"] += seconds
            total["matmul_flop"] += seconds * rate * 1e9
    totals: dict[str, Any] = {}
    for workload, per_contender in sums.items():
        total = totals[workload] = {"layers": layers[workload], "count": counts[workload]}
        for who, t in per_contender.items():
            if t["layers"] == layers[workload]:     # (not a total of some layers only)
                total[who] = {"ms": t["seconds"] * 1e3,
                              "gflops": t["flop"] / t["seconds"] / 1e9,
                              "fraction_of_matmul": t["flop"] / t["matmul_flop"]}
    return totals


def _memory_cases(rng) -> dict[str, tuple[Callable[[str], Callable], int]]:
    """name -> (backend -> call, bytes moved), on CNN-S / ResNet-18 / MLP-M activation shapes."""
    act = rng.standard_normal((64, 16, 28, 28)).astype(np.float32)           # CNN-S conv1 out
    grad = rng.standard_normal(act.shape).astype(np.float32)
    pooled, argmax = kernel("max_pool2d_forward", "numpy")(act, (2, 2), (2, 2), (0, 0))
    g_pooled = rng.standard_normal(pooled.shape).astype(np.float32)
    bn_x = rng.standard_normal((32, 16, 32, 32)).astype(np.float32)          # ResNet stage 1
    gamma, beta = np.ones(16, np.float32), np.zeros(16, np.float32)
    _, mean, invstd = kernel("batch_norm_forward", "numpy")(bn_x, gamma, beta, 1e-5)
    logits = rng.standard_normal((128, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 128)
    param = rng.standard_normal(784 * 256).astype(np.float32)                # MLP-M layer 1
    p_grad, buf = np.ones_like(param), np.zeros_like(param)
    size = act.nbytes
    return {
        "relu_forward (64,16,28,28)": (lambda b: lambda: kernel("relu_forward", b)(act), 2 * size),
        "relu_backward (64,16,28,28)": (
            lambda b: lambda: kernel("relu_backward", b)(grad, act), 3 * size),
        "max_pool2d_forward 2x2 (64,16,28,28)": (
            lambda b: lambda: kernel("max_pool2d_forward", b)(act, (2, 2), (2, 2), (0, 0)),
            size + pooled.nbytes * 3),
        "max_pool2d_backward 2x2 (64,16,28,28)": (
            lambda b: lambda: kernel("max_pool2d_backward", b)(
                g_pooled, argmax, act.shape, (2, 2), (2, 2), (0, 0)), size + pooled.nbytes * 3),
        "batch_norm_forward (32,16,32,32)": (
            lambda b: lambda: kernel("batch_norm_forward", b)(bn_x, gamma, beta, 1e-5),
            2 * bn_x.nbytes),
        "batch_norm_backward (32,16,32,32)": (
            lambda b: lambda: kernel("batch_norm_backward", b)(bn_x, bn_x, gamma, mean, invstd),
            3 * bn_x.nbytes),
        "softmax_cross_entropy fwd+bwd (128,10)": (
            lambda b: lambda: (kernel("softmax_cross_entropy", b)(logits, labels, None, 0.0),
                               kernel("softmax_cross_entropy_backward", b)(
                                   logits, labels, None, 0.0, np.ones(128, np.float32))),
            3 * logits.nbytes),
        "sgd_update momentum (784*256,)": (
            lambda b: lambda: kernel("sgd_update", b)(param, p_grad, buf, 1e-9, 0.9, 0.0, False,
                                                      0.0, False), 5 * param.nbytes),
    }


def memory_benchmarks(backends: list[str], repeats: int) -> dict[str, Any]:
    """GB/s of the memory-bound kernels."""
    rng = np.random.default_rng(1)
    results: dict[str, Any] = {}
    for name, (make, nbytes) in _memory_cases(rng).items():
        seconds = interleaved_medians({b: make(b) for b in backends}, repeats)
        results[name] = {b: {"gbs": nbytes / s / 1e9, "ms": s * 1e3} for b, s in seconds.items()}
    return results


# A full run times each convolution in this many windows of half its rounds (see _windowed);
# a quick one (fewer than 10 rounds) in one
CONV_WINDOWS = 3


def run_kernels(repeats: int, torch_threads: int = 2) -> dict[str, Any]:
    backends = [b for b in ("numpy", "numba") if b in available()]
    windows = CONV_WINDOWS if repeats >= 10 else 1
    rounds = repeats if windows == 1 else -(-repeats // 2)
    conv2d = conv_benchmarks(backends, rounds, torch_threads, windows)
    return {"conv2d": conv2d, "conv2d_totals": conv_totals(conv2d),
            "conv2d_windows": {"windows": windows, "rounds_per_window": rounds},
            "memory": memory_benchmarks(backends, repeats)}


if __name__ == "__main__":   # python -m benchmarks.kernel_bench REPEATS TORCH_THREADS WINDOWS
    print(json.dumps(torch_conv_seconds(*(int(value) for value in sys.argv[1:4]))))
