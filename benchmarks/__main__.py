"""``python -m benchmarks`` / ``refnas bench``: the benchmark suite.

Measures, in one run on this machine:

1. **workloads** — ms per SGD-momentum training step (forward, cross-entropy, backward,
   update) of MLP-S, MLP-M, CNN-S and ResNet-18 (width 16) on each refnas backend and on
   PyTorch CPU (``torch.set_num_threads(2)``, when installed), each in a process of its own,
   the processes taking turns in blocks of steps, over several rounds of fresh processes
   (median of the rounds), and the paired ratio of each block of numba's steps to the block
   of PyTorch's next to it;
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
import statistics
import subprocess
import sys
import tempfile
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
                        help="rounds per workload, each with a fresh process per contender, "
                             "the processes taking turns in blocks of steps; the median of the "
                             "rounds is reported (default 3, --quick 1)")
    parser.add_argument("--no-kernels", action="store_true", help="skip the microbenchmarks")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile timing")
    parser.add_argument("--torch-threads", type=int, default=2,
                        help="PyTorch intra-op threads (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="refnas threads for Numba and BLAS (default: REFNAS_NUM_THREADS or "
                             "the number of cores); e.g. 1 with --torch-threads 1 compares one "
                             "core each, which stays fair on a machine busy with other work")


# a block of steps lasts about this long (at least two steps: the first of each is not timed)
BLOCK_S = 0.25
# blocks per contender and round, at least (then more until each contender has its repeats,
# within the round's time)
MIN_BLOCKS = 4


def _serve_command(name: str, contender: str, threads: int | None,
                   torch_threads: int) -> list[str]:
    """The command line of a contender's process (:func:`benchmarks.workloads.serve`)."""
    return [sys.executable, "-m", "benchmarks.workloads", name, contender,
            "none" if threads is None else str(threads), str(torch_threads)]


class _Contender:
    """One contender's process, alive for a round, answering commands in JSON lines
    (:func:`benchmarks.workloads.serve`)."""

    def __init__(self, label: str, command: list[str]) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.label = label
        self._errors = tempfile.TemporaryFile("w+")     # read only if it fails
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._errors, text=True, cwd=root)

    def _reply(self) -> Any:
        """The child's next JSON line (lines that are not JSON, printed by a library, are
        skipped); a child that ended raises with what it wrote to stderr."""
        for line in self._process.stdout:
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
        self._process.wait()
        self._errors.seek(0)
        raise RuntimeError(f"benchmark child {self.label} failed:\n{self._errors.read()}")

    def _ask(self, command: str) -> Any:
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        return self._reply()

    def ready(self) -> bool:
        """Whether the contender runs (False: torch is not installed), once it has warmed up."""
        return self._reply()["ready"]

    def steps(self, seconds: float) -> list[float]:
        """The seconds of each step it ran in ``seconds`` seconds (at least two)."""
        return self._ask(f"{seconds}")

    def profile(self, seconds: float) -> dict[str, Any]:
        return self._ask(f"profile {seconds}")

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    def close(self) -> None:
        """Ask the child to quit (killed if it has not within a minute) and close its pipes."""
        if self._process.poll() is None:
            try:
                self._process.stdin.write("quit\n")
                self._process.stdin.flush()
            except BrokenPipeError:
                pass
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout, self._errors):
            pipe.close()


def _round(name: str, contenders: list[str], repeats: int, budget_s: float,
           threads: int | None, torch_threads: int, profile: bool) -> dict[str, Any]:
    """One round of workload ``name``: a process per contender, all alive, taking turns in
    blocks of steps of about BLOCK_S seconds (the order reversed from one block to the next)
    until each has run MIN_BLOCKS blocks and ``repeats`` timed steps, or ``budget_s`` has
    passed (after MIN_BLOCKS). The first step of a block is not timed: its process has just
    woken up, its threads asleep and its data evicted by the others' turns (a 0.3 ms MLP-S
    step then took 1-16 ms).

    Returns, per contender that ran: "blocks" (each block's median step, in seconds), and with
    ``profile``, for refnas's backends, "profile" (:func:`benchmarks.workloads.serve`)."""
    processes = {contender: _Contender(f"{name}/{contender}", _serve_command(
        name, contender, threads, torch_threads)) for contender in contenders}
    try:
        running = [contender for contender in contenders if processes[contender].ready()]
        timed: dict[str, int] = {contender: 0 for contender in running}
        blocks: dict[str, list[float]] = {contender: [] for contender in running}
        start = time.perf_counter()
        while running and (len(blocks[running[0]]) < MIN_BLOCKS or (
                any(timed[c] < repeats for c in running)
                and time.perf_counter() - start < budget_s)):
            order = running if len(blocks[running[0]]) % 2 == 0 else running[::-1]
            for contender in order:
                times = processes[contender].steps(BLOCK_S)[1:]
                timed[contender] += len(times)
                blocks[contender].append(statistics.median(times))
        result: dict[str, Any] = {contender: {"blocks": blocks[contender]}
                                  for contender in running}
        for contender in running if profile else ():
            if contender != "torch":
                result[contender]["profile"] = processes[contender].profile(BLOCK_S)
        return result
    finally:
        for process in processes.values():
            process.close()


