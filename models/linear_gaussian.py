r"""Probabilistic PCA as a Pyro model/guide pair: the test model with a closed-form log p(x).

:math:`z \sim \mathcal N(0, I_L)`, :math:`x | z \sim \mathcal N(Wz + b, \sigma^2 I_D)`, so
:math:`x \sim \mathcal N(b, WW^\top + \sigma^2 I)` exactly (Tipping & Bishop 1999). The guide is
an amortized diagonal Gaussian with a linear encoder, so the ELBO is strictly below log p(x)
unless the true posterior covariance happens to be diagonal. Every estimator can be checked
against :meth:`LinearGaussian.exact_log_marginal` through the same contract as a VAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch import nn

from pgm.inference.exact import linear_gaussian_log_marginal, linear_gaussian_posterior
from pgm.likelihoods import Gaussian
from pgm.protocol import LatentVariableModel


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
