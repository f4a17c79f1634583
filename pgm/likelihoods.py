r"""Observation heads p(x | z): turn a decoder network's raw output into a distribution.

A head says how many raw outputs it needs per data dimension (``outputs_per_dim``), builds
the distribution with event dimension 1 (one datapoint is one event), and checks that data
lie in its support before training or evaluation starts:

- ``bernoulli``: :math:`p(x|z) = \prod_d \mathrm{Bern}(x_d; \sigma(h_d))`, x in {0, 1}.
  On grey values in [0, 1] it is the cross-entropy, not a normalised density; that is
  allowed (binarisation "none") but the data module's default binarises.
- ``gaussian``: :math:`\mathcal N(x; \mu(z), s^2 I)` with a fixed scale s.
- ``gaussian-learned``: :math:`\mathcal N(x; \mu(z), \mathrm{diag}\,\sigma(z)^2)`,
  :math:`\sigma = s_{min} + \mathrm{softplus}(h)` per pixel.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F

from .errors import DataError, UnknownNameError


class Likelihood:
    """Base class: a head with no parameters of its own (only the decoder's output)."""

    name = ""
    outputs_per_dim = 1

    def __call__(self, h: torch.Tensor) -> dist.Distribution:
        raise NotImplementedError

    def check(self, x: torch.Tensor) -> None:
        """Raise DataError when x lies outside the support."""

    def config(self) -> dict:
        return {"name": self.name}


class Bernoulli(Likelihood):
    name = "bernoulli"

    def __call__(self, h):
        # validate_args=False: grey values are allowed by an explicit "none" binarisation.
        return dist.Bernoulli(logits=h, validate_args=False).to_event(1)

    def check(self, x):
        bad = (x < 0) | (x > 1)
        if bad.any():
            raise DataError(
                f"the Bernoulli likelihood needs values in [0, 1]; {int(bad.sum())} entries lie "
                f"outside (min {x.min().item():.3g}, max {x.max().item():.3g}). Scale the data "
                "to [0, 1] or use a Gaussian likelihood."
            )


class Gaussian(Likelihood):
    name = "gaussian"

    def __init__(self, scale: float = 0.1):
        if not scale > 0:
            raise ValueError(f"the Gaussian likelihood's scale must be > 0, got {scale}")
        self.scale = float(scale)

    def __call__(self, h):
        return dist.Normal(h, torch.full_like(h, self.scale)).to_event(1)

    def config(self):
        return {"name": self.name, "scale": self.scale}


class LearnedGaussian(Likelihood):
    name = "gaussian-learned"
    outputs_per_dim = 2

    def __init__(self, min_scale: float = 1e-2):
        if not min_scale > 0:
            raise ValueError(f"min_scale must be > 0, got {min_scale}")
        self.min_scale = float(min_scale)

    def __call__(self, h):
        loc, raw = h.chunk(2, dim=-1)
        return dist.Normal(loc, self.min_scale + F.softplus(raw)).to_event(1)

    def config(self):
        return {"name": self.name, "min_scale": self.min_scale}


LIKELIHOODS: dict[str, type[Likelihood]] = {
    c.name: c for c in (Bernoulli, Gaussian, LearnedGaussian)
}


def make_likelihood(name: str, **kwargs) -> Likelihood:
    """The head called ``name`` with its settings (``scale``, ``min_scale``)."""
    if name not in LIKELIHOODS:
        raise UnknownNameError(f"unknown likelihood {name!r}; known: {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[name](**kwargs)
