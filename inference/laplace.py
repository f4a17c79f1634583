r"""A proposal at the posterior's modes, for models whose guide has no density.

An autoencoder's guide is a point mass and a GAN has none, so AIS on them started from the
prior: in 64 dimensions with a likelihood as sharp as :math:`\mathcal N(x; G(z), 0.2^2 I)` on
784 pixels, the path from the prior to the posterior is long, and it needed 300 steps of 10
leapfrog steps to come within two nats of a long run (README, "AIS settings"). A proposal near
the posterior shortens it as a VAE's encoder does. :func:`laplace_proposal` finds, per
datapoint, up to ``modes`` local maxima :math:`\hat z_m` of :math:`\log p(x, z)` and puts a
Gaussian at each with the curvature's magnitude as its precision (Laplace's approximation,
MacKay 2003 ch. 27), weighted by its Laplace estimate of the mass near that mode:

.. math::

    q(z \mid x) = \sum_m \pi_m\, \mathcal N\big(z;\ \hat z_m,\ P_m^{-1}\big), \quad
    P_m = V_m \mathrm{diag}\big(\max(|\lambda_{mj}|, \lambda_{\min})\big) V_m^\top, \quad
    \pi_m \propto p(x, \hat z_m)\, |P_m|^{-1/2},

where :math:`V_m \mathrm{diag}(\lambda_m) V_m^\top = -\nabla^2_z \log p(x, z)|_{\hat z_m}`. A
generator that folds its latent space maps several z to one x, and a single Gaussian would
cover one of them (on the 1-D toy GAN, IWAE_1000 from one Gaussian sat 1.5 nats below the
quadrature value). It returns the model's :class:`~pgm.inference.callables.LatentCallables`
with ``sample_q`` and ``log_q`` replaced, so every estimator that takes a guide (IWAE, AIS
and BDMC with ``initial="q"``) takes it unchanged. Where the Hessian is not negative definite
(a saddle, a mode not reached) the absolute eigenvalues keep the curvature's scale (the
"saddle-free" choice of Dauphin et al. 2014); ``min_precision`` bounds the width in flat
directions. A mode within one standard deviation of a better one is dropped.

Why estimates stay valid: the proposal is a normalised density that depends on x and on
random draws (the starting points) independent of those the estimator then makes, so for
each fitted proposal E[w] = p(x), hence also on average over the fits. AIS's weights need
only that p_0 be normalised; IWAE needs q > 0 wherever p(x, z) > 0, which a Gaussian has.

The modes: the ``ascents`` best of ``starts`` draws from the guide (an autoencoder's code) and
``starts`` from the prior by :math:`\log p(x, z)`, then ``steps`` Adam steps on all of them at
once with a learning rate decaying geometrically from ``lr`` to ``lr / 100``; after a third
of the steps only the ``modes`` highest go on (their Adam state kept), then one Newton
step with :math:`P_m` (kept where it raises :math:`\log p(x, z)`). The Hessians come from one
double-backward pass over L copies of the batch (row j from copy j). Cost per datapoint:
``2 starts + ascents x steps / 3 + modes x 2 steps / 3`` evaluations of log p(x, z) and its
gradient, and ``modes x L`` Hessian rows, against ``T x leapfrog x chains`` for AIS.

Why ascents beyond the modes: a deep generator's posterior has many local maxima, and where
an ascent lands is decided early. On the quickstart's GAN (64-D z, s = 0.105, 20 test
images), against one long AIS run (T = 2000 x 10 from 32 modes, 718.2), AIS T = 100 x 10 from
4 modes of 4 ascents sat 37 nats low (681.3) and from 4 of 16 ascents 22.6 (695.6), as close
as from 16 modes of 16 ascents (695.2) at a fraction of the fit (2.9 s against 2.5 s and
6.3 s; 16 full modes on 100 images peaked at 4.5 GB against 1.6 for 4, as every mode's
Hessian is taken); at T = 200, 16.3 against 26.5 for 4 of 4 at T = 300. More draws to
choose the 4 from did not help (256 per source: 690.7 against 691.7 at T = 300), and 32
ascents little (695.2 at T = 100, 702.9 at T = 200). On a rugged 1-D case (tests) one ascent
from the best of 32 draws misses the global maximum for 14-17 of 40 datapoints, 16 ascents
for 1, 32 for none. An autoencoder's round posterior gains nothing (20 images: equal to the
last digit).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .callables import LatentCallables

#: Mixture components with less of the mass than this are left out.
MIN_WEIGHT = 1e-6
#: The prior's share when AIS starts from this proposal (``pgm evaluate``, the explicit view's
#: sigma fit). The share bounds importance weights where the Gaussians are too narrow (IWAE
#: from the proposal), but each chain drawn from the prior is wasted on a short path: on the
#: quickstart's GAN, T=200 x 10 sat 0.59 +- 0.19 nats below a long reference without it and
#: 0.95 +- 0.24 with 0.1 (the autoencoder: equal).
AIS_DEFENSIVE = 0.0


class Laplace(NamedTuple):
    """The fitted mixtures, ``M`` components per datapoint: means ``(M, B, L)``; the
    precisions' eigenvectors ``(M, B, L, L)`` and floored eigenvalues ``(M, B, L)``; log
    mixture weights ``(M, B)`` (-inf for a dropped mode); log p(x, mean) ``(M, B)``; the number
    of eigenvalues that were negative or below the floor ``(M, B)``."""

    mean: Tensor
    vectors: Tensor
    precision: Tensor
    log_weight: Tensor
    log_joint: Tensor
    floored: Tensor

    def index(self, rows: Tensor) -> Laplace:
        """The mixtures of datapoints ``rows``."""
        return Laplace(*(t[:, rows] for t in self))

    def inverse_mass_sqrt(self) -> Tensor:
        r"""``(B, L, L)``: per datapoint, :math:`C = V \mathrm{diag}(\lambda^{-1/2})` of its
        heaviest Gaussian, so :math:`C C^\top = P^{-1}`, that Gaussian's covariance: an HMC
        mass matrix :math:`M = P` for AIS (:func:`pgm.inference.ais.ais`)."""
        best = self.log_weight.argmax(0)  # (B,)
        rows = torch.arange(best.shape[0], device=best.device)
        return self.vectors[best, rows] * self.precision[best, rows].rsqrt()[:, None, :]

    def sample(self, K: int) -> Tensor:
        """``(K, B, L)`` draws."""
        M, B, L = self.mean.shape
        comp = torch.distributions.Categorical(logits=self.log_weight.T).sample((K,))  # (K, B)
        z = torch.empty(K, B, L, dtype=self.mean.dtype, device=self.mean.device)
        for m in range(M):  # z = mean + V diag(lambda^-1/2) eps, component by component
            eps = torch.randn(K, B, L, dtype=z.dtype, device=z.device)
            zm = self.mean[m] + torch.einsum("bij,kbj->kbi", self.vectors[m],
                                             eps * self.precision[m].rsqrt())
            z = torch.where((comp == m)[..., None], zm, z)
        return z

    def log_prob(self, z: Tensor) -> Tensor:
        """``(K, B)`` log-density of ``z`` ``(K, B, L)``: every component in one batched
        product, u = V^T (z - mean)."""
        L = self.mean.shape[-1]
        u = (torch.einsum("mbji,kbj->mkbi", self.vectors, z)
             - torch.einsum("mbji,mbj->mbi", self.vectors, self.mean)[:, None])  # (M, K, B, L)
        log = (self.log_weight + 0.5 * self.precision.log().sum(-1))[:, None] \
            - 0.5 * (self.precision[:, None] * u**2).sum(-1)  # (M, K, B)
        return torch.logsumexp(log, 0) - 0.5 * L * math.log(2 * math.pi)


def _hessian(log_joint, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient ``(M, B, L)`` and Hessian ``(M, B, L, L)`` of log p(x, z) at ``z``
    ``(M, B, L)``."""
    M, B, L = z.shape
    with torch.enable_grad():
        zz = z.detach()[None].expand(L, M, B, L).reshape(L * M, B, L).clone().requires_grad_()
        g = torch.autograd.grad(log_joint(x, zz).sum(), zz, create_graph=True)[0]
        g = g.view(L, M, B, L)
        pick = torch.eye(L, dtype=z.dtype, device=z.device)[:, None, None, :]  # copy j: g_j
        h = torch.autograd.grad((g * pick).sum(), zz)[0].view(L, M, B, L)  # h[j] = row j
    return g[0].detach(), h.permute(1, 2, 0, 3).detach()


