r"""The mixture model :math:`p(x) = \sum_m p(m)\, p(x | m)`: the VAE's discrete, clustering cousin.

Generative story (the lecture's): draw a component :math:`m \sim \mathrm{Cat}(\pi)` from the
multinomial of weights, then :math:`x \sim p(x | m)`: a diagonal Gaussian
:math:`\mathcal N(\mu_m, \mathrm{diag}\,\sigma_m^2)` for real data or a product of Bernoullis
:math:`\prod_d \mathrm{Bern}(x_d; p_{md})` for binary pixels. The weights (as logits), means
and scales are point estimates (``nn.Parameter``); there is no network.

The contract's latent site ``"z"`` is the component index m. The model enumerates it
(``infer={"enumerate": "parallel"}``) and the guide has no latent site, so
:class:`~pyro.infer.TraceEnum_ELBO`'s loss is exactly :math:`-\log p(x)`: :func:`pgm.fit` with
its default objective trains the mixture by maximum likelihood (stochastic gradient), and its
"valid ELBO" is the exact validation log-likelihood. :meth:`GMM.em` is the classical
alternative, closed-form EM (Dempster, Laird & Rubin 1977), used by :func:`fit_latent_gmm`;
:meth:`GMM.em_step` is one of its steps, which :func:`pgm.fit` takes once per epoch with
``objective="em"`` (``pgm train gmm --objective em``).

One floor for both fits: a standard deviation never goes below ``min_scale`` (gradient
training by the parameterisation below, EM by flooring its M-step there), and a Bernoulli
probability stays in [``min_prob``, 1 - ``min_prob``]. :meth:`GMM.set_parameters` refuses
values outside those ranges instead of moving them.

Parameterisation (so no component leaves the support during gradient training):
:math:`\sigma = s_{min} + \mathrm{softplus}(r)` (the ``gaussian-learned`` head of
:mod:`pgm.likelihoods`) and :math:`p = p_{min} + (1 - 2 p_{min})\,\mathrm{sigmoid}(r)`, so
no Bernoulli probability reaches 0 or 1 and no test image gets :math:`-\infty`.

:meth:`GMM.initialize` (called by :func:`pgm.fit` before a new run) runs k-means with
k-means++ seeding (Arthur & Vassilvitskii 2007) from scikit-learn, its random state drawn
from torch's RNG, and starts every component at its cluster's mean, spread and size, so no
component starts empty.

Latent-space sampler: :func:`fit_latent_gmm` fits a Gaussian mixture by EM to a trained VAE's
codes (encoder means of the training data); sampling codes from it instead of N(0, I) puts
them where the decoder has seen data (the "aggregate posterior" of the codes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pgm.errors import DataError
from pgm.likelihoods import make_likelihood
from pgm.protocol import LatentVariableModel, check_count

GMM_LIKELIHOODS = ("bernoulli", "gaussian")
_LOG_2PI = math.log(2 * math.pi)


@dataclass
class GMMConfig:
    data_dim: int
    components: int = 10
    likelihood: str = "bernoulli"  # "bernoulli" (pixels in {0,1}) or "gaussian" (diagonal)
    min_scale: float = 1e-3  # gaussian: the floor of every sigma, for SVI and EM alike
    min_prob: float = 1e-3  # bernoulli: p in [min_prob, 1 - min_prob]
    kmeans_iters: int = 20  # Lloyd iterations of the k-means++ initialisation (0: seeding only)

    def __post_init__(self):
        if self.data_dim < 1 or self.components < 1:
            raise ValueError("data_dim and components must be positive")
        if self.likelihood not in GMM_LIKELIHOODS:
            raise ValueError(f"unknown GMM likelihood {self.likelihood!r}; "
                             f"known: {', '.join(GMM_LIKELIHOODS)}")
        if not self.min_scale > 0:
            raise ValueError(f"min_scale must be > 0, got {self.min_scale}")
        if not 0 < self.min_prob < 0.5:
            raise ValueError(f"min_prob must lie in (0, 0.5), got {self.min_prob}")
        if self.kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be >= 0, got {self.kmeans_iters}")


def _inv_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


class GMM(LatentVariableModel):
    """Mixture of ``components`` diagonal Gaussians or Bernoulli products.

    ``GMM(data_dim=784, components=100)``; ``GMM(data_dim=2, components=3,
    likelihood="gaussian")``. ``z`` is a component index (event shape ``()``), so
    ``latent_dim`` is 0: there is no continuous code.
    """

    name = "gmm"
    Config = GMMConfig
    latent = "discrete"
    exact_method = "enumeration"
    closed_form_em = True
    default_lr = 1e-2  # 3e-2 kept a 50-component mixture of the digits at epoch 3
    default_epochs = 100
    default_min_epochs = 30

    def __init__(self, config: GMMConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else GMMConfig(**kwargs)
        c = self.config
        self.data_dim, self.latent_dim, self.components = c.data_dim, 0, c.components
        M, D = c.components, c.data_dim
        self.logits = nn.Parameter(torch.zeros(M))  # mixture weights pi = softmax(logits)
        # the component means: data-scale locs for "gaussian", raw probabilities for "bernoulli"
        self.loc = nn.Parameter(0.1 * torch.randn(M, D))
        if c.likelihood == "gaussian":
            self.likelihood = make_likelihood("gaussian-learned", min_scale=c.min_scale)
            self.raw_scale = nn.Parameter(torch.zeros(M, D))  # sigma = min_scale + log 2
        else:
            self.likelihood = make_likelihood("bernoulli")

    # ---- parameters ----------------------------------------------------------------------
    @property
    def weights(self) -> torch.Tensor:
        """Mixture weights p(m), (M,)."""
        return torch.softmax(self.logits, -1)

    @property
    def means(self) -> torch.Tensor:
        """Component means E[x | m], (M, D): Gaussian locs or Bernoulli probabilities."""
        if self.config.likelihood == "gaussian":
            return self.loc
        p = self.config.min_prob
        return p + (1 - 2 * p) * torch.sigmoid(self.loc)

    @property
    def scales(self) -> torch.Tensor:
        """Component standard deviations, (M, D) (Gaussian components only)."""
        if self.config.likelihood != "gaussian":
            raise AttributeError("Bernoulli components have no scale parameter")
        return self.config.min_scale + F.softplus(self.raw_scale)

    def _head_inputs(self) -> torch.Tensor:
        """(M, k*D) raw inputs of the likelihood head, one row per component."""
        if self.config.likelihood == "gaussian":
            return torch.cat([self.loc, self.raw_scale], dim=-1)
        return torch.logit(self.means)

    @torch.no_grad()
    def set_parameters(self, weights: torch.Tensor, means: torch.Tensor,
                       scales: torch.Tensor | None = None) -> None:
        """Set weights (M,), means (M, D) and, for Gaussians, scales (M, D) (inverting the maps).

        Values the parameterisation cannot hold are refused with a ValueError, never moved:
        weights must be positive and sum to 1, scales at least ``min_scale``, Bernoulli
        means in [``min_prob``, 1 - ``min_prob``]. A value on the floor is stored a relative
        1e-6 above it (softplus never reaches 0).
        """
        c = self.config
        weights = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        if weights.shape != (c.components,) or means.shape != (c.components, c.data_dim):
            raise ValueError(f"expected weights ({c.components},) and means "
                             f"({c.components}, {c.data_dim}), got {tuple(weights.shape)} and "
                             f"{tuple(means.shape)}")
        if not (torch.isfinite(weights).all() and torch.isfinite(means).all()):
            raise ValueError("weights and means must be finite")
        if not (weights > 0).all() or abs(float(weights.sum()) - 1) > 1e-4:
            raise ValueError(f"weights must be positive and sum to 1, got min "
                             f"{float(weights.min()):.3g} and sum {float(weights.sum()):.6g}")
        self.logits.copy_(weights.log())
        if c.likelihood == "gaussian":
            if scales is None:
                raise ValueError("Gaussian components need scales")
            scales = torch.as_tensor(scales, dtype=torch.float64)
            if scales.shape != means.shape:
                raise ValueError(f"scales must have shape {tuple(means.shape)}, "
                                 f"got {tuple(scales.shape)}")
            low = int((~(scales >= c.min_scale * (1 - 1e-6))).sum())  # NaN counts as low
            if low:
                raise ValueError(f"{low} scales below min_scale={c.min_scale:g} (smallest "
                                 f"{float(scales.min()):.3g}); floor them or lower min_scale")
            self.loc.copy_(means)
            excess = (scales - c.min_scale).clamp_min(1e-6 * c.min_scale)
            self.raw_scale.copy_(_inv_softplus(excess))
        else:
            p = c.min_prob
            u = (means - p) / (1 - 2 * p)  # in [0, 1] for allowed means
            out = int(((u < -1e-6) | (u > 1 + 1e-6)).sum())
            if out:
                raise ValueError(f"{out} Bernoulli means outside [min_prob, 1 - min_prob] = "
                                 f"[{p:g}, {1 - p:g}]; clamp them or lower min_prob")
            self.loc.copy_(torch.logit(u.clamp(1e-6, 1 - 1e-6)))

    # ---- plain distributions -------------------------------------------------------------
    def prior(self, n: int, y: torch.Tensor | None = None) -> dist.Distribution:
        """p(m) = Categorical(weights), batch shape (n,)."""
        return dist.Categorical(logits=self.logits.expand(n, -1))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        """p(x | m = z) for integer z of any batch shape; event shape (D,).

        The likelihood head's distribution, with a log_prob that takes one matrix product
        over all components instead of broadcasting (M, B, D) (see :class:`Components`).
        """
        return Components(self, z.long())

    def component_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x | m) for every datapoint and component, (B, M) float64, by matrix products."""
        x = x.to(torch.float64)
        mu = self.means.to(torch.float64)
        if self.config.likelihood == "gaussian":
            prec = self.scales.to(torch.float64).pow(-2)  # (M, D)
            quad = (x.pow(2) @ prec.T - 2 * x @ (mu * prec).T
                    + (mu.pow(2) * prec).sum(-1))  # (B, M)
            return -0.5 * quad + 0.5 * prec.log().sum(-1) - 0.5 * self.data_dim * _LOG_2PI
        # sum_d x log p + (1 - x) log(1 - p) = x . logit(p) + sum_d log(1 - p)
        log1m = torch.log1p(-mu)
        return x @ (mu.log() - log1m).T + log1m.sum(-1)  # (B, M)

    def joint_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x, m) = log p(m) + log p(x | m), (B, M) float64."""
        log_pi = torch.log_softmax(self.logits.to(torch.float64), -1)
        return log_pi + self.component_log_likelihood(x)

    @torch.no_grad()
    def exact_log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = logsumexp_m [log p(m) + log p(x | m)], (B,) float64, detached (a
        measurement; differentiate ``torch.logsumexp(self.joint_log_prob(x), -1)``)."""
        return torch.logsumexp(self.joint_log_prob(x), -1)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """The exact posterior p(m | x), (B, M)."""
        return torch.softmax(self.joint_log_prob(x), -1).to(self.logits.dtype)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        """The exact posterior q(m | x) = p(m | x) = Categorical(responsibilities), batch (B,)."""
        return dist.Categorical(probs=self.responsibilities(x))

    # ---- Pyro programs -------------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x.shape[0]), infer={"enumerate": "parallel"})
            pyro.sample("x", self.decode(z), obs=x)
        return z

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """No latent site: z is summed out in the model, so the ELBO is log p(x) exactly."""
        with pyro.plate("data", x.shape[0]):
            pass

    # ---- initialisation and EM -----------------------------------------------------------
    @torch.no_grad()
    def initialize(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """k-means with k-means++ seeding; each component starts at its cluster's statistics.

        The k-means random state is drawn from torch's RNG, so ``pyro.set_rng_seed`` (which
        :func:`pgm.fit` calls) makes the initialisation reproducible.
        """
        from sklearn.cluster import KMeans, kmeans_plusplus

        c = self.config
        M = c.components
        if len(x) < M:
            raise DataError(f"a mixture of {M} components needs at least {M} datapoints, "
                            f"got {len(x)}")
        xs = x.detach().cpu().to(torch.float64)
        xn = xs.numpy()
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        if c.kmeans_iters > 0:
            km = KMeans(n_clusters=M, init="k-means++", n_init=1, max_iter=c.kmeans_iters,
                        random_state=seed).fit(xn)
            centers, labels = km.cluster_centers_, km.labels_
        else:
            centers, _ = kmeans_plusplus(xn, n_clusters=M, random_state=seed)
            labels = torch.cdist(xs, torch.from_numpy(centers)).argmin(1).numpy()
        labels = torch.from_numpy(labels).long()
        centers = torch.from_numpy(centers)
        counts = torch.bincount(labels, minlength=M).to(torch.float64)
        weights = (counts + 1) / (counts + 1).sum()
        if c.likelihood == "gaussian":
            sums = torch.zeros(M, xs.shape[1], dtype=torch.float64).index_add_(
                0, labels, (xs - centers[labels]).pow(2))
            var = sums / counts.clamp_min(1)[:, None]
            floor = max(4 * c.min_scale, 1e-2 * float(xs.std(0).mean()))
            scale = var.sqrt().clamp_min(floor)
            scale[counts < 2] = xs.std(0).clamp_min(floor)  # singletons get the data's spread
            self.set_parameters(weights, centers, scale)
        else:
            lo = max(0.01, 2 * c.min_prob)
            self.set_parameters(weights, centers.clamp(lo, 1 - lo))

    @torch.no_grad()
    def em_step(self, x: torch.Tensor) -> float:
        """One closed-form EM step on all of ``x``; returns mean log p(x) before it (nats).

        E-step: responsibilities r = p(m | x). M-step: weights = mean r, means = r-weighted
        averages, scales = r-weighted standard deviations; both floored where gradient
        training is (scales at ``min_scale``, Bernoulli means in [min_prob, 1 - min_prob]),
        so EM never moves to a point the model cannot represent. Never lowers log p(x).
        """
        c = self.config
        xs = x.detach().to(self.loc.device, torch.float64)
        log_joint = self.joint_log_prob(xs)  # (B, M)
        log_px = torch.logsumexp(log_joint, -1)
        r = torch.exp(log_joint - log_px[:, None])  # (B, M)
        nk = r.sum(0) + 1e-10  # (M,)
        means = (r.T @ xs) / nk[:, None]
        scales = None
        if c.likelihood == "gaussian":
            var = (r.T @ xs.pow(2)) / nk[:, None] - means.pow(2)
            scales = var.clamp_min(0).sqrt().clamp_min(c.min_scale)
        else:
            means = means.clamp(c.min_prob, 1 - c.min_prob)
        self.set_parameters(nk / nk.sum(), means, scales)
        return float(log_px.mean())

    @torch.no_grad()
    def em(self, x: torch.Tensor, steps: int = 100, tol: float = 1e-6) -> list[float]:
        """:meth:`em_step` until the mean log-likelihood improves by less than ``tol`` (or
        ``steps`` steps); returns mean log p(x) before each step (nats)."""
        trace: list[float] = []
        for _ in range(int(steps)):
            trace.append(self.em_step(x))
            if len(trace) > 1 and trace[-1] - trace[-2] < tol:
                break
        return trace

    def explicit_view(self, sigma: float) -> GMM:
        """The same weights and means with every scale ``sigma`` (Gaussian components)."""
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        c = self.config
        view = GMM(replace(c, likelihood="gaussian", min_scale=min(c.min_scale, sigma / 2)))
        with torch.no_grad():
            view.set_parameters(self.weights, self.means, torch.full_like(self.means, sigma))
        return view.to(self.logits.device).eval()

    def write_figures(self, run_dir, data, history, **options):
        """Components, samples, responsibilities and log-likelihood curves
        (:mod:`pgm.models.gmm_figures`)."""
        from .gmm_figures import write_gmm_figures

        return write_gmm_figures(run_dir, self, data, history, **options)

    # ---- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, *, mean: bool = True,
               return_components: bool = False):
        """The lecture's ancestral sampler: m ~ Multinomial(1, weights), then x ~ p(x | m).

        ``mean=True`` returns component m's mean instead of a draw. With
        ``return_components`` also the (n,) component indices.
        """
        check_count(n)
        m = self.prior(n).sample()
        px = self.decode(m)
        x = px.mean if mean else px.sample()
        return (x, m) if return_components else x


