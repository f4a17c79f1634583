"""The Laplace proposal (pgm.inference.laplace) against cases with a known answer."""

from __future__ import annotations

import math

import pytest
import torch
from fixtures import linear_gaussian_callables
from test_ais import _gamma_poisson, linear_gaussian

from pgm.inference.ais import ais, bdmc_upper
from pgm.inference.bounds import iwae_bound
from pgm.inference.callables import LatentCallables
from pgm.inference.laplace import fit_laplace, laplace_proposal
from pgm.inference.schedules import sigmoid_schedule
from pgm.models.linear_gaussian import linear_gaussian_log_marginal, linear_gaussian_posterior


def _no_guide(f):
    """``f`` as a model without a guide density: its q draws are prior draws and its log_q
    must not be used."""
    def log_q(z, x):
        raise AssertionError("the model's own log_q was called")
    return f._replace(sample_q=lambda x, K: f.sample_prior(x.shape[0], K), log_q=log_q)


@pytest.fixture(scope="module")
def lg():
    W, b, sigma, x, z = linear_gaussian(L=3, D=6, B=12, seed=2)
    f = _no_guide(linear_gaussian_callables(W, b, sigma, q="prior-like"))
    return W, b, sigma, x, z, f


def test_on_a_gaussian_posterior_the_laplace_proposal_is_the_posterior(lg):
    # log p(x, z) is quadratic in z: its mode and Hessian are the posterior's mean and
    # precision, so the proposal is p(z|x) and every importance weight equals p(x).
    W, b, sigma, x, _, f = lg
    torch.manual_seed(0)
    q = fit_laplace(f, x, modes=4)
    mean, cov = linear_gaussian_posterior(x, W, b, sigma)
    # the four starts reach the one mode: one component is kept, with weight 1
    assert q.log_weight.shape == (1, 12) and (q.log_weight == 0).all()
    torch.testing.assert_close(q.mean, mean[None], rtol=0, atol=1e-6)
    prec = torch.einsum("mbij,mbj,mbkj->mbik", q.vectors, q.precision, q.vectors)
    torch.testing.assert_close(prec, torch.linalg.inv(cov).expand_as(prec), rtol=1e-8, atol=1e-8)
    assert (q.floored == 0).all()
    c = q.inverse_mass_sqrt()  # the heaviest Gaussian's covariance, as C C^T
    torch.testing.assert_close(c @ c.transpose(-1, -2), cov.expand(12, 3, 3), rtol=1e-8,
                               atol=1e-8)
    g = laplace_proposal(f, x, defensive=0.0)  # the prior's share would break exactness
    exact = linear_gaussian_log_marginal(x, W, b, sigma)
    est = iwae_bound(g, x, [50])[50]
    torch.testing.assert_close(est.per_datapoint, exact, rtol=0, atol=1e-7)
    est = ais(g, x, schedule=sigmoid_schedule(5), num_chains=3, initial="q",
              generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(est.per_datapoint, exact, rtol=0, atol=1e-7)


def test_a_warm_start_reaches_the_same_mode_and_a_fit_can_be_passed_in(lg):
    # the explicit view's sigma fit starts each sigma's ascent at the last sigma's modes
    W, b, sigma, x, _, f = lg
    torch.manual_seed(0)
    mean, _ = linear_gaussian_posterior(x, W, b, sigma)
    start = mean[None] + 0.3 * torch.randn(2, *mean.shape, dtype=mean.dtype)
    q = fit_laplace(f, x, init=start, steps=100, lr=0.03)
    assert q.log_weight.shape == (1, 12)  # both starts reach the one mode
    torch.testing.assert_close(q.mean, mean[None], rtol=0, atol=1e-6)
    g = laplace_proposal(f, x, defensive=0.0, fitted=q)
    exact = linear_gaussian_log_marginal(x, W, b, sigma)
    torch.testing.assert_close(iwae_bound(g, x, [5])[5].per_datapoint, exact, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="init must have shape"):
        fit_laplace(f, x, init=start[:, :3])
    with pytest.raises(ValueError, match="fitted holds 12 datapoints"):
        laplace_proposal(f, x[:5], fitted=q)


def test_the_proposal_takes_rows_of_its_data_and_refuses_other_data(lg):
    *_, x, _, f = lg
    torch.manual_seed(0)
    g = laplace_proposal(f, x)
    z = g.sample_q(x, 4)
    whole = g.log_q(z, x)
    part = g.log_q(z[:, 3:7], x[3:7].clone())  # rows found by value, in any tensor
    torch.testing.assert_close(part, whole[:, 3:7], rtol=0, atol=0)
    assert g.sample_q(x[[5, 1]], 2).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="fitted to other datapoints"):
        g.log_q(z[:, :2], x[:2] + 1)


