r"""The conditional VAE (Sohn, Lee & Yan 2015) and its structured-output task.

:class:`CVAE`: condition encoder and decoder on a label y (a digit, one-hot with
``n_classes``): :math:`q_\phi(z | x, y) = \mathcal N(m(x, y), \mathrm{diag}\,e^{s(x, y)})`,
:math:`p_\theta(x | z, y)` with the VAE's networks and likelihood heads, and a prior that is
either :math:`\mathcal N(0, I)` (``prior="standard"``) or a learned conditional prior
:math:`p(z | y) = \mathcal N(\mu_y, \mathrm{diag}\,e^{s_y})`, one Gaussian per class
(``prior="learned"``, a linear map of the one-hot, started at N(0, I)). The ELBO is
:math:`\mathbb E_q[\log p(x|z,y)] - \mathrm{KL}(q(z|x,y) \| p(z|y))`. Because the decoder is
told the digit, the code is free to carry the rest, the style: encode a test image with its
own label and decode the code with every other label (the lecture's CVAE picture,
:func:`pgm.models.cvae_figures.write_cvae_figures`). Its label prior p(y)
(:meth:`CVAE.label_prior`) is uniform over the ``n_classes`` labels, the one :meth:`CVAE.sample`
draws from; the Pyro program takes y as given (training maximises log p(x | y), to which p(y)
adds a constant), and ``pgm evaluate`` sums it out,
:math:`\log p(x) = \log \sum_y p(y)\, p(x | y)`, so the CVAE is measured as a density of x
like every other model.

:class:`HalfImageCVAE`: the structured-output task of Sohn et al. (2015) and Pyro's CVAE
example: predict the bottom half of an image (``x`` of the contract) from the top half (the
conditioning input ``y``), with a conditional prior :math:`p(z | \text{top})`, a recognition
network :math:`q(z | \text{top}, \text{bottom})` and a generator
:math:`p(\text{bottom} | z, \text{top})`. :class:`CompletionBaseline` is the deterministic
network top -> bottom it is compared with; :func:`pgm.completion.fit_completion` trains both
and measures them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pgm.data import Dataset
from pgm.errors import DataError
from pgm.likelihoods import make_likelihood
from pgm.nets import MLP, ConvDecoder, ConvEncoder, activation
from pgm.protocol import LatentVariableModel, check_count

from .vae import VAEConfig

PRIORS = ("standard", "learned")


def _gaussian(h: torch.Tensor) -> dist.Distribution:
    """N(m, diag exp(s)) from a (..., 2L) tensor holding the mean m and log-variance s."""
    m, s = h.chunk(2, dim=-1)
    return dist.Normal(m, torch.exp(0.5 * s)).to_event(1)


@dataclass
class CVAEConfig(VAEConfig):
    """:class:`VAEConfig` plus the labels: ``n_classes`` and the prior over z given y."""

    n_classes: int = 10
    prior: str = "standard"  # "standard": N(0, I); "learned": p(z | y) = N(mu_y, diag e^{s_y})

    def __post_init__(self):
        super().__post_init__()
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {self.n_classes}")
        if self.prior not in PRIORS:
            raise ValueError(f"unknown prior {self.prior!r}; known: {', '.join(PRIORS)}")


class _ConvCondEncoder(nn.Module):
    """Conv features of x, then [features, one-hot y] -> Linear -> out."""

    def __init__(self, image_shape, n_classes, out_features, act, features=256):
        super().__init__()
        self.features = nn.Sequential(ConvEncoder(image_shape, features, act=act), activation(act))
        self.head = nn.Linear(features + n_classes, out_features)

    def forward(self, x, y1h):
        return self.head(torch.cat([self.features(x), y1h], dim=-1))


class CVAE(LatentVariableModel):
    """Conditional VAE on integer labels y (B,). ``CVAE(data_dim=784, latent_dim=2)``."""

    name = "cvae"
    Config = CVAEConfig
    conditional = True

    def __init__(self, config: CVAEConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else CVAEConfig(**kwargs)
        c = self.config
        self.data_dim, self.latent_dim, self.n_classes = c.data_dim, c.latent_dim, c.n_classes
        kw = {"scale": c.likelihood_scale} if c.likelihood == "gaussian" else (
            {"min_scale": c.likelihood_scale} if c.likelihood == "gaussian-learned" else {})
        self.likelihood = make_likelihood(c.likelihood, **kw)
        n_out = self.likelihood.outputs_per_dim * c.data_dim
        C, L = c.n_classes, c.latent_dim
        if c.arch == "mlp":
            self.encoder = MLP(c.data_dim + C, c.hidden, 2 * L, c.activation)
            self.decoder = MLP(L + C, tuple(reversed(c.hidden)), n_out, c.activation)
        else:
            self.encoder = _ConvCondEncoder(c.image_shape, C, 2 * L, c.activation)
            self.decoder = ConvDecoder(L + C, c.image_shape, self.likelihood.outputs_per_dim,
                                       act=c.activation)
        if c.prior == "learned":
            self.prior_net = nn.Linear(C, 2 * L)  # one-hot -> (mu_y, s_y); starts at N(0, I)
            nn.init.zeros_(self.prior_net.weight)
            nn.init.zeros_(self.prior_net.bias)
        self._init_prior(L)

    def one_hot(self, y: torch.Tensor | None) -> torch.Tensor:
        """(B, C) float one-hot of integer labels y (B,); a float (B, C) y passes through."""
        if y is None:
            raise ValueError("the CVAE needs labels y: pass y (integer class ids)")
        if y.is_floating_point() and y.dim() >= 1 and y.shape[-1] == self.n_classes:
            return y
        y = y.long()
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise DataError(f"labels must lie in 0..{self.n_classes - 1}, got "
                            f"{int(y.min())}..{int(y.max())}")
        return F.one_hot(y, self.n_classes).to(self.prior_loc.dtype)

    # ---- plain distributions -------------------------------------------------------------
    def label_prior(self) -> dist.Categorical:
        """p(y): uniform over the ``n_classes`` labels, as :meth:`sample` draws them."""
        return dist.Categorical(logits=self.prior_loc.new_zeros(self.n_classes))

    def prior(self, n: int, y: torch.Tensor | None = None) -> dist.Distribution:
        """p(z | y): N(0, I) or the learned per-class Gaussian; batch (n,), event (L,)."""
        if self.config.prior == "standard":
            return super().prior(n, y)
        h = self.prior_net(self.one_hot(y))
        if h.shape[0] != n:
            raise ValueError(f"prior(n={n}) got {h.shape[0]} labels")
        return _gaussian(h)

    def encode_params(self, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's mean m and log-variance s given (x, y), each (B, L)."""
        y1h = self.one_hot(y)
        if self.config.arch == "mlp":
            h = self.encoder(torch.cat([x, y1h.expand(*x.shape[:-1], -1)], dim=-1))
        else:
            h = self.encoder(x, y1h)
        return h.chunk(2, dim=-1)

    def encode(self, x, y=None):
        """q(z | x, y), batch (B,), event (L,)."""
        m, s = self.encode_params(x, y)
        return dist.Normal(m, torch.exp(0.5 * s)).to_event(1)

    def decode(self, z, y=None):
        """p(x | z, y) for z of shape (..., B, L) and y (B,); event (D,)."""
        y1h = self.one_hot(y)
        y1h = y1h.expand(*z.shape[:-1], y1h.shape[-1])
        return self.likelihood(self.decoder(torch.cat([z, y1h], dim=-1)))

    def write_figures(self, run_dir, data, history, **options):
        """Style transfer, samples per class, reconstructions, ELBO curves
        (:mod:`pgm.models.cvae_figures`)."""
        from .cvae_figures import write_cvae_figures

        return write_cvae_figures(run_dir, self, data, history, **options)

    # ---- conveniences --------------------------------------------------------------------
    def _labels(self, n: int, y) -> torch.Tensor:
        device = self.prior_loc.device
        if y is None:  # every class in turn: a stratified draw of the uniform p(y)
            return torch.arange(n, device=device) % self.n_classes
        if isinstance(y, int):
            return torch.full((n,), y, dtype=torch.long, device=device)
        y = torch.as_tensor(y, device=device)
        if y.shape[0] != n:
            raise ValueError(f"sample(n={n}) got {y.shape[0]} labels")
        return y

    @torch.no_grad()
    def sample(self, n: int, y=None, *, mean: bool = True) -> torch.Tensor:
        """n draws of x ~ p(x | y), z ~ p(z | y). ``y``: (n,) labels, one int for all, or
        None for the classes 0, 1, ..., C-1, 0, 1, ... in turn."""
        check_count(n)
        return super().sample(n, self._labels(n, y), mean=mean)

    @torch.no_grad()
    def transfer(self, x: torch.Tensor, y: torch.Tensor, targets=None) -> torch.Tensor:
        """Style transfer: decode the code of (x, y) (encoder mean) as every target label.

        Returns (B, T, D) decoder means, T = len(targets) (default all classes 0..C-1).
        """
        targets = torch.arange(self.n_classes, device=x.device) if targets is None else \
            torch.as_tensor(targets, device=x.device)
        z = self.encode(x, y).mean  # (B, L)
        B, T = len(x), len(targets)
        zz = z[:, None].expand(B, T, -1).reshape(B * T, -1)
        yy = targets[None].expand(B, T).reshape(-1)
        return self.decode(zz, yy).mean.reshape(B, T, -1)


