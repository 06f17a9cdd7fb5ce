"""Data sets, batching and splits: everything between files on disk and a training loop.

* Bundled and synthetic sets: :func:`load_digits` (scikit-learn's 1,797 8×8 digits),
  :func:`make_spirals`, :func:`make_blobs`, :func:`make_xor`.
* MNIST and Fashion-MNIST from their IDX files: :func:`read_idx`, :func:`load_mnist`
  (SHA-256 verification, opt-in download with an atomic write).
* :class:`DataLoader`: mini-batches, reshuffled reproducibly each epoch.
* Splits: :func:`train_test_split`, :func:`train_val_test_split`, :class:`KFold`,
  :class:`StratifiedKFold` (with ``shuffle=False`` the folds equal scikit-learn's).

Plain NumPy throughout; every random choice comes from an explicit seed or ``Generator``.
Features come back as float32 and labels as int64.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "to_numpy", "load_digits", "make_spirals", "make_blobs", "make_xor",
    "IdxFormatError", "ChecksumError", "DownloadError", "read_idx", "load_mnist",
    "PUBLISHED_CHECKSUMS", "MIRRORS", "DataLoader",
    "train_test_split", "train_val_test_split", "KFold", "StratifiedKFold",
]

SeedLike = int | np.random.Generator | None


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array from a NumPy/CuPy array, a refnas Tensor, or anything array-like.

    CuPy data is copied to the host. (``x.data`` is not used blindly: on an ndarray it is a
    memoryview, on a CuPy array a device pointer.)
    """
    from refnas.tensor import Tensor

    if isinstance(x, Tensor):
        return x.numpy()
    if type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)


