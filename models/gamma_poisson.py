r"""A known-answer model with a constrained latent: a Gamma rate and Poisson counts.

Each datapoint is D counts that share one positive rate,

.. math::

    \lambda \sim \mathrm{Gamma}(a, b) \;\text{(shape a, rate b)}, \qquad
    x_d \mid \lambda \sim \mathrm{Poisson}(\lambda), \quad d = 1..D,

so the posterior is :math:`\mathrm{Gamma}(a + S, b + D)` with :math:`S = \sum_d x_d`, and

.. math::

    \log p(x) = \log\Gamma(a + S) - \log\Gamma(a) - \sum_d \log x_d!
                + a \log b - (a + S) \log(b + D).

It is written as a Pyro model/guide pair, so the estimators reach it the way they reach a
user's program: :class:`pgm.inference.program.Program` moves :math:`\lambda` to R by its log
(``biject_to``) and adds the log-Jacobian. The guide has the posterior's shape and a rate
``guide_rate_error`` (30%) off, so every bound is strict. The larger D, the narrower the
posterior against the prior, and the more work AIS started from the prior has to do.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

__all__ = ["GammaPoisson"]


@dataclass(frozen=True)
class GammaPoisson:
    """``model(x)`` and ``guide(x)`` for x of shape ``(B, D)``; ``log_marginal(x)`` exact."""

    a: float = 2.0
    b: float = 1.0
    guide_rate_error: float = 1.3

    def model(self, x: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            lam = pyro.sample("lam", dist.Gamma(self.a, self.b))
            pyro.sample("counts", dist.Poisson(lam.unsqueeze(-1)).to_event(1), obs=x)

    def guide(self, x: Tensor) -> None:
        shape, rate = self.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("lam", dist.Gamma(shape, self.guide_rate_error * rate))

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Shape and rate of p(lambda | x), each ``(B,)``."""
        return self.a + x.sum(-1), torch.full(x.shape[:1], self.b + x.shape[-1], dtype=x.dtype)

    def log_marginal(self, x: Tensor) -> Tensor:
        """Exact log p(x) ``(B,)``, float64."""
        x = x.double()
        shape, rate = self.posterior(x)
        return (torch.lgamma(shape) - torch.lgamma(torch.tensor(self.a, dtype=torch.float64))
                - torch.lgamma(x + 1).sum(-1) + self.a * torch.log(torch.tensor(self.b).double())
                - shape * torch.log(rate))

    def sample(self, n: int, counts: int) -> Tensor:
        """``(n, counts)`` datapoints drawn from the model (float32; torch's global RNG)."""
        lam = dist.Gamma(self.a, self.b).sample((n, 1))
        return dist.Poisson(lam.expand(n, counts)).sample()