# ============================================================================================
# Structured output: the bottom half of an image from its top half


def split_halves(x: torch.Tensor, image_shape: tuple[int, int],
                 split_row: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(top, bottom) rows of flattened images x (N, H*W): rows [0, split) and [split, H)."""
    h, w = image_shape
    split = h // 2 if split_row is None else int(split_row)
    if not 0 < split < h:
        raise ValueError(f"split_row must lie in 1..{h - 1}, got {split}")
    return x[:, : split * w], x[:, split * w:]


def completion_dataset(data: Dataset, split_row: int | None = None) -> Dataset:
    """A :class:`Dataset` with x = bottom halves and y = top halves of ``data``'s images.

    ``fit`` passes y to conditional models, so ``fit(HalfImageCVAE(...), completion_dataset(d))``
    trains p(bottom | top). Needs fixed pixels: a dynamically binarised set is refused.
    """
    if data.image_shape is None:
        raise DataError(f"{data.name} holds no images; the completion task splits images")
    if data.binarize == "dynamic":
        raise DataError("the completion task needs fixed pixels; load the data with "
                        "binarize='stochastic' or 'threshold'")
    parts = [split_halves(x, data.image_shape, split_row)
             for x in (data.x_train, data.x_valid, data.x_test)]
    h, w = data.image_shape
    split = h // 2 if split_row is None else int(split_row)
    return Dataset(
        name=f"{data.name}:bottom|top", x_train=parts[0][1], x_valid=parts[1][1],
        x_test=parts[2][1], y_train=parts[0][0], y_valid=parts[1][0], y_test=parts[2][0],
        image_shape=(h - split, w), n_classes=None, binarize=data.binarize, seed=data.seed,
        valid_fraction=data.valid_fraction, test_fraction=data.test_fraction)


@dataclass
class HalfImageCVAEConfig:
    image_shape: tuple[int, int] = (28, 28)
    split_row: int | None = None  # default: H // 2
    latent_dim: int = 16
    hidden: tuple[int, ...] = (256,)
    activation: str = "relu"

    def __post_init__(self):
        h, w = self.image_shape
        split = h // 2 if self.split_row is None else self.split_row
        if not 0 < split < h:
            raise ValueError(f"split_row must lie in 1..{h - 1}, got {split}")
        if self.latent_dim < 1:
            raise ValueError("latent_dim must be positive")

    @property
    def top_dim(self) -> int:
        h, w = self.image_shape
        return (h // 2 if self.split_row is None else self.split_row) * w

    @property
    def bottom_dim(self) -> int:
        h, w = self.image_shape
        return h * w - self.top_dim


class HalfImageCVAE(LatentVariableModel):
    r"""p(bottom | top) = \int p(z | top) p(bottom | z, top) dz with Bernoulli pixels.

    Contract: ``x`` is the bottom half (B, bottom_dim), ``y`` the top half (B, top_dim).
    """

    name = "cvae-completion"
    Config = HalfImageCVAEConfig
    conditional = True

    def __init__(self, config: HalfImageCVAEConfig | None = None, **kwargs):
        super().__init__()
        self.config = c = config if config is not None else HalfImageCVAEConfig(**kwargs)
        self.data_dim, self.latent_dim = c.bottom_dim, c.latent_dim
        self.likelihood = make_likelihood("bernoulli")
        L, Dt, Db = c.latent_dim, c.top_dim, c.bottom_dim
        self.prior_net = MLP(Dt, c.hidden, 2 * L, c.activation)  # p(z | top)
        self.recognition_net = MLP(Dt + Db, c.hidden, 2 * L, c.activation)  # q(z | top, bottom)
        self.generation_net = MLP(L + Dt, tuple(reversed(c.hidden)), Db, c.activation)
        self._init_prior(L)

    def _top(self, y):
        if y is None:
            raise ValueError("HalfImageCVAE needs the top halves as y")
        return y

    def prior(self, n, y=None):
        """p(z | top), batch (n,), event (L,)."""
        return _gaussian(self.prior_net(self._top(y)))

    def encode(self, x, y=None):
        """q(z | top, bottom), batch (B,), event (L,)."""
        return _gaussian(self.recognition_net(torch.cat([self._top(y), x], dim=-1)))

    def decode(self, z, y=None):
        """p(bottom | z, top) for z (..., B, L), event (bottom_dim,)."""
        top = self._top(y).expand(*z.shape[:-1], -1)
        return self.likelihood(self.generation_net(torch.cat([z, top], dim=-1)))

    @torch.no_grad()
    def complete(self, top: torch.Tensor, n: int = 1, *, mean: bool = True) -> torch.Tensor:
        """(n, B, bottom_dim) completions: z ~ p(z | top), then the decoder's mean (or a draw)."""
        z = self.prior(len(top), top).sample((n,))  # (n, B, L)
        px = self.decode(z, top)
        return px.mean if mean else px.sample()


class CompletionBaseline(nn.Module):
    """The deterministic network top -> bottom with independent Bernoulli outputs."""

    def __init__(self, top_dim: int, bottom_dim: int, hidden: tuple[int, ...] = (256,),
                 act: str = "relu"):
        super().__init__()
        self.net = MLP(top_dim, hidden, bottom_dim, act)

    def forward(self, top: torch.Tensor) -> torch.Tensor:
        """Bernoulli probabilities of the bottom pixels, (B, bottom_dim)."""
        return torch.sigmoid(self.net(top))

    def log_prob(self, bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """Exact log p(bottom | top), (B,)."""
        return -F.binary_cross_entropy_with_logits(self.net(top), bottom,
                                                   reduction="none").sum(-1)
