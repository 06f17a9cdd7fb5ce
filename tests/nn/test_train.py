"""The training loop: loss falls, history, callbacks, early stopping, divergence, evaluation."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

import refnas as rn
from refnas import nn, ops, optim
from refnas.data import DataLoader, load_digits, make_blobs, train_test_split
from refnas.io import load_checkpoint
from refnas.train import (BestCheckpoint, Callback, EarlyStopping, TrainingDiverged, evaluate, fit,
                          predict, predict_proba)
from tests.nn.helpers import assert_same_state


@pytest.fixture
def blobs():
    X, y = make_blobs(n_samples=200, n_features=4, centers=3, cluster_std=1.5, seed=0)
    return train_test_split(X, y, test_size=0.25, stratify=y, seed=0)


def _model(seed=0):
    return nn.MLP([4, 16, 3], seed=seed)


def test_loss_falls_and_history_is_recorded(blobs):
    X_train, X_val, y_train, y_val = blobs
    model = _model()
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = optim.StepLR(optimizer, 2, gamma=0.5)
    history = fit(model, optimizer, ops.cross_entropy, (X_train, y_train), val=(X_val, y_val),
                  epochs=5, scheduler=scheduler, metrics=("accuracy", "f1_macro"),
                  progress=False, batch_size=16)
    assert len(history) == 5 and history.stop_reason is None
    assert history["train_loss"][-1] < 0.5 * history["train_loss"][0]
    assert history["val_accuracy"][-1] > 0.8
    assert history["lr"] == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert set(history.keys()) >= {"epoch", "train_loss", "train_accuracy", "val_loss",
                                   "val_accuracy", "val_f1_macro", "lr", "time"}
    assert history.best("val_loss")[0] in history["epoch"]
    with pytest.raises(KeyError, match="recorded keys"):
        history["val_top5"]


def test_validation_metrics_agree_with_evaluate_and_sklearn(blobs):
    X_train, X_val, y_train, y_val = blobs
    model = _model()
    history = fit(model, optim.Adam(model.parameters(), lr=0.01), None, (X_train, y_train),
                  val=(X_val, y_val), epochs=2, metrics=("f1_macro",), progress=False)
    scores = evaluate(model, (X_val, y_val), metrics=("f1_macro", "accuracy"))
    assert scores["f1_macro"] == pytest.approx(history["val_f1_macro"][-1])
    y_pred = predict(model, X_val)
    assert scores["f1_macro"] == pytest.approx(f1_score(y_val, y_pred, average="macro"))
    assert scores["accuracy"] == pytest.approx(np.mean(y_pred == y_val))
    logits = model.eval()(rn.tensor(X_val)).data
    expected_loss = ops.cross_entropy(rn.tensor(logits), y_val).item()
    assert scores["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_predict_proba_is_a_distribution_and_keeps_the_mode(blobs):
    X_train, _, y_train, _ = blobs
    model = nn.MLP([4, 8, 3], dropout=0.5, seed=0)
    model.train()
    proba = predict_proba(model, X_train)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(proba.argmax(axis=1), predict(model, X_train))
    np.testing.assert_array_equal(proba, predict_proba(model, X_train))  # dropout off in eval
    assert model.training


def test_dataloaders_are_accepted_and_training_is_deterministic(blobs):
    X_train, _, y_train, _ = blobs
    runs = []
    for _ in range(2):
        model = _model()
        loader = DataLoader(X_train, y_train, batch_size=8, shuffle=True, seed=3)
        fit(model, optim.Adam(model.parameters(), lr=0.01), None, loader, epochs=2,
            progress=False)
        runs.append(model.state_dict())
    assert_same_state(runs[0], runs[1])


def test_callbacks_see_every_event(blobs):
    X_train, X_val, y_train, y_val = blobs
    events = []

    class Recorder(Callback):
        def on_train_begin(self):
            events.append("begin")

        def on_epoch_begin(self, epoch):
            events.append(f"epoch {epoch}")

        def on_batch_end(self, batch, logs):
            events.append("batch")

        def on_epoch_end(self, epoch, logs):
            events.append(f"end {logs['epoch']} {'val_loss' in logs}")

        def on_train_end(self):
            events.append(f"train end {len(self.run.history)}")

    model = _model()
    fit(model, optim.SGD(model.parameters(), lr=0.1), None, (X_train, y_train),
        val=(X_val, y_val), epochs=2, callbacks=[Recorder()], batch_size=75, progress=False)
    assert events == ["begin", "epoch 0", "batch", "batch", "end 1 True",
                      "epoch 1", "batch", "batch", "end 2 True", "train end 2"]


def test_early_stopping_stops_and_restores_the_best_weights(blobs):
    X_train, X_val, y_train, y_val = blobs
    model = _model()
    # lr grows 10x every epoch: the first epochs improve, later ones blow the loss up
    optimizer = optim.SGD(model.parameters(), lr=0.05)
    scheduler = optim.StepLR(optimizer, 1, gamma=10.0)
    best_states = {}

    class Snap(Callback):
        def on_epoch_end(self, epoch, logs):
            best_states[logs["epoch"]] = self.run.model.state_dict()

    stopper = EarlyStopping(patience=2, restore_best=True)
    try:
        history = fit(model, optimizer, None, (X_train, y_train), val=(X_val, y_val),
                      epochs=30, callbacks=[Snap(), stopper], scheduler=scheduler,
                      progress=False)
    except TrainingDiverged as error:  # acceptable too, but not what this test wants
        pytest.fail(f"diverged before early stopping could act: {error}")
    assert len(history) < 30
    assert history.stop_reason.startswith("early stopping at epoch")
    best_epoch, _ = history.best("val_loss")
    assert stopper.tracker.best_epoch == best_epoch
    assert_same_state(model.state_dict(), best_states[best_epoch])


def test_early_stopping_with_an_unknown_monitor_lists_the_keys(blobs):
    X_train, _, y_train, _ = blobs
    model = _model()
    with pytest.raises(KeyError, match="monitor 'val_loss' is not recorded.*train_loss"):
        fit(model, optim.SGD(model.parameters(), lr=0.1), None, (X_train, y_train),
            epochs=2, callbacks=[EarlyStopping()], progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_weights(blobs):
    X_train, _, y_train, _ = blobs
    model = _model()
    seen = []

    def loss_fn(logits, y):
        seen.append(model.state_dict())
        loss = ops.cross_entropy(logits, y)
        return loss * float("nan") if len(seen) == 4 else loss

    with pytest.raises(TrainingDiverged, match="training loss became nan at epoch 1, batch 4") \
            as info:
        fit(model, optim.Adam(model.parameters(), lr=0.01), loss_fn, (X_train, y_train),
            epochs=3, batch_size=16, progress=False)
    assert info.value.history.stop_reason.startswith("diverged")
    # the 3rd batch's loss was the last finite one: its weights come back
    assert_same_state(model.state_dict(), seen[2])


def test_exploding_learning_rate_raises_with_finite_weights(blobs):
    X_train, X_val, y_train, y_val = blobs
    model = nn.MLP([4, 16, 3], seed=0)
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged, match="restored"):
        fit(model, optim.SGD(model.parameters(), lr=1e30), None, (X_train * 1e10, y_train),
            val=(X_val, y_val), epochs=5, progress=False)
    assert all(np.isfinite(p.data).all() for p in model.parameters())


def test_best_checkpoint_writes_the_best_epoch(tmp_path, blobs):
    X_train, X_val, y_train, y_val = blobs
    model = _model()
    path = tmp_path / "best.npz"
    history = fit(model, optim.Adam(model.parameters(), lr=0.01), None, (X_train, y_train),
                  val=(X_val, y_val), epochs=4, callbacks=[BestCheckpoint(str(path))],
                  progress=False)
    checkpoint = load_checkpoint(path)
    assert checkpoint.metadata["epoch"] == history.best("val_loss")[0]
    assert checkpoint.metadata["value"] == pytest.approx(min(history["val_loss"]))


def test_progress_bar_shows_loss_and_metrics(blobs, capsys):
    X_train, X_val, y_train, y_val = blobs
    model = _model()
    fit(model, optim.SGD(model.parameters(), lr=0.1), None, (X_train, y_train),
        val=(X_val, y_val), epochs=2, progress=True)
    err = capsys.readouterr().err
    assert "loss=" in err and "val_accuracy=" in err
    fit(model, optim.SGD(model.parameters(), lr=0.1), None, (X_train, y_train), epochs=1,
        progress=False)
    assert capsys.readouterr().err == ""


def test_fit_argument_errors(blobs):
    X_train, _, y_train, _ = blobs
    model = _model()
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, optimizer, None, (X_train, y_train), epochs=-1)
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        fit(model, optimizer, None, (X_train, y_train), metrics=("auc",))
    with pytest.raises(ValueError, match=r"expected \(X, y\)"):
        fit(model, optimizer, None, (X_train,), epochs=1)


def test_digits_mlp_reaches_a_modest_accuracy_quickly():
    X, y = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y, seed=0)
    model = nn.MLP([64, 128, 10], batch_norm=True, seed=0)
    fit(model, optim.Adam(model.parameters(), lr=3e-3), None, (X_train, y_train), epochs=4,
        batch_size=32, progress=False)
    accuracy = evaluate(model, (X_test, y_test))["accuracy"]
    assert accuracy > 0.93, accuracy
    assert math.isfinite(evaluate(model, (X_test, y_test))["loss"])


def test_scheduler_can_step_per_batch(blobs):
    X_train, _, y_train, _ = blobs
    model = _model()
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    seen = []

    class LearningRates(Callback):
        def on_batch_end(self, batch, logs):
            seen.append(self.run.optimizer.param_groups[0]["lr"])

    warmup = optim.LinearWarmup(optimizer, 4, start_factor=0.2)
    history = fit(model, optimizer, None, (X_train, y_train), epochs=1, batch_size=50,
                  scheduler=warmup, scheduler_interval="batch", callbacks=[LearningRates()],
                  progress=False)
    # 150 samples / 50 = 3 batches; the lr read after each batch is the next batch's
    np.testing.assert_allclose(seen, [0.1 * (0.2 + 0.8 * t / 4) for t in (1, 2, 3)])
    assert history["lr"] == [pytest.approx(0.02)]
    json.dumps(history.to_dict())
