r"""The variational autoencoder (Kingma & Welling 2014) and its autoencoder baseline.

Generative story: :math:`z \sim \mathcal N(0, I)`, :math:`x | z \sim p_\theta(x | z)` with a
decoder network and a likelihood head (Bernoulli, Gaussian with fixed or learned scale).
Guide: :math:`q_\phi(z|x) = \mathcal N(m(x), \mathrm{diag}\,e^{s(x)})`, the encoder giving the
mean m and the **log-variance** s, so the code is :math:`c = m + e^{s/2} \varepsilon`. With that
reading, the lecture's regulariser :math:`\sum_i (e^{s_i} - (1 + s_i) + m_i^2)` is exactly
:math:`2\,\mathrm{KL}(q(z|x) \,\|\, \mathcal N(0, I))` (tests/test_vae.py checks it).

The :class:`Autoencoder` uses the same networks with a Delta guide: the code carries no
noise, so its training objective is log p(x | m(x)) + log p(m(x)) -- a joint density at one point,
not a bound on log p(x) -- and nothing makes the space between codes decode to sensible
images. As a generative model p(z) p(x|z) it is measured by AIS and exact values only.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch

from pgm.likelihoods import make_likelihood
from pgm.nets import MLP, ConvDecoder, ConvEncoder
from pgm.protocol import LatentVariableModel

ARCHS = ("mlp", "conv")


@dataclass
class VAEConfig:
    data_dim: int
    latent_dim: int = 2
    hidden: tuple[int, ...] = (400,)
    activation: str = "relu"
    arch: str = "mlp"  # "mlp" or "conv" (28x28-style images, sides divisible by 4)
    image_shape: tuple[int, int] | None = None
    likelihood: str = "bernoulli"  # "bernoulli", "gaussian", "gaussian-learned"
    likelihood_scale: float = 0.1  # gaussian: fixed scale; gaussian-learned: minimum scale

    def __post_init__(self):
        if self.data_dim < 1 or self.latent_dim < 1:
            raise ValueError("data_dim and latent_dim must be positive")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; known: {', '.join(ARCHS)}")
        if self.arch == "conv":
            if self.image_shape is None:
                raise ValueError("arch='conv' needs image_shape")
            if self.image_shape[0] * self.image_shape[1] != self.data_dim:
                raise ValueError(f"image_shape {self.image_shape} does not match data_dim")


class VAE(LatentVariableModel):
    """VAE with an MLP or conv encoder/decoder. ``VAE(data_dim=784, latent_dim=2)``."""

    name = "vae"
    Config = VAEConfig
    baseline = "ae"  # pgm train fits the autoencoder beside it, for the interpolation figure

    def __init__(self, config: VAEConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else VAEConfig(**kwargs)
        c = self.config
        self.data_dim, self.latent_dim = c.data_dim, c.latent_dim
        kw = {"scale": c.likelihood_scale} if c.likelihood == "gaussian" else (
            {"min_scale": c.likelihood_scale} if c.likelihood == "gaussian-learned" else {})
        self.likelihood = make_likelihood(c.likelihood, **kw)
        n_out = self.likelihood.outputs_per_dim * c.data_dim
        if c.arch == "mlp":
            self.encoder = MLP(c.data_dim, c.hidden, 2 * c.latent_dim, c.activation)
            self.decoder = MLP(c.latent_dim, tuple(reversed(c.hidden)), n_out, c.activation)
        else:
            self.encoder = ConvEncoder(c.image_shape, 2 * c.latent_dim, act=c.activation)
            self.decoder = ConvDecoder(c.latent_dim, c.image_shape,
                                       self.likelihood.outputs_per_dim, act=c.activation)
        self._init_prior(c.latent_dim)

    def encode_params(self, x: torch.Tensor, y=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's mean m and log-variance s, each (B, L)."""
        m, s = self.encoder(x).chunk(2, dim=-1)
        return m, s

    def encode(self, x, y=None):
        m, s = self.encode_params(x, y)
        return dist.Normal(m, torch.exp(0.5 * s)).to_event(1)

    def decode(self, z, y=None):
        return self.likelihood(self.decoder(z))

    def write_figures(self, run_dir, data, history, **options):
        """The training figures, with the latent sampler (codes from a mixture fitted to the
        training codes) and, given ``baseline=`` an autoencoder, the interpolation figure."""
        return super().write_figures(run_dir, data, history,
                                     **{"latent_sampler": self.guide_density, **options})


class Autoencoder(VAE):
    """The same networks with a Delta guide q(z|x) = delta(z - m(x)): no noise on the code."""

    name = "ae"
    guide_density = False
    baseline = None

    def encode(self, x, y=None):
        m, _ = self.encode_params(x, y)
        return dist.Delta(m, event_dim=1)
