"""read_idx and load_mnist on IDX files written here (the real files are never needed)."""
from __future__ import annotations

import gzip
import hashlib
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refnas.data import (PUBLISHED_CHECKSUMS, ChecksumError, DownloadError, IdxFormatError,
                         load_mnist, read_idx)

TYPE_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
              np.float32: 0x0D, np.float64: 0x0E}
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding, written from the format description with struct."""
    header = struct.pack(">BBBB", 0, 0, TYPE_CODES[array.dtype.type], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, content: bytes, gz: bool = True) -> Path:
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mnist_folder(folder: Path, n: int = 6, seed: int = 0) -> tuple[dict, dict]:
    """Four small MNIST-format files; returns the arrays per kind and their checksums."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays, checksums = {}, {}
    for kind, (images_name, labels_name) in FILES.items():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        arrays[kind] = (images, labels)
        for name, array in ((images_name, images), (labels_name, labels)):
            checksums[name] = sha256(write(folder / name, idx_bytes(array)))
    return arrays, checksums


@given(dtype=st.sampled_from(list(TYPE_CODES)),
       shape=st.lists(st.integers(0, 4), min_size=1, max_size=4).map(tuple),
       gz=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_read_idx_round_trips(tmp_path_factory, dtype, shape, gz, seed):
    rng = np.random.default_rng(seed)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    path = write(tmp_path_factory.mktemp("idx") / "a.idx", idx_bytes(array), gz)
    loaded = read_idx(path)
    assert loaded.dtype == np.dtype(dtype) and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, array)


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"\x00", "trailing bytes"),
    (lambda b: b[:6], "truncated header"),
    (lambda b: b"\x01" + b[1:], "bad magic number 0x01000802"),
    (lambda b: b[:2] + b"\x07" + b[3:], "bad magic number"),
    (lambda b: b[:2], "shorter than the 4-byte"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_rejects_corrupt_files(tmp_path, corrupt, message, gz):
    good = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
    path = write(tmp_path / "bad.idx", corrupt(good), gz)
    with pytest.raises(IdxFormatError, match=re.escape(message)):
        read_idx(path)


def test_read_idx_rejects_truncated_gzip(tmp_path):
    compressed = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    path = tmp_path / "cut.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(IdxFormatError, match="gzip"):
        read_idx(path)


@pytest.mark.parametrize("kind", ["train", "test"])
def test_load_mnist_reads_verified_files(tmp_path, kind):
    arrays, checksums = mnist_folder(tmp_path)
    X, y = load_mnist(tmp_path, kind, checksums=checksums)
    images, labels = arrays[kind]
    assert X.shape == (6, 1, 28, 28) and X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(X[:, 0] * 255, images, atol=1e-4)
    np.testing.assert_array_equal(y, labels)
    assert 0 <= X.min() and X.max() <= 1


def test_load_mnist_checksum_mismatch_names_file_and_digests(tmp_path):
    _, checksums = mnist_folder(tmp_path)
    wrong = dict(checksums, **{"train-labels-idx1-ubyte.gz": "0" * 64})
    with pytest.raises(ChecksumError) as info:
        load_mnist(tmp_path, "train", checksums=wrong)
    text = str(info.value)
    assert "train-labels-idx1-ubyte.gz" in text and "0" * 64 in text
    assert checksums["train-labels-idx1-ubyte.gz"] in text
    # Without overrides our files fail the published size/digest of the real MNIST files.
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte.gz"):
        load_mnist(tmp_path, "train", dataset="fashion-mnist")
    X, _ = load_mnist(tmp_path, "train", verify=False)
    assert len(X) == 6


def test_load_mnist_uncompressed_files_need_a_checksum(tmp_path):
    arrays, _ = mnist_folder(tmp_path / "gz")
    for name, array in zip(FILES["test"], arrays["test"]):
        write(tmp_path / name.removesuffix(".gz"), idx_bytes(array), gz=False)
    with pytest.raises(ChecksumError, match="no checksum known"):
        load_mnist(tmp_path, "test")
    sums = {name.removesuffix(".gz"): sha256(tmp_path / name.removesuffix(".gz"))
            for name in FILES["test"]}
    X, y = load_mnist(tmp_path, "test", checksums=sums)
    np.testing.assert_array_equal(y, arrays["test"][1])


def test_load_mnist_rejects_wrong_shapes_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_mnist(tmp_path / "empty", "train")
    write(tmp_path / FILES["test"][0], idx_bytes(np.zeros((2, 27, 28), np.uint8)))
    write(tmp_path / FILES["test"][1], idx_bytes(np.zeros(2, np.uint8)))
    with pytest.raises(IdxFormatError, match=r"\(2, 27, 28\)"):
        load_mnist(tmp_path, "test", verify=False)
    with pytest.raises(ValueError, match="kind"):
        load_mnist(tmp_path, "validation")
    with pytest.raises(ValueError, match="dataset"):
        load_mnist(tmp_path, dataset="kmnist")


def test_download_verifies_then_moves_into_place(tmp_path):
    arrays, checksums = mnist_folder(tmp_path / "mirror")
    mirror = (tmp_path / "mirror").as_uri() + "/"
    cache = tmp_path / "cache"
    X, y = load_mnist(None, "test", download=True, cache_dir=cache, checksums=checksums,
                      mirrors=["file:///nonexistent-mirror/", mirror])
    np.testing.assert_array_equal(y, arrays["test"][1])
    assert sorted(p.name for p in cache.iterdir()) == sorted(FILES["test"])  # no temp files
    # A second call finds the cached files without a mirror.
    load_mnist(None, "test", cache_dir=cache, checksums=checksums, mirrors=[])


def test_download_with_bad_digest_leaves_nothing(tmp_path):
    _, checksums = mnist_folder(tmp_path / "mirror")
    wrong = dict(checksums, **{"train-images-idx3-ubyte.gz": "f" * 64})
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        load_mnist(None, "train", download=True, cache_dir=cache, checksums=wrong,
                   mirrors=[(tmp_path / "mirror").as_uri()])
    assert list(cache.iterdir()) == []


def test_published_table_is_complete():
    for dataset, table in PUBLISHED_CHECKSUMS.items():
        assert set(table) == set(FILES["train"] + FILES["test"]), dataset
        for entry in table.values():
            assert re.fullmatch("[0-9a-f]{64}", entry.sha256) and entry.size > 0
