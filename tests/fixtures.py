"""Test fixtures shared by the estimator tests: the linear-Gaussian model as LatentCallables.

:func:`linear_gaussian_callables` wraps the closed-form linear-Gaussian model
(:mod:`pgm.models.linear_gaussian`) as the four callables the estimators take, with a Gaussian
guide q(z|x) that is exact or deliberately wrong, so that every bound and estimator can be
checked against the exact log p(x).
"""

import math

import torch
from torch import Tensor

from pgm.inference.callables import LatentCallables
from pgm.models.linear_gaussian import _check_linear_gaussian, linear_gaussian_posterior

_LOG_2PI = math.log(2 * math.pi)


def _mvn_log_prob(z: Tensor, loc: Tensor, scale_tril: Tensor) -> Tensor:
    """log N(z; loc, LL^T) for z (K, B, L), loc (B, L) and a shared (L, L) factor -> (K, B)."""
    L = z.shape[-1]
    diff = (z - loc).unsqueeze(-1)  # (K, B, L, 1)
    y = torch.linalg.solve_triangular(scale_tril, diff, upper=False).squeeze(-1)  # (K, B, L)
    return -0.5 * (y * y).sum(-1) - torch.log(torch.diagonal(scale_tril)).sum() - 0.5 * L * _LOG_2PI


def linear_gaussian_callables(
    W: Tensor,
    b: Tensor,
    sigma: float | Tensor,
    *,
    q: str = "exact",
    shift: float = 0.5,
    scale: float = 1.0,
) -> LatentCallables:
    r""":class:`LatentCallables` for the linear-Gaussian model with a Gaussian guide.

    ``q`` chooses the guide q(z|x):

    - ``"exact"``: the exact posterior :math:`\mathcal{N}(m(x), S)`. Every log weight equals
      log p(x), so the ELBO and every IWAE bound are exact, and AIS started from q is exact.
    - ``"perturbed"``: mean-field and off-centre,
      :math:`\mathcal{N}(m(x) + \text{shift}\cdot s,\ \mathrm{diag}(\text{scale}\cdot s)^2)` with
      :math:`s = \sqrt{\mathrm{diag}\, S}`; the bounds are strict.
    - ``"prior-like"``: :math:`q(z|x) = p(z) = \mathcal{N}(0, I)`, ignoring x.

    Computations run in ``W.dtype`` (use float64 for tests); sampling uses torch's global RNG.
    """
    D, L = _check_linear_gaussian(W, b, sigma)
    sigma = float(sigma)
    dtype, device = W.dtype, W.device
    _, cov = linear_gaussian_posterior(torch.zeros(1, D, dtype=dtype, device=device), W, b, sigma)
    sd = torch.sqrt(torch.diagonal(cov))
    if q == "exact":
        q_scale_tril = torch.linalg.cholesky(cov)

        def q_loc(x: Tensor) -> Tensor:
            return linear_gaussian_posterior(x, W, b, sigma)[0]

    elif q == "perturbed":
        q_scale_tril = torch.diag(scale * sd)

        def q_loc(x: Tensor) -> Tensor:
            return linear_gaussian_posterior(x, W, b, sigma)[0] + shift * sd

    elif q == "prior-like":
        q_scale_tril = torch.eye(L, dtype=dtype, device=device)

        def q_loc(x: Tensor) -> Tensor:
            return torch.zeros(x.shape[0], L, dtype=dtype, device=device)

    else:
        raise ValueError(f"q must be 'exact', 'perturbed' or 'prior-like', got {q!r}")

    def log_prior(z: Tensor) -> Tensor:  # (K, B, L) -> (K, B)
        return -0.5 * (z * z).sum(-1) - 0.5 * L * _LOG_2PI

    def log_joint(x: Tensor, z: Tensor) -> Tensor:  # x (B, D), z (K, B, L) -> (K, B)
        resid = (x.to(dtype) - b - z @ W.T) / sigma  # (K, B, D)
        log_lik = -0.5 * (resid * resid).sum(-1) - D * math.log(sigma) - 0.5 * D * _LOG_2PI
        return log_lik + log_prior(z)

    def sample_q(x: Tensor, K: int) -> Tensor:  # -> (K, B, L)
        eps = torch.randn(K, x.shape[0], L, dtype=dtype, device=device)
        return q_loc(x) + eps @ q_scale_tril.T

    def log_q(z: Tensor, x: Tensor) -> Tensor:  # -> (K, B)
        return _mvn_log_prob(z, q_loc(x), q_scale_tril)

    def sample_prior(B: int, K: int) -> Tensor:  # -> (K, B, L)
        return torch.randn(K, B, L, dtype=dtype, device=device)

    def grad_log_joint(x: Tensor, z: Tensor) -> Tensor:  # -> (K, B, L), in closed form
        resid = (x.to(dtype) - b - z @ W.T) / sigma**2  # (K, B, D)
        return resid @ W - z

    def grad_log_prior(z: Tensor) -> Tensor:  # -> (K, B, L), in closed form
        return -z

    return LatentCallables(log_joint, log_prior, sample_q, log_q, sample_prior, grad_log_joint,
                           grad_log_prior)