def _workloads(names: list[str], quick: bool, threads: int | None, torch_threads: int,
               rounds: int) -> dict[str, Any]:
    """Each workload's contenders over ``rounds`` rounds (:func:`_round`): in a round each
    contender runs in a process of its own, and the processes take turns in blocks of steps
    of about BLOCK_S seconds. A contender's figure is the median over the rounds of its
    round's figure, the median of its blocks' medians.

    Separate processes: the thread pools of different frameworks in one process (PyTorch's
    OpenMP workers, BLAS's, Numba's) spin and wait on each other on two cores, which slowed
    PyTorch's steps by 2-5x when interleaved with refnas's. Rounds of fresh processes: on this
    shared machine one process could run 20-30% slower than the next for reasons outside it.
    Blocks taking turns: the machine's slow periods (for seconds to minutes its cores run
    compute 1.5x slower, and what reads memory slower still) had fallen on one contender's process and not on the next one's while
    each process ran all its steps alone (until the sixteenth session): one run's ResNet-18
    rounds gave numba / torch ratios from 0.81 to 1.26. Blocks a quarter of a second long,
    taking turns, mostly see the machine in the same state, so their paired ratios
    ("block_ratios": numba / torch of each block) move far less with it (0.92-0.98 for the
    middle 80% of one minute's pairs)."""
    results: dict[str, Any] = {}
    contenders = [b for b in ("numpy", "numba") if b in backend.available()] + ["torch"]
    for name in names:
        repeats = _REPEATS[name][1 if quick else 0]
        # every contender's key is present, null when it could not run (no Numba, no torch)
        entry: dict[str, Any] = {"numpy_ms": None, "numba_ms": None, "torch_ms": None}
        rounds_ms: dict[str, list[float]] = {contender: [] for contender in contenders}
        block_ratios: list[float] = []
        for round_ in range(rounds):
            measured = _round(name, contenders, repeats, (15.0 if quick else 90.0) / rounds,
                              threads, torch_threads, profile=round_ == rounds - 1)
            for contender, figures in measured.items():
                rounds_ms[contender].append(statistics.median(figures["blocks"]) * 1e3)
                if "profile" in figures:
                    entry.setdefault("kernel_share", {})[contender] = {
                        "fraction": figures["profile"]["kernel_share"],
                        "top_ms": figures["profile"]["top_kernels_ms"]}
            if "numba" in measured and "torch" in measured:
                block_ratios += [a / b for a, b in zip(measured["numba"]["blocks"],
                                                       measured["torch"]["blocks"])]
        for contender, values in rounds_ms.items():
            if values:
                entry[f"{contender}_ms"] = statistics.median(values)
                entry.setdefault("ms_per_round", {})[contender] = values
        if block_ratios:
            entry["block_ratios"] = block_ratios
        results[name] = entry
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in entry.items()
                                          if k.endswith("_ms") and v is not None), flush=True)
    return results


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


def _paired_ratios(ratios: list[float]) -> str:
    """numba / torch of each block pair (the two ran one right after the other, so on the
    machine in one state; :func:`_round`) as "median (10th–90th percentile)": not moved by the
    machine slowing down between blocks, which can move the ratio of the medians; the
    percentiles show how far the pairs spread."""
    if not ratios:
        return "—"
    median = statistics.median(ratios)
    if len(ratios) < 2:
        return f"{median:.2f}"
    deciles = statistics.quantiles(ratios, n=10, method="inclusive")
    return f"{median:.2f} ({deciles[0]:.2f}–{deciles[-1]:.2f})"


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
             "| numba / torch, blocks paired: median (10th–90th percentile) | numpy / torch "
             "| time in kernels (numba) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, w in results["workloads"].items():
        share = w.get("kernel_share", {}).get("numba", {}).get("fraction")
        lines.append(f"| {name} | {_ms(w['numpy_ms'])} | {_ms(w['numba_ms'])} | "
                     f"{_ms(w['torch_ms'])} | {_ratio(w['numba_ms'], w['torch_ms'])} | "
                     f"{_paired_ratios(w.get('block_ratios', []))} | "
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
