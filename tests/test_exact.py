"""Known answers: closed form vs scipy, quadrature vs closed form, enumeration vs a brute sum."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from pgm.errors import DataError
from pgm.inference.exact import (
    enumerate_log_marginal,
    linear_gaussian_callables,
    linear_gaussian_log_marginal,
    linear_gaussian_posterior,
    linear_gaussian_sample,
    quadrature_log_marginal,
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


def test_quadrature_finds_a_second_mode_by_widening():
    # p(x, z) = c(x) * [0.3 N(z; -2, 0.3^2) + 0.7 N(z; 2.5, 0.4^2)]: log p(x) = log c(x).
    # L-BFGS from 0 finds one mode; the other lies outside the first grid.
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


def test_quadrature_rejects_bad_settings():
    W, b, sigma, x, _ = linear_gaussian(L=2)
    f = linear_gaussian_callables(W, b, sigma)
    with pytest.raises(ValueError, match="latent_dim"):
        quadrature_log_marginal(f.log_joint, x, latent_dim=3)
    with pytest.raises(DataError):
        quadrature_log_marginal(f.log_joint, x * math.nan, latent_dim=2)


def test_quadrature_warns_when_not_converged():
    W, b, sigma, x, _ = linear_gaussian(L=1)
    f = linear_gaussian_callables(W, b, sigma)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        est = quadrature_log_marginal(
            f.log_joint, x, latent_dim=1, num_points=2, max_points=4, num_sd=1.0, tol=1e-9
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
