"""Known answers: closed form vs scipy, quadrature vs closed form, enumeration vs a brute sum."""

import math

import numpy as np
import pytest
import torch
from fixtures import linear_gaussian_callables
from scipy.stats import multivariate_normal

from pgm.errors import DataError
from pgm.inference.exact import enumerate_log_marginal
from pgm.inference.quadrature import quadrature_log_marginal
from pgm.models.linear_gaussian import (
    linear_gaussian_log_marginal,
    linear_gaussian_posterior,
    linear_gaussian_sample,
)

F64 = torch.float64


def linear_gaussian(L: int, D: int = 5, B: int = 20, seed: int = 0, sigma: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, L, generator=g, dtype=F64)
    b = torch.randn(D, generator=g, dtype=F64)
    x, z = linear_gaussian_sample(W, b, sigma, B, generator=g)
    return W, b, sigma, x, z


def test_closed_form_matches_scipy():
    W, b, sigma, x, _ = linear_gaussian(L=2)
    cov = (W @ W.T).numpy() + sigma**2 * np.eye(W.shape[0])
    expected = multivariate_normal(mean=b.numpy(), cov=cov).logpdf(x.numpy())
    got = linear_gaussian_log_marginal(x, W, b, sigma)
    assert got.dtype == F64 and got.shape == (20,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-10)


