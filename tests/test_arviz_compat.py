"""The ArviZ seam against known answers, the same on ArviZ 0.x and 1.x.

Known answers: for Gaussian q = N(0, s_q^2) and posterior N(0, 1) with s_q < 1 the weights have
tail shape k = 1 - s_q^2; a posterior of iid draws has R-hat 1 and ESS the number of draws.
PINNED holds ArviZ 0.23.4's k-hats of fixed weights: 1.x must give the same where both fit the
same number of tail points (K = 100) and one tail point's noise apart elsewhere (K = 4000).
"""

import math

import numpy as np
import pytest
from scipy.special import ndtri

from pgm.inference.arviz_compat import (
    MIN_PSIS_SAMPLES,
    convergence,
    posterior_data,
    psis_khat_rows,
)


def _gaussian_log_w(z: np.ndarray, sq: float) -> np.ndarray:
    """log N(z; 0, 1) - log N(z; 0, sq^2) for draws z of q = N(0, sq^2)."""
    return -0.5 * z**2 + 0.5 * (z / sq) ** 2 + math.log(sq)


@pytest.mark.parametrize("sq", [0.7, 0.8, 0.9])
def test_khat_of_a_too_narrow_gaussian_proposal(sq):
    rng = np.random.default_rng(0)
    log_w = _gaussian_log_w(sq * rng.standard_normal((100, 4000)), sq)  # (rows, K)
    khat = psis_khat_rows(log_w)
    assert khat.shape == (100,)
    # per-row sd ~0.1; finite-K bias pulls the mean 0.02-0.04 below k
    assert abs(khat.mean() - (1 - sq**2)) < 0.06, khat.mean()


# (s_q, K) -> ArviZ 0.23.4's k-hat of the weights of q's quantiles (i + 0.3) / K
PINNED = {(0.5, 100): 0.576881, (0.5, 4000): 0.674127, (0.7, 100): 0.464111,
          (0.7, 4000): 0.476429, (0.9, 100): 0.312852, (0.9, 4000): 0.211659}


@pytest.mark.parametrize(("sq", "K"), sorted(PINNED))
def test_khat_agrees_with_arviz_0x(sq, K):
    z = sq * ndtri((np.arange(K) + 0.3) / K)
    khat = psis_khat_rows(_gaussian_log_w(z, sq)[None])[0]
    # K = 100: both versions fit the 20 largest; K = 4000: 0.x fits 190, 1.x 189 (1.3.0 gives
    # 0.002 more on each)
    assert khat == pytest.approx(PINNED[sq, K], abs=1e-6 if K == 100 else 0.01)


def test_khat_edge_cases():
    assert MIN_PSIS_SAMPLES == 30
    tied = np.zeros((2, 100))
    tied[0, :3] = 1.0  # a tail of ties: the fit fails, inf in both versions
    tied[1] = np.linspace(0, 1, 100)
    khat = psis_khat_rows(tied)
    assert khat[0] == math.inf and math.isfinite(khat[1])
    assert math.isfinite(psis_khat_rows(np.random.default_rng(1).normal(size=(1, 30)))[0])
    with pytest.raises(ValueError, match="K >= 30"):
        psis_khat_rows(np.zeros((3, 29)))
    log_w = np.random.default_rng(2).normal(size=(3, 200))
    log_w[:, :20] = -np.inf  # zero weights are fine
    assert np.isfinite(psis_khat_rows(log_w)).all()


def test_rhat_and_ess_of_iid_draws():
    z = np.random.default_rng(3).standard_normal((4, 1000, 3))  # (chains, draws, dims)
    data = posterior_data(z)
    assert data.posterior["z"].shape == (4, 1000, 3)
    rhat, ess_bulk, ess_tail = convergence(data)
    assert rhat.shape == ess_bulk.shape == ess_tail.shape == (3,)
    assert (abs(rhat - 1) < 0.01).all(), rhat
    assert (abs(ess_bulk / 4000 - 1) < 0.15).all(), ess_bulk
    assert (abs(ess_tail / 4000 - 1) < 0.15).all(), ess_tail
    z[1] += 3.0  # one chain elsewhere: not converged
    rhat, ess_bulk, _ = convergence(posterior_data(z))
    assert (rhat > 1.3).all() and (ess_bulk < 400).all()
    with pytest.raises(ValueError, match="chains, draws, dims"):
        posterior_data(z[0])