def _rng(seed: SeedLike) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_nonnegative(value: float, name: str) -> float:
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _split_evenly(total: int, parts: int) -> np.ndarray:
    """``parts`` sizes summing to ``total``; the first ``total % parts`` get one more."""
    return np.full(parts, total // parts) + (np.arange(parts) < total % parts)


# --------------------------------------------------------------------------------------------
# Bundled and synthetic data sets
# --------------------------------------------------------------------------------------------
def load_digits(dtype: Any = np.float32, flatten: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits (UCI optical digits): 1,797 images, 10 classes.

    The pixels count ink in 4×4 blocks (0..16); they are scaled to [0, 1] by :math:`x/16`.

    Returns:
        ``X`` of shape (1797, 1, 8, 8) — or (1797, 64) with ``flatten=True`` — in ``dtype``,
        and int64 labels 0..9.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = (bunch.images / 16.0).astype(dtype)
    X = images.reshape(len(images), -1) if flatten else images[:, None, :, :]
    return np.ascontiguousarray(X), bunch.target.astype(np.int64)


def load_digits_flat(dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """:func:`load_digits` with each image flattened to 64 features, shape (1797, 64)."""
    return load_digits(dtype, flatten=True)


def _shuffled(X: np.ndarray, y: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(len(y))
    return X[order].astype(np.float32), y[order].astype(np.int64)


def make_spirals(n_samples: int = 300, n_classes: int = 3, noise: float = 0.2,
                 seed: SeedLike = None) -> tuple[np.ndarray, np.ndarray]:
    r"""Interleaved 2-D spirals, one arm per class (the CS231n toy problem), rows shuffled.

    Point :math:`i` of arm :math:`k` (of :math:`K`), with radius :math:`r_i` evenly spaced in
    [0, 1] and :math:`\varepsilon_i \sim \mathcal N(0, 1)`:

    .. math:: \varphi_i = \tfrac{2\pi k}{K} + 4 r_i + \text{noise}\cdot\varepsilon_i, \qquad
              x_i = r_i\,(\sin\varphi_i,\ \cos\varphi_i)

    Classes get ``n_samples // n_classes`` points each, the first ``n_samples % n_classes``
    one more. Not linearly separable: a linear model stays near chance, a small MLP does not.
    """
    n_samples = _check_count(n_samples, "make_spirals: n_samples", 1)
    n_classes = _check_count(n_classes, "make_spirals: n_classes", 2)
    noise = _check_nonnegative(noise, "make_spirals: noise")
    rng = _rng(seed)
    points, labels = [], []
    for k, m in enumerate(_split_evenly(n_samples, n_classes)):
        radius = np.linspace(0.0, 1.0, m)
        angle = 2 * np.pi * k / n_classes + 4.0 * radius + noise * rng.standard_normal(m)
        points.append(radius[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=1))
        labels.append(np.full(m, k))
    return _shuffled(np.concatenate(points), np.concatenate(labels), rng)


def make_blobs(n_samples: int = 100, n_features: int = 2, centers: int | np.ndarray = 3,
               cluster_std: float | Sequence[float] = 1.0,
               center_box: tuple[float, float] = (-10.0, 10.0),
               seed: SeedLike = None) -> tuple[np.ndarray, np.ndarray]:
    r"""Isotropic Gaussian clusters: :math:`x \sim \mathcal N(\mu_k, \sigma_k^2 I)` for class k.

    Args:
        centers: the number of clusters (their means drawn uniformly from ``center_box``) or
            their means as an array of shape (k, n_features).
        cluster_std: one standard deviation for all clusters, or one per cluster.

    Samples are spread evenly over the clusters; rows are shuffled.
    """
    n_samples = _check_count(n_samples, "make_blobs: n_samples", 1)
    n_features = _check_count(n_features, "make_blobs: n_features", 1)
    rng = _rng(seed)
    if np.ndim(centers) == 0:
        n_centers = _check_count(centers, "make_blobs: centers", 1)
        means = rng.uniform(center_box[0], center_box[1], size=(n_centers, n_features))
    else:
        means = np.asarray(centers, dtype=np.float64)
        if means.ndim != 2 or means.shape[1] != n_features:
            raise ValueError(f"make_blobs: centers must have shape (k, n_features={n_features}),"
                             f" got {means.shape}")
    stds = np.broadcast_to(np.asarray(cluster_std, dtype=np.float64), (len(means),))
    if np.any(stds < 0):
        raise ValueError(f"make_blobs: cluster_std must be >= 0, got {cluster_std!r}")
    points, labels = [], []
    for k, m in enumerate(_split_evenly(n_samples, len(means))):
        points.append(means[k] + stds[k] * rng.standard_normal((m, n_features)))
        labels.append(np.full(m, k))
    return _shuffled(np.concatenate(points), np.concatenate(labels), rng)


def make_xor(n_samples: int = 200, noise: float = 0.1,
             seed: SeedLike = None) -> tuple[np.ndarray, np.ndarray]:
    r"""The XOR problem: :math:`u \sim U[-1, 1]^2`, :math:`y = [u_1 > 0] \oplus [u_2 > 0]`,
    and the features :math:`x = u + \text{noise}\cdot\varepsilon`, :math:`\varepsilon \sim
    \mathcal N(0, I)` (labels are set by the clean point, so noise blurs the boundary)."""
    n_samples = _check_count(n_samples, "make_xor: n_samples", 1)
    noise = _check_nonnegative(noise, "make_xor: noise")
    rng = _rng(seed)
    clean = rng.uniform(-1.0, 1.0, size=(n_samples, 2))
    y = (clean[:, 0] > 0) != (clean[:, 1] > 0)
    X = clean + noise * rng.standard_normal(clean.shape)
    return X.astype(np.float32), y.astype(np.int64)


# --------------------------------------------------------------------------------------------
# IDX files: MNIST and Fashion-MNIST
# --------------------------------------------------------------------------------------------
class IdxFormatError(ValueError):
    """An IDX file is truncated, corrupt, or not an IDX file at all."""


class ChecksumError(ValueError):
    """A data file's digest or size differs from the expected one."""


class DownloadError(OSError):
    """No mirror delivered a file (network unavailable, or every copy failed verification)."""


#: IDX type codes (third header byte) and their big-endian element types.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic number."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise IdxFormatError(f"read_idx: {path}: corrupt or truncated gzip stream ({error})") \
            from error


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a native-endian NumPy array.

    The IDX header (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, a type
    code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the number
    of dimensions, then each dimension as a big-endian uint32; then the data, big-endian,
    row-major. The payload must be exactly the size the header announces.

    Raises:
        IdxFormatError: wrong magic bytes, unknown type code, truncated header or payload,
            trailing bytes, or a corrupt gzip stream.
    """
    path = Path(path)
    content = _read_bytes(path)
    if len(content) < 4:
        raise IdxFormatError(f"read_idx: {path}: {len(content)} bytes is shorter than the "
                             f"4-byte IDX magic number")
    zero, code, ndim = content[:2], content[2], content[3]
    if zero != b"\x00\x00" or code not in _IDX_DTYPES:
        raise IdxFormatError(f"read_idx: {path}: bad magic number 0x{content[:4].hex()}; an IDX "
                             f"file starts 0x0000, a type code in "
                             f"{[f'0x{c:02x}' for c in _IDX_DTYPES]}, and ndim")
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise IdxFormatError(f"read_idx: {path}: truncated header ({len(content)} bytes, "
                             f"{header_size} needed for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header_size + math.prod(shape) * dtype.itemsize
    if len(content) != expected:
        problem = "truncated" if len(content) < expected else "has trailing bytes"
        raise IdxFormatError(f"read_idx: {path}: {problem}: header says shape {shape} of "
                             f"{dtype.name} ({expected} bytes in all), content has "
                             f"{len(content)}")
    data = np.frombuffer(content, dtype=dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


@dataclass(frozen=True)
class _Published:
    size: int
    sha256: str


#: SHA-256 digests and byte sizes of the official gzipped IDX files, as listed in
#: tensorflow/datasets (``tensorflow_datasets/url_checksums/mnist.txt`` and
#: ``fashion_mnist.txt``); the same digests are pinned by many independent projects.
#: (The data sets' own pages publish no SHA-256: MNIST's page lists no checksum, and
#: Fashion-MNIST's README lists MD5s.)
PUBLISHED_CHECKSUMS: dict[str, dict[str, _Published]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": _Published(
            9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        "train-labels-idx1-ubyte.gz": _Published(
            28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        "t10k-images-idx3-ubyte.gz": _Published(
            1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        "t10k-labels-idx1-ubyte.gz": _Published(
            4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": _Published(
            26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        "train-labels-idx1-ubyte.gz": _Published(
            29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        "t10k-images-idx3-ubyte.gz": _Published(
            4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        "t10k-labels-idx1-ubyte.gz": _Published(
            5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    },
}

#: Where ``download=True`` looks, in order (the files are verified, so any mirror will do).
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": ("https://storage.googleapis.com/cvdf-datasets/mnist/",
              "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

_MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, name: str, dataset: str, checksums: Mapping[str, str]) -> None:
    """Check ``path`` against ``checksums[name]``, else the published size and digest."""
    published = PUBLISHED_CHECKSUMS[dataset].get(name)
    expected = checksums.get(name, published.sha256 if published else None)
    if expected is None:
        raise ChecksumError(f"load_mnist: no checksum known for {name!r} (only the official .gz "
                            f"files have published ones); pass checksums={{{name!r}: sha256}} "
                            f"or verify=False")
    if name not in checksums and path.stat().st_size != published.size:
        raise ChecksumError(f"load_mnist: {name} ({path}): size {path.stat().st_size} bytes, "
                            f"expected {published.size}")
    actual = _sha256(path)
    if actual != expected.lower():
        raise ChecksumError(f"load_mnist: {name} ({path}): SHA-256 mismatch: expected "
                            f"{expected}, got {actual}")


def _download(name: str, target_dir: Path, mirrors: Sequence[str], timeout: float,
              check: Any) -> Path:
    """Fetch ``name`` from the first mirror that works; verify, then move into place.

    The bytes go to a temporary file in ``target_dir``; only a verified file is renamed
    (``os.replace``, atomic) to its final name, so an interrupted download leaves nothing
    that looks complete.
    """
    target_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + name
        handle, temp_name = tempfile.mkstemp(prefix=f".{name}.", dir=target_dir)
        temp = Path(temp_name)
        try:
            with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) \
                    as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
            check(temp)
            final = target_dir / name
            os.replace(temp, final)
            return final
        except (urllib.error.URLError, OSError, ChecksumError) as error:
            failures.append(f"{url}: {error}")
        finally:
            temp.unlink(missing_ok=True)
    raise DownloadError(f"load_mnist: could not download {name}:\n  " + "\n  ".join(failures))


def _default_cache(dataset: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "refnas" / dataset


def _find(name: str, folders: Sequence[Path]) -> tuple[Path, str] | None:
    """The first ``folder/name`` (or its gunzipped twin) that exists, with the name found."""
    for folder in folders:
        for candidate in (name, name.removesuffix(".gz")):
            if (folder / candidate).is_file():
                return folder / candidate, candidate
    return None


def load_mnist(folder: str | os.PathLike | None = None, kind: str = "train",
               dataset: str = "mnist", *, verify: bool = True, download: bool = False,
               cache_dir: str | os.PathLike | None = None,
               checksums: Mapping[str, str] | None = None,
               mirrors: Sequence[str] | None = None,
               timeout: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """MNIST or Fashion-MNIST (same file names and format) from the IDX files in a folder.

    Looks for ``train-images-idx3-ubyte.gz`` / ``train-labels-idx1-ubyte.gz`` (``kind="train"``)
    or the ``t10k-`` pair (``kind="test"``), gzipped or not, in ``folder`` and then
    ``cache_dir``. Missing files are downloaded into ``cache_dir`` only when ``download=True``.

    Args:
        verify: check each file's SHA-256 (and size) against :data:`PUBLISHED_CHECKSUMS` —
            or against ``checksums`` (file name → SHA-256 hex), which takes precedence.
            Unzipped files have no published digest: pass it in ``checksums`` or set
            ``verify=False``.
        cache_dir: where downloads go; default ``folder``, else ``~/.cache/refnas/<dataset>``.
        mirrors: base URLs to try, default :data:`MIRRORS` ``[dataset]``.
        timeout: seconds per network request.

    Returns:
        images of shape (N, 1, 28, 28), float32 in [0, 1] (:math:`x/255`), and int64 labels.

    Raises:
        ChecksumError: a file's digest differs (the message names file, expected and actual).
        IdxFormatError: a corrupt or truncated file. FileNotFoundError: files missing and
        ``download=False``. DownloadError: no mirror delivered a verified file.
    """
    if kind not in _MNIST_FILES:
        raise ValueError(f"load_mnist: kind must be 'train' or 'test', got {kind!r}")
    if dataset not in PUBLISHED_CHECKSUMS:
        raise ValueError(f"load_mnist: dataset must be one of {list(PUBLISHED_CHECKSUMS)}, "
                         f"got {dataset!r}")
    checksums = dict(checksums or {})
    cache = Path(cache_dir) if cache_dir is not None else (
        Path(folder) if folder is not None else _default_cache(dataset))
    folders = [Path(folder), cache] if folder is not None else [cache]

    def check(path: Path, name: str) -> None:
        if verify:
            _verify(path, name, dataset, checksums)

    arrays = []
    for name in _MNIST_FILES[kind]:
        found = _find(name, folders)
        if found is None:
            if not download:
                raise FileNotFoundError(
                    f"load_mnist: {name} not found in {[str(f) for f in folders]}; "
                    f"pass download=True to fetch it into {cache}")
            sources = MIRRORS[dataset] if mirrors is None else mirrors
            path = _download(name, cache, sources, timeout, lambda p, n=name: check(p, n))
        else:
            path, found_name = found
            check(path, found_name)
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 \
            or len(images) != len(labels):
        raise IdxFormatError(f"load_mnist: expected images (N, 28, 28) and labels (N,), got "
                             f"{images.shape} and {labels.shape}")
    X = (images[:, None, :, :] / np.float32(255.0)).astype(np.float32)
    return X, labels.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------
def _check_same_length(X: np.ndarray, y: np.ndarray, where: str) -> None:
    if np.ndim(X) == 0 or np.ndim(y) == 0 or len(X) != len(y):
        raise ValueError(f"{where}: X and y need the same leading size, got shapes "
                         f"{np.shape(X)} and {np.shape(y)}")


class DataLoader:
    r"""Iterate over ``(xb, yb)`` mini-batches of NumPy arrays (any trailing shape).

    With ``shuffle=True`` each epoch — each ``iter()`` — draws a fresh order from a Generator
    seeded by ``(seed, epoch)``, so epoch k's order is the same in every run and after resuming
    (:meth:`set_epoch`). ``seed=None`` draws one base seed from the OS at construction.

    ``len(loader)`` is the number of batches: :math:`\lceil N/b \rceil`, or
    :math:`\lfloor N/b \rfloor` with ``drop_last=True`` (the short last batch is dropped).
    """

    def __init__(self, X: Any, y: Any, batch_size: int = 32, shuffle: bool = False,
                 drop_last: bool = False, seed: int | None = None) -> None:
        X, y = to_numpy(X), to_numpy(y)
        _check_same_length(X, y, "DataLoader")
        self.batch_size = _check_count(batch_size, "DataLoader: batch_size", 1)
        self.X, self.y = X, y
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.seed = (_check_count(seed, "DataLoader: seed", 0) if seed is not None
                     else int(np.random.SeedSequence().entropy))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch``'s order (e.g. after a resume)."""
        self.epoch = _check_count(epoch, "DataLoader.set_epoch: epoch", 0)

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n = len(self.y)
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(n)
                 if self.shuffle else np.arange(n))
        self.epoch += 1
        for b in range(len(self)):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.X[batch], self.y[batch]


# --------------------------------------------------------------------------------------------
# Train / validation / test splits
# --------------------------------------------------------------------------------------------
def _test_count(size: float | int, n: int, name: str) -> int:
    """A test size given as a fraction (rounded up, as scikit-learn) or as a count."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        count = int(size)
    elif isinstance(size, float) and 0.0 < size < 1.0:
        count = math.ceil(size * n)
    else:
        raise ValueError(f"{name} must be a fraction in (0, 1) or an integer count, got {size!r}")
    if not 1 <= count <= n - 1:
        raise ValueError(f"{name}={size!r} gives {count} of {n} samples; both sides of the "
                         f"split need at least one")
    return count


def _stratified_counts(class_sizes: np.ndarray, n_test: int,
                       rng: np.random.Generator) -> np.ndarray:
    r"""Per-class test counts summing to ``n_test``, each within 1 of its ideal share.

    Largest remainder: class c ideally gets :math:`t_c = n_{test}\, n_c / n`; everyone gets
    :math:`\lfloor t_c \rfloor` and the seats left go to the largest fractional parts
    (ties broken at random).
    """
    ideal = n_test * class_sizes / class_sizes.sum()
    counts = np.floor(ideal).astype(np.int64)
    left = n_test - counts.sum()
    by_remainder = np.lexsort((rng.random(len(ideal)), -(ideal - counts)))
    counts[by_remainder[:left]] += 1
    return counts


def _split_indices(n: int, n_test: int, stratify: np.ndarray | None,
                   rng: np.random.Generator, where: str) -> tuple[np.ndarray, np.ndarray]:
    if stratify is None:
        order = rng.permutation(n)
        return order[n_test:], order[:n_test]
    classes, codes = np.unique(stratify, return_inverse=True)
    sizes = np.bincount(codes)
    if sizes.min() < 2:
        raise ValueError(f"{where}: stratify: class {classes[sizes.argmin()]!r} has only "
                         f"{sizes.min()} member; every class needs at least 2")
    if min(n_test, n - n_test) < len(classes):
        raise ValueError(f"{where}: {n_test} test / {n - n_test} train samples cannot hold one "
                         f"of each of the {len(classes)} classes")
    test = []
    for c, count in enumerate(_stratified_counts(sizes, n_test, rng)):
        test.append(rng.permutation(np.flatnonzero(codes == c))[:count])
    test = rng.permutation(np.concatenate(test))
    train = rng.permutation(np.setdiff1d(np.arange(n), test))
    return train, test


def train_test_split(X: Any, y: Any, test_size: float | int = 0.2, stratify: Any = None,
                     seed: SeedLike = None) -> tuple[np.ndarray, np.ndarray,
                                                     np.ndarray, np.ndarray]:
    """Shuffle and split into ``X_train, X_test, y_train, y_test`` (scikit-learn's order).

    A fractional ``test_size`` is rounded up. With ``stratify`` (usually ``y``) each class's
    test count is within 1 of ``test_size`` × its size, and the counts sum to the test size.
    """
    X, y = to_numpy(X), to_numpy(y)
    _check_same_length(X, y, "train_test_split")
    n_test = _test_count(test_size, len(y), "train_test_split: test_size")
    strata = None if stratify is None else to_numpy(stratify)
    if strata is not None:
        _check_same_length(X, strata, "train_test_split (stratify)")
    train, test = _split_indices(len(y), n_test, strata, _rng(seed), "train_test_split")
    return X[train], X[test], y[train], y[test]


def train_val_test_split(X: Any, y: Any, val_size: float | int = 0.1,
                         test_size: float | int = 0.2, stratify: Any = None,
                         seed: SeedLike = None) -> tuple[np.ndarray, ...]:
    """Three-way split: ``X_train, X_val, X_test, y_train, y_val, y_test``.

    ``val_size`` and ``test_size`` are fractions (rounded up) or counts of the *whole* set.
    """
    X, y = to_numpy(X), to_numpy(y)
    _check_same_length(X, y, "train_val_test_split")
    n = len(y)
    n_test = _test_count(test_size, n, "train_val_test_split: test_size")
    n_val = _test_count(val_size, n, "train_val_test_split: val_size")
    if n_test + n_val >= n:
        raise ValueError(f"train_val_test_split: val ({n_val}) + test ({n_test}) leave no "
                         f"training samples out of {n}")
    strata = None if stratify is None else to_numpy(stratify)
    if strata is not None:
        _check_same_length(X, strata, "train_val_test_split (stratify)")
    rng = _rng(seed)
    rest, test = _split_indices(n, n_test, strata, rng, "train_val_test_split")
    train, val = _split_indices(len(rest), n_val, None if strata is None else strata[rest],
                                rng, "train_val_test_split")
    train, val = rest[train], rest[val]
    return X[train], X[val], X[test], y[train], y[val], y[test]


class KFold:
    r"""K-fold cross-validation indices: the samples cut into ``n_splits`` consecutive folds.

    Fold sizes are :math:`\lfloor n/k \rfloor`, the first :math:`n \bmod k` one larger;
    each fold is the test set once. With ``shuffle=False`` the folds equal
    ``sklearn.model_selection.KFold``'s. ``shuffle=True`` permutes the samples first with a
    Generator from ``random_state`` (an int gives the same folds on every ``split`` call).
    """

    def __init__(self, n_splits: int = 5, shuffle: bool = False,
                 random_state: SeedLike = None) -> None:
        self.n_splits = _check_count(n_splits, f"{type(self).__name__}: n_splits", 2)
        if not shuffle and random_state is not None:
            raise ValueError(f"{type(self).__name__}: random_state has no effect with "
                             f"shuffle=False; leave it None or set shuffle=True")
        self.shuffle, self.random_state = bool(shuffle), random_state

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        return self.n_splits

    def _check_samples(self, n: int) -> None:
        if self.n_splits > n:
            raise ValueError(f"{type(self).__name__}: n_splits={self.n_splits} is greater than "
                             f"the number of samples, {n}")

    def _test_folds(self, n: int, y: np.ndarray | None) -> np.ndarray:
        """Fold number of every sample."""
        order = _rng(self.random_state).permutation(n) if self.shuffle else np.arange(n)
        folds = np.empty(n, dtype=np.int64)
        folds[order] = np.repeat(np.arange(self.n_splits), _split_evenly(n, self.n_splits))
        return folds

    def split(self, X: Any, y: Any = None,
              groups: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train_idx, test_idx)`` (sorted int64 indices) for each fold."""
        X = to_numpy(X)
        if y is not None:
            y = to_numpy(y)
            _check_same_length(X, y, f"{type(self).__name__}.split")
        n = len(X)
        self._check_samples(n)
        folds = self._test_folds(n, y)
        for k in range(self.n_splits):
            yield np.flatnonzero(folds != k), np.flatnonzero(folds == k)


class StratifiedKFold(KFold):
    r"""K-fold whose folds keep each class's proportion (within one sample per class).

    Deal the samples into folds like cards: sort them by class (classes in order of first
    appearance, members in order of appearance) and give position p to fold :math:`p \bmod k`.
    A class of size :math:`n_c` thus lands :math:`\lfloor n_c/k \rfloor` or
    :math:`\lceil n_c/k \rceil` times in each fold. Unshuffled, each class's members take their
    folds in increasing order — the same folds as ``sklearn.model_selection.StratifiedKFold``;
    ``shuffle=True`` permutes the fold numbers within each class.

    Like scikit-learn it warns (``UserWarning``) when a class has fewer than ``n_splits``
    members (some folds then lack it), and raises when every class does.
    """

    def split(self, X: Any, y: Any,
              groups: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if y is None:
            raise ValueError("StratifiedKFold.split: y (the class labels) is required")
        y = to_numpy(y)
        if y.ndim != 1:
            raise ValueError(f"StratifiedKFold.split: y must be 1-D, got shape {y.shape}")
        return super().split(X, y, groups)

    def _test_folds(self, n: int, y: np.ndarray | None) -> np.ndarray:
        _, first_seen, codes = np.unique(y, return_index=True, return_inverse=True)
        appearance_rank = np.argsort(np.argsort(first_seen))
        codes = appearance_rank[codes]  # class 0 is the first label seen in y, and so on
        sizes = np.bincount(codes)
        if np.all(sizes < self.n_splits):
            raise ValueError(f"StratifiedKFold: n_splits={self.n_splits} is greater than the "
                             f"number of members in every class (largest: {sizes.max()})")
        if sizes.min() < self.n_splits:
            warnings.warn(f"StratifiedKFold: the least populated class has only {sizes.min()} "
                          f"members, fewer than n_splits={self.n_splits}", UserWarning,
                          stacklevel=2)
        rng = _rng(self.random_state)
        folds = np.empty(n, dtype=np.int64)
        start = 0
        for c, size in enumerate(sizes):
            dealt = np.sort(np.arange(start, start + size) % self.n_splits)
            if self.shuffle:
                rng.shuffle(dealt)
            folds[codes == c] = dealt
            start += size
        return folds
