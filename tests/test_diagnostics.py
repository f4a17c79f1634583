"""PSIS k-hat, importance ESS and the NUTS reference posterior, against known answers.

Known answers: Pareto-distributed weights w = U^-k have tail shape k; for Gaussian q and
posterior with standard deviations s_q < s_p the weights have k = 1 - s_q^2 / s_p^2; the
linear-Gaussian posterior is N(m, S) exactly. NUTS tolerances come from its own ESS: 4
standard errors sqrt(var / ESS) for a mean and var * sqrt(2 / ESS) for a variance.
"""

import math

import pytest
import torch
from fixtures import linear_gaussian_callables
from matplotlib.figure import Figure

from pgm.errors import DataError
from pgm.inference.adapter import latent_callables
from pgm.inference.bounds import log_importance_weights
from pgm.inference.diagnostics import (
    importance_ess,
    posterior_figure,
    psis_khat,
    reference_posterior,
    weight_diagnostics,
)
from pgm.models.linear_gaussian import (
    LinearGaussian,
    linear_gaussian_posterior,
    linear_gaussian_sample,
)

F64 = torch.float64



@pytest.fixture(scope="module")
def model():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 2, generator=g, dtype=F64)
    b = torch.randn(5, generator=g, dtype=F64)
    x, _ = linear_gaussian_sample(W, b, 0.5, 20, generator=g)
    return W, b, x


# ---------------------------------------------------------------------------------- ESS


def test_ess_equals_K_for_equal_weights_and_1_for_one_weight():
    K = 1000
    torch.testing.assert_close(importance_ess(torch.full((K, 3), -7.5, dtype=F64)),
                               torch.full((3,), float(K), dtype=F64), rtol=1e-12, atol=0)
    log_w = torch.full((K, 2), -math.inf, dtype=F64)
    log_w[17] = 3.0
    torch.testing.assert_close(importance_ess(log_w), torch.ones(2, dtype=F64))
    log_w = torch.randn(K, 4, dtype=F64)
    w = log_w.exp()
    torch.testing.assert_close(importance_ess(log_w), w.sum(0) ** 2 / (w**2).sum(0))


# -------------------------------------------------------------------------------- k-hat


@pytest.mark.parametrize("k", [0.3, 0.9])
def test_khat_recovers_pareto_shape(k):
    g = torch.Generator().manual_seed(1)
    log_w = -k * torch.log(torch.rand(4000, 40, generator=g, dtype=F64))  # w = U^-k
    khat = psis_khat(log_w)
    assert khat.shape == (40,)
    # per-datapoint sd ~0.1-0.14 from 190 tail draws; ArviZ's prior pulls k towards 0.5
    assert abs(khat.mean().item() - k) < 0.1


def test_khat_of_exact_posterior_weights_is_zero(model):
    W, b, x = model
    torch.manual_seed(0)
    log_w = log_importance_weights(linear_gaussian_callables(W, b, 0.5, q="exact"), x, 2000)
    assert log_w.std(0).max() < 1e-10  # constant up to rounding
    torch.testing.assert_close(psis_khat(log_w), torch.zeros(20, dtype=F64))
    torch.testing.assert_close(psis_khat(torch.zeros(100, 3)), torch.zeros(3, dtype=F64))
    d = weight_diagnostics(log_w)
    assert d["khat_max"] == 0.0 and d["frac_khat_above_0_7"] == 0.0
    assert d["ess_min"] == pytest.approx(2000, rel=1e-9)


def test_khat_small_for_slightly_perturbed_guide(model):
    """Wider than the posterior and a little off-centre: bounded weights."""
    W, b, x = model
    torch.manual_seed(0)
    f = linear_gaussian_callables(W, b, 0.5, q="perturbed", shift=0.2, scale=1.2)
    khat = psis_khat(log_importance_weights(f, x, 2000))
    assert khat.max() < 0.5


def test_khat_large_for_heavy_tailed_weights(model):
    W, b, x = model
    torch.manual_seed(0)
    # q 0.3x as wide as the posterior's marginals: k = 1 - 0.09 * (0.93 to 1.09) ~ 0.9
    f = linear_gaussian_callables(W, b, 0.5, q="perturbed", shift=0.0, scale=0.3)
    d = weight_diagnostics(log_importance_weights(f, x, 2000))
    assert d["khat_mean"] > 0.7 and d["frac_khat_above_0_7"] > 0.5
    # the prior as proposal for a very peaked posterior (sigma = 0.05): ESS ~ 1
    x_sharp, _ = linear_gaussian_sample(W, b, 0.05, 20, generator=torch.Generator().manual_seed(2))
    f = linear_gaussian_callables(W, b, 0.05, q="prior-like")
    d = weight_diagnostics(log_importance_weights(f, x_sharp, 2000))
    assert d["khat_mean"] > 0.7 and d["ess_mean"] < 10


