r"""Exact log p(x): closed form, quadrature for latent dimension <= 2, enumeration.

These are the known answers the stochastic estimators are tested against, and the exact
log-likelihood of models small enough to allow it.

- :func:`linear_gaussian_log_marginal`: the linear-Gaussian model (probabilistic PCA; Tipping
  & Bishop 1999) :math:`z \sim \mathcal{N}(0, I_L)`,
  :math:`x | z \sim \mathcal{N}(Wz + b, \sigma^2 I_D)` has
  :math:`x \sim \mathcal{N}(b, WW^\top + \sigma^2 I_D)` and the Gaussian posterior
  :math:`z | x \sim \mathcal{N}(S W^\top (x - b) / \sigma^2, S)`,
  :math:`S = (I_L + W^\top W / \sigma^2)^{-1}`.
  :func:`linear_gaussian_callables` wraps it as :class:`LatentCallables` with a Gaussian
  guide that is exact or deliberately wrong.
- :func:`quadrature_log_marginal`: :math:`\log \int p(x, z)\,dz` on an adaptive grid for
  L in {1, 2} and any ``log_joint`` (e.g. a VAE decoder with a 2-D latent).
- :func:`enumerate_log_marginal`: :math:`\log \sum_m p(m)\, p(x | m)` for discrete latents.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .bounds import PAIRS_PER_CHUNK, check_data
from .callables import Estimate, LatentCallables

__all__ = [
    "enumerate_log_marginal",
    "linear_gaussian_callables",
    "linear_gaussian_log_marginal",
    "linear_gaussian_posterior",
    "linear_gaussian_sample",
    "quadrature_log_marginal",
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

    return LatentCallables(log_joint, log_prior, sample_q, log_q, sample_prior)


# --------------------------------------------------------------------------------------------
# Quadrature


def _posterior_mode_and_scale(
    log_joint: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    latent_dim: int,
    dtype: torch.dtype,
    mode_steps: int,
) -> tuple[Tensor, Tensor]:
    """Batched MAP of z (B, L) by L-BFGS from 0, and the Cholesky factor (B, L, L) of the
    inverse negative Hessian there (identity where the Hessian is not negative definite)."""
    B = x.shape[0]

    def objective(z: Tensor) -> Tensor:
        return log_joint(x, z.unsqueeze(0)).squeeze(0)  # (B,)

    z = torch.zeros(B, latent_dim, dtype=dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [z],
        max_iter=mode_steps,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
    )

    def closure() -> Tensor:
        with torch.enable_grad():
            loss = -objective(z).sum()
            (z.grad,) = torch.autograd.grad(loss, z)  # only z: never touch the model's .grad
        return loss.detach()

    optimizer.step(closure)
    mode = z.detach()
    if not bool(torch.isfinite(mode).all()):
        mode = torch.zeros_like(mode)

    with torch.enable_grad():
        z = mode.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(z).sum(), z, create_graph=True)
        rows = [
            torch.autograd.grad(grad[:, i].sum(), z, retain_graph=True)[0]
            for i in range(latent_dim)
        ]
    hessian = torch.stack(rows, dim=1).detach()  # (B, L, L)
    hessian = 0.5 * (hessian + hessian.transpose(-1, -2))
    eye = torch.eye(latent_dim, dtype=dtype, device=x.device).expand(B, -1, -1)
    cov = torch.linalg.inv(-hessian) if bool(torch.isfinite(hessian).all()) else eye
    chol, info = torch.linalg.cholesky_ex(cov)
    bad = (info != 0) | ~torch.isfinite(chol).all(-1).all(-1)
    chol = torch.where(bad[:, None, None], eye, chol)
    return mode, chol


def _grid_log_integral(
    log_joint: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    mode: Tensor,
    chol: Tensor,
    num_points: int,
    half_width: float,
    chunk_size: int,
) -> Tensor:
    """Midpoint rule on a ``num_points``^L grid over [-half_width, half_width]^L in the frame
    z = mode + chol @ u; streaming logsumexp over chunks of grid points. Returns (B,) float64."""
    B, L = mode.shape
    h = 2 * half_width / num_points
    axis = -half_width + h * (torch.arange(num_points, dtype=mode.dtype, device=mode.device) + 0.5)
    u = torch.cartesian_prod(*([axis] * L)).reshape(-1, L)  # (M, L)
    log_cell = L * math.log(h) + torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (B,)
    total = torch.full((B,), -math.inf, dtype=torch.float64, device=mode.device)
    with torch.no_grad():
        for start in range(0, u.shape[0], chunk_size):
            uc = u[start : start + chunk_size]  # (m, L)
            z = mode + torch.einsum("bij,mj->mbi", chol, uc)  # (m, B, L)
            values = log_joint(x, z).to(torch.float64)  # (m, B)
            if values.shape != (uc.shape[0], B):
                raise ValueError(
                    f"log_joint must return shape ({uc.shape[0]}, {B}), got {tuple(values.shape)}"
                )
            total = torch.logaddexp(total, torch.logsumexp(values, dim=0))
    return total + log_cell.to(torch.float64)


def quadrature_log_marginal(
    log_joint: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    *,
    latent_dim: int,
    tol: float = 1e-5,
    num_points: int | None = None,
    num_sd: float = 6.0,
    max_points: int | None = None,
    mode_steps: int = 100,
    chunk_size: int | None = None,
) -> Estimate:
    r"""Adaptive grid quadrature of :math:`\log p(x) = \log \int p(x, z)\, dz` for L in {1, 2}.

    Per datapoint: find the posterior mode by L-BFGS from z = 0 (batched over datapoints), take
    the Laplace covariance :math:`C = (-\nabla^2 \log p(x, z))^{-1}` there, and integrate with
    the midpoint rule on a grid z = mode + chol(C) u, u in :math:`[-w, w]^L`. Starting from
    ``num_points`` points per dimension and w = ``num_sd``, each refinement doubles the points
    and widens w by 1.5 (so the spacing also shrinks), until the value changes by less than
    ``tol`` for every datapoint or the points exceed ``max_points``. For smooth integrands the
    midpoint rule converges geometrically; a posterior mode far outside the grid is found only
    if the widening reaches it.

    Args:
        log_joint: ``log_joint(x, z)`` ``(K, B)`` for z ``(K, B, L)``.
        x: ``(B, ...)`` datapoints.
        latent_dim: L, 1 or 2.
        tol: convergence threshold on the change of log p(x), in nats.
        num_points: initial points per dimension (default 64 for L = 1, 32 for L = 2).
        num_sd: initial half-width, in Laplace standard deviations.
        max_points: cap on points per dimension (default 8192 for L = 1, 512 for L = 2).
        mode_steps: L-BFGS iterations for the mode.
        chunk_size: grid points per call to ``log_joint`` (default ~:data:`PAIRS_PER_CHUNK`
            (point, datapoint) pairs).

    Returns:
        :class:`Estimate` with float64 ``per_datapoint``; ``extra`` holds ``change`` ``(B,)``
        (the last refinement's change), ``max_change``, ``converged``, ``num_points``,
        ``half_width_sd`` and ``latent_dim``. Warns (RuntimeWarning) if not converged.
    """
    start = time.perf_counter()
    B = check_data(x)
    if latent_dim not in (1, 2):
        raise ValueError(f"quadrature needs latent_dim 1 or 2, got {latent_dim!r}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    n = num_points if num_points is not None else (64 if latent_dim == 1 else 32)
    n_max = max_points if max_points is not None else (8192 if latent_dim == 1 else 512)
    if n < 2 or n_max < n:
        raise ValueError(f"need 2 <= num_points <= max_points, got {n} and {n_max}")
    if chunk_size is None:
        chunk_size = max(1, PAIRS_PER_CHUNK // B)
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()

    mode, chol = _posterior_mode_and_scale(log_joint, x, latent_dim, dtype, mode_steps)
    width = float(num_sd)
    value = _grid_log_integral(log_joint, x, mode, chol, n, width, chunk_size)
    change = torch.full_like(value, math.inf)
    while 2 * n <= n_max:
        n, width = 2 * n, 1.5 * width
        new = _grid_log_integral(log_joint, x, mode, chol, n, width, chunk_size)
        change = (new - value).abs()
        change = torch.where(torch.isnan(change), torch.full_like(change, math.inf), change)
        value = new
        if bool((change < tol).all()):
            break
    max_change = change.max().item()
    converged = max_change < tol
    if not converged:
        warnings.warn(
            f"quadrature did not converge: last change {max_change:.3g} nats >= tol {tol:g} "
            f"with {n} points per dimension",
            RuntimeWarning,
            stacklevel=2,
        )
    return Estimate.of(
        value,
        seconds=time.perf_counter() - start,
        extra={
            "latent_dim": latent_dim,
            "tol": tol,
            "num_points": n,
            "half_width_sd": width,
            "max_change": max_change,
            "converged": converged,
            "change": change.cpu(),
        },
    )


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
