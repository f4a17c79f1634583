r"""The four callables every log p(x) estimator is written against, and the result they return.

The estimators in :mod:`pgm.inference.bounds`, :mod:`pgm.inference.ais`,
:mod:`pgm.inference.quadrature` and :mod:`pgm.inference.gaps` never see a model class. They
take a :class:`LatentCallables` bundle ``f`` of plain torch functions (as TFP's
``sample_annealed_importance_chain`` takes ``proposal_log_prob_fn`` and
``target_log_prob_fn``); :class:`pgm.inference.program.Program` builds it from any Pyro
model/guide pair, :func:`pgm.inference.adapter.latent_callables` from a pgm model's plain
distributions, and the test fixture ``linear_gaussian_callables`` (tests/fixtures.py) for a
model with a closed-form marginal. Shapes (``B`` datapoints, ``K`` particles or chains, ``L``
latent dimensions; ``x`` is ``(B, D)`` or any ``(B, ...)``)::

    log_joint(x, z)     -> (K, B)     log p(x, z);     x: (B, D), z: (K, B, L)
    log_prior(z)        -> (K, B)     log p(z)
    sample_q(x, K)      -> (K, B, L)  z ~ q(z | x); no gradient is needed through it
    log_q(z, x)         -> (K, B)     log q(z | x)
    sample_prior(B, K)  -> (K, B, L)  z ~ p(z); optional, needed for prior proposals and AIS
                                      started from the prior
    grad_log_joint(x, z) -> (K, B, L) the gradient of log p(x, z) in z, without its value;
                                      optional, a cheaper route than autograd of log_joint
                                      that HMC takes at the leapfrog steps whose value is
                                      not needed (all but the last of a trajectory)
    grad_log_prior(z)   -> (K, B, L)  the gradient of log p(z) in z; optional, the same
                                      route for AIS started from the prior (its p_0)

Every estimator returns an :class:`Estimate`: per-datapoint values in nats and their mean with
a standard error across datapoints, and what the number is (:data:`BOUNDS`): a lower bound of
log p(x) in expectation (ELBO, IWAE, AIS), an upper bound (BDMC's reverse AIS), exact (closed
form, enumeration), numerical (quadrature to a tolerance), or none of these (a Parzen window,
a diagnostic).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor


class LatentCallables(NamedTuple):
    """Plain-torch view of a latent-variable model p(z) p(x|z) and its guide q(z|x).

    Shapes are in the module docstring. The callables may run in float32; the estimators do
    their accumulation in float64.
    """

    log_joint: Callable[[Tensor, Tensor], Tensor]
    log_prior: Callable[[Tensor], Tensor]
    sample_q: Callable[[Tensor, int], Tensor]
    log_q: Callable[[Tensor, Tensor], Tensor]
    sample_prior: Callable[[int, int], Tensor] | None = None
    grad_log_joint: Callable[[Tensor, Tensor], Tensor] | None = None
    grad_log_prior: Callable[[Tensor], Tensor] | None = None


#: What an estimate is, relative to log p(x) of the datapoints it was computed on.
BOUNDS = ("lower", "upper", "exact", "numerical", "none")


@dataclass(frozen=True)
class Estimate:
    """One estimator's result on a set of datapoints.

    Attributes:
        per_datapoint: ``(N,)`` float64 tensor on the CPU, one value in nats per datapoint.
        mean: mean of ``per_datapoint``.
        se: standard error of ``mean`` across datapoints (sample std with ddof=1 over
            sqrt(N)); NaN when N == 1.
        n: number of datapoints N.
        seconds: wall-clock time the estimator took.
        extra: the estimator's settings (K, steps, chains) and diagnostics (acceptance, ESS,
            Monte-Carlo standard errors). Scalars are plain Python numbers; tensors are kept as
            tensors and left out of :meth:`summary`.
        bound: one of :data:`BOUNDS`: how the value relates to log p(x) (in expectation for
            the stochastic bounds).
        data: ``"test"`` (the evaluated datapoints) or ``"simulated"`` (drawn from the model,
            as BDMC needs).
    """

    per_datapoint: Tensor
    mean: float
    se: float
    n: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    bound: str = "none"
    data: str = "test"

    def __post_init__(self):
        if self.bound not in BOUNDS:
            raise ValueError(f"bound must be one of {', '.join(BOUNDS)}, got {self.bound!r}")

    @classmethod
    def of(
        cls, per_datapoint: Tensor, *, seconds: float, extra: dict[str, Any] | None = None,
        bound: str = "none", data: str = "test",
    ) -> Estimate:
        """Summarise per-datapoint values: mean and standard error across datapoints."""
        values = per_datapoint.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        n = values.numel()
        mean = values.mean().item() if n else math.nan
        se = (values.std(unbiased=True) / math.sqrt(n)).item() if n > 1 else math.nan
        return cls(values, mean, se, n, float(seconds), dict(extra or {}), bound, data)

    def summary(self) -> dict[str, Any]:
        """JSON-ready ``{"mean", "se", "n", "seconds", ...}`` with the scalar extras."""
        out: dict[str, Any] = {
            "mean": self.mean,
            "se": self.se,
            "n": self.n,
            "seconds": self.seconds,
            "bound": self.bound,
            "data": self.data,
        }
        for key, value in self.extra.items():
            if isinstance(value, bool | int | float | str) or value is None:
                out[key] = value
        return out
