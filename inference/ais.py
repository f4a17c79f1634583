r"""Annealed importance sampling (AIS) with HMC transitions, and BDMC upper bounds.

AIS (Neal 2001, "Annealed importance sampling", https://arxiv.org/abs/physics/9803008) moves
chains through the intermediate densities

.. math::

    \log \pi_t(z) = \log p_0(z) + \beta_t \,\ell(z), \qquad
    \ell(z) = \log p(x, z) - \log p_0(z), \qquad 0 = \beta_0 \le \dots \le \beta_T = 1,

from a normalised start :math:`p_0` (the prior p(z), or the guide q(z|x)) to the unnormalised
posterior :math:`\pi_T(z) = p(x, z)`, whose normaliser is p(x). A chain starts at
:math:`z_0 \sim p_0`, and for t = 1..T adds :math:`(\beta_t - \beta_{t-1})\,\ell(z_{t-1})` to
its log weight and then takes an HMC transition that leaves :math:`\pi_t` invariant. Then

.. math::

    \mathbb{E}[w] = p(x), \qquad \mathbb{E}[\log w] \le \log p(x),

so the log of the mean weight over chains is a stochastic lower bound on log p(x) (Wu, Burda,
Salakhutdinov & Grosse 2017, "On the Quantitative Analysis of Decoder-Based Generative
Models", https://arxiv.org/abs/1611.04273).

Bidirectional Monte Carlo (Grosse, Ghahramani & Adams 2015, "Sandwiching the marginal
likelihood using bidirectional Monte Carlo", https://arxiv.org/abs/1511.02543) runs the same
chain backwards, :math:`\beta_T \to \beta_0`, started from an *exact* posterior sample
:math:`z_T \sim p(z|x)`. Its weight :math:`w_{\mathrm{rev}} = \prod_t \pi_{t-1}(z)/\pi_t(z)`
satisfies :math:`\mathbb{E}[w_{\mathrm{rev}}] = 1/p(x)`, hence
:math:`-\log \mathrm{mean}(w_{\mathrm{rev}})` is a stochastic *upper* bound on log p(x). An
exact posterior sample is available for data simulated from the model: draw
:math:`z \sim p(z)`, :math:`x \sim p(x|z)`; then z is an exact sample of p(z|x). The gap
between the upper bound and the AIS lower bound bounds the error of both.

One annealing step is a kernel, in the BlackJAX style of :mod:`pgm.inference.hmc`:
``state, info = ais_step(state, x, beta_prev, beta, f)`` with NamedTuple :class:`AISState`
(the chains, their log weights and step sizes) and :class:`AISInfo` (acceptance and
divergences per chain). :func:`ais` and :func:`bdmc_upper` are drivers that own the loops,
over batches of datapoints and over the schedule (forwards for AIS, reversed for BDMC), and
adapt the step sizes between kernel calls.

Chains are vectorised over ``(C, B, L)``: C chains for each of B datapoints. Log weights are
accumulated in float64. Each evaluation keeps log p(x, z) and log p_0(z) apart with their
gradients (:class:`AISState` ``parts``): the target at any temperature, its gradient and
:math:`\ell` for the weight are sums of them, so a step costs its ``num_leapfrog``
gradient evaluations and a run ``T * num_leapfrog`` (one evaluation per step fewer than
re-evaluating the start at each new temperature: on the quickstart's VAE, T=100, 20 images,
one thread, 1.54 s against 1.99 s at 3 leapfrog steps, values equal to 3e-6). Of those
evaluations only the last of each trajectory needs a value (for the Metropolis test and the
weight); the others take the gradient alone, through ``f.grad_log_joint`` where the callables
have it (:func:`pgm.inference.adapter.latent_callables`: the likelihood's score in closed
form, skipping the log density's pass over every pixel), with the same draws and weights
(``bench/estimators.py`` prints both routes side by side). Started from the prior, p_0's
gradient at every step comes from ``f.grad_log_prior`` where the callables have it (the
Gaussian prior's in closed form, :mod:`pgm.inference.scores`).

**Step sizes, tuned by pilot chains.** The HMC step size of the transition that targets
:math:`\pi_j` is one number per datapoint, :math:`\epsilon_j`, for every position j of the
schedule: a ``(T + 1, B)`` table. AIS is exactly unbiased, :math:`\mathbb{E}[w] = p(x)`, when
the kernels are fixed independently of the chains whose weights are averaged. A step size
adapted *from those chains* is not: it then depends on where they have been, and their
weights are no longer importance weights for p(x), so neither bound is guaranteed
(``bench/ais_validity.py``: on the linear-Gaussian model with 2 chains per datapoint, BDMC's
"upper bound" adapted in its own run sat at -0.023 +- 0.017 nats against the exact value,
and at +0.21 +- 0.04 with the scheme below).

``adapt="pilot"`` (the default) follows the two-round scheme of Huang, Makhzani, Cao & Grosse
(2020, "Evaluating Lossy Compression Rates of Deep Generative Models",
https://arxiv.org/abs/2008.06653) -- tune the step sizes on chains of their own, then anneal
with them fixed -- in one pass: ``pilot_chains`` extra chains per datapoint, drawn from p_0
like the others, run beside the ``num_chains`` chains in the same batched calls. After every
transition the step size of the datapoint is updated by the multiplicative rule of
:func:`pgm.inference.hmc.adapt_step_size` from the acceptance probability averaged over its
*pilot* chains alone, and every chain of the datapoint uses it at the next transition. The
pilot chains' weights are thrown away. The step-size sequence is thus a function of x and of
the pilot chains' draws, which are independent of the other chains, so conditionally on it
the remaining chains run AIS with fixed kernels and :math:`\mathbb{E}[w] = p(x)` holds. The
result has the same distribution as a separate pilot run followed by a frozen run, without
paying the per-step overhead twice: the cost is ``(num_chains + pilot_chains) / num_chains``
of the arithmetic (1.25x at the defaults). The table used is ``extra["step_sizes"]``.

BDMC's reverse pass starts at the exact posterior samples, so its step sizes must not come
from them (the start would then depend on the kernel): ``bdmc_upper(adapt="pilot")`` takes
the table from a forward pilot of ``pilot_chains`` chains on the same x (its time is in
``extra["pilot_seconds"]``), or pass a forward AIS run's ``extra["step_sizes"]`` on the same
data with ``adapt="none"``, as :func:`pgm.evaluation.evaluate` does. ``adapt="none"`` takes
``step_size`` as given: a float, one per datapoint ``(B,)``, or a table ``(T + 1, B)``.
``adapt="in-run"`` adapts from the run's own chains (pooled over the chains of a datapoint;
Wu et al. 2017 pool over all chains), kept for comparison: its estimate is not a stochastic
bound.

**A mass matrix** (``inverse_mass_sqrt``, one per datapoint): HMC with mass matrix
:math:`M = (C C^\top)^{-1}` (:mod:`pgm.inference.hmc`). Where the posterior is much narrower
in some directions than in others, an identity mass needs a step size fit for the narrowest
and crawls along the rest; with :math:`C C^\top` near the posterior's covariance every
direction looks alike. :func:`pgm.evaluation.evaluate` passes the Laplace proposal's heaviest
Gaussian (:meth:`pgm.inference.laplace.Laplace.inverse_mass_sqrt`). On the quickstart's GAN
(64-D latent; the curvature's eigenvalues span a factor of about 10^4 per image) at s =
0.075, 50 test images, 10 leapfrog steps, against T=3000 with it: T=500 sat 15.2 +- 2.0 nats
below with it and 34.9 +- 4.1 without, and T=1000 without it 19.0 +- 3.1 (on one thread, 56 s
against 115 s); T=300 with it 23.7 +- 3.2. Where the posterior is already round (the
quickstart's autoencoder, 10-D: a factor of about 40) it changes nothing (T=50 to 1000 within
0.1 nats of the identity mass). A step costs two (L, L) products per chain more (GAN, T=500:
59.5 s against 56.4 s, one thread each in two processes side by side). Validity is as for
the step sizes: the matrix is a function of x and of the Laplace fit's draws, independent of
the chains whose weights are averaged, so every transition is a fixed kernel that leaves its
:math:`\pi_t` invariant and :math:`\mathbb{E}[w] = p(x)` still holds (tested on closed
forms).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import NamedTuple

import torch
from pyro import validation_enabled
from pyro.util import warn_if_nan
from torch import Tensor

from pgm.errors import EstimatorError

from .bounds import check_data, log_mean_exp
from .callables import Estimate, LatentCallables
from .hmc import HMCState, adapt_step_size, hmc_step
from .schedules import check_schedule

__all__ = ["AISInfo", "AISState", "ais", "ais_step", "bdmc_upper"]

Progress = Callable[[int, int], None]


class AISState(NamedTuple):
    r"""C chains for each of B datapoints, partway along the schedule.

    z: ``(C, B, L)``; log_w: ``(C, B)`` float64 log weights so far; step_size: ``(C, B)``;
    parts: ``(log p(x, z), log p_0(z), their gradients)`` at z, as the last step's transition
    left them (``()``: not known, computed by the next step). The target changes at every
    step, but it is :math:`\log p_0 + \beta(\log p(x, z) - \log p_0)`, so the parts give
    its value and gradient at any temperature, and :math:`\ell(z)` of the weight update,
    without evaluating the model again: a step costs ``num_leapfrog`` evaluations, not one
    more (a quarter of the work at 3 leapfrog steps).
    """

    z: Tensor
    log_w: Tensor
    step_size: Tensor
    parts: tuple = ()


class AISInfo(NamedTuple):
    """Per-chain diagnostics of one step's HMC transition, each ``(C, B)``; both are None
    when the step took no transition.

    accept_prob: Metropolis acceptance probability (0 for divergent trajectories).
    divergent: energy error above the threshold, or a non-finite energy.
    """

    accept_prob: Tensor | None
    divergent: Tensor | None


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _base_log_density(f: LatentCallables, initial: str) -> Callable[[Tensor, Tensor], Tensor]:
    """log p_0(z) as a function of (x, z): the prior, or the guide q(z|x)."""
    if initial == "prior":
        return lambda x, z: f.log_prior(z)
    if initial == "q":
        return lambda x, z: f.log_q(z, x)
    raise ValueError(f"initial must be 'prior' or 'q', got {initial!r}")


def ais_step(
    state: AISState,
    x: Tensor,
    beta_prev: float,
    beta: float,
    f: LatentCallables,
    *,
    initial: str = "prior",
    num_leapfrog: int = 10,
    transition: bool = True,
    generator: torch.Generator | None = None,
    inverse_mass_sqrt: Tensor | None = None,
) -> tuple[AISState, AISInfo]:
    r"""One annealing step, from :math:`\beta_{t-1}` = ``beta_prev`` to :math:`\beta_t` = ``beta``.

    Adds :math:`(\beta_t - \beta_{t-1})\,\ell(z)` to each chain's log weight (nothing when the
    two are equal, also where :math:`\ell(z) = -\infty`), then takes one HMC transition that
    leaves :math:`\pi_t` invariant, unless ``transition`` is False. The step sizes are
    ``state.step_size``, returned unchanged. BDMC runs it backwards, ``beta < beta_prev``.

    Args:
        state: the chains, ``(C, B, L)``.
        x: ``(B, ...)`` their datapoints.
        beta_prev, beta: the inverse temperatures (floats).
        f: the model's callables.
        initial: p_0: ``"prior"`` (p(z)) or ``"q"`` (q(z|x)).
        num_leapfrog: leapfrog steps of the transition.
        transition: False for the weight update alone.
        generator: torch generator for momenta and accept/reject draws.
        inverse_mass_sqrt: the HMC mass matrix as C with :math:`M^{-1} = C C^\top`, ``(B, L,
            L)`` (one per datapoint) or ``(C, B, L, L)``; None: identity
            (:func:`pgm.inference.hmc.hmc_step`).
    """
    log_p0 = _base_log_density(f, initial)
    beta_prev, beta = float(beta_prev), float(beta)
    z = state.z
    C, B = z.shape[:2]

    # p_0's gradient without autograd where the callables give it (the prior's, in closed
    # form for a Gaussian): it is needed at every leapfrog step
    grad_p0 = f.grad_log_prior if initial == "prior" else None

    def base_grad(z: Tensor) -> Tensor:
        return _shaped_like(z, grad_p0(z), "grad_log_prior")

    def parts(z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """log p(x, z), log p_0(z) ``(C, B)`` and their gradients ``(C, B, L)``, detached."""
        with torch.enable_grad():
            z_ = z.detach().requires_grad_(True)
            # the joint first: traced callables reuse its model trace for log p(z) at the same z
            joint = f.log_joint(x, z_)  # (C, B)
            base = log_p0(x, z_ if grad_p0 is None else z.detach())  # (C, B)
            if base.shape != (C, B) or joint.shape != (C, B):
                raise ValueError(
                    f"log densities must have shape ({C}, {B}), got {tuple(base.shape)} "
                    f"and {tuple(joint.shape)}"
                )
            g_joint = _grad(joint, z_, retain=grad_p0 is None and base.requires_grad)
            g_base = _grad(base, z_) if grad_p0 is None else base_grad(z)
        return joint.detach(), base.detach(), g_joint, g_base

    def at_beta(p: tuple) -> tuple[Tensor, Tensor]:
        """log pi_t and its gradient from the parts."""
        joint, base, g_joint, g_base = p
        return base + beta * (joint - base), g_base + beta * (g_joint - g_base)

    p = state.parts or parts(z)
    joint, base = p[0], p[1]
    ell = joint.to(torch.float64) - base.to(torch.float64)
    log_w = state.log_w
    if beta != beta_prev:  # (a repeated beta adds nothing, also where ell = -inf)
        log_w = log_w + (beta - beta_prev) * ell
    if not transition:
        return AISState(z, log_w, state.step_size, p), AISInfo(None, None)

    def value_and_grad(z: Tensor):
        q = parts(z)
        return (*at_beta(q), q)

    grad_fn = None
    if f.grad_log_joint is not None:  # the inner leapfrog steps need the gradient alone
        def grad_fn(z: Tensor) -> Tensor:
            if grad_p0 is not None:
                g_base = base_grad(z)
            else:
                with torch.enable_grad():
                    z_ = z.detach().requires_grad_(True)
                    g_base = _grad(log_p0(x, z_), z_)
            g_joint = _shaped_like(z, f.grad_log_joint(x, z), "grad_log_joint")
            return g_base + beta * (g_joint - g_base)

    hmc = HMCState(z.detach(), *at_beta(p), state.step_size, p)
    hmc, info = hmc_step(hmc, None, num_leapfrog=num_leapfrog, generator=generator,
                         value_and_grad_fn=value_and_grad, grad_fn=grad_fn,
                         inverse_mass_sqrt=inverse_mass_sqrt)
    return (AISState(hmc.z, log_w, state.step_size, hmc.aux),
            AISInfo(info.accept_prob, info.divergent))


def _shaped_like(z: Tensor, g: Tensor, name: str) -> Tensor:
    """``g`` detached, or a ValueError naming the callable ``name`` if it is not shaped like z."""
    if g.shape != z.shape:
        raise ValueError(f"{name} must return the shape of z, {tuple(z.shape)}, "
                         f"got {tuple(g.shape)}")
    return g.detach()


def _grad(y: Tensor, z: Tensor, retain: bool = False) -> Tensor:
    """d sum(y) / dz, zeros where y does not depend on z."""
    if not y.requires_grad:
        return torch.zeros_like(z).detach()
    (g,) = torch.autograd.grad(y.sum(), z, allow_unused=True, retain_graph=retain)
    return torch.zeros_like(z).detach() if g is None else g.detach()


ADAPT = ("pilot", "none", "in-run")


def _check_adapt(adapt: str) -> str:
    if adapt not in ADAPT:
        raise ValueError(f"adapt must be one of {', '.join(map(repr, ADAPT))}, got {adapt!r}")
    return adapt


def _step_size_table(step_size: float | Tensor, T: int, B: int) -> Tensor:
    """``step_size`` as the ``(T + 1, B)`` float64 table of the module docstring: a float, one
    per datapoint ``(B,)``, or the table itself."""
    eps = torch.as_tensor(step_size, dtype=torch.float64).detach().cpu()
    if eps.dim() == 0 or tuple(eps.shape) == (B,):
        eps = eps.expand(T + 1, B)
    elif tuple(eps.shape) != (T + 1, B):
        raise ValueError(f"step_size must be a float, a ({B},) tensor (one per datapoint) or a "
                         f"({T + 1}, {B}) table (one per schedule position), got shape "
                         f"{tuple(eps.shape)}")
    if not bool(torch.isfinite(eps).all() & (eps > 0).all()):
        raise ValueError("step sizes must be positive and finite")
    return eps.clone()


def _anneal(
    f: LatentCallables,
    x: Tensor,
    betas: Tensor,
    init: Callable[[slice, int], Tensor],
    *,
    reverse: bool,
    num_chains: int,
    initial: str,
    num_leapfrog: int,
    step_size: float | Tensor,
    target_accept: float,
    adapt: str,
    pilot_chains: int,
    batch_size: int | None,
    generator: torch.Generator | None,
    progress: Progress | None,
    inverse_mass_sqrt: Tensor | None = None,
) -> tuple[Tensor, Tensor, dict, float]:
    """The loops of :func:`ais` and :func:`bdmc_upper`: :func:`ais_step` along the schedule
    ``betas`` (forwards, or from 1 to 0 if ``reverse``; no transition at beta = 0),
    ``batch_size`` datapoints at a time, from the states ``init(rows, C)`` ``(C, b, L)``.

    The transition that targets position j of the schedule uses the step sizes
    ``table[j]`` (``step_size`` as a ``(T + 1, B)`` table) with ``adapt="none"``. With
    ``"pilot"``, ``pilot_chains`` more chains per datapoint run beside the ``num_chains``
    (drawn from ``init`` too, in the same batched calls) and the step size of every chain of a
    datapoint follows those pilot chains' pooled acceptance alone; with ``"in-run"`` it follows
    the ``num_chains`` chains' own. The table records what was used. ``inverse_mass_sqrt``
    ``(B, L, L)``: each datapoint's HMC mass matrix (:func:`ais`), shared by its chains.

    Returns the ``num_chains`` chains' log weights ``(C, B)`` and final states ``(C, B, L)``,
    the ``extra`` that AIS and BDMC share, and the seconds taken.
    """
    B = check_data(x)
    C = _check_positive_int("num_chains", num_chains)
    P = _check_positive_int("pilot_chains", pilot_chains) if _check_adapt(adapt) == "pilot" else 0
    num_leapfrog = _check_positive_int("num_leapfrog", num_leapfrog)
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
    batch_size = B if batch_size is None else _check_positive_int("batch_size", batch_size)
    _base_log_density(f, initial)  # a bad `initial` fails before any chain is drawn
    T = betas.numel() - 1
    beta = betas.tolist()  # Python floats: no device read inside the loop
    step_sizes = _step_size_table(step_size, T, B)
    positions = list(range(T, -1, -1)) if reverse else list(range(T + 1))
    num_batches = math.ceil(B / batch_size)
    if inverse_mass_sqrt is not None and (
            not isinstance(inverse_mass_sqrt, Tensor) or inverse_mass_sqrt.dim() != 3
            or inverse_mass_sqrt.shape[0] != B
            or inverse_mass_sqrt.shape[1] != inverse_mass_sqrt.shape[2]):
        got = tuple(inverse_mass_sqrt.shape) if isinstance(inverse_mass_sqrt, Tensor) \
            else type(inverse_mass_sqrt).__name__
        raise ValueError(f"inverse_mass_sqrt must have shape ({B}, L, L), one matrix per "
                         f"datapoint, got {got}")

    start = time.perf_counter()
    states: list[AISState] = []
    used: list[Tensor] = []  # per batch, (T + 1, b): the step sizes of the transitions
    acceptance: list[Tensor] = []  # per batch, (T',): the mean over chains at each transition
    divergences = 0
    for i, b0 in enumerate(range(0, B, batch_size)):
        rows = slice(b0, min(B, b0 + batch_size))
        xb = x[rows]
        b = xb.shape[0]
        with torch.no_grad():
            z0 = init(rows, C)  # (C, b, L)
            if not isinstance(z0, Tensor) or z0.dim() != 3 or tuple(z0.shape[:2]) != (C, b):
                got = tuple(z0.shape) if isinstance(z0, Tensor) else type(z0).__name__
                why = (": AIS moves a continuous latent vector with HMC, and these draws are "
                       "not one (a discrete latent? sum it out: exact or IWAE)"
                       if isinstance(z0, Tensor) and (z0.dim() == 2 or not z0.is_floating_point())
                       else "")
                raise ValueError(f"initial states must have shape ({C}, {b}, L), got {got}{why}")
            if P:
                z0 = torch.cat([z0, init(rows, P)])  # (C + P, b, L): the pilot chains last
        table = step_sizes[:, rows].to(dtype=z0.dtype, device=z0.device).clone()  # (T + 1, b)
        mass = None if inverse_mass_sqrt is None else \
            inverse_mass_sqrt[rows].to(dtype=z0.dtype, device=z0.device)  # (b, L, L)
        log_w = torch.zeros(C + P, b, dtype=torch.float64, device=z0.device)
        state = AISState(z0.detach(), log_w, table[positions[1]].expand(C + P, b).clone())
        accept_per_step = []
        first_nan = torch.zeros(b, dtype=torch.long, device=z0.device)  # 0: none yet
        for t in range(1, T + 1):
            j = positions[t]
            move = not (reverse and t == T)  # the transition at beta = 0 changes no weight
            if move and adapt == "none":
                state = state._replace(step_size=table[j].expand(C + P, b))
            elif move:
                table[j] = state.step_size[0]  # (every chain of a datapoint shares it)
            # Distributions check their arguments at the first step only: the checks cost
            # about a tenth of a step and a host synchronisation each.
            try:
                with nullcontext() if t == 1 else validation_enabled(False):
                    state, info = ais_step(
                        state,
                        xb,
                        beta[positions[t - 1]],
                        beta[j],
                        f,
                        initial=initial,
                        num_leapfrog=num_leapfrog,
                        transition=move,
                        generator=generator,
                        inverse_mass_sqrt=mass,
                    )
            except ValueError as e:  # a distribution refused its parameters (step 1 checks)
                if "invalid values" not in str(e):
                    raise
                raise EstimatorError(
                    f"AIS met invalid values at step {t} of {T} in datapoints {b0}-{b0 + b - 1}: "
                    f"{str(e).splitlines()[0]} (a diverged model, or data it cannot score?)"
                ) from None
            # the first step at which a datapoint's weights hold NaN (no host read here)
            nan = torch.isnan(state.log_w).any(0) | (state.log_w == math.inf).any(0)
            first_nan = torch.where((first_nan == 0) & nan, t, first_nan)
            if info.accept_prob is not None:
                accept_per_step.append(info.accept_prob[:C].mean())
                divergences = divergences + info.divergent[:C].sum()
                if adapt != "none":
                    signal = info.accept_prob[C:] if P else info.accept_prob
                    pooled = signal.mean(0 if signal.shape[0] > 1 else (0, 1), keepdim=True)
                    step = adapt_step_size(state.step_size[:1], pooled, target=target_accept)
                    state = state._replace(step_size=step.expand(C + P, b))
            if progress is not None:
                progress(i * T + t, num_batches * T)
        if bool((first_nan > 0).any()):
            bad = (first_nan > 0).nonzero().flatten()
            k = int(bad[first_nan[bad].argmin()])
            raise EstimatorError(
                f"AIS's weights became NaN at step {int(first_nan[k])} of {T} for datapoint "
                f"{b0 + k} ({len(bad)} of this batch's {b} in all): the model's log-density or its "
                "gradient is not finite there; try a smaller step size (fewer leapfrog steps, "
                "a lower target acceptance) or check the model for a diverged checkpoint")
        states.append(AISState(state.z[:C], state.log_w[:C], state.step_size[:C]))
        used.append(table)
        if accept_per_step:
            acceptance.append(torch.stack(accept_per_step).to(torch.float64))
        else:
            acceptance.append(torch.zeros(0, dtype=torch.float64, device=z0.device))
    seconds = time.perf_counter() - start

    log_w = torch.cat([s.log_w for s in states], dim=1)  # (C, B)
    z = torch.cat([s.z for s in states], dim=1)  # (C, B, L)
    table = torch.cat(used, dim=1).cpu().to(torch.float64)  # (T + 1, B)
    if not reverse and adapt != "none":
        table[0] = table[1]  # (no forward transition targets beta = 0; a reverse run's last)
    moved = table[1:] if not reverse else table[1:T]  # the positions a transition targeted
    accept = torch.stack(acceptance).mean(0)  # (T',)
    normalised = torch.exp(log_w - log_mean_exp(log_w, dim=0))  # (C, B), mean 1 over chains
    # Delta-method SE of log(mean w) across chains, and the chains' effective sample size.
    se_chains = (normalised.std(dim=0) / math.sqrt(C)).cpu() if C > 1 else None
    ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)).cpu()
    extra = {
        "num_steps": T,
        "num_chains": C,
        "num_leapfrog": num_leapfrog,
        "initial": initial,
        "mass": "identity" if inverse_mass_sqrt is None else "given",
        "adapt": adapt,
        "pilot_chains": P,
        "target_accept": target_accept,
        "acceptance": accept.mean().item() if accept.numel() else math.nan,
        "divergences": int(divergences),
        "step_size_mean": moved.mean().item() if moved.numel() else math.nan,
        "se_chains_mean": se_chains.mean().item() if se_chains is not None else math.nan,
        "ess_chains_min": ess.min().item(),
        "acceptance_per_step": accept.cpu(),
        "step_sizes": table,
        "se_chains": se_chains,
        "ess_chains": ess,
        "log_weights": log_w.cpu(),
    }
    return log_w, z, extra, seconds


def _init(f: LatentCallables, x: Tensor, initial: str) -> Callable[[slice, int], Tensor]:
    """Chains drawn from p_0: ``init(rows, C)`` ``(C, b, L)``."""
    if initial == "prior":
        if f.sample_prior is None:
            raise ValueError("initial='prior' needs LatentCallables.sample_prior, which is None")
        return lambda rows, C: f.sample_prior(len(range(x.shape[0])[rows]), C)
    if initial == "q":
        return lambda rows, C: f.sample_q(x[rows], C)
    raise ValueError(f"initial must be 'prior' or 'q', got {initial!r}")


def ais(
    f: LatentCallables,
    x: Tensor,
    *,
    schedule: Tensor,
    num_chains: int = 16,
    num_leapfrog: int = 10,
    initial: str = "prior",
    step_size: float | Tensor = 0.05,
    target_accept: float = 0.65,
    adapt: str = "pilot",
    pilot_chains: int = 4,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    inverse_mass_sqrt: Tensor | None = None,
) -> Estimate:
    r"""AIS estimate of log p(x): per datapoint, the log of the mean AIS weight over chains.

    Args:
        f: the model's callables; ``initial="prior"`` needs ``f.sample_prior``.
        x: ``(B, ...)`` datapoints.
        schedule: betas from 0 to 1 (see :mod:`pgm.inference.schedules`); T = len - 1 steps.
        num_chains: independent chains per datapoint.
        num_leapfrog: leapfrog steps per HMC transition.
        initial: ``"prior"`` (p_0 = p(z)) or ``"q"`` (p_0 = q(z|x)).
        step_size: HMC step sizes: a float, ``(B,)``, or a ``(T + 1, B)`` table (one per
            datapoint and schedule position); with ``adapt="pilot"`` where the pilot starts.
        target_accept: target acceptance probability of the step-size adaptation.
        adapt: ``"pilot"`` (step sizes follow pilot chains run alongside), ``"none"``
            (use ``step_size`` as given) or ``"in-run"`` (biased; see the module docstring).
        pilot_chains: pilot chains per datapoint (``adapt="pilot"``).
        batch_size: datapoints annealed at once (default: all).
        generator: torch generator for momenta and accept/reject draws (the callables' own
            sampling uses theirs). Never seed it like the RNG the callables draw the chains'
            starts from (``torch.manual_seed(s)`` and ``Generator().manual_seed(s)``): the
            momenta then repeat the draws that placed the chains, the transitions are no
            longer HMC, and AIS lands *above* log p(x) (+0.21 nats on the linear-Gaussian
            model from q, T=2).
        progress: called as ``progress(steps_done, steps_total)`` after every step of the run.
        inverse_mass_sqrt: ``(B, L, L)``, each datapoint's HMC mass matrix as C with
            :math:`M^{-1} = C C^\top` (for a Gaussian proposal :math:`\mathcal N(\mu,
            \Sigma)` near the posterior, a square root of :math:`\Sigma`; see "A mass
            matrix" in the module docstring); None: identity.

    Returns:
        :class:`Estimate` (its ``seconds`` include the pilot chains') whose ``extra`` holds the
        settings and ``acceptance`` (mean acceptance probability), ``divergences``,
        ``step_sizes`` ``(T + 1, B)`` (the table the run used), ``se_chains`` ``(B,)``
        (delta-method standard error of each datapoint's estimate across chains),
        ``ess_chains``, ``log_weights`` ``(C, B)``, ``acceptance_per_step`` and ``z_final``
        ``(C, B, L)`` (approximate posterior samples), all of the ``num_chains`` chains.
    """
    betas = check_schedule(schedule)
    check_data(x)
    init = _init(f, x, initial)
    log_w, z, extra, seconds = _anneal(
        f, x, betas, init, reverse=False, num_chains=num_chains, initial=initial,
        num_leapfrog=num_leapfrog, step_size=step_size, target_accept=target_accept,
        adapt=adapt, pilot_chains=pilot_chains, batch_size=batch_size, generator=generator,
        progress=progress, inverse_mass_sqrt=inverse_mass_sqrt,
    )
    per_datapoint = log_mean_exp(log_w, dim=0)  # (B,)
    warn_if_nan(per_datapoint, "AIS log p(x)")
    extra["z_final"] = z.cpu()
    return Estimate.of(per_datapoint, seconds=seconds, extra=extra, bound="lower")


def bdmc_upper(
    f: LatentCallables,
    x: Tensor,
    z_exact: Tensor,
    *,
    schedule: Tensor,
    num_chains: int | None = None,
    num_leapfrog: int = 10,
    initial: str = "prior",
    step_size: float | Tensor = 0.05,
    target_accept: float = 0.65,
    adapt: str = "pilot",
    pilot_chains: int = 4,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    inverse_mass_sqrt: Tensor | None = None,
) -> Estimate:
    r"""BDMC stochastic upper bound on log p(x): reverse AIS from exact posterior samples.

    The chains start at ``z_exact`` and run along the reversed ``schedule`` (beta from 1 to
    0); ``per_datapoint`` is :math:`-\log \mathrm{mean}_c\, w_{\mathrm{rev},c}`. Valid only when
    ``z_exact`` are exact samples of p(z|x) -- e.g. x simulated from the model from those z.

    Args:
        z_exact: ``(B, L)`` -- one exact sample per datapoint, copied to ``num_chains``
            chains (default 16) -- or ``(C, B, L)`` (then ``num_chains`` is C).
        schedule: the *forward* schedule, from 0 to 1 (it is reversed here). ``initial``
            names the same p_0 as for the forward run: the end of the reversed path, and where
            the forward pilot (``adapt="pilot"``) starts.
        step_size: as for :func:`ais`; a forward AIS run's ``extra["step_sizes"]`` on the
            same x with ``adapt="none"`` saves the pilot.

    Other arguments and ``extra`` are as for :func:`ais` (without ``z_final``; with
    ``pilot_seconds``, the forward pilot's share of ``seconds``).
    """
    betas = check_schedule(schedule)
    B = check_data(x)
    if not isinstance(z_exact, Tensor) or z_exact.dim() not in (2, 3):
        raise ValueError("z_exact must be a (B, L) or (C, B, L) tensor")
    if z_exact.dim() == 2:
        num_chains = 16 if num_chains is None else _check_positive_int("num_chains", num_chains)
        z_exact = z_exact.unsqueeze(0).expand(num_chains, *z_exact.shape)
    elif num_chains is not None and num_chains != z_exact.shape[0]:
        raise ValueError(
            f"num_chains={num_chains} does not match z_exact with {z_exact.shape[0]} chains"
        )
    num_chains = z_exact.shape[0]
    if z_exact.shape[1] != B:
        raise ValueError(f"z_exact has {z_exact.shape[1]} datapoints, x has {B}")

    def init(rows: slice, C: int) -> Tensor:
        return z_exact[:, rows].clone()

    kw = dict(initial=initial, num_leapfrog=num_leapfrog, target_accept=target_accept,
              pilot_chains=pilot_chains, batch_size=batch_size, generator=generator,
              inverse_mass_sqrt=inverse_mass_sqrt)
    pilot_seconds = 0.0
    if _check_adapt(adapt) == "pilot":  # a forward pilot from p_0 on the same x
        *_, pilot, pilot_seconds = _anneal(
            f, x, betas, _init(f, x, initial), reverse=False, num_chains=pilot_chains,
            step_size=step_size, adapt="in-run", progress=None, **kw)
        step_size = pilot["step_sizes"]
    log_w, _, extra, seconds = _anneal(
        f, x, betas, init, reverse=True, num_chains=num_chains, step_size=step_size,
        adapt="none" if adapt == "pilot" else adapt, progress=progress, **kw)
    extra.update(adapt=adapt, pilot_chains=pilot_chains if adapt == "pilot" else 0,
                 pilot_seconds=pilot_seconds)
    seconds += pilot_seconds
    per_datapoint = -log_mean_exp(log_w, dim=0)  # (B,)
    warn_if_nan(per_datapoint, "BDMC upper bound on log p(x)")
    return Estimate.of(per_datapoint, seconds=seconds, extra=extra, bound="upper")
