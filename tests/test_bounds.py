"""ELBO and IWAE bounds on the linear-Gaussian model, whose log p(x) is known in closed form.

Orderings are checked on paired per-datapoint differences with a tolerance of 3 standard
errors of the mean difference (across datapoints), never with a bare constant.
"""

import json
import math

import pytest
import torch
from fixtures import linear_gaussian_callables

from pgm.errors import DataError
from pgm.inference.bounds import (
    elbo,
    iwae_bound,
    iwae_from_log_weights,
    log_importance_weights,
    log_mean_exp,
)
from pgm.inference.callables import Estimate, LatentCallables
from pgm.models.linear_gaussian import linear_gaussian_log_marginal, linear_gaussian_sample

F64 = torch.float64
KS = (1, 10, 100, 1000, 5000)


def linear_gaussian(L: int = 2, D: int = 5, B: int = 20, seed: int = 0, sigma: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, L, generator=g, dtype=F64)
    b = torch.randn(D, generator=g, dtype=F64)
    x, _ = linear_gaussian_sample(W, b, sigma, B, generator=g)
    return W, b, sigma, x


def paired(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean of a - b and its standard error across datapoints."""
    d = a - b
    return d.mean().item(), (d.std() / math.sqrt(d.numel())).item()


@pytest.fixture(scope="module")
def model():
    W, b, sigma, x = linear_gaussian()
    return W, b, sigma, x, linear_gaussian_log_marginal(x, W, b, sigma)


def test_exact_posterior_makes_every_bound_exact(model):
    W, b, sigma, x, exact = model
    torch.manual_seed(0)
    f = linear_gaussian_callables(W, b, sigma, q="exact")
    for K, est in iwae_bound(f, x, KS).items():
        assert est.extra["K"] == K
        torch.testing.assert_close(est.per_datapoint, exact, rtol=0, atol=1e-9)
    torch.testing.assert_close(elbo(f, x, K=3).per_datapoint, exact, rtol=0, atol=1e-9)


def test_misspecified_q_orders_the_bounds(model):
    W, b, sigma, x, exact = model
    torch.manual_seed(1)
    f = linear_gaussian_callables(W, b, sigma, q="perturbed")
    iwae = iwae_bound(f, x, KS)
    elbo_1 = elbo(f, x, K=1000).per_datapoint  # the ELBO, averaged over 1000 draws
    torch.testing.assert_close(elbo_1, iwae[1].per_datapoint, rtol=0, atol=0.1)
    chain = [elbo_1, iwae[10].per_datapoint, iwae[1000].per_datapoint, exact]
    for lower, upper in zip(chain, chain[1:], strict=False):
        mean, se = paired(upper, lower)
        assert mean >= -3 * se, (mean, se)
    # The mis-specification is visible: the ELBO is below IWAE_1000 by many standard errors.
    mean, se = paired(iwae[1000].per_datapoint, elbo_1)
    assert mean > 5 * se and mean > 0.1
    # The requirement: IWAE_5000 within 0.1 nat per datapoint of log p(x).
    assert (exact - iwae[5000].per_datapoint).mean().item() < 0.1
    # ... and it is a lower bound within its standard error.
    mean, se = paired(exact, iwae[5000].per_datapoint)
    assert mean >= -3 * se


def test_prior_proposal(model):
    W, b, sigma, x, exact = model
    torch.manual_seed(2)
    f = linear_gaussian_callables(W, b, sigma, q="perturbed")
    log_w = log_importance_weights(f, x, 50, proposal="prior")
    assert log_w.shape == (50, 20) and log_w.dtype == F64
    # z ~ p(z), so log w = log p(x | z): a far worse proposal than q, yet still a lower bound.
    iwae = iwae_bound(f, x, (1, 5000), proposal="prior")
    mean, se = paired(exact, iwae[5000].per_datapoint)
    assert mean >= -3 * se
    mean, se = paired(iwae[5000].per_datapoint, iwae[1].per_datapoint)
    assert mean > 3 * se
    with pytest.raises(ValueError, match="sample_prior"):
        log_importance_weights(f._replace(sample_prior=None), x, 5, proposal="prior")


def replay_callables(f: LatentCallables, noise: torch.Tensor) -> LatentCallables:
    """Same model, but sample_q reads its standard-normal noise from a fixed bank in order,
    so a chunked and an unchunked draw consume exactly the same numbers."""
    state = {"next": 0}
    exact_f = f

    def sample_q(x, K):
        eps = noise[state["next"] : state["next"] + K]
        state["next"] += K
        loc = exact_f.sample_q(x, 1)[0] * 0  # shape/dtype only
        return loc + eps

    def log_q(z, x):
        return -0.5 * (z * z).sum(-1) - z.shape[-1] / 2 * math.log(2 * math.pi)

    return f._replace(sample_q=sample_q, log_q=log_q)


def test_chunked_log_weights_equal_unchunked(model):
    W, b, sigma, x, _ = model
    f = linear_gaussian_callables(W, b, sigma, q="perturbed")
    noise = torch.randn(300, 20, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    whole = log_importance_weights(replay_callables(f, noise), x, 300, chunk_size=300)
    for chunk_size in (1, 7, 128):
        chunked = log_importance_weights(replay_callables(f, noise), x, 300, chunk_size=chunk_size)
        torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


def test_log_weights_are_float64_for_float32_callables(model):
    W, b, sigma, x, _ = model
    f = linear_gaussian_callables(W.float(), b.float(), sigma, q="perturbed")
    log_w = log_importance_weights(f, x.float(), 10)
    assert log_w.dtype == F64 and log_w.shape == (10, 20)


def test_disjoint_blocks_and_first_block():
    log_w = torch.randn(100, 3, generator=torch.Generator().manual_seed(4), dtype=F64) * 2
    disjoint = iwae_from_log_weights(log_w, (10, 30, 100))
    assert disjoint[10].extra["num_blocks"] == 10
    assert disjoint[30].extra["num_blocks"] == 3  # the last 10 weights are unused
    expected_10 = torch.stack([log_mean_exp(log_w[i : i + 10]) for i in range(0, 100, 10)]).mean(0)
    torch.testing.assert_close(disjoint[10].per_datapoint, expected_10)
    torch.testing.assert_close(disjoint[100].per_datapoint, log_mean_exp(log_w))
    first = iwae_from_log_weights(log_w, (10,), blocks="first")
    assert first[10].extra["num_blocks"] == 1 and math.isnan(first[10].extra["mc_se"])
    torch.testing.assert_close(first[10].per_datapoint, log_mean_exp(log_w[:10]))
    # log-mean-exp is stable far from 0.
    torch.testing.assert_close(
        log_mean_exp(torch.full((5000, 2), -1e4, dtype=F64)), torch.full((2,), -1e4, dtype=F64)
    )


def test_estimate_summary_is_json_ready(model):
    W, b, sigma, x, exact = model
    torch.manual_seed(5)
    est = iwae_bound(linear_gaussian_callables(W, b, sigma, q="perturbed"), x, (1, 10))[10]
    assert isinstance(est, Estimate)
    assert est.n == 20 and est.per_datapoint.device.type == "cpu"
    assert est.se == pytest.approx((est.per_datapoint.std() / math.sqrt(20)).item())
    summary = json.loads(json.dumps(est.summary()))
    assert {"mean", "se", "n", "seconds", "K", "num_blocks", "mc_se", "ess_mean"} <= set(summary)


def test_invalid_settings_are_loud(model):
    W, b, sigma, x, _ = model
    f = linear_gaussian_callables(W, b, sigma, q="perturbed")
    with pytest.raises(ValueError, match="K must be"):
        log_importance_weights(f, x, 0)
    with pytest.raises(ValueError, match="chunk_size"):
        log_importance_weights(f, x, 5, chunk_size=0)
    with pytest.raises(ValueError, match="proposal"):
        log_importance_weights(f, x, 5, proposal="posterior")
    with pytest.raises(ValueError, match="needs at least"):
        iwae_from_log_weights(torch.zeros(5, 2), (10,))
    with pytest.raises(DataError, match="NaN"):
        elbo(f, x.clone().fill_(math.nan))
    bad = f._replace(log_q=lambda z, x: f.log_q(z, x).sum(0))
    with pytest.raises(ValueError, match="log_q must return shape"):
        log_importance_weights(bad, x, 5)


def test_particle_counts_may_be_numpy_or_torch_integers(model):
    import numpy as np

    from pgm.evaluation import EvalConfig

    W, b, sigma, x, _ = model
    f = linear_gaussian_callables(W, b, sigma, q="perturbed")
    assert sorted(iwae_bound(f, x, Ks=(np.int64(10), torch.tensor(5)))) == [5, 10]
    with pytest.raises(ValueError, match="K must be a positive integer, got 2.5"):
        iwae_bound(f, x, Ks=(2.5,))
    with pytest.raises(ValueError, match="ks must be a sequence of positive integers"):
        EvalConfig(ks=5)
