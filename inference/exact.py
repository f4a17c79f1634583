r"""Exact log p(x): closed form and enumeration.

These are the known answers the stochastic estimators are tested against, and the exact
log-likelihood of models small enough to allow it.

- :func:`linear_gaussian_log_marginal`: the linear-Gaussian model (probabilistic PCA; Tipping
  & Bishop 1999) :math:`z \sim \mathcal{N}(0, I_L)`,
  :math:`x | z \sim \mathcal{N}(Wz + b, \sigma^2 I_D)` has
  :math:`x \sim \mathcal{N}(b, WW^\top + \sigma^2 I_D)` and the Gaussian posterior
  :math:`z | x \sim \mathcal{N}(S W^\top (x - b) / \sigma^2, S)`,
  :math:`S = (I_L + W^\top W / \sigma^2)^{-1}`.
- :func:`enumerate_log_marginal`: :math:`\log \sum_m p(m)\, p(x | m)` for discrete latents.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .bounds import check_data

__all__ = [
    "enumerate_log_marginal",
    "linear_gaussian_log_marginal",
    "linear_gaussian_posterior",
    "linear_gaussian_sample",
]

_LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------
# Linear-Gaussian model


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


# --------------------------------------------------------------------------------------------
# Enumeration


def enumerate_log_marginal(log_prior_m: Tensor, log_lik: Tensor) -> Tensor:
    r""":math:`\log p(x) = \log \sum_m p(m)\, p(x | m)` for a discrete latent m, ``(B,)`` float64.

    Args:
        log_prior_m: ``(M,)`` (or ``(M, B)``) log p(m); must be normalised over m.
        log_lik: ``(M, B)`` log p(x | m).
    """
    if log_lik.dim() != 2:
        raise ValueError(f"log_lik must have shape (M, B), got {tuple(log_lik.shape)}")
    M, B = log_lik.shape
    if log_prior_m.shape not in ((M,), (M, B)):
        raise ValueError(
            f"log_prior_m must have shape ({M},) or ({M}, {B}), got {tuple(log_prior_m.shape)}"
        )
    log_prior_m = log_prior_m.to(torch.float64)
    total = torch.logsumexp(log_prior_m, dim=0)
    if not bool(torch.allclose(total, torch.zeros_like(total), atol=1e-4)):
        raise ValueError(
            f"log_prior_m must be normalised (logsumexp 0), got {total.max().item():.6g}"
        )
    if log_prior_m.dim() == 1:
        log_prior_m = log_prior_m.unsqueeze(-1)
    return torch.logsumexp(log_prior_m + log_lik.to(torch.float64), dim=0)
