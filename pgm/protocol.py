r"""The model/guide contract every explicit model in pgm honours, and what a model declares.

A model is a :class:`torch.nn.Module` with

- ``model(x, y=None)``: the generative story :math:`p(z)\,p(x|z)` as a Pyro program, with a
  ``pyro.plate("data", len(x))`` around its latent and observed sites;
- ``guide(x, y=None)``: the amortized posterior :math:`q(z|x)` with the same plate;
- ``name``, ``Config`` and ``config`` (a dataclass, saved beside the weights), ``data_dim``,
  ``likelihood``, ``check_data(x)``, ``initialize(x, y)``, ``sample(n)``.

That is all a model needs: the estimators read any such pair off its traces
(:class:`pgm.inference.program.Program`), and :func:`pgm.fit` trains it with Pyro's ELBOs
(:class:`pgm.models.TwoLayerVAE` is written this way). :class:`LatentVariableModel` adds the
plain torch distributions the programs are built from -- ``prior(n, y)``, ``encode(x, y)``,
``decode(z, y)`` (batch shape ``(..., n)``, event shape ``(L,)`` or ``(D,)``), a latent site
``"z"`` and an observed site ``"x"`` -- for plots and for fast paths that skip Pyro's tracing.

**What a model can do is declared once, here**, as class attributes (defaults in
:class:`LatentVariableModel`), and generic code asks for them instead of testing a class or a
name:

=======================  ======================================================================
``conditional``          uses the label y (the CVAE): fit() and the estimators pass it
``label_prior()``        a conditional model's p(y), a Categorical over its labels (None: it
                         has none); ``pgm evaluate`` then sums the label out, log p(x) =
                         logsumexp_y [log p(y) + log p(x | y)] (:mod:`pgm.evaluation`)
``latent``               ``"continuous"``, or ``"discrete"``: enumerated in the model (the
                         GMM), trained by TraceEnum_ELBO, whose loss is then -log p(x)
``guide_density``        q(z|x) has a density; False for a point mass (the autoencoder): "log
                         q" is undefined, so neither ELBO nor IWAE bound log p(x) and the
                         estimators skip them (and the gaps); AIS and exact values apply
``amortized_guide``      ``encode(x)`` is an inference network fitted to x; False where the
                         guide is a stand-in that ignores x (a GAN's view: the prior). AIS's
                         ``auto`` start takes q(z|x) only from a guide with a density that is
                         amortized, else a Laplace proposal (:mod:`pgm.inference.laplace`)
``plain_distributions``  ``prior``/``encode``/``decode`` exist: the estimators' fast path
                         (tests/test_adapter.py) and, with a continuous latent (then
                         ``encode(x).rsample()`` is differentiable), training's fast ELBO
                         (tests/test_objectives.py), each proven equal to the traced path
``exact_method``         ``"closed form"`` or ``"enumeration"`` where the model defines
                         ``exact_log_marginal(x) -> (B,)``; else None
``has_density``          False for a model without a density of its own (the GAN): measured
                         through its explicit view, with sample quality beside it
``explicit_view(s)``     the model :math:`p(z)\,\mathcal N(x; \mu(z), s^2 I)` of its generator
``write_figures(...)``   the figures of a trained run (:meth:`LatentVariableModel.write_figures`)
``trainer``              ``"svi"`` (:func:`pgm.fit`) or ``"adversarial"`` (the GAN)
``closed_form_em``       ``em_step(x) -> float``: one closed-form EM step on all of x (the
                         GMM), which fit() takes once per epoch with ``objective="em"``
``default_lr``           the Adam learning rate ``pgm train`` uses unless told otherwise
``default_objective``    the objective ``pgm train`` uses unless told otherwise
``default_epochs``       the epochs ``pgm train`` runs unless told otherwise
``default_min_epochs``   early stopping never stops before this epoch (fit()'s
                         ``min_epochs=None``): a mixture's validation likelihood dips
                         while its scales settle, long before it has converged
``baseline``             the registered name of a model ``pgm train`` fits beside this one
                         with the same networks (the VAE's autoencoder), or None
=======================  ======================================================================

Estimators and the training loop only use this contract, never a model-specific formula.
``y`` is the conditioning label (the CVAE's); models that ignore it accept ``None``.
"""