def test_khat_needs_enough_weights():
    with pytest.raises(ValueError, match="K >= 30"):
        psis_khat(torch.randn(29, 3))
    with pytest.raises(ValueError, match="NaN"):
        psis_khat(torch.full((50, 2), math.nan))
    with pytest.raises(ValueError, match=r"\(K, B\)"):
        psis_khat(torch.randn(50))
    d = weight_diagnostics(torch.randn(10, 3))
    assert math.isnan(d["khat_max"]) and 1 <= d["ess_min"] <= 10 and d["K"] == 10


# ---------------------------------------------------------------------- reference posterior


def test_nuts_reference_matches_exact_posterior(model):
    W, b, x = model
    f = linear_gaussian_callables(W, b, 0.5, q="perturbed")
    mean, cov = linear_gaussian_posterior(x[:1], W, b, 0.5)
    rng = torch.get_rng_state()
    ref = reference_posterior(f, x[0], num_samples=300, warmup=200)
    assert torch.equal(torch.get_rng_state(), rng)  # the run used its own stream
    s = ref.summary
    assert s["rhat_max"] < 1.05 and s["divergences"] == 0 and s["num_chains"] == 2
    assert ref.idata.posterior["z"].shape == (2, 300, 2)
    assert ref.samples.shape == (600, 2)
    var = torch.diagonal(cov)
    ess = s["ess_bulk_min"]
    assert ess > 100
    err_mean = (ref.samples.mean(0) - mean[0]).abs()
    assert (err_mean < 4 * (var / ess).sqrt()).all(), (err_mean, var, ess)
    err_var = (ref.samples.var(0) - var).abs()
    assert (err_var < 4 * var * math.sqrt(2 / ess)).all(), (err_var, var, ess)
    again = reference_posterior(f, x[0], num_samples=300, warmup=200)
    assert torch.equal(again.samples, ref.samples)  # seeded


def test_nuts_reference_through_a_pyro_pair():
    torch.manual_seed(3)
    model = LinearGaussian(data_dim=5, latent_dim=2, sigma=0.5)
    x = model.sample(1, mean=False)
    ref = reference_posterior(latent_callables(model), x, num_samples=200, warmup=150)
    exact = model.exact_posterior(x)
    assert ref.summary["rhat_max"] < 1.05
    sd = exact.variance[0].sqrt()
    ess = ref.summary["ess_bulk_min"]
    assert ((ref.samples.mean(0) - exact.mean[0]).abs() < 4 * sd / math.sqrt(ess)).all()


def test_reference_posterior_rejects_a_batch(model):
    W, b, x = model
    f = linear_gaussian_callables(W, b, 0.5)
    with pytest.raises(DataError, match="one datapoint"):
        reference_posterior(f, x[:2])
    with pytest.raises(ValueError, match="num_chains"):
        reference_posterior(f, x[0], num_chains=0)


# --------------------------------------------------------------------------------- figure


def test_posterior_figure(model, tmp_path):
    W, b, x = model
    torch.manual_seed(0)
    f = linear_gaussian_callables(W, b, 0.5, q="perturbed")
    q = [f.sample_q(x[i : i + 1], 300)[:, 0] for i in range(3)]
    mean, cov = linear_gaussian_posterior(x[:3], W, b, 0.5)
    chol = torch.linalg.cholesky(cov)
    p = [mean[i] + torch.randn(300, 2, dtype=F64) @ chol.T for i in range(3)]
    fig = posterior_figure(q, p, "perturbed q")
    assert isinstance(fig, Figure)
    assert sum(ax.get_visible() for ax in fig.axes) == 3
    assert fig._suptitle.get_text() == "perturbed q"
    single = posterior_figure(q[0], p[0])
    assert len(single.axes) == 1
    from pgm.plots import save_figure

    assert save_figure(fig, tmp_path / "posterior.png").stat().st_size > 0
    with pytest.raises(DataError, match="sample sets"):
        posterior_figure(q, p[:2])
    with pytest.raises(DataError, match=r"\(S, 2\)"):
        posterior_figure(torch.randn(10, 3), p[0])
