r"""Probabilistic PCA as a Pyro model/guide pair, with its closed-form log p(x) and posterior.

:math:`z \sim \mathcal N(0, I_L)`, :math:`x | z \sim \mathcal N(Wz + b, \sigma^2 I_D)`, so
exactly (Tipping & Bishop 1999)

.. math::

    x \sim \mathcal N(b,\ WW^\top + \sigma^2 I_D), \qquad
    z | x \sim \mathcal N\big(S W^\top (x - b) / \sigma^2,\ S\big), \qquad
    S = (I_L + W^\top W / \sigma^2)^{-1}.

:func:`linear_gaussian_log_marginal` and :func:`linear_gaussian_posterior` compute them for any
W, b, sigma, and :func:`linear_gaussian_sample` draws pairs (x, z) from the model, each z an
exact sample of p(z | x): the known answers the stochastic estimators are tested against.

The guide is an amortized diagonal Gaussian with a linear encoder, so the ELBO is strictly
below log p(x) unless the true posterior covariance happens to be diagonal. Every estimator can
be checked against :meth:`LinearGaussian.exact_log_marginal` through the same contract as a
VAE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pgm.inference.bounds import check_data
from pgm.likelihoods import Gaussian
from pgm.protocol import LatentVariableModel

_LOG_2PI = math.log(2 * math.pi)


def _check_linear_gaussian(W: Tensor, b: Tensor, sigma: float | Tensor) -> tuple[int, int]:
    if W.dim() != 2:
        raise ValueError(f"W must have shape (D, L), got {tuple(W.shape)}")
    D, L = W.shape
    if b.shape != (D,):
        raise ValueError(f"b must have shape ({D},), got {tuple(b.shape)}")
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be positive, got {float(sigma)}")
    return D, L


def linear_gaussian_log_marginal(x: Tensor, W: Tensor, b: Tensor, sigma: float | Tensor) -> Tensor:
    r"""Closed-form :math:`\log \mathcal{N}(x; b, WW^\top + \sigma^2 I)`, ``(B,)`` float64."""
    D, _ = _check_linear_gaussian(W, b, sigma)
    check_data(x)
    if x.dim() != 2 or x.shape[1] != D:
        raise ValueError(f"x must have shape (B, {D}), got {tuple(x.shape)}")
    W, b, x = W.double(), b.double(), x.double()
    cov = W @ W.T + float(sigma) ** 2 * torch.eye(D, dtype=torch.float64, device=W.device)
    chol = torch.linalg.cholesky(cov)  # (D, D)
    y = torch.linalg.solve_triangular(chol, (x - b).T, upper=False)  # (D, B)
    return -0.5 * (y * y).sum(0) - torch.log(torch.diagonal(chol)).sum() - 0.5 * D * _LOG_2PI


def linear_gaussian_posterior(
    x: Tensor, W: Tensor, b: Tensor, sigma: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Exact posterior of the linear-Gaussian model: means ``(B, L)`` and covariance ``(L, L)``."""
    _, L = _check_linear_gaussian(W, b, sigma)
    s2 = float(sigma) ** 2
    precision = torch.eye(L, dtype=W.dtype, device=W.device) + W.T @ W / s2
    cov = torch.linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    mean = (x.to(W.dtype) - b) @ W @ cov / s2  # (B, L); cov is symmetric
    return mean, cov


def linear_gaussian_sample(
    W: Tensor, b: Tensor, sigma: float | Tensor, n: int, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Simulate ``n`` pairs from the model: ``x`` ``(n, D)`` and ``z`` ``(n, L)``.

    Each z is an exact sample of p(z | x) for its x (what BDMC needs).
    """
    D, L = _check_linear_gaussian(W, b, sigma)
    z = torch.randn(n, L, generator=generator, dtype=W.dtype, device=W.device)
    noise = torch.randn(n, D, generator=generator, dtype=W.dtype, device=W.device)
    return z @ W.T + b + float(sigma) * noise, z


@dataclass
class LinearGaussianConfig:
    data_dim: int
    latent_dim: int = 2
    sigma: float = 0.5  # observation noise scale (fixed)


class LinearGaussian(LatentVariableModel):
    """``LinearGaussian(data_dim=5, latent_dim=2, sigma=0.5)``; decoder ``Wz + b``."""

    name = "linear-gaussian"
    Config = LinearGaussianConfig
    exact_method = "closed form"

    def __init__(self, config: LinearGaussianConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else LinearGaussianConfig(**kwargs)
        c = self.config
        self.data_dim, self.latent_dim = c.data_dim, c.latent_dim
        self.likelihood = Gaussian(c.sigma)
        self.decoder = nn.Linear(c.latent_dim, c.data_dim)
        self.encoder = nn.Linear(c.data_dim, 2 * c.latent_dim)
        self._init_prior(c.latent_dim)

    def encode(self, x, y=None):
        m, s = self.encoder(x).chunk(2, dim=-1)
        return dist.Normal(m, torch.exp(0.5 * s)).to_event(1)

    def decode(self, z, y=None):
        return self.likelihood(self.decoder(z))

    @torch.no_grad()
    def exact_log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; b, WW^T + sigma^2 I) per datapoint, (B,) float64."""
        return linear_gaussian_log_marginal(x, self.decoder.weight, self.decoder.bias,
                                            self.config.sigma)

    @torch.no_grad()
    def exact_posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        """p(z | x) = N(mean(x), S), batch shape (B,)."""
        mean, cov = linear_gaussian_posterior(x, self.decoder.weight, self.decoder.bias,
                                              self.config.sigma)
        return dist.MultivariateNormal(mean, covariance_matrix=cov.expand(len(x), -1, -1))