def _prune(f, x, z, opt, keep, gamma):
    """The ``keep`` ascents with the highest log p(x, z) per datapoint, their Adam state and
    learning rate carried over."""
    with torch.no_grad():
        idx = f.log_joint(x, z).topk(keep, dim=0).indices[..., None].expand(-1, -1, z.shape[-1])
    state = opt.state.get(z)
    z2 = z.detach().gather(0, idx).requires_grad_(True)
    opt2 = torch.optim.Adam([z2], lr=opt.param_groups[0]["lr"])
    if state:  # (none before the first step)
        opt2.state[z2] = {"step": state["step"].clone(),
                          "exp_avg": state["exp_avg"].gather(0, idx),
                          "exp_avg_sq": state["exp_avg_sq"].gather(0, idx)}
    return z2, opt2, torch.optim.lr_scheduler.ExponentialLR(opt2, gamma)


def fit_laplace(f: LatentCallables, x: Tensor, *, modes: int = 4, ascents: int = 16,
                starts: int = 16, steps: int = 300, lr: float = 0.3,
                min_precision: float = 1e-2, init: Tensor | None = None) -> Laplace:
    """The mixtures of the module docstring for the datapoints ``x``: up to ``modes``
    components, from ``ascents`` ascents (at least ``modes``). ``init`` ``(M, B, L)``: start
    the ascent there instead of at the best draws (a warm start from a nearby model's modes, as
    the explicit view's sigma fit does from one sigma to the next; pruned to ``modes`` as
    well)."""
    B = x.shape[0]
    if init is not None:
        if init.dim() != 3 or init.shape[1] != B:
            raise ValueError(f"init must have shape (modes, {B}, latent_dim), got "
                             f"{tuple(init.shape)}")
        z = init
    else:
        with torch.no_grad():
            cands = [f.sample_q(x, starts)]
            if f.sample_prior is not None:
                cands.append(f.sample_prior(B, starts))
            cands = torch.cat(cands)  # (S, B, L)
            n = min(max(modes, ascents), len(cands))
            top = f.log_joint(x, cands).topk(n, dim=0).indices  # (A, B)
            z = cands.gather(0, top[..., None].expand(-1, -1, cands.shape[-1]))
    z = z.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    gamma = 0.01 ** (1 / max(steps, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    with torch.enable_grad():
        for i in range(steps):
            if i == steps // 3 and len(z) > modes:  # the best `modes` ascents go on
                z, opt, sched = _prune(f, x, z, opt, modes, gamma)
            z.grad, = torch.autograd.grad(-f.log_joint(x, z).sum(), z)
            opt.step()
            sched.step()
    if len(z) > modes:  # no step to prune at (steps = 0)
        z = _prune(f, x, z, opt, modes, gamma)[0]
    z = z.detach()
    g, h = _hessian(f.log_joint, x, z)
    lam, vec = torch.linalg.eigh(-0.5 * (h + h.transpose(-1, -2)))
    floored = (lam < min_precision).sum(-1)
    lam = lam.abs().clamp_min(min_precision)
    # one Newton step z + P^-1 g, kept where it raises log p(x, z)
    step = torch.einsum("mbij,mbj->mbi", vec, torch.einsum("mbji,mbj->mbi", vec, g) / lam)
    with torch.no_grad():
        now, new = f.log_joint(x, z), f.log_joint(x, z + step)
    mean = torch.where((new > now)[..., None], z + step, z)
    log_joint = torch.maximum(new, now).detach()
    # best mode first; drop a mode within one standard deviation (in the metric of a better
    # mode kept) of it; weight the rest by their Laplace masses p(x, mode) |P|^-1/2
    order = log_joint.argsort(0, descending=True)  # (M, B)

    def sort(t):
        return t.gather(0, order.view(*order.shape, *[1] * (t.dim() - 2)).expand_as(t))

    mean, vec, lam, log_joint, floored = map(sort, (mean, vec, lam, log_joint, floored))
    keep = torch.ones_like(log_joint, dtype=torch.bool)
    for a in range(len(mean)):
        for b in range(a + 1, len(mean)):
            u = torch.einsum("bji,bj->bi", vec[a], mean[b] - mean[a])  # V_a^T (mu_b - mu_a)
            keep[b] &= ~(keep[a] & ((lam[a] * u**2).sum(-1) < 1.0))
    log_mass = log_joint.double() - 0.5 * lam.double().log().sum(-1)
    log_weight = torch.where(keep, log_mass, -math.inf)
    log_weight = log_weight - log_weight.logsumexp(0)
    # a component with less than MIN_WEIGHT of the mass is dropped (the mixture renormalised:
    # still a proposal), and one no datapoint keeps is not computed at all
    log_weight = torch.where(log_weight < math.log(MIN_WEIGHT), -math.inf, log_weight)
    log_weight = (log_weight - log_weight.logsumexp(0)).to(mean.dtype)
    used = torch.isfinite(log_weight).any(1)
    return Laplace(*(t[used] for t in (mean, vec, lam, log_weight, log_joint, floored)))


def laplace_proposal(f: LatentCallables, x: Tensor, *, defensive: float = 0.1,
                     fitted: Laplace | None = None, **fit) -> LatentCallables:
    """``f`` with ``sample_q``/``log_q`` replaced by :func:`fit_laplace`'s mixtures for the
    datapoints ``x``, mixed with the prior at weight ``defensive`` where ``f`` can sample it
    (Hesterberg's defensive importance sampling: the weight p(x, z)/q(z|x) stays below
    p(x|z)/defensive where the Gaussians are narrower than the posterior). They take ``x`` or
    any rows of it (an estimator's batch), found by value, and refuse other datapoints.
    ``fitted``: mixtures :func:`fit_laplace` already found for ``x`` (else ``fit`` are its
    arguments)."""
    if not 0 <= defensive < 1:
        raise ValueError(f"defensive must be in [0, 1), got {defensive}")
    q = fit_laplace(f, x, **fit) if fitted is None else fitted
    if q.mean.shape[1] != len(x):
        raise ValueError(f"fitted holds {q.mean.shape[1]} datapoints' mixtures, x has {len(x)}")
    eps = defensive if f.sample_prior is not None else 0.0
    flat = x.reshape(len(x), -1)
    found: dict = {}

    def mixture(x_: Tensor) -> Laplace:
        """The mixtures of the rows of x that ``x_`` holds."""
        key = (x_, x_._version)  # the key holds x_, so its id is not reused
        if key not in found:
            same = (x_.reshape(len(x_), -1)[:, None, :] == flat[None]).all(-1)  # (b, B)
            if not bool(same.any(-1).all()):
                raise ValueError("this Laplace proposal was fitted to other datapoints")
            found.clear()
            found[key] = q.index(same.int().argmax(-1))
        return found[key]

    def sample_q(x_, K):
        z = mixture(x_).sample(K)
        if eps:
            prior = f.sample_prior(len(x_), K).to(z)
            z = torch.where((torch.rand(z.shape[:-1], device=z.device) < eps)[..., None],
                            prior, z)
        return z

    def log_q(z, x_):
        lq = mixture(x_).log_prob(z)
        if not eps:
            return lq
        return torch.logaddexp(lq + math.log1p(-eps), f.log_prior(z) + math.log(eps))

    return f._replace(sample_q=sample_q, log_q=log_q)
