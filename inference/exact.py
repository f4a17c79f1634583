r"""Exact log p(x) by enumeration of a discrete latent.

.. math::

    \log p(x) = \log \sum_{m=1}^{M} p(m)\, p(x | m),

a logsumexp over the M values of m (e.g. a mixture's component), exact up to rounding: the
sum is accumulated in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["enumerate_log_marginal"]


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