class Components(dist.TorchDistribution):
    """p(x | m = z) of a :class:`GMM` for integer z of batch shape S; event shape (D,).

    Behaves as the likelihood head's distribution (``mean``, ``variance``, ``sample``,
    ``support`` come from it), but ``log_prob(x)`` for x of shape (B, D) computes the (B, M)
    table of :meth:`GMM.component_log_likelihood` by matrix products and gathers entry
    [b, z[..., b]]: under enumeration (z of shape (M, 1)) that replaces an (M, B, D)
    elementwise broadcast. Other shapes of x fall back to the head's log_prob.
    """

    arg_constraints: dict = {}

    def __init__(self, gmm: GMM, z: torch.Tensor):
        self.gmm, self.z = gmm, z
        self._base = None
        super().__init__(z.shape, torch.Size([gmm.data_dim]), validate_args=False)

    @property
    def base(self) -> dist.Distribution:
        if self._base is None:
            self._base = self.gmm.likelihood(self.gmm._head_inputs()[self.z])
        return self._base

    @property
    def support(self):
        return self.base.support

    @property
    def mean(self):
        return self.base.mean

    @property
    def variance(self):
        return self.base.variance

    def sample(self, sample_shape=()):
        return self.base.sample(torch.Size(sample_shape))

    def expand(self, batch_shape, _instance=None):
        return Components(self.gmm, self.z.expand(batch_shape))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[-1] != self.gmm.data_dim:
            return self.base.log_prob(x)
        B = x.shape[0]
        table = self.gmm.component_log_likelihood(x).T  # (M, B) float64
        z = self.z.expand(torch.broadcast_shapes(self.z.shape, (B,)))  # (..., B)
        return table[z, torch.arange(B, device=x.device)].to(self.gmm.logits.dtype)


def fit_latent_gmm(vae, x: torch.Tensor, components: int = 10, *, steps: int = 200,
                   batch_size: int = 1000) -> GMM:
    """A diagonal-Gaussian mixture fitted by EM to ``vae``'s codes (encoder means) of ``x``.

    Sample codes with ``gmm.sample(n, mean=False)`` and decode them with ``vae.decode`` to
    draw images from the VAE's decoder under the codes' empirical distribution instead of
    the prior N(0, I). Initialised by k-means++ from torch's RNG; deterministic given it.
    """
    was_training = vae.training
    vae.eval()
    device = next(vae.parameters()).device
    with torch.no_grad():
        codes = torch.cat([vae.encode(x[i:i + batch_size].to(device)).mean
                           for i in range(0, len(x), batch_size)])
    vae.train(was_training)
    gmm = GMM(data_dim=codes.shape[1], components=components, likelihood="gaussian").to(device)
    gmm.initialize(codes)
    gmm.em(codes, steps=steps)
    return gmm
