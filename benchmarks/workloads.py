"""Training-step workloads: the same small networks in refnas (each backend) and in PyTorch CPU.

One *step* is what a training loop does per batch: zero the gradients, forward, cross-entropy,
backward, and an SGD-with-momentum update. Each workload is built once per framework with the
same architecture (weights are drawn independently: timings do not depend on their values).

=========  =============================================================  ==========  =====
name       network                                                        input       batch
=========  =============================================================  ==========  =====
mlp-s      MLP 64-128-128-10 (ReLU)                                       64          64
mlp-m      MLP 784-256-256-10 (ReLU)                                      784         128
cnn-s      conv3x3(16)-relu-maxpool2-conv3x3(32)-relu-maxpool2-linear(10)  1x28x28     64
           (padding 1, so the maps are 28, 14 and 7 pixels wide)
resnet18   ResNet-18, CIFAR variant (3x3 stem, no max-pool), width 16     3x32x32     32
=========  =============================================================  ==========  =====
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import IO, Any, Callable

import numpy as np

import refnas
from refnas import nn
from refnas.ops.losses import cross_entropy
from refnas.optim import SGD

LEARNING_RATE, MOMENTUM = 0.01, 0.9


@dataclass(frozen=True)
class Workload:
    name: str
    input_shape: tuple[int, ...]      # of one example
    batch: int
    classes: int = 10


WORKLOADS = {
    "mlp-s": Workload("mlp-s", (64,), 64),
    "mlp-m": Workload("mlp-m", (784,), 128),
    "cnn-s": Workload("cnn-s", (1, 28, 28), 64),
    "resnet18": Workload("resnet18", (3, 32, 32), 32),
}


def _data(workload: Workload, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((workload.batch, *workload.input_shape)).astype(np.float32)
    return x, rng.integers(0, workload.classes, workload.batch)


# --------------------------------------------------------------------------------------------
# refnas
# --------------------------------------------------------------------------------------------
def refnas_model(name: str) -> nn.Module:
    if name == "mlp-s":
        return nn.MLP([64, 128, 128, 10], seed=0)
    if name == "mlp-m":
        return nn.MLP([784, 256, 256, 10], seed=0)
    if name == "cnn-s":
        rng = np.random.default_rng(0)
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 10, rng=rng))
    if name == "resnet18":
        return nn.resnet18(width=16, seed=0)
    raise KeyError(f"unknown workload {name!r}; expected one of {sorted(WORKLOADS)}")


def refnas_step(name: str, backend: str) -> Callable[[], float]:
    """A closure running one training step of workload ``name`` on ``backend``; returns the loss."""
    workload = WORKLOADS[name]
    model = refnas_model(name)
    model.train()
    optimizer = SGD(list(model.parameters()), lr=LEARNING_RATE, momentum=MOMENTUM)
    x, y = _data(workload)
    inputs = refnas.tensor(x)

    def step() -> float:
        with refnas.use_backend(backend):
            optimizer.zero_grad()
            loss = cross_entropy(model(inputs), y)
            loss.backward()
            optimizer.step()
        return float(loss.data)

    return step


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------
def _torch_model(name: str) -> Any:
    import torch
    from torch import nn as tnn

    def mlp(sizes):
        layers: list[Any] = []
        for a, b in zip(sizes[:-2], sizes[1:-1]):
            layers += [tnn.Linear(a, b), tnn.ReLU()]
        return tnn.Sequential(*layers, tnn.Linear(sizes[-2], sizes[-1]))

    class Block(tnn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = tnn.Sequential(
                tnn.Conv2d(cin, cout, 3, stride, 1, bias=False), tnn.BatchNorm2d(cout), tnn.ReLU(),
                tnn.Conv2d(cout, cout, 3, 1, 1, bias=False), tnn.BatchNorm2d(cout))
            self.shortcut = (tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                            tnn.BatchNorm2d(cout))
                             if stride != 1 or cin != cout else tnn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    def resnet18(width: int):
        layers: list[Any] = [tnn.Conv2d(3, width, 3, 1, 1, bias=False), tnn.BatchNorm2d(width),
                             tnn.ReLU()]
        cin = width
        for stage in range(4):
            cout = width * 2 ** stage
            layers += [Block(cin, cout, 1 if stage == 0 else 2), Block(cout, cout, 1)]
            cin = cout
        return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(),
                              tnn.Linear(cin, 10))

    torch.manual_seed(0)
    if name == "mlp-s":
        return mlp([64, 128, 128, 10])
    if name == "mlp-m":
        return mlp([784, 256, 256, 10])
    if name == "cnn-s":
        return tnn.Sequential(tnn.Conv2d(1, 16, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
                              tnn.Conv2d(16, 32, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
                              tnn.Flatten(), tnn.Linear(32 * 7 * 7, 10))
    return resnet18(16)


def torch_step(name: str, threads: int = 2) -> Callable[[], float] | None:
    """The PyTorch CPU step of workload ``name`` (``threads`` intra-op threads), or None when
    torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    workload = WORKLOADS[name]
    model = _torch_model(name)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    x, y = _data(workload)
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> float:
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), labels)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


