r"""Hamiltonian Monte Carlo, vectorised over any batch of independent chains.

One HMC transition (Duane et al. 1987; Neal 2011, "MCMC using Hamiltonian dynamics",
https://arxiv.org/abs/1206.1901), with identity mass matrix by default: draw a momentum
:math:`p \sim \mathcal{N}(0, I)`, run ``num_leapfrog`` leapfrog steps of size
:math:`\epsilon` on :math:`H(z, p) = -\log \pi(z) + \tfrac12 \|p\|^2`, accept the end point
with probability :math:`\min(1, \exp(H_0 - H_1))`. The kernel leaves :math:`\pi` invariant for
every fixed step size.

Kernels follow BlackJAX: ``state, info = hmc_step(state, log_density_fn)`` with NamedTuple
state and info; the loop belongs to the caller. Positions ``z`` have shape ``(..., L)``;
everything else has the batch shape ``(...)`` -- one log density, gradient and step size per
chain. ``log_density_fn(z)`` must return shape ``(...)`` and treat chains independently
(gradients come from ``torch.autograd.grad`` of the summed log density).

**A mass matrix.** With ``inverse_mass_sqrt`` C (one ``(L, L)`` matrix per chain, or per
group of chains, broadcast), the mass matrix is :math:`M = (C C^\top)^{-1}`: the momentum is
kept as :math:`v = C^\top p \sim \mathcal N(0, I)`, the kinetic energy is
:math:`\tfrac12 \|v\|^2`, and a leapfrog step moves :math:`v \mathrel{+}= \tfrac\epsilon2
C^\top \nabla \log \pi(z)` and :math:`z \mathrel{+}= \epsilon\, C v`: HMC with identity
mass in the coordinates :math:`u = C^{-1} z` (Neal 2011, sec. 4.1), which a target whose
covariance is close to :math:`C C^\top` sees as isotropic. The kernel leaves :math:`\pi`
invariant for every fixed C, as for every fixed step size.

Step-size adaptation (:func:`adapt_step_size`) is the multiplicative rule of Wu et al.'s AIS
code ("On the Quantitative Analysis of Decoder-Based Generative Models", 2017): multiply by
``1 + rate`` when the acceptance probability is above target, by ``1 - rate`` otherwise,
clipped to ``[min_step_size, max_step_size]``. It acts elementwise on per-chain step sizes;
the caller chooses the acceptance signal (AIS pools it over the chains of a datapoint).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "HMCInfo",
    "HMCState",
    "adapt_step_size",
    "hmc_init",
    "hmc_step",
    "value_and_grad",
]

LogDensityFn = Callable[[Tensor], Tensor]


class HMCState(NamedTuple):
    """Position and cached log density/gradient of a batch of chains.

    z: ``(..., L)``; log_density: ``(...)``; grad: ``(..., L)``; step_size: ``(...)``;
    aux: what a ``value_and_grad_fn`` returned beside them at z (``(...)`` or ``(..., L)``
    tensors), kept for the accepted position like the rest.
    """

    z: Tensor
    log_density: Tensor
    grad: Tensor
    step_size: Tensor
    aux: tuple = ()


class HMCInfo(NamedTuple):
    """Per-chain diagnostics of one transition, each of shape ``(...)``.

    accept_prob: Metropolis acceptance probability (0 for divergent trajectories).
    accepted: whether the proposal was taken.
    divergent: energy error above the threshold, or a non-finite energy.
    """

    accept_prob: Tensor
    accepted: Tensor
    divergent: Tensor


def value_and_grad(log_density_fn: LogDensityFn, z: Tensor) -> tuple[Tensor, Tensor]:
    """Log density ``(...)`` and its gradient ``(..., L)`` at ``z``, both detached."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        log_density = log_density_fn(z)
        if not isinstance(log_density, Tensor) or log_density.shape != z.shape[:-1]:
            got = tuple(log_density.shape) if isinstance(log_density, Tensor) else log_density
            raise ValueError(
                f"log_density_fn must return the batch shape {tuple(z.shape[:-1])}, got {got}"
            )
        grad = None
        if log_density.requires_grad:
            (grad,) = torch.autograd.grad(log_density.sum(), z, allow_unused=True)
    if grad is None:  # a density that does not depend on z
        grad = torch.zeros_like(z)
    return log_density.detach(), grad.detach()


def hmc_init(z: Tensor, log_density_fn: LogDensityFn, step_size: float | Tensor) -> HMCState:
    """Start chains at ``z`` ``(..., L)``; ``step_size`` is a float or a ``(...)`` tensor."""
    log_density, grad = value_and_grad(log_density_fn, z)
    step_size = torch.as_tensor(step_size, dtype=z.dtype, device=z.device)
    step_size = step_size.expand(z.shape[:-1]).clone()
    if not bool((step_size > 0).all()):
        raise ValueError("step sizes must be positive")
    return HMCState(z.detach(), log_density, grad, step_size)


