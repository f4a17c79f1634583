r"""A VAE with two stochastic layers (Burda, Grosse & Salakhutdinov 2016), written only as a
Pyro model/guide pair.

Generative story, top down: :math:`h_2 \sim \mathcal N(0, I_{50})`,
:math:`h_1 | h_2 \sim \mathcal N(\mu(h_2), \mathrm{diag}\,\sigma^2(h_2))` (100 units),
:math:`x | h_1 \sim \mathrm{Bernoulli}(\pi(h_1))`; the guide goes bottom up,
:math:`q(h_1 | x)\,q(h_2 | h_1)`, both diagonal Gaussians. Deterministic layers are those of
the paper's MNIST architecture ("Importance Weighted Autoencoders", https://arxiv.org/abs/1509.00519,
appendix): two tanh layers of 200 units between x and h1, two of 100 between h1 and h2. Each
Gaussian layer outputs a mean and a log-variance.

There is no ``encode``/``decode``/``prior``: the model is its two Pyro programs, with sites
``"h1"``, ``"h2"`` and ``"x"``. :func:`pgm.fit` trains it through Pyro's ``Trace_ELBO``, and
:func:`pgm.evaluate` measures it through :class:`pgm.inference.program.Program`, which reads
both latents off the traces and packs them into one 150-dimensional vector per datapoint --
the same estimators as for every other model, with no special case.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pgm.errors import CapabilityError
from pgm.likelihoods import make_likelihood
from pgm.nets import MLP
from pgm.protocol import check_count, check_data


@dataclass
class TwoLayerVAEConfig:
    data_dim: int
    latent_dims: tuple[int, int] = (100, 50)  # h1, h2
    hidden: tuple[int, int] = (200, 100)  # units of the two tanh layers below h1, below h2
    activation: str = "tanh"
    likelihood: str = "bernoulli"

    def __post_init__(self):
        self.latent_dims, self.hidden = tuple(self.latent_dims), tuple(self.hidden)
        if self.data_dim < 1 or len(self.latent_dims) != 2 or min(self.latent_dims) < 1:
            raise ValueError("data_dim and the two latent_dims must be positive")
        if len(self.hidden) != 2 or min(self.hidden) < 1:
            raise ValueError(f"hidden must give two positive widths, got {self.hidden}")


def _gaussian(h: torch.Tensor) -> dist.Distribution:
    """N(m, diag exp(s)) from a (..., 2L) tensor holding the mean m and log-variance s."""
    m, s = h.chunk(2, dim=-1)
    return dist.Normal(m, torch.exp(0.5 * s)).to_event(1)


class TwoLayerVAE(nn.Module):
    """``TwoLayerVAE(data_dim=784)``: x -> h1 -> h2 and back, Burda et al.'s sizes."""

    name = "vae2"
    Config = TwoLayerVAEConfig
    # what the model can do (pgm.protocol): a continuous latent, a guide with a density, and
    # no plain distributions: training and the estimators go through the Pyro programs
    conditional = False
    latent = "continuous"
    guide_density = True
    plain_distributions = False
    exact_method = None
    has_density = True
    trainer = "svi"
    default_lr = 1e-3
    baseline = None

    def __init__(self, config: TwoLayerVAEConfig | None = None, **kwargs):
        super().__init__()
        self.config = c = config if config is not None else TwoLayerVAEConfig(**kwargs)
        (l1, l2), (d1, d2), act = c.latent_dims, c.hidden, c.activation
        self.data_dim, self.latent_dims = c.data_dim, (l1, l2)
        self.latent_dim = l1 + l2  # the packed latent vector the estimators see
        self.likelihood = make_likelihood(c.likelihood)
        out = self.likelihood.outputs_per_dim * c.data_dim
        self.q_h1 = MLP(c.data_dim, (d1, d1), 2 * l1, act)  # q(h1 | x)
        self.q_h2 = MLP(l1, (d2, d2), 2 * l2, act)  # q(h2 | h1)
        self.p_h1 = MLP(l2, (d2, d2), 2 * l1, act)  # p(h1 | h2)
        self.p_x = MLP(l1, (d1, d1), out, act)  # p(x | h1)
        self.register_buffer("zero", torch.zeros(()), persistent=False)

    def model(self, x: torch.Tensor, y=None) -> None:
        with pyro.plate("data", x.shape[0]):
            h2 = pyro.sample("h2", dist.Normal(self.zero, 1.0).expand([self.latent_dims[1]])
                             .to_event(1))
            h1 = pyro.sample("h1", _gaussian(self.p_h1(h2)))
            pyro.sample("x", self.likelihood(self.p_x(h1)), obs=x)

    def guide(self, x: torch.Tensor, y=None) -> None:
        with pyro.plate("data", x.shape[0]):
            h1 = pyro.sample("h1", _gaussian(self.q_h1(x)))
            pyro.sample("h2", _gaussian(self.q_h2(h1)))

    def initialize(self, x: torch.Tensor, y=None) -> None:
        """No data-dependent initialisation."""

    def check_data(self, x: torch.Tensor, name: str = "x") -> None:
        check_data(self, x, name)

    def write_figures(self, run_dir, data, history, **options):
        """Reconstructions, samples and ELBO curves (:mod:`pgm.models.vae_figures`)."""
        from .vae_figures import write_training_figures

        return write_training_figures(run_dir, self, data, history, **options)

    def explicit_view(self, sigma: float):
        raise CapabilityError("the two-layer VAE declares no explicit Gaussian view: its "
                              "decoder mean depends on h1, a draw given h2, not on one code")

    @torch.no_grad()
    def sample(self, n: int, y=None, *, mean: bool = True) -> torch.Tensor:
        """n draws x ~ p(x) (the decoder's mean of p(x | h1) when ``mean``), shape (n, D)."""
        check_count(n)
        h2 = torch.randn(n, self.latent_dims[1], device=self.zero.device)
        px = self.likelihood(self.p_x(_gaussian(self.p_h1(h2)).sample()))
        return px.mean if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """Decoder mean at the guide's mean of h1: E[x | h1 = E_q[h1 | x]], shape (B, D)."""
        return self.likelihood(self.p_x(_gaussian(self.q_h1(x)).mean)).mean