def test_exact_posterior_is_bayes_rule():
    # log p(z | x) = log p(x, z) - log p(x) must be the Gaussian log density of the posterior.
    W, b, sigma, x, _ = linear_gaussian(L=2)
    f = linear_gaussian_callables(W, b, sigma, q="exact")
    z = f.sample_q(x, 7)  # (7, B, L)
    log_post = f.log_joint(x, z) - linear_gaussian_log_marginal(x, W, b, sigma)
    mean, cov = linear_gaussian_posterior(x, W, b, sigma)
    expected = np.array(
        [
            [
                multivariate_normal(mean[j].numpy(), cov.numpy()).logpdf(z[k, j].numpy())
                for j in range(20)
            ]
            for k in range(7)
        ]
    )
    np.testing.assert_allclose(log_post.numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(f.log_q(z, x).numpy(), expected, atol=1e-10)


def test_callables_shapes_and_unknown_q():
    W, b, sigma, x, _ = linear_gaussian(L=2)
    for q in ("exact", "perturbed", "prior-like"):
        f = linear_gaussian_callables(W, b, sigma, q=q)
        z = f.sample_q(x, 3)
        assert z.shape == (3, 20, 2)
        assert f.log_q(z, x).shape == f.log_joint(x, z).shape == f.log_prior(z).shape == (3, 20)
        assert f.sample_prior(20, 3).shape == (3, 20, 2)
    with pytest.raises(ValueError, match="q must be"):
        linear_gaussian_callables(W, b, sigma, q="bogus")


@pytest.mark.parametrize("L", [1, 2])
def test_quadrature_matches_closed_form(L):
    W, b, sigma, x, _ = linear_gaussian(L=L)
    f = linear_gaussian_callables(W, b, sigma)
    est = quadrature_log_marginal(f.log_joint, x, latent_dim=L, tol=1e-7)
    exact = linear_gaussian_log_marginal(x, W, b, sigma)
    assert est.extra["converged"] and est.extra["max_change"] < 1e-7
    assert est.per_datapoint.dtype == F64
    assert (est.per_datapoint - exact).abs().max().item() < 1e-4


def test_quadrature_finds_both_modes_in_1d():
    # p(x, z) = c(x) * [0.3 N(z; -2, 0.3^2) + 0.7 N(z; 2.5, 0.4^2)]: log p(x) = log c(x).
    log_c = torch.linspace(-3.0, 1.0, 4, dtype=F64)

    def log_joint(x, z):
        z = z[..., 0]
        parts = torch.stack(
            [
                math.log(0.3) + torch.distributions.Normal(-2.0, 0.3).log_prob(z),
                math.log(0.7) + torch.distributions.Normal(2.5, 0.4).log_prob(z),
            ]
        )
        return torch.logsumexp(parts, 0) + x[:, 0]

    est = quadrature_log_marginal(log_joint, log_c[:, None], latent_dim=1, tol=1e-8)
    assert (est.per_datapoint - log_c).abs().max().item() < 1e-6


def _mvn2(z, loc, sx, sy, rho):
    """log N(z; loc, [[sx^2, rho sx sy], [rho sx sy, sy^2]]) for z (K, B, 2), params (B,)."""
    dx, dy = (z[..., 0] - loc[:, 0]) / sx, (z[..., 1] - loc[:, 1]) / sy
    q = (dx * dx - 2 * rho * dx * dy + dy * dy) / (1 - rho * rho)
    return -0.5 * q - torch.log(2 * math.pi * sx * sy * torch.sqrt(1 - rho * rho))


def _mixture_log_joint(x, z):
    """log p(x, z) = c + log(w1 N(z; m1, S1) + w2 N(z; m2, S2)), all read from x's columns
    (c, m1 (2), sx1, sy1, rho1, w1, m2 (2), sx2, sy2, rho2, w2): log p(x) = c + log(w1 + w2)."""
    x, z = x.double(), z.double()
    one = torch.log(x[:, 6]) + _mvn2(z, x[:, 1:3], x[:, 3], x[:, 4], x[:, 5])
    two = torch.log(x[:, 12]) + _mvn2(z, x[:, 7:9], x[:, 9], x[:, 10], x[:, 11])
    return torch.logaddexp(one, two) + x[:, 0]


SEPARATED_MODES = torch.tensor(
    [
        # c,   m1,          sx1,  sy1,  rho1, w1,   m2,          sx2,  sy2,  rho2, w2
        [0.0, -2.5, 1.5, 0.3, 0.15, 0.8, 0.3, 3.1, -2.2, 0.02, 0.02, 0.0, 0.7],  # 0 between
        [-3.0, 4.0, 4.5, 0.2, 0.5, -0.5, 2.0, -4.3, 3.7, 0.02, 0.02, 0.0, 0.05],  # both far
        [5.0, 1.23, 1.11, 0.02, 0.05, 0.9, 1.0, -1.31, 0.43, 0.02, 0.02, 0.0, 0.01],  # 1% mode
        [1.0, 6.3, -1.0, 0.4, 0.4, 0.0, 1.0, -5.5, -5.7, 0.02, 0.02, 0.0, 0.5],  # past R = 6
    ],
    dtype=F64,
)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_quadrature_finds_separated_modes_in_2d(dtype):
    # Two Gaussian bumps, one of sd 0.02, with z = 0 between them or far from both, one mode
    # holding 1% of the mass, one reaching out of the coarse search box [-6, 6]^2.
    x = SEPARATED_MODES
    exact = x[:, 0] + torch.log(x[:, 6] + x[:, 12])

    def log_joint(x, z):
        return _mixture_log_joint(x, z).to(dtype)

    tol = 1e-5 if dtype == F64 else 1e-3
    est = quadrature_log_marginal(log_joint, x.to(dtype), latent_dim=2, tol=tol)
    assert est.extra["converged"] and est.extra["contained"]
    assert est.extra["num_boxes"].tolist() == [2, 2, 2, 2]
    assert (est.per_datapoint - exact).abs().max().item() < (1e-5 if dtype == F64 else 1e-4)


def test_quadrature_resolves_a_narrow_mode_beside_a_broad_one():
    # The narrow mode (sd 0.01 across) lies within the broad one's threshold region, so the
    # two share a box: the grid must be refined to the narrow one's scale before converging.
    x = torch.tensor(
        [[-200.0, 0.05, -0.07, 0.01, 0.2, 0.3, 1.0, 2.6, 2.7, 0.3, 0.3, 0.0, 1.0]], dtype=F64
    )
    est = quadrature_log_marginal(_mixture_log_joint, x, latent_dim=2, tol=1e-3)
    assert est.extra["converged"] and est.extra["num_points"] >= 256
    assert abs(est.per_datapoint.item() - (-200.0 + math.log(2.0))) < 1e-4


def test_quadrature_matches_a_dense_grid_on_a_small_vae():
    # A random VAE (64-64-2, Bernoulli decoder with weights scaled up for sharp, non-Gaussian
    # posteriors) against the midpoint rule on 600^2 points over [-8, 8]^2.
    import pgm
    from pgm.inference.adapter import latent_callables

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = pgm.VAE(data_dim=64, latent_dim=2, hidden=(64,))
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(4.0)
    model.eval()
    f = latent_callables(model)
    x = pgm.load_dataset("digits").x_test[:4].float()
    est = quadrature_log_marginal(f.log_joint, x, latent_dim=2, tol=1e-4)
    assert est.extra["converged"]

    n, R = 600, 8.0
    h = 2 * R / n
    axis = -R + h * (torch.arange(n, dtype=F64) + 0.5)
    total = torch.full((4,), -math.inf, dtype=F64)
    with torch.no_grad():
        for start in range(0, n, 25):
            z = torch.cartesian_prod(axis[start : start + 25], axis)[:, None, :].expand(-1, 4, -1)
            values = f.log_joint(x, z.float()).double()
            total = torch.logaddexp(total, torch.logsumexp(values, 0))
    dense = total + 2 * math.log(h)
    assert (est.per_datapoint - dense).abs().max().item() < 2e-3


def test_quadrature_rejects_bad_settings():
    W, b, sigma, x, _ = linear_gaussian(L=2)
    f = linear_gaussian_callables(W, b, sigma)
    with pytest.raises(ValueError, match="latent_dim"):
        quadrature_log_marginal(f.log_joint, x, latent_dim=3)
    with pytest.raises(DataError):
        quadrature_log_marginal(f.log_joint, x * math.nan, latent_dim=2)
    with pytest.raises(ValueError, match="num_points"):
        quadrature_log_marginal(f.log_joint, x, latent_dim=2, num_points=64, max_points=32)
    with pytest.raises(ValueError, match="threshold"):
        quadrature_log_marginal(f.log_joint, x, latent_dim=2, threshold=0.0)
    with pytest.raises(ValueError, match="must return shape"):
        quadrature_log_marginal(lambda x, z: f.log_joint(x, z)[:1], x, latent_dim=2)


def test_quadrature_warns_when_not_converged():
    W, b, sigma, x, _ = linear_gaussian(L=1)
    f = linear_gaussian_callables(W, b, sigma)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        est = quadrature_log_marginal(
            f.log_joint, x, latent_dim=1, num_points=2, max_points=4, tol=1e-9
        )
    assert not est.extra["converged"]


def test_enumeration_equals_brute_force_sum():
    g = torch.Generator().manual_seed(1)
    M, B = 6, 9
    log_prior_m = torch.log_softmax(torch.randn(M, generator=g, dtype=F64), 0)
    log_lik = -50 * torch.rand(M, B, generator=g, dtype=F64)
    expected = [
        math.log(sum(math.exp(log_prior_m[m] + log_lik[m, j]) for m in range(M))) for j in range(B)
    ]
    got = enumerate_log_marginal(log_prior_m, log_lik)
    assert got.shape == (B,) and got.dtype == F64
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)
    # (M, B) priors (per-datapoint mixing weights) are allowed too.
    np.testing.assert_allclose(
        enumerate_log_marginal(log_prior_m[:, None].expand(M, B), log_lik).numpy(), expected
    )


def test_enumeration_rejects_unnormalised_prior_and_bad_shapes():
    with pytest.raises(ValueError, match="normalised"):
        enumerate_log_marginal(torch.zeros(3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="shape"):
        enumerate_log_marginal(torch.log(torch.full((4,), 0.25)), torch.zeros(3, 2))
