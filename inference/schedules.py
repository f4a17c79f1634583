r"""Annealing schedules :math:`0 = \beta_0 \le \beta_1 \le \dots \le \beta_T = 1` for AIS and BDMC.

A schedule is data: a 1-D float64 tensor of T + 1 inverse temperatures, passed to
:func:`pgm.inference.ais.ais`. ``T`` is the number of intermediate distributions (the number
of MCMC transitions).

- :func:`linear_schedule`: evenly spaced.
- :func:`sigmoid_schedule`: the sigmoidal schedule of Grosse, Maddison & Salakhutdinov (2013),
  "Annealing between distributions by averaging moments", and Wu, Burda, Salakhutdinov &
  Grosse (2017), "On the Quantitative Analysis of Decoder-Based Generative Models",
  https://arxiv.org/abs/1611.04273:
  :math:`\tilde\beta_t = \sigma(\delta (2t/T - 1))`, rescaled
  :math:`\beta_t = (\tilde\beta_t - \tilde\beta_0) / (\tilde\beta_T - \tilde\beta_0)` so that
  it runs exactly from 0 to 1. It spends more steps near both ends, where the intermediate
  distributions change fastest.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_schedule", "linear_schedule", "sigmoid_schedule"]


def _check_steps(T: int) -> int:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"the number of annealing steps T must be a positive integer, got {T!r}")
    return T


def linear_schedule(T: int) -> Tensor:
    """``T + 1`` evenly spaced betas from 0 to 1 (float64)."""
    T = _check_steps(T)
    return torch.linspace(0.0, 1.0, T + 1, dtype=torch.float64)


def sigmoid_schedule(T: int, delta: float = 4.0) -> Tensor:
    """``T + 1`` sigmoidally spaced betas, exactly 0 first and 1 last (float64)."""
    T = _check_steps(T)
    if not delta > 0:
        raise ValueError(f"delta must be positive, got {delta!r}")
    s = torch.sigmoid(torch.linspace(-delta, delta, T + 1, dtype=torch.float64))
    betas = (s - s[0]) / (s[-1] - s[0])
    betas[0], betas[-1] = 0.0, 1.0  # exact ends despite rounding
    return betas


def check_schedule(betas: Tensor | Sequence[float]) -> Tensor:
    """Validate a schedule and return it as a float64 tensor.

    Raises ValueError unless ``betas`` is 1-D with at least two entries, finite, monotone
    non-decreasing, starts at exactly 0 and ends at exactly 1.
    """
    betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
    if betas.dim() != 1 or betas.numel() < 2:
        raise ValueError(
            f"a schedule must be a 1-D sequence of at least 2 betas, got shape {tuple(betas.shape)}"
        )
    if not bool(torch.isfinite(betas).all()):
        raise ValueError("a schedule must be finite")
    if betas[0].item() != 0.0 or betas[-1].item() != 1.0:
        raise ValueError(
            f"a schedule must start at 0 and end at 1, got {betas[0].item()} ... {betas[-1].item()}"
        )
    if bool((betas[1:] < betas[:-1]).any()):
        raise ValueError("a schedule must be monotone non-decreasing")
    return betas
