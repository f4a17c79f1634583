r"""Training objectives: callables ``loss(x, y, beta) -> scalar``, the negative bound per datapoint.

- ``elbo``: :math:`\mathbb E_q[\log p(x|z) + \beta(\log p(z) - \log q(z|x))]` with one
  reparameterized sample. Pyro's :class:`~pyro.infer.Trace_ELBO` computes it from traces;
  for models with plain distributions and a continuous latent (:func:`fast_path`) pgm
  computes the same number straight from those distributions, skipping ~1 ms of tracing per
  step. tests/test_objectives.py proves value and gradient equal to Trace_ELBO's for the
  same noise.
- ``elbo-analytic``: :class:`~pyro.infer.TraceMeanField_ELBO`, the closed-form KL.
- models that enumerate a discrete latent (``model.latent == "discrete"``, the GMM) train ``elbo``
  with :class:`~pyro.infer.TraceEnum_ELBO`.
- ``iwae``: the importance-weighted bound :math:`\log \frac1K \sum_k w_k` of Burda et al.
  (2015), which is :class:`~pyro.infer.RenyiELBO` with ``alpha=0``; computed from the plain
  distributions with K vectorized particles (equal to RenyiELBO's value and gradient,
  tested), since RenyiELBO has no differentiable loss to put in a module.

KL warm-up multiplies the latent sites' log-densities by beta: a Pyro messenger
(:class:`ScaleLatents`) on the Pyro paths, the same factor on the fast paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger

from pgm.errors import UnknownNameError

OBJECTIVES = ("elbo", "elbo-analytic", "iwae")

Loss = Callable[[torch.Tensor, "torch.Tensor | None", float], torch.Tensor]


class ScaleLatents(Messenger):
    """Multiply the log-density of every latent (unobserved) sample site by ``beta``."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.beta


def fast_path(model) -> bool:
    """Whether the ELBO can be computed from the model's plain distributions, reparameterized
    (its declared capabilities, :mod:`pgm.protocol`)."""
    return model.plain_distributions and model.latent == "continuous"


def reparam_log_weights(model, x, y=None, num_particles: int = 1, beta: float = 1.0):
    r"""(K, B) :math:`\log p(x|z_k) + \beta(\log p(z_k) - \log q(z_k|x))`, z_k ~ q(z|x).

    The z_k are reparameterized draws, so gradients flow through them."""
    q = model.encode(x, y)
    z = q.rsample((num_particles,))  # (K, B, L)
    log_px_z = model.decode(z, y).log_prob(x)  # (K, B)
    return log_px_z + beta * (model.prior(x.shape[0], y).log_prob(z) - q.log_prob(z))


def make_objective(model, objective: str = "elbo", num_particles: int = 1, *,
                   use_pyro: bool = False) -> Loss:
    """The loss for ``objective``: mean over the batch of the negative bound, in nats."""
    if objective not in OBJECTIVES:
        raise UnknownNameError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    if objective == "iwae":
        if not fast_path(model):
            raise ValueError(f"the iwae objective needs plain reparameterized distributions; "
                             f"{type(model).__name__} has none")

        def iwae_loss(x, y=None, beta=1.0):
            log_w = reparam_log_weights(model, x, y, num_particles, beta)
            return -(torch.logsumexp(log_w, 0) - math.log(num_particles)).mean()

        return iwae_loss
    if objective == "elbo" and fast_path(model) and not use_pyro:
        def elbo_loss(x, y=None, beta=1.0):
            return -reparam_log_weights(model, x, y, num_particles, beta).mean()

        return elbo_loss
    if model.latent == "discrete":
        if objective != "elbo":
            raise ValueError(f"{type(model).__name__} enumerates its discrete latent; "
                             "train it with objective='elbo' (TraceEnum_ELBO)")
        elbo_cls = TraceEnum_ELBO
    else:
        elbo_cls = Trace_ELBO if objective == "elbo" else TraceMeanField_ELBO
    module = elbo_cls(num_particles=num_particles, vectorize_particles=num_particles > 1,
                      max_plate_nesting=1)(model.model, model.guide)
    anneal = ScaleLatents(1.0)

    def pyro_loss(x, y=None, beta=1.0):
        if beta == 1.0:
            return module(x, y) / x.shape[0]
        anneal.beta = beta
        with anneal:
            return module(x, y) / x.shape[0]

    return pyro_loss