# --------------------------------------------------------------------------------------------
# A contender's process: blocks of steps on command
# --------------------------------------------------------------------------------------------
def serve(name: str, contender: str, threads: int | None, torch_threads: int,
          commands: IO[str], replies: IO[str]) -> None:
    """Run ``contender`` ("numpy", "numba" or "torch") on workload ``name`` in blocks of steps,
    as :func:`benchmarks.__main__._workloads` asks over ``commands`` (one per line), answering
    each with one JSON line on ``replies``.

    First, unasked, after two warm-up steps: ``{"ready": true}``, or ``{"ready": false}``
    when the contender cannot run (torch not installed). Then:

    - ``S`` (seconds): run steps for S seconds, at least two; reply with their seconds, one
      after the other;
    - ``profile S``: three steps (the process has just woken up), then steps for S seconds,
      at least three, under :func:`refnas.backend.profile` (refnas only); reply with the share
      of their time spent inside kernels and the four kernels that took longest (ms per step);
    - ``quit`` (or the end of ``commands``): return.
    """
    from refnas import backend

    def reply(value: Any) -> None:
        replies.write(json.dumps(value) + "\n")
        replies.flush()

    if threads is not None and contender != "torch":
        backend.available()
        backend.set_num_threads(threads)
    step = torch_step(name, torch_threads) if contender == "torch" else refnas_step(name, contender)
    if step is None:
        reply({"ready": False})
        return
    for _ in range(2):
        step()
    reply({"ready": True})
    for line in commands:
        command = line.split()
        if not command or command[0] == "quit":
            return
        if command[0] == "profile":
            for _ in range(3):
                step()
            with backend.profile() as timing:
                times = _steps_for(step, float(command[1]), 3)
            top = sorted(timing.seconds.items(), key=lambda kv: -kv[1])[:4]
            reply({"kernel_share": sum(timing.seconds.values()) / sum(times),
                   "top_kernels_ms": {k: v / len(times) * 1e3 for k, v in top}})
        else:
            reply(_steps_for(step, float(command[0]), 2))


def _steps_for(step: Callable[[], float], seconds: float, at_least: int) -> list[float]:
    """The seconds of each of the steps run in ``seconds`` seconds (at least ``at_least``)."""
    import time
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < at_least or time.perf_counter() - start < seconds:
        begin = time.perf_counter()
        step()
        times.append(time.perf_counter() - begin)
    return times


if __name__ == "__main__":   # python -m benchmarks.workloads NAME CONTENDER THREADS TORCH_THREADS
    import sys
    import warnings
    warnings.filterwarnings("ignore")
    _name, _contender, _threads, _torch_threads = sys.argv[1:5]
    serve(_name, _contender, None if _threads == "none" else int(_threads), int(_torch_threads),
          sys.stdin, sys.stdout)
