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
- ``iwae-dreg``: the same bound and value, with the doubly-reparameterized gradient of
  Tucker, Lawson, Gu & Maddison (2019) for the encoder (:func:`iwae_dreg_surrogate`); the
  decoder's gradient is IWAE's own.

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

OBJECTIVES = ("elbo", "elbo-analytic", "iwae", "iwae-dreg")

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


def iwae_dreg_surrogate(model, x, y=None, num_particles: int = 1, beta: float = 1.0):
    r"""(B,) a surrogate whose value is the IWAE bound and whose gradient is DReG's.

    With :math:`z_k = g_\phi(\epsilon_k)`, :math:`\log w_k = \log p_\theta(x | z_k) +
    \beta(\log p_\theta(z_k) - \log q_\phi(z_k|x))` and normalised weights
    :math:`\tilde w_k = w_k / \sum_j w_j`, the gradients are

    .. math::

        \nabla_\theta = \sum_k \tilde w_k\, \nabla_\theta \log w_k \quad\text{(IWAE's)},
        \qquad
        \nabla_\phi = \sum_k \tilde w_k^2\, \frac{\partial \log w_k}{\partial z_k}
        \frac{\partial z_k}{\partial \phi} \quad\text{(DReG)},

    where the encoder's gradient reaches :math:`\phi` only through :math:`z_k` (the
    variational parameters inside log q are held fixed: their score term has mean zero and
    is dropped). Both are unbiased for the IWAE bound's gradient (Tucker et al. 2019, eq. 6).

    One forward pass gives both: log q at the fixed parameters is
    :math:`\log q(z) - \log q(\bar z) + \mathrm{sg}[\log q(\bar z)]` (:math:`\bar z`: z
    with its gradient stopped; the difference's parameter gradients cancel), and the
    decoder's and prior's input is a copy of z whose backward gradient is multiplied by
    :math:`\tilde w_k` (a tensor hook), so that
    :math:`\sum_k \tilde w_k \log p_\theta(x, z_k) - \beta\,\tilde w_k^2 \log q` has
    the gradients above.
    """
    q = model.encode(x, y)
    z = q.rsample((num_particles,))  # (K, B, L)
    z_bar = z.detach()
    log_q_bar = q.log_prob(z_bar)
    log_q = q.log_prob(z) - log_q_bar + log_q_bar.detach()  # fixed variational parameters
    z_p = z.clone()  # the decoder's and prior's copy of z
    log_p = model.decode(z_p, y).log_prob(x) + beta * model.prior(x.shape[0], y).log_prob(z_p)
    log_w = log_p - beta * log_q  # (K, B)
    w = torch.softmax(log_w.detach(), 0)
    if z_p.requires_grad:
        z_p.register_hook(lambda g: g * w.unsqueeze(-1))
    bound = torch.logsumexp(log_w.detach(), 0) - math.log(num_particles)
    surrogate = (w * log_p - w.pow(2) * beta * log_q).sum(0)
    return surrogate - surrogate.detach() + bound


def make_objective(model, objective: str = "elbo", num_particles: int = 1, *,
                   use_pyro: bool = False) -> Loss:
    """The loss for ``objective``: mean over the batch of the negative bound, in nats."""
    if objective not in OBJECTIVES:
        raise UnknownNameError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    if objective in ("iwae", "iwae-dreg"):
        if not fast_path(model):
            raise ValueError(f"the {objective} objective needs plain reparameterized "
                             f"distributions; {type(model).__name__} has none")
        if objective == "iwae-dreg":
            return lambda x, y=None, beta=1.0: -iwae_dreg_surrogate(
                model, x, y, num_particles, beta).mean()

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
