"""``refnas demo`` and ``refnas train``: train a model, report held-out metrics, save artefacts.

``refnas demo`` trains the default model on the bundled 8×8 digits with a stratified
train / validation / test split (65 / 15 / 20 %), shows a progress bar, prints the test metrics
and writes to ``--out`` (default ``./refnas-out``):

* ``summary.json`` — dataset, model, test accuracy / macro precision / recall / F1, seconds,
  backend, epochs, parameter and FLOP counts, seed, the history;
* ``training_curve.png`` — losses and accuracies per epoch;
* ``checkpoint.npz`` — the trained model (with its optimizer), loadable by
  :func:`refnas.io.load_checkpoint`.

The weights of the epoch with the lowest validation loss are kept (model selection on the
validation split only; the test split is touched once, at the end). Everything is seeded, so a
run is reproducible for a given ``--seed`` and backend.

``refnas train`` does the same for ``--model mlp|cnn|resnet18`` on ``--data
digits|spirals|mnist:PATH``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from typing import Any

import numpy as np

DEMO_MODEL = "cnn"
DEMO_EPOCHS = 8
DEMO_LR = 3e-3
DEMO_BATCH_SIZE = 32
DEFAULT_OUT = "refnas-out"
MODEL_CHOICES = ("mlp", "cnn", "resnet18")

__all__ = ["add_demo_arguments", "run_demo", "add_train_arguments", "run_train",
           "train_and_report", "load_dataset", "make_model", "plot_history"]


# --------------------------------------------------------------------------------------------
# Command-line arguments
# --------------------------------------------------------------------------------------------
def _common_arguments(parser: argparse.ArgumentParser, epochs: int, model: str) -> None:
    parser.add_argument("--epochs", type=int, default=epochs, help=f"epochs (default {epochs})")
    parser.add_argument("--backend", choices=("numpy", "numba", "cupy"), default=None,
                        help="kernel backend (default: the fastest available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, split and batches")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (Adam)")
    parser.add_argument("--batch-size", type=int, default=DEMO_BATCH_SIZE)
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"output folder (default ./{DEFAULT_OUT})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--per-class", action="store_true", help="print per-class metrics too")
    parser.add_argument("--width", type=int, default=None,
                        help="CNN / ResNet base width (default: the model's)")
    parser.add_argument("--model", choices=MODEL_CHOICES, default=model,
                        help=f"model to train (default {model})")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser, DEMO_EPOCHS, DEMO_MODEL)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser, 20, "mlp")
    parser.add_argument("--data", default="digits",
                        help="digits | spirals | mnist:PATH (folder with the IDX files)")
    parser.add_argument("--patience", type=int, default=None,
                        help="stop when the validation loss has not improved for this many epochs")


def run_demo(args: argparse.Namespace) -> int:
    train_and_report(dataset="digits", model_name=args.model, epochs=args.epochs,
                     lr=args.lr, batch_size=args.batch_size, seed=args.seed, out=args.out,
                     progress=not args.no_progress, backend=args.backend,
                     per_class=args.per_class, width=args.width, title="refnas demo")
    return 0


def run_train(args: argparse.Namespace) -> int:
    train_and_report(dataset=args.data, model_name=args.model, epochs=args.epochs, lr=args.lr,
                     batch_size=args.batch_size, seed=args.seed, out=args.out,
                     progress=not args.no_progress, backend=args.backend,
                     per_class=args.per_class, width=args.width, patience=args.patience,
                     title="refnas train")
    return 0


# --------------------------------------------------------------------------------------------
# Data and models
# --------------------------------------------------------------------------------------------
def load_dataset(spec: str, seed: int) -> tuple[tuple[np.ndarray, ...], str]:
    """``(X_train, X_val, X_test, y_train, y_val, y_test), name`` for a ``--data`` spec."""
    from refnas import data

    if spec == "digits":
        X, y = data.load_digits()
    elif spec == "spirals":
        X, y = data.make_spirals(n_samples=900, n_classes=3, noise=0.2, seed=seed)
    elif spec.startswith("mnist:"):
        folder = spec.split(":", 1)[1]
        X, y = data.load_mnist(folder, "train")
        X_test, y_test = data.load_mnist(folder, "test")
        X_train, X_val, y_train, y_val = data.train_test_split(X, y, test_size=1 / 12,
                                                               stratify=y, seed=seed)
        return (X_train, X_val, X_test, y_train, y_val, y_test), "mnist"
    else:
        raise ValueError(f"unknown data set {spec!r}; expected digits, spirals or mnist:PATH")
    return data.train_val_test_split(X, y, val_size=0.15, test_size=0.2, stratify=y,
                                     seed=seed), spec


def make_model(name: str, input_shape: tuple[int, ...], num_classes: int, seed: int,
               width: int | None = None) -> Any:
    """The ``--model`` for inputs of ``input_shape`` (one example, no batch axis)."""
    from refnas import nn

    if name == "mlp":
        return nn.MLP([math.prod(input_shape), 256, 128, num_classes], batch_norm=True, seed=seed)
    if len(input_shape) != 3:
        raise ValueError(f"model {name!r} needs image inputs (C, H, W), got examples of shape "
                         f"{input_shape}; use --model mlp")
    if name == "cnn":
        return nn.SmallCNN(in_channels=input_shape[0], num_classes=num_classes,
                           width=width or 16, input_size=input_shape[1:], seed=seed)
    if name == "resnet18":
        return nn.resnet18(num_classes=num_classes, in_channels=input_shape[0],
                           width=width or 64, seed=seed)
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_CHOICES)}")


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------
def plot_history(history: Any, path: str, title: str = "") -> str:
    """Training / validation loss and accuracy per epoch, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from refnas.io import atomic_write

    epochs = history["epoch"]
    figure = Figure(figsize=(9, 3.5), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        if key in history.keys():
            loss_axes.plot(epochs, history[key], marker="o", label=label)
    for key, label in (("train_accuracy", "train"), ("val_accuracy", "validation")):
        if key in history.keys():
            accuracy_axes.plot(epochs, history[key], marker="o", label=label)
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    if title:
        figure.suptitle(title)
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    return path


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def _test_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    from refnas import metrics

    precision, recall, f1, _ = metrics.precision_recall_f1(y_true, y_pred, average="macro",
                                                           zero_division=0)
    return {"test_accuracy": metrics.accuracy(y_true, y_pred),
            "test_precision_macro": precision, "test_recall_macro": recall,
            "test_f1_macro": f1}


def _per_class_table(y_true: np.ndarray, y_pred: np.ndarray) -> str:
    from refnas import metrics

    table = metrics.metrics_table(y_true, y_pred, zero_division=0)
    lines = ["  class  precision  recall  f1      support"]
    for label, row in table.items():
        if isinstance(row, dict) and not label.endswith("avg"):
            lines.append(f"  {label:>5}  {row['precision']:.4f}     {row['recall']:.4f}  "
                         f"{row['f1-score']:.4f}  {row['support']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def train_and_report(dataset: str = "digits", model_name: str = DEMO_MODEL,
                     epochs: int = DEMO_EPOCHS, lr: float | None = None,
                     batch_size: int = DEMO_BATCH_SIZE, seed: int = 0, out: str = DEFAULT_OUT,
                     progress: bool = True, backend: str | None = None, per_class: bool = False,
                     width: int | None = None, patience: int | None = None,
                     title: str = "refnas") -> dict[str, Any]:
    """Split, train (Adam + cosine schedule, best-validation-loss weights kept), test, and write
    ``summary.json``, ``training_curve.png`` and ``checkpoint.npz`` into ``out``. Returns the
    summary."""
    from refnas import nn, optim, ops
    from refnas.backend import current_backend, use_backend
    from refnas.io import atomic_write, save_checkpoint
    from refnas.train import EarlyStopping, fit, predict

    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    context = use_backend(backend) if backend else contextlib.nullcontext()
    with context:
        backend_name = current_backend()
        (X_train, X_val, X_test, y_train, y_val, y_test), data_name = load_dataset(dataset, seed)
        num_classes = int(max(y_train.max(), y_val.max(), y_test.max())) + 1
        model = make_model(model_name, X_train.shape[1:], num_classes, seed, width)
        flops = nn.count_flops(model, X_train.shape[1:])
        lr = DEMO_LR if lr is None else lr
        optimizer = optim.Adam(model.parameters(), lr=lr)
        scheduler = optim.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
        keep_best = EarlyStopping("val_loss", patience=patience if patience is not None
                                  else epochs + 1, restore_best=True)
        print(f"{title}: {data_name} ({len(y_train)} train / {len(y_val)} validation / "
              f"{len(y_test)} test), {type(model).__name__} ({model.num_parameters():,} "
              f"parameters, {flops / 1e6:.2f} MFLOPs per example), backend {backend_name}",
              flush=True)
        history = fit(model, optimizer, ops.cross_entropy, (X_train, y_train),
                      val=(X_val, y_val), epochs=epochs, callbacks=[keep_best],
                      scheduler=scheduler, progress=progress, batch_size=batch_size, seed=seed)
        y_pred = predict(model, X_test)
    scores = _test_metrics(y_test, y_pred)
    best_epoch = keep_best.tracker.best_epoch
    summary = {
        "dataset": data_name, "model": model_name, "model_class": type(model).__name__,
        **scores, "seconds": None, "backend": backend_name, "epochs": epochs,
        "epochs_run": len(history), "best_epoch": best_epoch, "params": model.num_parameters(),
        "flops_per_example": flops, "seed": seed, "lr": lr, "batch_size": batch_size,
        "n_train": len(y_train), "n_val": len(y_val), "n_test": len(y_test),
        "stop_reason": history.stop_reason, "config": model.config,
        "history": history.records,
    }
    curve = plot_history(history, os.path.join(out, "training_curve.png"),
                         f"{type(model).__name__} on {data_name}")
    checkpoint = save_checkpoint(os.path.join(out, "checkpoint.npz"), model, optimizer, scheduler,
                                 metadata={k: v for k, v in summary.items() if k != "history"})
    summary["seconds"] = time.perf_counter() - start
    summary["files"] = {"plot": curve, "checkpoint": checkpoint}
    summary_path = os.path.join(out, "summary.json")
    with atomic_write(summary_path, "w") as handle:
        json.dump(summary, handle, indent=2)
    rows = [("accuracy", f"{scores['test_accuracy']:.4f}"),
            ("precision (macro)", f"{scores['test_precision_macro']:.4f}"),
            ("recall (macro)", f"{scores['test_recall_macro']:.4f}"),
            ("f1 (macro)", f"{scores['test_f1_macro']:.4f}")]
    print(f"held-out test split ({len(y_test)} examples; weights of epoch {best_epoch}, the "
          f"lowest validation loss):\n{_table(rows)}")
    if per_class:
        print(_per_class_table(y_test, y_pred))
    print(f"wrote {summary_path}, {curve}, {checkpoint} in {summary['seconds']:.1f} s")
    return summary
