"""Checkpoints: round trip, rebuild from config, corrupt/truncated/foreign files, atomic saves."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import refnas as rn
from refnas import nn, ops, optim
from refnas.io import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from tests.nn.helpers import assert_same_state


def _trained(seed=0):
    model = nn.SmallCNN(width=4, seed=seed)
    optimizer = optim.Adam(model.parameters(), lr=1e-2)
    scheduler = optim.CosineAnnealingLR(optimizer, 10)
    x, y = rn.randn(6, 1, 8, 8, seed=1), np.arange(6) % 3
    for _ in range(2):
        optimizer.zero_grad()
        ops.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler, (x, y)


def test_round_trip_restores_identical_outputs_and_training_state(tmp_path):
    model, optimizer, scheduler, (x, y) = _trained()
    path = tmp_path / "model.npz"
    save_checkpoint(path, model, optimizer, scheduler,
                    metadata={"note": "hi", "acc": np.float32(0.5)})
    checkpoint = load_checkpoint(path)          # rebuilt from the stored config
    model.eval(), checkpoint.model.eval()
    np.testing.assert_array_equal(model(x).data, checkpoint.model(x).data)
    assert checkpoint.metadata == {"note": "hi", "acc": 0.5}
    assert checkpoint.config == model.config

    # optimizer + scheduler state: one more step gives identical weights
    clone = nn.build_model(model.config)
    clone_optimizer = optim.Adam(clone.parameters(), lr=123.0)
    clone_scheduler = optim.CosineAnnealingLR(clone_optimizer, 10)
    load_checkpoint(path, clone, clone_optimizer, clone_scheduler)
    assert clone_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for m, o in ((model, optimizer), (clone, clone_optimizer)):
        m.train()
        o.zero_grad()
        ops.cross_entropy(m(x), y).backward()
        o.step()
    assert_same_state(clone.state_dict(), model.state_dict())


def test_file_is_one_npz_readable_without_pickle(tmp_path):
    model, optimizer, _, _ = _trained()
    path = save_checkpoint(tmp_path / "c.npz", model, optimizer)
    with np.load(path, allow_pickle=False) as archive:
        document = json.loads(archive["__refnas__"].tobytes())
        assert document["version"] == 1 and document["model"]["config"]["name"] == "small_cnn"
        assert "model/features.1.running_var" in archive.files
        assert any(name.startswith("optimizer/") for name in archive.files)


def test_another_architecture_lists_config_and_keys(tmp_path):
    model, *_ = _trained()
    path = save_checkpoint(tmp_path / "c.npz", model)
    other = nn.SmallCNN(width=8, seed=0)
    before = other.state_dict()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, other)
    message = str(info.value)
    assert "c.npz holds another architecture" in message
    assert "config width: checkpoint 4, model 8" in message
    assert "features.0.weight: given (4, 1, 3, 3), model (8, 1, 3, 3)" in message
    assert_same_state(other.state_dict(), before)
    with pytest.raises(CheckpointError, match="(?s)model: checkpoint .small_cnn., model .mlp."
                                              ".*missing keys.*unexpected keys"):
        load_checkpoint(path, nn.MLP([64, 10]))


def test_a_different_seed_is_the_same_architecture(tmp_path):
    model, *_ = _trained(seed=0)
    path = save_checkpoint(tmp_path / "c.npz", model)
    other = nn.SmallCNN(width=4, seed=5)
    load_checkpoint(path, other)
    np.testing.assert_array_equal(other.features[0].weight.data, model.features[0].weight.data)


def test_wrong_optimizer_class_is_reported(tmp_path):
    model, optimizer, _, _ = _trained()
    path = save_checkpoint(tmp_path / "c.npz", model, optimizer)
    with pytest.raises(CheckpointError, match="holds a Adam state, the optimizer given is a SGD"):
        load_checkpoint(path, model, optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_or_truncated_file_names_the_file(tmp_path, damage):
    model, *_ = _trained()
    path = tmp_path / "c.npz"
    save_checkpoint(path, model)
    data = path.read_bytes()
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "flip":
        middle = len(data) // 2
        data = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 16]) + \
            data[middle + 16:]
    elif damage == "garbage":
        data = b"not a checkpoint at all" * 10
    else:
        data = b""
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=f"{path}.*(corrupt or truncated|damaged)"):
        load_checkpoint(path)


def test_missing_file_foreign_npz_and_wrong_version(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*nothing.npz"):
        load_checkpoint(tmp_path / "nothing.npz")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a refnas checkpoint"):
        load_checkpoint(foreign)
    model, *_ = _trained()
    path = save_checkpoint(tmp_path / "c.npz", model)
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    document = json.loads(arrays["__refnas__"].tobytes())
    document["version"] = 99
    arrays["__refnas__"] = np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="format version 99; this refnas reads version 1"):
        load_checkpoint(path)


def test_unserialisable_metadata_leaves_the_old_file_byte_identical(tmp_path):
    model, *_ = _trained()
    path = tmp_path / "c.npz"
    save_checkpoint(path, model, metadata={"run": 1})
    old = path.read_bytes()
    model.features[0].weight.data[...] = 0.0
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        save_checkpoint(path, model, metadata={"bad": object()})
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["c.npz"]


def test_failure_mid_write_leaves_the_old_file_byte_identical(tmp_path, monkeypatch):
    model, *_ = _trained()
    path = tmp_path / "c.npz"
    save_checkpoint(path, model)
    old = path.read_bytes()

    def half_write(handle, **arrays):
        handle.write(b"PK\x03\x04 partial archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, metadata={"attempt": 2})
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["c.npz"]   # the temporary file is gone too


def test_missing_folder_is_a_clear_error(tmp_path):
    model, *_ = _trained()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_checkpoint(tmp_path / "no" / "such" / "c.npz", model)


def test_atomic_write_text(tmp_path):
    path = tmp_path / "a.json"
    with atomic_write(path, "w") as handle:
        handle.write("{}")
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as handle:
            handle.write("[half")
            raise RuntimeError("boom")
    assert path.read_text() == "{}"
