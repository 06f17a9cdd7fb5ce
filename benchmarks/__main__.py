"""``python -m benchmarks`` / ``refnas bench``: the benchmark suite.

Measures, in one run on this machine:

1. **workloads** — ms per SGD-momentum training step (forward, cross-entropy, backward,
   update) of MLP-S, MLP-M, CNN-S and ResNet-18 (width 16) on each refnas backend and on
   PyTorch CPU (``torch.set_num_threads(2)``, when installed), each in a process of its own,
   the contenders taking turns over several rounds (median of the rounds);
   with the share of each refnas step spent inside kernels (the rest is the autograd core
   and NumPy ops);
2. **kernels** — GFLOP/s of conv2d forward / input-gradient / weight-gradient on every
   convolution shape of CNN-S and ResNet-18, GB/s of the memory-bound kernels, each as a
   fraction of NumPy's float32 matmul GFLOP/s measured in the same run;
3. **compile** — Numba's JIT compile time of all kernels on a cold cache, and what a warm cache
   adds to a new process's start.

Prints a markdown table (``--markdown PATH`` writes it) and writes everything as JSON with
``--json PATH``. ``--quick`` runs in under two minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

if __package__ in (None, ""):  # run as a script path: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from refnas import backend  # noqa: E402
from refnas.io import atomic_write  # noqa: E402
from benchmarks.timing import machine, matmul_gflops  # noqa: E402
from benchmarks.workloads import WORKLOADS  # noqa: E402

# repeats (full, quick) per workload: the MLP steps are short, ResNet-18's long
_REPEATS = {"mlp-s": (200, 40), "mlp-m": (100, 20), "cnn-s": (30, 8), "resnet18": (10, 3)}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer repeats (under 2 minutes)")
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the markdown tables")
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS),
                        default=list(WORKLOADS), help="workloads to run (default: all)")
    parser.add_argument("--rounds", type=_positive_int, default=None,
                        help="processes per contender and workload, taking turns; the median "
                             "is reported (default 3, --quick 1)")
    parser.add_argument("--no-kernels", action="store_true", help="skip the microbenchmarks")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile timing")
    parser.add_argument("--torch-threads", type=int, default=2,
                        help="PyTorch intra-op threads (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="refnas threads for Numba and BLAS (default: REFNAS_NUM_THREADS or "
                             "the number of cores); e.g. 1 with --torch-threads 1 compares one "
                             "core each, which stays fair on a machine busy with other work")


def _workloads(names: list[str], quick: bool, threads: int | None, torch_threads: int,
               rounds: int) -> dict[str, Any]:
    """Each contender of each workload in a process of its own, ``rounds`` times, the contenders
    taking turns (numpy, numba, torch, numpy, ...); the figure is the median over the rounds of
    each process's median step time.

    Separate processes: the thread pools of different frameworks in one process (PyTorch's
    OpenMP workers, BLAS's, Numba's) spin and wait on each other on two cores, which slowed
    PyTorch's steps by 2-5x when interleaved with refnas's. Rounds: on this shared machine one
    process could run 20-30% slower than the next for reasons outside it, which a single
    process per contender turned into a spurious ratio."""
    import statistics
    results: dict[str, Any] = {}
    contenders = [b for b in ("numpy", "numba") if b in backend.available()] + ["torch"]
    for name in names:
        repeats = _REPEATS[name][1 if quick else 0]
        # every contender's key is present, null when it could not run (no Numba, no torch)
        entry: dict[str, Any] = {"numpy_ms": None, "numba_ms": None, "torch_ms": None}
        rounds_ms: dict[str, list[float]] = {contender: [] for contender in contenders}
        for _ in range(rounds):
            for contender in contenders:
                measured = _child_measure(name, contender, repeats,
                                          (15.0 if quick else 90.0) / rounds, threads,
                                          torch_threads)
                if measured.get("ms") is not None:
                    rounds_ms[contender].append(measured["ms"])
                if measured.get("kernel_share") is not None:
                    entry.setdefault("kernel_share", {})[contender] = {
                        "fraction": measured["kernel_share"],
                        "top_ms": measured["top_kernels_ms"]}
        for contender, values in rounds_ms.items():
            if values:
                entry[f"{contender}_ms"] = statistics.median(values)
                entry.setdefault("ms_per_round", {})[contender] = values
        results[name] = entry
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in entry.items()
                                          if k.endswith("_ms") and v is not None), flush=True)
    return results


def _child_measure(name: str, contender: str, repeats: int, budget_s: float,
                   threads: int | None, torch_threads: int) -> dict[str, Any]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "-m", "benchmarks.workloads", name, contender, str(repeats),
               str(budget_s), "none" if threads is None else str(threads), str(torch_threads)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=root, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child {name}/{contender} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _autograd_overhead(quick: bool) -> dict[str, Any] | None:
    """The autograd-overhead benchmark (another module of this suite), when present."""
    try:
        from benchmarks import autograd_overhead
    except ImportError:
        return None
    try:
        return autograd_overhead.run(repeats=30 if quick else 200)
    except Exception as error:  # a broken extra benchmark must not sink the suite
        return {"error": f"{type(error).__name__}: {error}"}


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "—"


def _round_ratios(per_round: dict[str, list[float]]) -> str:
    """numba / torch of each round (the contenders of a round ran one after the other, so on
    the machine in one state), as "median (lowest–highest)": paired, the median is not moved
    by the machine slowing down between rounds, which can move the ratio of the medians (one
    run: MLP-M's medians gave 1.16, its rounds 0.89-1.17 with median 0.93); the range is how
    far a single run could land."""
    numba, torch = per_round.get("numba", []), per_round.get("torch", [])
    ratios = sorted(a / b for a, b in zip(numba, torch) if b)
    if not ratios:
        return "—"
    if len(ratios) == 1:
        return f"{ratios[0]:.2f}"
    middle = len(ratios) // 2
    median = ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2
    return f"{median:.2f} ({ratios[0]:.2f}–{ratios[-1]:.2f})"


def _ms(value: float | None) -> str:
    return _number(value, ".3f")


def _number(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _target(machine: dict[str, Any]) -> str:
    """" (znver4, Numba code AVX2)", or nothing when the run did not record it."""
    if "cpu" not in machine:
        return ""
    return f" ({machine['cpu']}, Numba code {machine.get('numba_vectors', 'other')})"


def markdown(results: dict[str, Any], command: str) -> str:
    """The README tables."""
    lines = [f"Measured with `{command}` (load average {results['machine']['load_average_1min']}, "
             f"{results['machine']['cpu_count']} cores{_target(results['machine'])}, "
             f"refnas threads {results['threads']}, "
             f"PyTorch threads {results['torch_threads']}; NumPy float32 matmul "
             f"{results['matmul_gflops']:.0f} GFLOP/s at the start of the run, "
             f"{results['matmul_gflops_end']:.0f} at its end).", "",
             "| workload | refnas-numpy ms | refnas-numba ms | PyTorch CPU ms | numba / torch "
             "| numba / torch per round: median (range) | numpy / torch "
             "| time in kernels (numba) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, w in results["workloads"].items():
        share = w.get("kernel_share", {}).get("numba", {}).get("fraction")
        lines.append(f"| {name} | {_ms(w['numpy_ms'])} | {_ms(w['numba_ms'])} | "
                     f"{_ms(w['torch_ms'])} | {_ratio(w['numba_ms'], w['torch_ms'])} | "
                     f"{_round_ratios(w.get('ms_per_round', {}))} | "
                     f"{_ratio(w['numpy_ms'], w['torch_ms'])} | "
                     f"{_number(share, '.0%')} |")
    kernels = results.get("kernels")
    if kernels:
        lines += ["", "| conv2d shape (forward + the gradients a training step computes, "
                  "as it runs them) | numpy GFLOP/s | "
                  "numba GFLOP/s | PyTorch GFLOP/s | matmul GFLOP/s around the layer "
                  "| numba / matmul | PyTorch / matmul "
                  "| sgemm on its products alone / matmul |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, entry in kernels["conv2d"].items():
            # a layer reading the network's input: its weight gradient only, then a row with
            # the input gradient that training skips
            variants = [("", "")] if entry.get("input_grad_in_training", True) else [
                ("", " (no input gradient)"), ("_with_input_grad", " with its input gradient")]
            for suffix, label in variants:
                rates = [(entry.get(who) or {}).get("gflops", {}).get(
                    "forward_backward" + suffix) for who in ("numpy", "numba", "torch")]
                fractions = [(entry.get(who) or {}).get("fraction_of_matmul" + suffix)
                             for who in ("numba", "torch")]
                blas = (entry.get("blas_products") or {}).get("fraction_of_matmul" + suffix)
                around = entry.get("matmul_gflops")
                lines.append(f"| {name.removeprefix('conv2d ')}{label} | "
                             + " | ".join(_number(rate, ".1f") for rate in rates) + " | "
                             + _number(around, ".0f") + " | "
                             + " | ".join(_number(f, ".0%") for f in fractions + [blas])
                             + " |")
        totals = kernels.get("conv2d_totals")
        if totals:
            lines += ["", "| all conv2d layers of a training step (each shape times its count) "
                      "| layers (shapes) | numba ms | numba GFLOP/s | numba / matmul "
                      "| PyTorch ms | PyTorch GFLOP/s | PyTorch / matmul |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for workload, total in totals.items():
                cells = []
                for who in ("numba", "torch"):
                    figures = total.get(who) or {}
                    cells += [_number(figures.get("ms"), ".2f"),
                              _number(figures.get("gflops"), ".1f"),
                              _number(figures.get("fraction_of_matmul"), ".0%")]
                lines.append(f"| {workload} | {total['count']} ({total['layers']}) | "
                             + " | ".join(cells) + " |")
        lines += ["", "| memory-bound kernel | numpy GB/s | numba GB/s |", "|---|---:|---:|"]
        for name, entry in kernels["memory"].items():
            lines.append(f"| {name} | {_number(entry['numpy']['gbs'], '.1f')} | "
                         f"{_number(entry.get('numba', {}).get('gbs'), '.1f')} |")
    compile_ = results.get("compile")
    if compile_:
        lines += ["", f"Numba JIT, cold cache, all kernels ({', '.join(compile_['dtypes'])}): "
                  f"{compile_['cold_compile_s']:.1f} s; a new process with a warm cache starts "
                  f"{compile_['warm_start_overhead_s']:+.2f} s slower than with the NumPy "
                  f"backend ({compile_['warm_total_s']:.2f} s vs "
                  f"{compile_['numpy_total_s']:.2f} s)."]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    arguments = sys.argv[1:]
    command = ("refnas " if arguments[:1] == ["bench"] else "python -m benchmarks ") + " ".join(
        arguments)
    started = time.perf_counter()
    if args.threads is not None:
        backend.available()                    # import Numba first, so its pool is sized
        backend.set_num_threads(args.threads)
    print(f"backends: {backend.available()}; threads: {backend.num_threads()} "
          f"(PyTorch: {args.torch_threads})", flush=True)
    results: dict[str, Any] = {"machine": machine(), "threads": backend.num_threads(),
                               "torch_threads": args.torch_threads}
    results["matmul_gflops"] = matmul_gflops()
    print(f"NumPy float32 matmul: {results['matmul_gflops']:.1f} GFLOP/s", flush=True)
    results["workloads"] = _workloads(args.workloads, args.quick, args.threads, args.torch_threads,
                                      args.rounds or (1 if args.quick else 3))
    if not args.no_kernels:
        from benchmarks.kernel_bench import run_kernels
        results["kernels"] = run_kernels(5 if args.quick else 20, args.torch_threads)
    if not args.no_compile and "numba" in backend.available():
        from benchmarks.compile_time import run_compile
        results["compile"] = run_compile(float64=not args.quick)
    results["autograd_overhead"] = _autograd_overhead(args.quick)
    results["seconds"] = time.perf_counter() - started
    results["matmul_gflops_end"] = matmul_gflops()    # a drifting machine shows up here
    table = markdown(results, command.strip())
    print(table)
    if args.markdown:
        with atomic_write(args.markdown, "w") as handle:
            handle.write(table)
    if args.json:
        with atomic_write(args.json, "w") as handle:
            handle.write(json.dumps(results, indent=2, default=float) + "\n")
    print(f"done in {results['seconds']:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
