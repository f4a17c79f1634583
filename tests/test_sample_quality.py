"""Parzen windows, nearest neighbours and the Fréchet distance against brute force and closed
forms; the sample-quality summary runs on every model type."""

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.special import logsumexp
from scipy.stats import norm

import pgm
from pgm.inference.parzen import (
    choose_bandwidth,
    parzen_estimate,
    parzen_log_density,
    parzen_log_likelihood,
)
from pgm.models import GAN, GMM, VAE
from pgm.sample_quality import (
    feature_classifier,
    frechet_distance,
    frechet_feature_distance,
    nearest_neighbour_figure,
    nearest_neighbour_histogram,
    nearest_neighbours,
    sample_quality,
)


@pytest.fixture(scope="module")
def digits():
    return pgm.load_dataset("digits", binarize="none")


# ----------------------------------------------------------------------------- Parzen


def test_parzen_1d_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(300, 1, generator=g, dtype=torch.float64) * 2 + 1
    x = torch.randn(50, 1, generator=g, dtype=torch.float64) * 3
    h = 0.3
    brute = logsumexp(norm.logpdf(x.numpy(), loc=s.numpy().T, scale=h), axis=1) - math.log(300)
    ours = parzen_log_density(s, x, h)
    np.testing.assert_allclose(ours.numpy(), brute, rtol=1e-12, atol=1e-10)
    chunked = parzen_log_density(s, x, h, batch_size=7, chunk_size=13)
    np.testing.assert_allclose(chunked.numpy(), brute, rtol=1e-12, atol=1e-10)
    several = parzen_log_density(s, x, [0.1, h])
    assert several.shape == (2, 50)
    np.testing.assert_allclose(several[1].numpy(), brute, rtol=1e-12, atol=1e-10)
    est = parzen_estimate(s, x, h)
    assert est.n == 50 and est.extra["bandwidth"] == h and est.se > 0


def test_parzen_approaches_a_known_2d_density():
    g = torch.Generator().manual_seed(1)
    samples = torch.randn(20_000, 2, generator=g)
    x_valid, x_test = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    choice = choose_bandwidth(samples, x_valid, torch.logspace(-1.5, 0, 13).tolist())
    h = choice.bandwidth
    assert 0.08 < h < 0.5  # Silverman's rule: 20000^(-1/6) = 0.19
    kde = parzen_log_density(samples, x_test, h)
    true = torch.distributions.Normal(0.0, 1.0).log_prob(x_test.double()).sum(1)
    # The KDE's expectation is N(0, (1 + h^2) I): its mean log-density differs from the truth
    # by -log(1 + h^2) - 1/(1 + h^2) + 1 < 0.01 nats for h < 0.3; the rest is sampling noise.
    assert abs(kde.mean().item() - true.mean().item()) < 0.05
    assert (kde - true).abs().median() < 0.1


def test_bandwidth_on_the_grid_edge_warns():
    g = torch.Generator().manual_seed(2)
    with pytest.warns(UserWarning, match="edge of the grid"):
        choose_bandwidth(torch.randn(500, 2, generator=g), torch.randn(50, 2, generator=g),
                         (0.001, 0.002))


# ----------------------------------------------------------------------------- neighbours


def test_nearest_neighbours_of_training_points_are_themselves():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(500, 64, generator=g)
    idx = torch.randperm(500, generator=g)[:40]
    res = nearest_neighbours(ref[idx], ref, chunk_size=16)
    assert torch.equal(res.distance, torch.zeros(40, dtype=torch.float64))
    assert torch.equal(res.index, idx)
    other = torch.rand(30, 64, generator=g)
    res = nearest_neighbours(other, ref)
    brute = torch.cdist(other.double(), ref.double(),
                        compute_mode="donot_use_mm_for_euclid_dist")
    torch.testing.assert_close(res.distance, brute.min(1).values, rtol=0, atol=1e-12)
    assert torch.equal(res.index, brute.argmin(1))


# ----------------------------------------------------------------------------- Fréchet


def _scipy_frechet(mu1, c1, mu2, c2):
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))


def test_frechet_distance_matches_scipy_and_the_1d_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 5)), rng.standard_normal((5, 5))
    c1, c2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(
        _scipy_frechet(mu1, c1, mu2, c2), rel=1e-9, abs=1e-9)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[0.25]]) == pytest.approx(4 + 1.5 ** 2)
    assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0, abs=1e-9)


def test_frechet_of_samples_is_zero_for_one_distribution_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    n, d = 20_000, 5
    scale = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.3])
    a = torch.randn(n, d, generator=g) * scale
    b = torch.randn(n, d, generator=g) * scale
    same = frechet_feature_distance(a, b)
    assert 0 <= same < 0.01  # finite-sample bias ~ sum of variances * d / n
    shifts = [0.25, 0.5, 1.0, 2.0]
    fds = [frechet_feature_distance(a, b + torch.tensor([s, 0, 0, 0, 0])) for s in shifts]
    assert all(x < y for x, y in zip(fds, fds[1:]))
    for s, fd in zip(shifts, fds):
        assert fd == pytest.approx(s ** 2, abs=0.03 + 0.05 * s)  # + 2 s (mean diff) noise