from __future__ import annotations

import operator
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
    # what the model can do: the table in the module docstring
    conditional: ClassVar[bool] = False
    latent: ClassVar[str] = "continuous"
    guide_density: ClassVar[bool] = True
    amortized_guide: ClassVar[bool] = True
    plain_distributions: ClassVar[bool] = True
    exact_method: ClassVar[str | None] = None
    has_density: ClassVar[bool] = True
    trainer: ClassVar[str] = "svi"
    closed_form_em: ClassVar[bool] = False
    default_lr: ClassVar[float] = 1e-3
    default_objective: ClassVar[str] = "elbo"
    default_epochs: ClassVar[int] = 30
    default_min_epochs: ClassVar[int] = 0
    baseline: ClassVar[str | None] = None
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

    def label_prior(self) -> dist.Categorical | None:
        """p(y) of a conditional model, over its labels 0..C-1; None where there is none (an
        unconditional model, or a conditional one whose y is not a label)."""
        return None

    def explicit_view(self, sigma: float) -> LatentVariableModel:
        r"""The model :math:`p(z)\,\mathcal N(x; \mu(z), \sigma^2 I)` of this model's generator
        (:mod:`pgm.models.explicit`): its prior and encoder, the decoder's mean as
        :math:`\mu`."""
        from pgm.models.explicit import MeanView

        return MeanView(self, sigma)

    def write_figures(self, run_dir, data, history: list[dict], **options) -> list:
        """The figures of a trained run in RUN/figures/ (reconstructions, samples, ELBO curves,
        the 2-D latent space); returns their paths. Models with figures of their own override
        it, beside the model (``pgm.models.*_figures``)."""
        from pgm.models.vae_figures import write_training_figures

        return write_training_figures(run_dir, self, data, history, **options)

    def initialize(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Data-dependent initialisation, called by fit() before a new run (e.g. k-means++)."""

    # ---- conveniences --------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, *, mean: bool = True) -> torch.Tensor:
        """n draws x ~ p(x) (the decoder's mean of p(x|z) when ``mean``), shape (n, D)."""
        check_count(n)
        z = self.prior(n, y).sample()
        px = self.decode(z, y)
        return px.mean if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder mean at the encoder mean: E[x | z = E_q[z | x]], shape (B, D)."""
        return self.decode(self.encode(x, y).mean, y).mean

    def check_data(self, x: torch.Tensor, name: str = "x") -> None:
        """Raise DataError if x is not (N, data_dim), not finite, or outside the support."""
        check_data(self, x, name)


def check_count(n, name: str = "n") -> int:
    """``n``, a number of draws: ValueError unless it is an integer >= 0 (torch's own error
    for ``sample(-1)`` speaks of expanding a tensor to a negative size)."""
    try:
        count = operator.index(n)
    except TypeError:
        raise ValueError(f"{name} must be a whole number of samples, got {n!r}") from None
    if count < 0:
        raise ValueError(f"{name} must be >= 0, got {count}")
    return count


def check_data(model, x: torch.Tensor, name: str = "x") -> None:
    """Raise DataError if x is not (N, model.data_dim), not finite, or outside the support of
    ``model.likelihood``: the input check of every model with a likelihood head."""
    if x.ndim != 2 or x.shape[1] != model.data_dim:
        raise DataError(
            f"{name} must have shape (N, {model.data_dim}) for this model, got {tuple(x.shape)}"
        )
    weight = next(model.parameters(), None)
    if weight is not None and x.dtype != weight.dtype:
        raise DataError(f"{name} has dtype {x.dtype}, the model's weights {weight.dtype}: pass "
                        f"x.to({weight.dtype})")
    n_bad = int((~torch.isfinite(x)).sum())
    if n_bad:
        raise DataError(f"{name} contains {n_bad} NaN or infinite values")
    model.likelihood.check(x)
