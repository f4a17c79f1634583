r"""From one of pgm's models to the plain callables the estimators take.

:func:`latent_callables` gives a model's :class:`LatentCallables` with its label ``y`` bound
(build them per batch):

- ``log_joint(x, z)``    = log p(x, z)
- ``log_prior(z)``       = log p(z)
- ``sample_q(x, K)``     = z ~ q(z|x), K particles
- ``log_q(z, x)``        = log q(z|x)
- ``sample_prior(B, K)`` = z ~ p(z)
- ``grad_log_joint(x, z)`` = the gradient of log p(x, z) in z (from the likelihood's score in
  closed form where its distribution has one, so HMC's inner leapfrog steps skip the log
  density's pass over every pixel)
- ``grad_log_prior(z)`` = the gradient of log p(z) in z (in closed form where
  :func:`~pgm.inference.scores.grad_log_prob` has one, as for the Gaussian priors; both
  gradients fall back to autograd)

Any Pyro model/guide pair is measurable through :class:`pgm.inference.program.Program`, which
reads these functions off the pair's traces (``traces=True`` here routes a pgm model through
it). Tracing costs about a millisecond per call, which dominates AIS on small models (T x
leapfrog calls per batch). The contract of :mod:`pgm.protocol` requires ``model``/
``guide`` to be built from ``prior``/``encode``/``decode``, so by default this computes the
same functions from those distributions directly (for an enumerated model such as the GMM,
``encode`` is the exact posterior over the discrete latent, which its guide leaves to
enumeration). tests/test_adapter.py proves the two paths equal.
"""

from __future__ import annotations

import torch

from .callables import LatentCallables
from .program import Program
from .scores import grad_log_prob


def latent_callables(model, y: torch.Tensor | None = None, *,
                     traces: bool = False) -> LatentCallables:
    """The :class:`LatentCallables` of ``model``'s Pyro programs, with label ``y`` bound."""
    if not traces:
        return _plain_callables(model, y)
    B = 2 if y is None else len(y)
    device = model.prior_loc.device
    x = torch.zeros(B, model.data_dim, device=device)  # a probe: only shapes are read
    return Program(model.model, model.guide, x, y).callables(y)


def _plain_callables(model, y: torch.Tensor | None) -> LatentCallables:
    """The same callables from the contract's distributions, without Pyro's tracing. Each
    new x is checked against the model first (``model.check_data``: its width, finite values,
    the likelihood's support), so ``iwae_bound`` or ``ais`` on data the model cannot score
    stop with a DataError naming the problem, not a matmul error or +1e5 nats."""
    checked: dict = {}

    def check(x):
        key = (x, x._version)  # AIS scores one x at every step: check it once
        if checked.get("key") is None or not _same_key(checked["key"], key):
            model.check_data(x)
            checked["key"] = key

    def log_prior(z):
        return model.prior(z.shape[1], y).log_prob(z)  # (K, B)

    def log_joint(x, z):
        check(x)
        return log_prior(z) + model.decode(z, y).log_prob(x)

    def closed_form_prior_grad(z):  # None where the prior has none (then autograd)
        return grad_log_prob(model.prior(z.shape[1], y), z)

    def grad_log_prior(z):
        g = closed_form_prior_grad(z)
        if g is not None:
            return g.detach()
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            return torch.autograd.grad(log_prior(z).sum(), z)[0].detach()

    def grad_log_joint(x, z):
        # d/dz log p(x, z) in one backward pass from the likelihood's parameter, with its
        # score in closed form where the distribution gives one (``score``: Bernoulli logits,
        # a fixed-scale Gaussian's mean), otherwise autograd of log p(x | z); the prior's
        # gradient in closed form where it has one, otherwise in the same backward pass
        check(x)
        prior_grad = closed_form_prior_grad(z)
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            p_x = model.decode(z, y)
            score = getattr(p_x, "score", None)
            param, d = score(x) if score is not None else (p_x.log_prob(x).sum(), None)
            outputs, seeds = [param], [d]
            if prior_grad is None:
                outputs, seeds = [log_prior(z).sum(), param], [None, d]
            grad = torch.autograd.grad(outputs, z, seeds, allow_unused=True)[0]
        grad = torch.zeros_like(z) if grad is None else grad
        return (grad if prior_grad is None else grad + prior_grad).detach()

    cache: dict = {}

    def encode(x):
        # AIS from q calls log_q with the same x at every leapfrog step, IWAE calls sample_q
        # and log_q with it for every chunk of particles: encode it once while x and the
        # parameters are unchanged (the key holds x, so its id is not reused).
        key = (x, x._version, torch.is_grad_enabled(),
               tuple(p._version for p in model.parameters()))
        if cache.get("key") is None or not _same_key(cache["key"], key):
            cache["key"], cache["q"] = key, model.encode(x, y)
        return cache["q"]

    def sample_q(x, K):
        check(x)
        with torch.no_grad():
            return encode(x).sample((K,))

    def log_q(z, x):
        return encode(x).log_prob(z)

    def sample_prior(B, K):
        with torch.no_grad():
            return model.prior(B, y).sample((K,))

    return LatentCallables(log_joint, log_prior, sample_q, log_q, sample_prior,
                           grad_log_joint, grad_log_prior)


def _same_key(a: tuple, b: tuple) -> bool:
    return a[0] is b[0] and a[1:] == b[1:]