def hmc_step(
    state: HMCState,
    log_density_fn: LogDensityFn | None,
    *,
    num_leapfrog: int = 10,
    generator: torch.Generator | None = None,
    divergence_threshold: float = 1000.0,
    value_and_grad_fn: Callable[[Tensor], tuple[Tensor, Tensor, tuple]] | None = None,
    grad_fn: Callable[[Tensor], Tensor] | None = None,
    inverse_mass_sqrt: Tensor | None = None,
) -> tuple[HMCState, HMCInfo]:
    """One HMC transition for every chain; the step size is carried over unchanged.

    ``state.log_density`` and ``state.grad`` must belong to ``log_density_fn`` (rebuild the
    state with :func:`hmc_init` when the target changes). ``value_and_grad_fn(z)``, if given,
    computes ``(log density, gradient, aux)`` itself in place of ``log_density_fn`` (a density
    made of parts, as AIS's, whose parts at the new position ``aux`` keeps). ``grad_fn(z)``,
    if given, is the gradient alone, taken at the leapfrog steps whose log density is never
    used (all but the last): a cheaper route to it saves those steps the density's cost.
    ``inverse_mass_sqrt``: C with :math:`M^{-1} = C C^\top`, shape ``(..., L, L)`` or one that
    broadcasts to it (the module docstring); None: identity mass.
    """
    if isinstance(num_leapfrog, bool) or not isinstance(num_leapfrog, int) or num_leapfrog < 1:
        raise ValueError(f"num_leapfrog must be a positive integer, got {num_leapfrog!r}")
    if value_and_grad_fn is None:
        def value_and_grad_fn(z):
            return (*value_and_grad(log_density_fn, z), ())
    z0 = state.z
    eps = state.step_size.unsqueeze(-1)  # (..., 1)
    if inverse_mass_sqrt is None:
        def scaled(v):  # C v and C^T g with C = I
            return v
        scaled_t = scaled
    else:
        c = inverse_mass_sqrt.to(dtype=z0.dtype, device=z0.device)
        if c.shape[-2:] != (z0.shape[-1],) * 2:
            raise ValueError(f"inverse_mass_sqrt must have shape (..., {z0.shape[-1]}, "
                             f"{z0.shape[-1]}), got {tuple(c.shape)}")
        # (einsum, not c @ v[..., None]: broadcasting c over the chains that way copies it per
        # chain, 8x slower for 6 chains x 50 datapoints in 64 dimensions)
        def scaled(v):
            return torch.einsum("...ij,...j->...i", c, v)

        def scaled_t(g):
            return torch.einsum("...ji,...j->...i", c, g)
    p = torch.randn(z0.shape, generator=generator, dtype=z0.dtype, device=z0.device)
    energy0 = -state.log_density + 0.5 * (p * p).sum(-1)  # (...)

    # Leapfrog: half momentum step, alternating full steps, half momentum step.
    z, grad = z0, state.grad
    p = p + 0.5 * eps * scaled_t(grad)
    for i in range(num_leapfrog):
        z = z + eps * scaled(p)
        if i < num_leapfrog - 1:
            grad = value_and_grad_fn(z)[1] if grad_fn is None else grad_fn(z)
            p = p + eps * scaled_t(grad)
        else:
            log_density, grad, aux = value_and_grad_fn(z)
    p = p + 0.5 * eps * scaled_t(grad)
    energy1 = -log_density + 0.5 * (p * p).sum(-1)  # (...)

    delta = energy0 - energy1  # log acceptance ratio
    divergent = ~torch.isfinite(delta) | (-delta > divergence_threshold)
    delta = torch.where(divergent, torch.full_like(delta, -torch.inf), delta)
    accept_prob = torch.exp(torch.clamp(delta, max=0.0))
    u = torch.rand(delta.shape, generator=generator, dtype=delta.dtype, device=delta.device)
    accepted = u < accept_prob

    keep = accepted.unsqueeze(-1)
    if len(aux) != len(state.aux):
        raise ValueError(f"value_and_grad_fn returned {len(aux)} aux values, the state holds "
                         f"{len(state.aux)}")
    new_state = HMCState(
        z=torch.where(keep, z, z0),
        log_density=torch.where(accepted, log_density, state.log_density),
        grad=torch.where(keep, grad, state.grad),
        step_size=state.step_size,
        aux=tuple(torch.where(keep if a.dim() == z.dim() else accepted, a, a0)
                  for a, a0 in zip(aux, state.aux)),
    )
    return new_state, HMCInfo(accept_prob, accepted, divergent)


def adapt_step_size(
    step_size: Tensor,
    accept_prob: Tensor,
    *,
    target: float = 0.65,
    rate: float = 0.02,
    min_step_size: float = 1e-4,
    max_step_size: float = 1.0,
) -> Tensor:
    """Multiplicative step-size update: ``*(1 + rate)`` above target, else ``*(1 - rate)``.

    ``accept_prob`` has the shape of ``step_size`` (or broadcasts to it). Inside AIS, feed it
    an acceptance *pooled over chains*: a chain adapted on its own acceptance gets a kernel
    that depends on where it is, which is no longer invariant for the target and measurably
    biases the AIS weights (see :mod:`pgm.inference.ais`).
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target acceptance must be in (0, 1), got {target!r}")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1), got {rate!r}")
    up = torch.as_tensor(accept_prob, device=step_size.device) > target
    factor = torch.where(up, 1.0 + rate, 1.0 - rate).to(step_size.dtype)
    return torch.clamp(step_size * factor, min_step_size, max_step_size)