@pytest.mark.parametrize("mass", [False, True])
def test_ais_from_the_laplace_proposal_stays_below_the_exact_value_over_seeds(mass):
    # A non-Gaussian posterior: the Gamma-Poisson program's positive latent, moved to R by its
    # log (Jacobian included), through Program. The proposal is fitted per seed on fresh draws.
    # AIS from it must not exceed the exact value, nor BDMC fall below it, beyond 3 SE; also
    # with the fit's covariances as HMC's mass matrices (mass, as pgm evaluate runs it). BDMC's
    # upper bound holds in expectation over the exact posterior draw z as well, and each
    # datapoint has one z for all seeds: so the SE is across datapoints (independent (x, z)
    # pairs) of the seed-averaged differences, not across seeds.
    f, x, exact, x_sim, z_sim, exact_sim = _gamma_poisson(30)
    f = _no_guide(f)
    lower, upper = [], []
    for seed in range(4):
        torch.manual_seed(seed)
        q, qs = fit_laplace(f, x, steps=50), fit_laplace(f, x_sim, steps=50)
        g, gs = laplace_proposal(f, x, fitted=q), laplace_proposal(f, x_sim, fitted=qs)
        kw = dict(schedule=sigmoid_schedule(10), num_chains=8, initial="q",
                  generator=torch.Generator().manual_seed(1000 + seed))
        m, ms = (q.inverse_mass_sqrt(), qs.inverse_mass_sqrt()) if mass else (None, None)
        if mass:  # where the pilot starts: the scale is the posterior's own now, not z's
            kw["step_size"] = 0.5
        lower.append(ais(g, x, inverse_mass_sqrt=m, **kw).per_datapoint - exact)
        upper.append(bdmc_upper(gs, x_sim, z_sim, inverse_mass_sqrt=ms, **kw).per_datapoint
                     - exact_sim)
    lower, upper = torch.stack(lower).mean(0), torch.stack(upper).mean(0)  # (30,)
    se_lower, se_upper = (v.std() / math.sqrt(len(v)) for v in (lower, upper))
    assert lower.mean() <= 3 * se_lower, (lower.mean(), se_lower)
    assert upper.mean() >= -3 * se_upper, (upper.mean(), se_upper)
    # how close: over 12 seeds the upper bound sat at -0.017 +- 0.009 nats (identity mass)
    # and -0.025 +- 0.011 (mass; the lower bound +0.000 +- 0.003 against -0.006 +- 0.005)
    near = 0.04 if mass else 0.02
    assert lower.mean().abs() < 0.02 and upper.mean().abs() < near, (lower.mean(), upper.mean())


def test_a_saddle_gets_the_curvatures_magnitude():
    # log p(x, z) = -(z1^2 - z2^2)/2 around 0 plus a wide Gaussian: not concave at 0. With
    # no steps the fit stays at 0 and takes |lambda|, floored where the curvature vanishes.
    def log_joint(x, z):
        return -0.5 * (z[..., 0] ** 2 - z[..., 1] ** 2) - 1e-6 * (z**2).sum(-1) + 0 * x.sum(-1)

    zero = torch.zeros(2, 2, dtype=torch.float64)
    f = _no_guide(linear_gaussian_callables(*linear_gaussian(L=2, D=3, B=2)[:3], q="prior-like"))
    f = f._replace(log_joint=log_joint, sample_q=lambda x, K: torch.zeros(K, 2, 2,
                                                                          dtype=torch.float64),
                   sample_prior=None)
    q = fit_laplace(f, zero, steps=0, min_precision=0.5, modes=1)
    torch.testing.assert_close(q.precision[0], torch.ones(2, 2, dtype=torch.float64), rtol=0,
                               atol=1e-5)
    assert (q.floored == 1).all()
    q = fit_laplace(f, zero, steps=0, min_precision=2.0, modes=1)
    torch.testing.assert_close(q.precision[0], torch.full((2, 2), 2.0, dtype=torch.float64), rtol=0,
                               atol=1e-5)
    z = q.sample(100_000)
    assert abs(z.var().item() - 0.5) < 0.01
    assert math.isfinite(q.log_prob(z).mean().item())