# ----------------------------------------------------------------------------- every model


def test_feature_classifier_is_cached_in_the_run_directory(digits, tmp_path):
    clf = feature_classifier(digits, path=tmp_path / "eval" / "clf")
    assert clf.accuracy > 0.9
    weights = tmp_path / "eval" / "clf.safetensors"
    mtime = weights.stat().st_mtime_ns
    again = feature_classifier(digits, path=tmp_path / "eval" / "clf")
    assert weights.stat().st_mtime_ns == mtime and again.accuracy == clf.accuracy
    x = digits.x_test[:20]
    torch.testing.assert_close(again.features(x), clf.features(x), rtol=0, atol=0)
    retrained = feature_classifier(digits, path=tmp_path / "eval" / "clf", epochs=3)
    assert weights.stat().st_mtime_ns != mtime and retrained is not again


def test_feature_classifier_is_trained_once_per_process(digits, tmp_path, monkeypatch):
    # the quickstart evaluates five runs in one process: the second run directory gets the
    # same weights without a second training
    first = feature_classifier(digits, path=tmp_path / "a" / "clf", epochs=2)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(torch.optim, "Adam", no_training)
    second = feature_classifier(digits, path=tmp_path / "b" / "clf", epochs=2)
    assert (tmp_path / "b" / "clf.safetensors").is_file() and second.accuracy == first.accuracy
    x = digits.x_test[:20]
    torch.testing.assert_close(second.features(x), first.features(x), rtol=0, atol=0)


@pytest.mark.parametrize("make", [
    lambda d: VAE(data_dim=64, latent_dim=2, hidden=(16,)),
    lambda d: GMM(data_dim=64, components=5),
    lambda d: GAN(data_dim=64, latent_dim=4, hidden=(16,), image_shape=(8, 8)),
])
def test_sample_quality_runs_on_every_model_type(make, digits, tmp_path):
    torch.manual_seed(0)
    model = make(digits)
    if isinstance(model, GMM):
        model.initialize(digits.x_train)
    summary, dists = sample_quality(model, digits, n=300, run_dir=tmp_path,
                                    return_distances=True)
    nn_, fd = summary["nearest_neighbour"], summary["frechet"]
    assert summary["n_samples"] == 300 and nn_["samples"]["n"] == 300
    assert fd["features"] == "classifier" and fd["classifier_accuracy"] > 0.85
    assert math.isfinite(fd["samples_vs_train"]) and fd["samples_vs_train"] > fd["test_vs_train"]
    assert (tmp_path / "cache" / "frechet_classifier.safetensors").is_file()
    assert dists["samples"].shape == (300,) and dists["test"].shape == (len(digits.x_test),)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nearest_neighbour_histogram(dists["samples"], dists["test"])
        nearest_neighbour_figure(model.sample(5), digits.x_train, (8, 8))


def test_data_itself_scores_like_held_out_data(digits):
    class Copy(torch.nn.Module):  # "samples" drawn from the test split: a perfect model
        def sample(self, n):
            return digits.x_test[torch.randint(len(digits.x_test), (n,))]

    summary = sample_quality(Copy(), digits, n=len(digits.x_test),
                             samples=digits.x_valid[:len(digits.x_test)])
    nn_ = summary["nearest_neighbour"]
    assert 0.8 < nn_["ratio"] < 1.25
    fd = summary["frechet"]
    assert fd["samples_vs_train"] < 2 * fd["test_vs_train"] + 1e-6


def test_unlabelled_data_uses_the_raw_space():
    data = pgm.load_dataset("gauss1d")
    gan = GAN(data_dim=1, latent_dim=1, hidden=(4,), z_dist="uniform", output="identity")
    summary = sample_quality(gan, data, n=200)
    assert summary["frechet"]["features"] == "raw"
    s = gan.sample(5000)
    mu, sd = s.mean().item(), s.std().item()
    x = data.x_train
    assert summary["frechet"]["samples_vs_train"] == pytest.approx(
        (mu - x.mean().item()) ** 2 + (sd - x.std().item()) ** 2, rel=0.1)


def test_parzen_log_likelihood_protocol_on_a_model(digits):
    torch.manual_seed(0)
    gan = GAN(data_dim=64, latent_dim=4, hidden=(16,), image_shape=(8, 8))
    est = parzen_log_likelihood(gan, digits, n=50, num_samples=500,
                                grid=torch.logspace(-2, 0.5, 11).tolist())
    assert est.n == 50 and math.isfinite(est.mean) and est.extra["num_samples"] == 500
    assert est.extra["bandwidth"] > 0 and est.extra["split"] == "test"
