"""Approximation and amortization gaps on the linear-Gaussian model, where both are known.

For a Gaussian posterior N(m, S) with precision P = S^-1, the best diagonal Gaussian (the
family of q*) is N(m, diag(1 / diag P)), and its KL to the posterior, the approximation gap,
is (sum_l log P_ll - log det P) / 2 for every datapoint. Tolerances are standard errors of
means across datapoints (3-4 SE) plus, where q* is fitted, the optimiser's accuracy measured
in closed form by ``test_qstar_reaches_best_mean_field_gaussian``.
"""

import math

import pytest
import torch
from fixtures import linear_gaussian_callables

from pgm.errors import DataError
from pgm.inference.adapter import latent_callables
from pgm.inference.bounds import elbo
from pgm.inference.gaps import amortization_gaps, local_callables, optimise_local_gaussian
from pgm.models.linear_gaussian import (
    LinearGaussian,
    linear_gaussian_log_marginal,
    linear_gaussian_posterior,
    linear_gaussian_sample,
)

F64 = torch.float64
OPT_TOL = 0.01  # nats: the fitted q*'s excess KL over the best diagonal Gaussian (1000 steps)



def mean_field_optimum(cov: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Log-std of the best diagonal Gaussian for N(m, cov), and its KL (the approximation gap)."""
    precision = torch.linalg.inv(cov)
    diag = torch.diagonal(precision)
    gap = 0.5 * (torch.log(diag).sum() - torch.logdet(precision))
    return -0.5 * torch.log(diag), gap.item()


def kl_diag_to_posterior(loc, log_scale, mean, cov) -> torch.Tensor:
    """KL(N(loc, diag e^{2 log_scale}) || N(mean, cov)) per row, closed form."""
    precision = torch.linalg.inv(cov)
    d = loc - mean  # (B, L)
    quad = ((d @ precision) * d).sum(-1)
    trace = (torch.diagonal(precision) * torch.exp(2 * log_scale)).sum(-1)
    L = loc.shape[-1]
    return 0.5 * (trace + quad - L + torch.logdet(cov) - 2 * log_scale.sum(-1))


@pytest.fixture(scope="module")
def correlated():
    """Linear-Gaussian model whose posterior has correlation -0.94: approximation gap 1.08."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 2, generator=g, dtype=F64)
    W[:, 1] = 0.9 * W[:, 0] + 0.4 * W[:, 1]
    b = torch.randn(5, generator=g, dtype=F64)
    x, _ = linear_gaussian_sample(W, b, 0.5, 40, generator=g)
    mean, cov = linear_gaussian_posterior(x, W, b, 0.5)
    log_px = linear_gaussian_log_marginal(x, W, b, 0.5)
    return W, b, x, mean, cov, log_px


def test_qstar_reaches_best_mean_field_gaussian(correlated):
    W, b, x, mean, cov, _ = correlated
    torch.manual_seed(0)
    f = linear_gaussian_callables(W, b, 0.5, q="perturbed")
    fit = optimise_local_gaussian(f, x, steps=1000)
    best_log_scale, gap = mean_field_optimum(cov)
    assert gap > 1.0
    kl = kl_diag_to_posterior(fit.loc, fit.log_scale, mean, cov)  # (B,)
    assert (kl - gap).min() > -1e-9  # nothing diagonal beats the optimum
    assert (kl - gap).max() < OPT_TOL
    torch.testing.assert_close(fit.loc, mean, rtol=0, atol=0.03)
    torch.testing.assert_close(fit.log_scale, best_log_scale.expand_as(fit.log_scale),
                               rtol=0, atol=0.05)
    assert fit.elbo_trace.shape == (1000, 40)
    assert fit.elbo_trace[-100:].mean() > fit.elbo_trace[:10].mean()


def test_local_callables_elbo_is_log_px_minus_kl(correlated):
    W, b, x, mean, cov, log_px = correlated
    torch.manual_seed(1)
    f = linear_gaussian_callables(W, b, 0.5)
    loc, log_scale = mean + 0.1, torch.full_like(mean, -1.5)
    g = local_callables(f, loc, log_scale)
    est = elbo(g, x, K=4000)
    expected = log_px - kl_diag_to_posterior(loc, log_scale, mean, cov)
    diff = est.per_datapoint - expected
    assert abs(diff.mean().item()) < 4 * diff.std().item() / math.sqrt(len(diff))
    with pytest.raises(ValueError, match="fitted to 40 datapoints"):
        g.sample_q(x[:3], 2)
    with pytest.raises(ValueError, match="shape"):
        local_callables(f, loc, log_scale[:, :1])


def test_gaps_of_perturbed_guide(correlated):
    W, b, x, mean, cov, log_px = correlated
    torch.manual_seed(2)
    f = linear_gaussian_callables(W, b, 0.5, q="perturbed")
    out = amortization_gaps(f, x, log_px, steps=1000)
    assert set(out) == {"elbo_q", "elbo_qstar", "approximation_gap", "amortization_gap",
                        "inference_gap"}
    _, gap = mean_field_optimum(cov)
    approx = out["approximation_gap"]
    assert approx.n == 40 and approx.extra["steps"] == 1000 and approx.extra["init"] == "q"
    assert abs(approx.mean - gap) < 4 * approx.se + OPT_TOL
    amort = out["amortization_gap"]
    assert amort.mean > 3 * amort.se  # the perturbed guide is far from q*: ~9.7 nats
    torch.testing.assert_close(
        approx.per_datapoint + amort.per_datapoint, out["inference_gap"].per_datapoint,
        rtol=0, atol=1e-9,
    )
    torch.testing.assert_close(out["elbo_q"].per_datapoint,
                               log_px - out["inference_gap"].per_datapoint, rtol=0, atol=1e-9)


def test_optimal_diagonal_guide_has_no_amortization_gap(correlated):
    W, b, x, mean, cov, log_px = correlated
    torch.manual_seed(3)
    best_log_scale, gap = mean_field_optimum(cov)
    f = local_callables(linear_gaussian_callables(W, b, 0.5), mean,
                        best_log_scale.expand_as(mean).clone())
    out = amortization_gaps(f, x, log_px, steps=300, lr=3e-3)
    amort, approx = out["amortization_gap"], out["approximation_gap"]
    assert abs(amort.mean) < 4 * amort.se + OPT_TOL
    assert abs(approx.mean - gap) < 4 * approx.se + OPT_TOL


def test_full_covariance_guide_beats_the_diagonal_family(correlated):
    """The exact posterior is not diagonal: q* cannot reach it, the amortization gap is
    negative and equals minus the approximation gap (q's inference gap is zero)."""
    W, b, x, mean, cov, log_px = correlated
    torch.manual_seed(4)
    f = linear_gaussian_callables(W, b, 0.5, q="exact")
    out = amortization_gaps(f, x, log_px, steps=1000, elbo_samples=500)
    torch.testing.assert_close(out["elbo_q"].per_datapoint, log_px, rtol=0, atol=1e-9)
    torch.testing.assert_close(out["inference_gap"].per_datapoint, torch.zeros(40, dtype=F64),
                               rtol=0, atol=1e-9)
    _, gap = mean_field_optimum(cov)
    approx, amort = out["approximation_gap"], out["amortization_gap"]
    assert abs(approx.mean - gap) < 4 * approx.se + OPT_TOL
    torch.testing.assert_close(amort.per_datapoint, -approx.per_datapoint, rtol=0, atol=1e-9)


def test_gaps_through_a_pyro_model_guide_pair():
    torch.manual_seed(5)
    model = LinearGaussian(data_dim=5, latent_dim=2, sigma=0.5)
    W, b = model.decoder.weight, model.decoder.bias
    with torch.no_grad():
        W[:, 1] = 0.8 * W[:, 0] + 0.5  # a correlated posterior
        # encoder: the exact posterior mean shifted by 0.3, marginal variances times e
        _, cov = linear_gaussian_posterior(torch.zeros(1, 5), W, b, 0.5)
        gain = cov @ W.T / 0.25  # (L, D): mean(x) = gain (x - b)
        model.encoder.weight.zero_()
        model.encoder.weight[:2] = gain
        model.encoder.bias[:2] = -gain @ b + 0.3
        model.encoder.bias[2:] = torch.log(torch.diagonal(cov)) + 1.0
    x = model.sample(30, mean=False)
    log_px = model.exact_log_marginal(x)
    _, gap = mean_field_optimum(model.exact_posterior(x[:1]).covariance_matrix[0].double())
    out = amortization_gaps(latent_callables(model), x, log_px, steps=1000, elbo_samples=500)
    approx, amort = out["approximation_gap"], out["amortization_gap"]
    assert approx.extra["final_gain_max"] < 0.25  # converged (unconverged fits: 0.6-2)
    assert abs(approx.mean - gap) < 4 * approx.se + OPT_TOL
    assert amort.mean > 3 * amort.se
    assert model.decoder.weight.grad is None  # q* never touches the model's gradients


def test_invalid_settings_fail_loudly(correlated):
    W, b, x, _, _, log_px = correlated
    f = linear_gaussian_callables(W, b, 0.5)
    with pytest.raises(ValueError, match="log_px must have shape"):
        amortization_gaps(f, x, log_px[:3])
    with pytest.raises(ValueError, match="NaN"):
        amortization_gaps(f, x, torch.full_like(log_px, math.nan))
    with pytest.raises(TypeError, match="unknown options"):
        amortization_gaps(f, x, log_px, step=10)
    with pytest.raises(ValueError, match="steps"):
        optimise_local_gaussian(f, x, steps=0)
    with pytest.raises(ValueError, match="lr"):
        optimise_local_gaussian(f, x, lr=-1.0)
    with pytest.raises(ValueError, match="init"):
        optimise_local_gaussian(f, x, init="encoder")
    with pytest.raises(DataError):
        optimise_local_gaussian(f, torch.full((2, 5), math.nan, dtype=F64))
    broken = f._replace(log_joint=lambda x, z: f.log_joint(x, z) * math.nan)
    with pytest.raises(FloatingPointError, match="step 0"):
        optimise_local_gaussian(broken, x, steps=3)


def test_init_options(correlated):
    W, b, x, mean, _, _ = correlated
    torch.manual_seed(6)
    f = linear_gaussian_callables(W, b, 0.5, q="perturbed")
    fit = optimise_local_gaussian(f, x, steps=1, lr=1e-6, init=(mean, torch.zeros_like(mean)))
    torch.testing.assert_close(fit.loc, mean, rtol=0, atol=1e-5)
    fit = optimise_local_gaussian(f, x, steps=1, lr=1e-6, init="prior")
    assert fit.log_scale.abs().max() < 0.2  # moments of N(0, I) draws
    with pytest.raises(ValueError, match="shape"):
        optimise_local_gaussian(f, x, init=(mean[:2], mean[:2]))