def test_a_mixture_samples_and_scores_its_components():
    # two components in 2-D, rotated: log_prob is the mixture's closed form, and the draws
    # have its mean and covariance (SE of a mean over 200,000 draws: ~0.005)
    from pgm.inference.laplace import Laplace

    c, s = math.cos(0.3), math.sin(0.3)
    V = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    mean = torch.tensor([[[-2.0, 0.0]], [[3.0, 1.0]]], dtype=torch.float64)  # (M, B, L)
    lam = torch.tensor([[[1.0, 4.0]], [[9.0, 0.5]]], dtype=torch.float64)
    w = torch.tensor([[0.3], [0.7]], dtype=torch.float64)
    q = Laplace(mean, V.expand(2, 1, 2, 2), lam, w.log(), torch.zeros(2, 1),
                torch.zeros(2, 1, dtype=torch.long))
    covs = [V @ torch.diag(1 / lam[m, 0]) @ V.T for m in range(2)]
    comps = [torch.distributions.MultivariateNormal(mean[m, 0], covs[m]) for m in range(2)]
    z = torch.randn(50, 1, 2, dtype=torch.float64) * 2
    truth = torch.logsumexp(torch.stack([w[m].log() + comps[m].log_prob(z) for m in range(2)]),
                            0)
    torch.testing.assert_close(q.log_prob(z), truth, rtol=0, atol=1e-10)
    torch.manual_seed(0)
    draws = q.sample(200_000)[:, 0]
    m_true = 0.3 * mean[0, 0] + 0.7 * mean[1, 0]
    assert (draws.mean(0) - m_true).abs().max() < 0.03
    d = mean[1, 0] - mean[0, 0]
    cov_true = 0.3 * covs[0] + 0.7 * covs[1] + 0.3 * 0.7 * torch.outer(d, d)
    assert (torch.cov(draws.T) - cov_true).abs().max() < 0.05


def _never(*args):
    raise AssertionError("the Laplace fit needs no guide density")


def _rugged(B=40):
    """A 1-D latent whose log p(x, z) = -z^2/8 - 3 cos(4 z) + x z has a local maximum every
    ~1.6 in z: the global one per datapoint, found on a fine grid, is the known answer."""
    x = torch.linspace(-0.5, 0.5, B, dtype=torch.float64)[:, None]

    def log_joint(x_, z):
        return (-z**2 / 8 - 3 * torch.cos(4 * z) + x_ * z).sum(-1)

    def sample_prior(b, K):
        return 2 * torch.randn(K, b, 1, dtype=torch.float64)

    f = LatentCallables(log_joint=log_joint, log_prior=lambda z: -z[..., 0]**2 / 8,
                        sample_q=lambda x_, K: sample_prior(x_.shape[0], K),
                        log_q=_never, sample_prior=sample_prior)
    grid = torch.linspace(-12, 12, 240_001, dtype=torch.float64)[:, None, None]
    best = log_joint(x, grid).max(0).values  # (B,)
    return f, x, best


def test_ascents_beyond_the_modes_reach_the_global_maximum():
    # the ascent from the best draw stops at a local maximum for many datapoints; 32 ascents
    # pruned to the best after a third of the steps reach the global one for every datapoint,
    # over seeds, and no value exceeds the grid's maximum (the grid is 1e-4 apart: 1e-7 nats)
    f, x, best = _rugged()
    for seed in range(3):
        torch.manual_seed(seed)
        one = fit_laplace(f, x, modes=1, ascents=1)
        torch.manual_seed(seed)
        many = fit_laplace(f, x, modes=1, ascents=32)
        gap_one, gap_many = best - one.log_joint[0], best - many.log_joint[0]
        assert (gap_many.abs() < 1e-6).all()
        assert (gap_one > 1e-3).sum() >= 10
        assert (gap_one > -1e-6).all()
    # with fewer than three steps the ascents are pruned before the first (no Adam state yet)
    # or, with none, after the loop: the kept starts are the best draws
    for steps in (0, 1, 2):
        assert fit_laplace(f, x, modes=2, ascents=32, steps=steps).mean.shape[0] <= 2
