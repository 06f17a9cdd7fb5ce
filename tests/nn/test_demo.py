"""``refnas demo`` and ``refnas train`` end to end (few epochs) through the CLI entry point."""
from __future__ import annotations

import json

import numpy as np
import pytest

from refnas.cli import main
from refnas.demo import load_dataset
from refnas.io import load_checkpoint
from refnas.train import predict

SUMMARY_KEYS = {"dataset", "model", "test_accuracy", "test_f1_macro", "test_precision_macro",
                "test_recall_macro", "seconds", "backend", "epochs", "params", "seed"}


def _run(argv, capsys):
    assert main(argv) == 0
    return capsys.readouterr()


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


def _without_timings(summary):
    records = [{k: v for k, v in r.items() if k != "time"} for r in summary["history"]]
    return {**{k: v for k, v in summary.items() if k not in ("seconds", "files", "history")},
            "history": records}


def test_demo_writes_summary_plot_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "demo"
    captured = _run(["demo", "--out", str(out), "--epochs", "1", "--no-progress", "--per-class"],
                    capsys)
    summary = _summary(out)
    assert SUMMARY_KEYS <= set(summary)
    assert summary["dataset"] == "digits" and summary["epochs"] == 1
    assert 0.5 < summary["test_accuracy"] <= 1.0
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy" in captured.out and "f1 (macro)" in captured.out
    assert "support" in captured.out                 # the per-class table
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left

    # the checkpoint rebuilds the model and reproduces the test accuracy
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    (_, _, X_test, _, _, y_test), _ = load_dataset("digits", summary["seed"])
    accuracy = float(np.mean(predict(checkpoint.model, X_test) == y_test))
    assert accuracy == pytest.approx(summary["test_accuracy"])
    assert checkpoint.metadata["model"] == summary["model"]


def test_demo_is_deterministic_for_a_seed(tmp_path, capsys):
    for name in ("a", "b"):
        _run(["demo", "--out", str(tmp_path / name), "--epochs", "1", "--no-progress",
              "--seed", "3"], capsys)
    assert _without_timings(_summary(tmp_path / "a")) == _without_timings(_summary(tmp_path / "b"))


def test_train_mlp_on_spirals_with_options(tmp_path, capsys):
    out = tmp_path / "spirals"
    captured = _run(["train", "--model", "mlp", "--data", "spirals", "--epochs", "4",
                     "--lr", "0.01", "--batch-size", "64", "--seed", "2", "--backend", "numpy",
                     "--out", str(out), "--no-progress"], capsys)
    summary = _summary(out)
    assert summary["dataset"] == "spirals" and summary["backend"] == "numpy"
    assert summary["lr"] == 0.01 and summary["batch_size"] == 64 and summary["seed"] == 2
    assert summary["epochs_run"] == 4 and summary["test_accuracy"] > 0.5
    assert "refnas train: spirals" in captured.out


def test_train_reports_bad_choices(tmp_path):
    with pytest.raises(ValueError, match="needs image inputs"):
        main(["train", "--model", "cnn", "--data", "spirals", "--epochs", "1",
              "--out", str(tmp_path), "--no-progress"])
    with pytest.raises(ValueError, match="unknown data set 'cifar'"):
        main(["train", "--data", "cifar", "--out", str(tmp_path), "--no-progress"])
    with pytest.raises(SystemExit):
        main(["train", "--model", "vgg"])
