r"""The model/guide contract every explicit model in pgm honours.

A :class:`LatentVariableModel` is a :class:`torch.nn.Module` with

- ``model(x, y=None)``: the generative story :math:`p(z)\,p(x|z)` as a Pyro program, with a
  ``pyro.plate("data", len(x))``, a latent site ``"z"`` and an observed site ``"x"``;
- ``guide(x, y=None)``: the amortized posterior :math:`q(z|x)` with the same plate and the
  same latent site;
- ``prior(n, y)``, ``encode(x, y)``, ``decode(z, y)``: the plain torch distributions that
  ``model`` and ``guide`` are built from (batch shape ``(..., n)``, event shape ``(L,)`` or
  ``(D,)``), for plots and for fast paths that skip Pyro's tracing.

Estimators and the training loop only use this contract, never a model-specific formula.
``y`` is the conditioning label (the CVAE's); models that ignore it accept ``None``.
"""

from __future__ import annotations

from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .errors import DataError
from .likelihoods import Likelihood


class LatentVariableModel(nn.Module):
    """Base class: a standard-normal prior over ``latent_dim`` dims and the Pyro programs.

    Subclasses set ``self.likelihood``, ``self.latent_dim``, ``self.data_dim`` and implement
    ``encode`` and ``decode``.
    """

    name: ClassVar[str] = ""
    #: True for models that use the label y (the CVAE): fit() and the estimators pass it.
    conditional: ClassVar[bool] = False
    #: True when the latent is discrete and enumerated in the model (the GMM): training and
    #: validation use TraceEnum_ELBO, whose loss is then -log p(x) exactly.
    enumerated: ClassVar[bool] = False
    #: True when encode(x).rsample() is differentiable, so the ELBO has a reparameterized
    #: fast path (proven equal to Trace_ELBO in tests/test_objectives.py).
    reparameterized: ClassVar[bool] = True
    #: True when q(z|x) is a point mass (the autoencoder). A Dirac has no density on R^L, so
    #: "log q" is not defined and neither the ELBO nor the IWAE bound bounds log p(x): the
    #: estimators skip them (and the gaps), while AIS from the prior and exact values apply.
    point_guide: ClassVar[bool] = False
    latent_dim: int
    data_dim: int
    likelihood: Likelihood

    def _init_prior(self, latent_dim: int) -> None:
        self.register_buffer("prior_loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(latent_dim), persistent=False)

    # ---- plain distributions -------------------------------------------------------------
    def prior(self, n: int, y: torch.Tensor | None = None) -> dist.Distribution:
        """p(z) = N(0, I) with batch shape (n,) and event shape (L,)."""
        return dist.Normal(self.prior_loc.expand(n, -1), self.prior_scale.expand(n, -1)).to_event(1)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        raise NotImplementedError

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        raise NotImplementedError

    # ---- Pyro programs -------------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x.shape[0], y))
            pyro.sample("x", self.decode(z, y), obs=x)
        return z

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.encode(x, y))

    def initialize(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Data-dependent initialisation, called by fit() before a new run (e.g. k-means++)."""

    # ---- conveniences --------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, *, mean: bool = True) -> torch.Tensor:
        """n draws x ~ p(x) (the decoder's mean of p(x|z) when ``mean``), shape (n, D)."""
        z = self.prior(n, y).sample()
        px = self.decode(z, y)
        return px.mean if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder mean at the encoder mean: E[x | z = E_q[z | x]], shape (B, D)."""
        return self.decode(self.encode(x, y).mean, y).mean

    def check_data(self, x: torch.Tensor, name: str = "x") -> None:
        """Raise DataError if x is not (N, data_dim), not finite, or outside the support."""
        if x.ndim != 2 or x.shape[1] != self.data_dim:
            raise DataError(
                f"{name} must have shape (N, {self.data_dim}) for this model, got {tuple(x.shape)}"
            )
        n_bad = int((~torch.isfinite(x)).sum())
        if n_bad:
            raise DataError(f"{name} contains {n_bad} NaN or infinite values")
        self.likelihood.check(x)
