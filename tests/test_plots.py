"""Tests for pgm.plots: every figure builds on small inputs; saving is atomic and valid PNG."""

import csv

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from pgm import plots
from pgm.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHAPES = [(28, 28), (8, 8)]


def _images(n, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, shape[0] * shape[1], generator=g)


@pytest.fixture
def points():
    return torch.randn(50, 2, generator=torch.Generator().manual_seed(1))


def test_save_figure_writes_png_atomically(tmp_path):
    fig = plots.image_grid(_images(5, (8, 8)), (8, 8), title="t")
    out = plots.save_figure(fig, tmp_path / "sub" / "dir" / "grid.png")
    assert out == tmp_path / "sub" / "dir" / "grid.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]


def test_save_figure_overwrites(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"old")
    plots.save_figure(plots.latent_scatter(np.zeros((3, 2))), str(path))
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


@pytest.mark.parametrize("shape", SHAPES)
def test_image_grid(shape):
    fig = plots.image_grid(_images(13, shape), shape, ncols=5, title="grid")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xticks().size == 0 and ax.get_yticks().size == 0


def test_image_grid_accepts_numpy_and_requires_grad():
    x = torch.rand(4, 64, requires_grad=True)
    assert isinstance(plots.image_grid(x * 1.0, (8, 8)), Figure)
    assert isinstance(plots.image_grid(np.random.rand(4, 64), (8, 8)), Figure)


def test_image_grid_rejects_wrong_size():
    with pytest.raises(DataError):
        plots.image_grid(torch.rand(4, 50), (8, 8))


@pytest.mark.parametrize("shape", SHAPES)
def test_reconstructions_images(shape):
    x = _images(12, shape)
    fig = plots.reconstructions(x, x.flip(0), shape, n=10, title="rec")
    assert isinstance(fig, Figure)
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert labels == {"input", "reconstruction"}


def test_reconstructions_points(points):
    fig = plots.reconstructions(points, points * 0.9, None, title="rec")
    assert isinstance(fig, Figure)


@pytest.mark.parametrize("shape", SHAPES)
def test_samples_images(shape):
    assert isinstance(plots.samples(_images(16, shape), shape, title="s"), Figure)


def test_samples_points(points):
    assert isinstance(plots.samples(points, None, x_data=points * 2), Figure)
    assert isinstance(plots.samples(points.numpy(), None), Figure)


def test_elbo_curves_from_csv(tmp_path):
    path = tmp_path / "history.csv"
    rows = [(1, -150.0, -152.0), (2, -120.0, -121.0), (3, -110.0, -115.0), (4, -105.0, "")]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "train_elbo", "valid_elbo"])
        w.writerows(rows)
    fig = plots.elbo_curves(path)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "ELBO (nats / datapoint)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("epoch 3" in s for s in labels)  # best valid epoch marked
    assert isinstance(plots.elbo_curves(str(path)), Figure)


def test_elbo_curves_from_dicts():
    hist = [{"epoch": e, "train_elbo": -100.0 + e, "valid_elbo": -101.0 + e} for e in range(5)]
    assert isinstance(plots.elbo_curves(hist), Figure)


def test_latent_scatter(points):
    y = torch.arange(50) % 10
    fig = plots.latent_scatter(points, y, title="z")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # scatter + colour bar
    assert isinstance(plots.latent_scatter(points), Figure)


def test_latent_scatter_rejects_non_2d_codes():
    with pytest.raises(DataError):
        plots.latent_scatter(torch.zeros(5, 3))


@pytest.mark.parametrize("shape", SHAPES)
def test_manifold_grid_of_codes(shape):
    n = 5
    seen = []

    def decode_mean(z):
        seen.append(z)
        return torch.sigmoid(z.sum(1, keepdim=True)).expand(-1, shape[0] * shape[1])

    fig = plots.manifold(decode_mean, shape, n=n, title="m")
    assert isinstance(fig, Figure)
    (z,) = seen
    assert isinstance(z, torch.Tensor) and z.dtype == torch.float32 and z.shape == (n * n, 2)
    for d in range(2):  # symmetric around 0 in each coordinate
        v = torch.unique(z[:, d])
        assert len(v) == n
        torch.testing.assert_close(v, -v.flip(0))
    assert torch.all(z.abs() < 1.7) and torch.all(z.abs().max(0).values > 1.6)


def test_manifold_points():
    fig = plots.manifold(lambda z: z * 2.0, None, n=4)
    assert isinstance(fig, Figure)


def test_linear_path_endpoints_exact():
    z0 = torch.tensor([0.1, -3.3, 7.77])
    z1 = torch.tensor([2.9, 0.3, -1.0 / 3.0])
    path = plots.linear_path(z0, z1, 7)
    assert path.shape == (7, 3)
    assert torch.equal(path[0], z0) and torch.equal(path[-1], z1)
    torch.testing.assert_close(path[3], (z0 + z1) / 2)
    assert plots.linear_path(z0[None], z1[None], 2).shape == (2, 3)


@pytest.mark.parametrize("shape", SHAPES)
def test_interpolations(shape):
    rows = {"VAE": _images(8, shape, 0), "Autoencoder": _images(8, shape, 1).numpy()}
    fig = plots.interpolations(rows, shape, title="interp")
    assert isinstance(fig, Figure)
    assert [t.get_text() for t in fig.axes[0].texts] == ["VAE", "Autoencoder"]


def test_interpolations_points():
    path = plots.linear_path(torch.zeros(2), torch.ones(2), 6)
    assert isinstance(plots.interpolations({"VAE": path, "AE": path * 2}, None), Figure)


def test_the_comparison_figure_of_one_image_and_one_run_reads_in_nats():
    """One test image has no SE: '± –' in the labels, no NaN; the reference alone spans a
    nats axis (-1, 1), not one of 1e-17. With a second run the axis follows its difference."""
    import math

    one = plots.log_px_comparison(["a"], [("quadrature", -175.1, math.nan)], [None])
    left, right = one.axes
    texts = [t.get_text() for t in left.texts]
    assert texts == ["quadrature -175.1 ± –"]
    assert right.get_xlim() == (-1.0, 1.0)
    two = plots.log_px_comparison(["a", "b"], [("ais", -90.0, 1.0), ("ais", -95.0, 1.2)],
                                  [None, (-5.0, math.nan)])
    assert [t.get_text() for t in two.axes[1].texts][-1] == "-5.0 ± –"
    assert two.axes[1].get_xlim()[0] < -5


def test_an_atomic_write_onto_a_folder_names_the_folder(tmp_path):
    from pgm import io

    (tmp_path / "a.json").mkdir()
    with pytest.raises(IsADirectoryError) as err:
        io.atomic_write_json(tmp_path / "a.json", {})
    assert err.value.filename == str(tmp_path / "a.json")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left
