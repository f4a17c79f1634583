r"""From a Pyro model/guide pair to the plain callables the estimators take.

:func:`latent_callables` runs the pair's Pyro programs under ``poutine.trace`` and
``poutine.condition(model, {"z": z})``, vectorised over K particles by an outer
``pyro.plate("particles", K, dim=-2)``, so any model that honours the contract
(:mod:`pgm.protocol`) is measurable without a model-specific formula:

- ``log_joint(x, z)`` = sum of the model trace's log-densities with z fixed: log p(x, z)
- ``log_prior(z)``     = the log-density of the latent site alone: log p(z)
- ``sample_q(x, K)``   = the guide's latent site under the particle plate
- ``log_q(z, x)``      = the guide trace's log-density with z fixed
- ``sample_prior(B, K)`` = the model's latent site (x unobserved) under the particle plate

The label ``y`` of a conditional model is bound here: build the callables per batch.

Tracing costs about a millisecond per call, which dominates AIS on small models (T x
(leapfrog + 1) calls per batch). The contract requires ``model``/``guide`` to be built from
``prior``/``encode``/``decode``, so by default ``latent_callables`` computes the same
functions from those distributions directly (for an enumerated model such as the GMM,
``encode`` is the exact posterior over the discrete latent, which its guide leaves to
enumeration). tests/test_adapter.py proves the two paths equal; ``traces=True`` forces the
traced one.
"""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import torch

from .callables import LatentCallables

LATENT, OBSERVED = "z", "x"


def _particles(fn, K: int):
    def vectorised(*args, **kwargs):
        with pyro.plate("particles", K, dim=-2):
            return fn(*args, **kwargs)

    return vectorised


def _trace(fn, K: int, *args, z: torch.Tensor | None = None):
    fn = _particles(fn, K)
    if z is not None:
        fn = poutine.condition(fn, data={LATENT: z})
    tr = poutine.trace(fn).get_trace(*args)
    tr.compute_log_prob(site_filter=lambda name, site: name in (LATENT, OBSERVED))
    return tr


def latent_callables(model, y: torch.Tensor | None = None, *,
                     traces: bool = False) -> LatentCallables:
    """The :class:`LatentCallables` of ``model``'s Pyro programs, with label ``y`` bound."""
    if not traces:
        return _plain_callables(model, y)

    def log_joint(x, z):
        tr = _trace(model.model, z.shape[0], x, y, z=z)
        return tr.nodes[LATENT]["log_prob"] + tr.nodes[OBSERVED]["log_prob"]  # (K, B)

    def log_prior(z):
        x = torch.zeros(z.shape[1], model.data_dim, device=z.device)  # unused: only p(z) is read
        return _trace(model.model, z.shape[0], x, y, z=z).nodes[LATENT]["log_prob"]

    def sample_q(x, K):
        with torch.no_grad():
            return _trace(model.guide, K, x, y).nodes[LATENT]["value"]  # (K, B, L)

    def log_q(z, x):
        return _trace(model.guide, z.shape[0], x, y, z=z).nodes[LATENT]["log_prob"]

    def sample_prior(B, K):
        device = next(model.parameters()).device
        x = torch.zeros(B, model.data_dim, device=device)
        with torch.no_grad(), poutine.block(hide=[OBSERVED]):
            tr = poutine.trace(_particles(model.model, K)).get_trace(x, y)
        return tr.nodes[LATENT]["value"]

    return LatentCallables(log_joint, log_prior, sample_q, log_q, sample_prior)


def _plain_callables(model, y: torch.Tensor | None) -> LatentCallables:
    """The same callables from the contract's distributions, without Pyro's tracing."""

    def log_prior(z):
        return model.prior(z.shape[1], y).log_prob(z)  # (K, B)

    def log_joint(x, z):
        return log_prior(z) + model.decode(z, y).log_prob(x)

    def sample_q(x, K):
        with torch.no_grad():
            return model.encode(x, y).sample((K,))

    def log_q(z, x):
        return model.encode(x, y).log_prob(z)

    def sample_prior(B, K):
        with torch.no_grad():
            return model.prior(B, y).sample((K,))

    return LatentCallables(log_joint, log_prior, sample_q, log_q, sample_prior)
