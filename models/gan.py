r"""The generative adversarial network (Goodfellow et al. 2014) and its explicit view.

A GAN has a generator :math:`G: z \mapsto x` with :math:`z \sim p(z)` (``"normal"``:
N(0, I), or ``"uniform"``: U(-1, 1)^L as in the paper's toy) and a discriminator
:math:`D: x \mapsto` logit of "x is real". There is no likelihood and no encoder: it is trained
by the two-player game of :mod:`pgm.inference.adversarial`, and "no loss tells you how good the
generator is" (the lecture). Architectures: ``"mlp"`` (any data; the generator's hidden sizes
``hidden``, the discriminator's ``d_hidden``, default the reverse; with ``g_batchnorm`` batch
norm after each hidden layer of G, with ``g_upsample`` f its last layer at 1/f of the image's
sides, upsampled bilinearly; with ``d_coarse`` a second MLP discriminator on the image
average-pooled 2x2 beside D, the two logits summed: the multi-scale D of Wang et al. 2018,
whose coarse view judges the digit's shape) and ``"dcgan"`` (Radford et al. 2016, scaled
down for 28x28: Linear -> 2c x H/4 x W/4 -> two stride-2 transposed convolutions with batch
norm in G, or with ``g_wide`` Linear -> 4c x H/4 x W/4 -> a stride-1 3x3 transposed
convolution to 2c before them; two stride-2 convolutions with leaky ReLU and dropout in D, and
with ``d_mlp_branch`` an MLP D on the whole image beside it, spectrally normalised, the two
logits summed: the conv D judges strokes, the MLP the digit's shape).
The output activation is ``"sigmoid"`` for grey images in [0, 1] and ``"identity"`` for real
data. The "sigmoid" output is computed as :math:`(1 + \tanh a) / 2 = \sigma(2a)` and the
discriminator sees :math:`2x - 1`: the usual tanh GAN on data in [-1, 1] (Radford et al. 2016),
in the data's own units. With a plain sigmoid and a discriminator on uncentred [0, 1] pixels,
the same MLP GAN on mnist5k collapsed to one speckled image within 5 epochs (in pgm's loop and
in a hand-written PyTorch loop alike), while the centred version learnt varied digits. For real
data the discriminator sees standardised inputs :math:`(x - m) / s` (``data_loc`` m and
``data_scale`` s, set from the training data by :func:`pgm.inference.adversarial.train_gan`).
Without it a small ReLU discriminator on data far from the origin (the toy's N(4, 0.5^2)) has
its kinks near x = 0 and is nearly linear over the data: it sees the mean but hardly the spread
(the generator's std then missed the data's by up to 40% over seeds). The generator's output is
left unscaled, so in the toy it starts near 0 and has to travel to the data.

**The averaged generator** (``ema`` = β > 0; Yazıcı et al. 2019, "The Unusual Effectiveness
of Averaging in GAN Training"): a copy :math:`\bar G` whose weights follow G's as
:math:`\bar\theta \leftarrow \beta\bar\theta + (1 - \beta)\theta` after every generator step.
Training (both players' steps) uses G; everything in eval mode -- samples, figures, the
explicit view, ``pgm evaluate`` -- uses :math:`\bar G`. The last iterate of a GAN circles
the equilibrium and carries each step's pixel noise; the average sits nearer its centre. On
mnist5k the MLP GAN's samples without it were speckled strokes (at 30 epochs, and still at 74
with a constant lr), with β = 0.999 after 100 epochs mostly readable digits
(docs/gan-tuning.md has the runs behind the GAN's defaults). A DCGAN's batch-norm statistics
are averaged alike, and that holds up: after 200 epochs on mnist5k the averaged G in eval mode,
the last G, and the averaged G with each batch's own statistics scored alike (class ratio
0.46, 0.43, 0.47; Fréchet 9.4, 9.8, 9.4); at epoch 25 the average still carried the first
epochs (Fréchet 75 against 17). (The same held for the two-view D: 0.55, 0.55, 0.54; Fréchet
3.4, 3.5, 3.8; and with the wide G as well: 0.77, 0.72, 0.77; Fréchet 1.34, 1.44, 1.28.) Its
defaults there (the wide G with 64 channels at 14x14, one lr, dropout 0.3 in D, the MLP
branch beside the conv D, no spectral norm in the conv D, 200 epochs) draw smooth, crisp
strokes where the MLP's stay speckled, about seven digits in ten readable, at about 8x the
MLP GAN's time per epoch and about 75x its cost per AIS step (945 against 12.5 ms).

**Spectral normalisation** (``spectral_norm=True``; Miyato et al. 2018) divides each linear
and convolutional weight of D by its largest singular value (one power iteration per forward
pass in training mode, the iteration's vectors saved with the weights), so D is
1-Lipschitz up to its leaky ReLUs and cannot sharpen into a cliff that gives G no useful
gradient. On mnist5k it took the MLP GAN from dropping digits (the rarest class 0.025 of the
most common) to drawing every one; with two time-scales, D's lr 3x G's (Heusel et al. 2017),
more evenly still (numbers in docs/gan-tuning.md). It
touches D only, so the generator, the explicit view and AIS cost the same.

**The explicit view** (Wu, Burda, Salakhutdinov & Grosse 2017, "On the Quantitative Analysis of
Decoder-Based Generative Models", https://arxiv.org/abs/1611.04273): adding Gaussian noise to
the generator's output makes a latent-variable model with a density,

.. math::

    p_\sigma(x) = \int p(z)\, \mathcal N(x; G(z), \sigma^2 I)\, dz,

which :meth:`GAN.explicit_view` returns as an :class:`ExplicitGAN` honouring the model/guide
contract (:mod:`pgm.protocol`), so :func:`pgm.evaluation.evaluate`, IWAE and AIS measure it
like any VAE. Choices made there:

- **The latent is always standard normal.** For ``z_dist="normal"`` the contract's latent
  ``u`` is z itself. For ``"uniform"`` it is :math:`u \sim N(0, I)` with
  :math:`z = 2\Phi(u) - 1` (Φ the standard normal CDF), which is exactly U(-1, 1)^L, so
  :math:`p_\sigma(x)` is unchanged while HMC (inside AIS) moves on an unbounded space with a
  smooth density instead of hitting the box's walls.
- **There is no encoder, so the guide is the prior**: ``encode(x) = p(u)`` whatever x. Then
  IWAE_K is plain importance sampling from the prior, the "ELBO" is
  :math:`E_{p(z)} \log p(x|z)` (a very loose bound), and AIS with ``initial="prior"`` (the
  default of :class:`pgm.evaluation.EvalConfig`) starts where Wu et al. start. AIS, not IWAE,
  is the number to trust for a GAN; ``reconstruct`` is meaningless (it decodes the prior mean).
- **σ is not learned by the GAN.** :func:`pgm.models.explicit.choose_sigma` picks it on
  validation data, as Wu et al. do: the σ with the highest estimated
  :math:`\log p_\sigma(x_{valid})`. The same module gives VAEs and mixtures the same view, so
  all three are measured by one density family.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pgm.errors import DataError
from pgm.likelihoods import make_likelihood
from pgm.nets import activation
from pgm.protocol import LatentVariableModel, check_count

ARCHS = ("mlp", "dcgan")
Z_DISTS = ("normal", "uniform")
OUTPUTS = ("sigmoid", "identity")


def _check_layer_sizes(field: str, sizes) -> None:
    if not all(isinstance(n, int) and n > 0 for n in sizes):
        raise ValueError(f"{field} must be positive layer sizes, got {sizes!r}")


@dataclass
class GANConfig:
    data_dim: int
    latent_dim: int = 64
    hidden: tuple[int, ...] = (256, 512)  # generator (mlp)
    d_hidden: tuple[int, ...] | None = None  # discriminator (mlp); None: reversed(hidden)
    arch: str = "mlp"  # "mlp" or "dcgan" (images with sides divisible by 4)
    image_shape: tuple[int, int] | None = None
    z_dist: str = "normal"  # "normal": N(0, I); "uniform": U(-1, 1)^L
    output: str = "sigmoid"  # "sigmoid" for [0, 1] images, "identity" for real data
    activation: str = "leaky_relu"  # generator; a GAN's leaky ReLU has slope 0.2
    d_activation: str = "leaky_relu"  # discriminator
    d_dropout: float = 0.3  # dropout after each hidden layer of the discriminator
    channels: int = 32  # dcgan: channels of the 14x14 feature maps (2x at 7x7)
    # dcgan: a wider G, 4x channels at 7x7 and a stride-1 3x3 transposed convolution to 2x
    # before the upsampling ones; False: the Linear straight to 2x (every DCGAN before it)
    g_wide: bool = False
    # mlp: batch norm after each hidden layer of G, before its activation (as in the DCGAN's
    # G); False: G as every MLP GAN saved before it
    g_batchnorm: bool = False
    # mlp on images: G's last Linear draws the image's pre-activation at 1/g_upsample of its
    # sides, upsampled bilinearly to full size before the output activation; 1: every pixel
    # on its own (every MLP GAN saved before it)
    g_upsample: int = 1
    # dcgan: hidden sizes of an MLP discriminator beside the conv one, spectrally normalised,
    # the two logits summed; None: the conv D alone (every DCGAN saved before it existed)
    d_mlp_branch: tuple[int, ...] | None = None
    # mlp on images: hidden sizes of a second MLP discriminator on the image average-pooled
    # 2x2 (the coarse view), its logit added to D's; None: D alone (every MLP GAN before it)
    d_coarse: tuple[int, ...] | None = None
    ema: float = 0.0  # decay of the averaged generator used in eval mode; 0: no average
    spectral_norm: bool = False  # D's linear and conv weights divided by their top singular value
    # real-valued data ("identity" output): D sees (x - data_loc) / data_scale, per dimension;
    # train_gan sets them from the training data
    data_loc: tuple[float, ...] | None = None
    data_scale: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.data_dim < 1 or self.latent_dim < 1:
            raise ValueError("data_dim and latent_dim must be positive")
        for field, value, known in (("arch", self.arch, ARCHS), ("z_dist", self.z_dist, Z_DISTS),
                                    ("output", self.output, OUTPUTS)):
            if value not in known:
                raise ValueError(f"unknown {field} {value!r}; known: {', '.join(known)}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must lie in [0, 1), got {self.ema}")
        for field in ("spectral_norm", "g_wide", "g_batchnorm"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{field} must be true or false, got {getattr(self, field)!r}")
        if self.g_wide and self.arch != "dcgan":
            raise ValueError("g_wide applies to arch='dcgan' only (the MLP GAN's G is sized by "
                             "hidden)")
        if isinstance(self.g_upsample, bool) or not isinstance(self.g_upsample, int) \
                or self.g_upsample < 1:
            raise ValueError(f"g_upsample must be a positive integer, got {self.g_upsample!r}")
        if self.g_upsample > 1:
            if self.arch != "mlp" or self.image_shape is None:
                raise ValueError("g_upsample applies to arch='mlp' on images only (needs "
                                 "image_shape)")
            if any(side % self.g_upsample for side in self.image_shape):
                raise ValueError(f"g_upsample {self.g_upsample} must divide the image sides "
                                 f"{tuple(self.image_shape)}")
        if self.g_batchnorm and self.arch != "mlp":
            raise ValueError("g_batchnorm applies to arch='mlp' only (the DCGAN's G has batch "
                             "norm already)")
        if not 0 <= self.d_dropout < 1:
            raise ValueError(f"d_dropout must lie in [0, 1), got {self.d_dropout}")
        for field in ("data_loc", "data_scale"):
            value = getattr(self, field)
            if value is not None:
                if self.output != "identity":
                    raise ValueError(f"{field} applies to output='identity' only")
                if len(value) != self.data_dim:
                    raise ValueError(f"{field} needs data_dim={self.data_dim} values")
        if self.data_scale is not None and min(self.data_scale) <= 0:
            raise ValueError("data_scale must be positive")
        if self.d_mlp_branch is not None:
            if self.arch != "dcgan":
                raise ValueError("d_mlp_branch applies to arch='dcgan' only (the MLP GAN's D is "
                                 "an MLP already)")
            _check_layer_sizes("d_mlp_branch", self.d_mlp_branch)
        if self.d_coarse is not None:
            if self.arch != "mlp" or self.image_shape is None:
                raise ValueError("d_coarse applies to arch='mlp' on images only (needs "
                                 "image_shape)")
            if any(side % 2 for side in self.image_shape):
                raise ValueError(f"d_coarse pools 2x2, so the image sides must be even, got "
                                 f"{tuple(self.image_shape)}")
            _check_layer_sizes("d_coarse", self.d_coarse)
        if self.arch == "dcgan":
            if self.image_shape is None:
                raise ValueError("arch='dcgan' needs image_shape")
            h, w = self.image_shape
            if h * w != self.data_dim:
                raise ValueError(f"image_shape {self.image_shape} does not match data_dim")
            if h % 4 or w % 4:
                raise ValueError(f"dcgan needs image sides divisible by 4, got {self.image_shape}")


class _Flat(nn.Module):
    """Apply ``net`` (which wants (N, F) input) to (..., F), keeping the leading dims."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x.reshape(-1, x.shape[-1]))
        return out.reshape(*x.shape[:-1], out.shape[-1])


class _Affine(nn.Module):
    """x -> loc + scale * x (or its inverse): the data standardisation of real-valued GANs."""

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, inverse: bool = False):
        super().__init__()
        self.register_buffer("loc", loc.float(), persistent=False)
        self.register_buffer("scale", scale.float(), persistent=False)
        self.inverse = inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.loc) / self.scale if self.inverse else self.loc + self.scale * x


class _Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask on a CPU comes from uniform draws (u >= p), the same
    Bernoulli(1 - p) mask: torch's CPU ``bernoulli_`` takes 3x ``rand_like``'s time (0.73
    against 0.23 ms for a 128 x 512 activation, one thread), a tenth of a GAN training step.
    Elsewhere (CUDA's fused kernel) it is ``nn.Dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.p or x.device.type != "cpu":
            return super().forward(x)
        return x * (torch.rand_like(x) >= self.p) * (1 / (1 - self.p))


class _Separable(nn.Module):
    r"""A fixed linear map of (N, h*w) images that acts on their rows and columns apart:
    :math:`X \mapsto A X B` with A (H, h) and B (w, W), giving (N, H*W). Bilinear upsampling
    and average pooling are such maps (products of 1-D maps); as two small matrix products
    they take a tenth of ``F.interpolate``'s time (forward and backward, 64 images 14x14 to
    28x28, one thread: 0.12 against 1.35 ms; 800, an AIS step's: 0.95 against 13.4 ms) and a
    third of ``avg_pool2d``'s, with the same values to float rounding."""

    def __init__(self, shape: tuple[int, int], rows: torch.Tensor, cols: torch.Tensor):
        super().__init__()
        self.shape = tuple(shape)
        self.register_buffer("rows", rows.contiguous(), persistent=False)
        self.register_buffer("cols", cols.contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.rows, x.reshape(-1, *self.shape) @ self.cols).flatten(1)


def _separable(shape: tuple[int, int], op) -> _Separable:
    """The :class:`_Separable` map of ``op``, an image op of torch's on (N, 1, H, W) that acts
    on each side alone, read off it: op applied to the basis images of one row (and of one
    column) gives its 1-D maps, so the two agree."""
    def one_side(n):  # (n, n'): op on the n basis rows of a 1 x n image
        return op(torch.eye(n).reshape(n, 1, 1, n)).reshape(n, -1)
    h, w = shape
    return _Separable(shape, one_side(h).T, one_side(w))


def _upsampling(shape: tuple[int, int], f: int) -> _Separable:
    """Bilinear upsampling by f of (N, h*w) images of ``shape`` (h, w) to (N, hf * wf)."""
    return _separable(shape, lambda x: F.interpolate(x, scale_factor=(1, f), mode="bilinear",
                                                     align_corners=False))


def _pooling(shape: tuple[int, int]) -> _Separable:
    """2x2 average pooling of (N, H*W) images of ``shape`` (H, W), both even."""
    return _separable(shape, lambda x: F.avg_pool2d(x, (1, 2)))


def _activation(name: str) -> nn.Module:
    """:func:`pgm.nets.activation`, except that a GAN's leaky ReLU has slope 0.2 (DCGAN's)."""
    return nn.LeakyReLU(0.2) if name == "leaky_relu" else activation(name)


def _mlp(sizes: list[int], act: str, dropout: float = 0.0,
         batchnorm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), *([nn.BatchNorm1d(b)] if batchnorm else []), _activation(act)]
        if dropout:
            layers.append(_Dropout(dropout))
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def _mlp_generator(c: GANConfig) -> nn.Module:
    """The MLP GAN's G; with ``g_upsample`` f > 1 its last Linear gives H/f x W/f values,
    upsampled bilinearly by f (a fixed linear map: each pixel a weighted mean of its
    neighbours at the coarse grid), so neighbouring pixels share their pre-activation."""
    f = c.g_upsample  # divides both sides (GANConfig checks), so H/f x W/f = data_dim / f^2
    g = _mlp([c.latent_dim, *c.hidden, c.data_dim // f ** 2], c.activation,
             batchnorm=c.g_batchnorm)
    if f == 1:
        return g
    h, w = c.image_shape
    return nn.Sequential(*g, _upsampling((h // f, w // f), f))


def _dcgan_generator(c: GANConfig) -> nn.Module:
    h, w = c.image_shape
    ch = c.channels
    first = 4 * ch if c.g_wide else 2 * ch  # channels of the Linear's H/4 x W/4 maps
    layers = [nn.Linear(c.latent_dim, first * (h // 4) * (w // 4)),
              nn.BatchNorm1d(first * (h // 4) * (w // 4)), _activation(c.activation),
              nn.Unflatten(1, (first, h // 4, w // 4))]
    if c.g_wide:  # built in this order: the random draws of the runs docs/gan-tuning.md quotes
        layers += [nn.ConvTranspose2d(4 * ch, 2 * ch, 3, stride=1, padding=1),
                   nn.BatchNorm2d(2 * ch), _activation(c.activation)]
    return nn.Sequential(
        *layers,
        nn.ConvTranspose2d(2 * ch, ch, 4, stride=2, padding=1),
        nn.BatchNorm2d(ch), _activation(c.activation),
        nn.ConvTranspose2d(ch, 1, 4, stride=2, padding=1),
        nn.Flatten(),
    )


def _dcgan_discriminator(c: GANConfig) -> nn.Module:
    h, w = c.image_shape
    ch = c.channels
    # activation, then dropout as one module: the layers' indices (the weights' names) stay put
    def act():
        return nn.Sequential(_activation(c.d_activation), _Dropout(c.d_dropout))

    return nn.Sequential(
        nn.Unflatten(1, (1, h, w)),
        nn.Conv2d(1, ch, 4, stride=2, padding=1), act(),
        nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1), act(),
        nn.Flatten(),
        nn.Linear(2 * ch * (h // 4) * (w // 4), 1),
    )


class _SummedLogits(nn.Module):
    """Discriminators on the same input, their logits summed: D(x) = D_conv(x) + D_mlp(x) (the
    DCGAN's two views), or D_full(x) + D_coarse(x); named, so their weights keep their names."""

    def __init__(self, **views: nn.Module):
        super().__init__()
        for name, view in views.items():
            self.add_module(name, view)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(view(x) for view in self.children())


class _Pooled(nn.Module):
    """``net`` on the (N, H*W) image average-pooled 2x2: (N, H/2 * W/2) inputs."""

    def __init__(self, image_shape: tuple[int, int], net: nn.Module):
        super().__init__()
        self.net, self.pool = net, _pooling(image_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.pool(x))


def _spectral_norm(d: nn.Module) -> None:
    r"""Spectral normalisation (Miyato et al. 2018) of every linear and convolutional layer of
    the discriminator: :math:`W / \sigma(W)`, σ the largest singular value estimated by one
    power iteration per training step, which bounds D's Lipschitz constant (with 1-Lipschitz
    activations) and keeps its gradients to G informative."""
    for layer in list(d.modules()):
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.utils.parametrizations.spectral_norm(layer)


class GAN(nn.Module):
    """Generator and discriminator. ``GAN(data_dim=784, latent_dim=32)``;
    ``GAN(data_dim=1, latent_dim=1, hidden=(32, 32), z_dist="uniform", output="identity")``.
    """

    name = "gan"
    Config = GANConfig
    # what the model can do (pgm.protocol): no density of its own, so it is measured through
    # :meth:`explicit_view`, with sample quality; no guide, no plain distributions
    conditional = False
    latent = "continuous"
    guide_density = False
    plain_distributions = False
    exact_method = None
    has_density = False
    trainer = "adversarial"

    def __init__(self, config: GANConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else GANConfig(**kwargs)
        c = self.config
        self.data_dim, self.latent_dim = c.data_dim, c.latent_dim
        mlp = None  # dcgan: the MLP branch of D, if any
        if c.arch == "mlp":
            g = _mlp_generator(c)
            d_hidden = c.d_hidden if c.d_hidden is not None else tuple(reversed(c.hidden))
            d = _mlp([c.data_dim, *d_hidden, 1], c.d_activation, c.d_dropout)
        else:
            g = _dcgan_generator(c)
            if c.d_mlp_branch is not None:  # built before the conv D: the order (of random
                # draws) the runs in docs/gan-tuning.md were trained with
                mlp = _mlp([c.data_dim, *c.d_mlp_branch, 1], c.d_activation, c.d_dropout)
                _spectral_norm(mlp)
            d = _dcgan_discriminator(c)
        if c.spectral_norm:
            _spectral_norm(d)
        if mlp is not None:
            d = _SummedLogits(conv=d, mlp=mlp)
        if c.d_coarse is not None:  # after D and its spectral norm (the runs' random draws)
            coarse = _mlp([c.data_dim // 4, *c.d_coarse, 1], c.d_activation, c.d_dropout)
            if c.spectral_norm:
                _spectral_norm(coarse)
            d = _SummedLogits(full=d, coarse=_Pooled(c.image_shape, coarse))
        loc = torch.tensor(c.data_loc if c.data_loc is not None else [0.0] * c.data_dim)
        scale = torch.tensor(c.data_scale if c.data_scale is not None else [1.0] * c.data_dim)
        if c.output == "sigmoid":  # x = (1 + tanh(a)) / 2 in [0, 1]; D sees 2x - 1
            half = torch.full((c.data_dim,), 0.5)
            g, d = nn.Sequential(g, nn.Tanh(), _Affine(half, half)), nn.Sequential(
                _Affine(half, half, inverse=True), d)
        elif c.data_loc is not None or c.data_scale is not None:
            d = nn.Sequential(_Affine(loc, scale, inverse=True), d)
        self.generator, self.discriminator = _Flat(g), _Flat(d)
        if c.ema:
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # device of the model

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    # ---- the two players -----------------------------------------------------------------
    def sample_z(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws z ~ p(z), (n, L), on the model's device. A ``generator`` draws on the CPU."""
        shape, dev = (n, self.latent_dim), (self.device if generator is None else "cpu")
        if self.config.z_dist == "normal":
            z = torch.randn(shape, generator=generator, device=dev)
        else:
            z = 2 * torch.rand(shape, generator=generator, device=dev) - 1
        return z.to(self.device)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """G(z): (..., L) -> (..., D); in eval mode the averaged generator if ``ema`` > 0."""
        if self.config.ema and not self.training:
            return self.generator_ema(z)
        return self.generator(z)

    @torch.no_grad()
    def update_ema(self) -> None:
        r"""After a generator step: :math:`\bar\theta \leftarrow \beta \bar\theta +
        (1 - \beta)\theta` for G's parameters and floating-point buffers (batch-norm
        statistics; β = ``ema``); integer buffers are copied."""
        if not self.config.ema:
            return
        pairs = [*zip(self.generator_ema.parameters(), self.generator.parameters()),
                 *zip(self.generator_ema.buffers(), self.generator.buffers())]
        for avg, new in pairs:
            if avg.is_floating_point():
                avg.lerp_(new, 1 - self.config.ema)
            else:
                avg.copy_(new)

    def discriminate(self, x: torch.Tensor) -> torch.Tensor:
        """The logit of D(x) = P(x is real): (..., D) -> (...)."""
        return self.discriminator(x).squeeze(-1)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, *, mean: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws x = G(z), z ~ p(z), shape (n, D). ``y`` and ``mean`` are accepted for the
        contract's signature; a GAN has no label and no observation noise."""
        check_count(n)
        return self.generate(self.sample_z(n, generator))

    def check_data(self, x: torch.Tensor, name: str = "x") -> None:
        """Raise DataError if x is not (N, data_dim), not finite, or outside [0, 1] for a
        sigmoid generator (it could never produce such data)."""
        if x.ndim != 2 or x.shape[1] != self.data_dim:
            raise DataError(f"{name} must have shape (N, {self.data_dim}) for this model, "
                            f"got {tuple(x.shape)}")
        n_bad = int((~torch.isfinite(x)).sum())
        if n_bad:
            raise DataError(f"{name} contains {n_bad} NaN or infinite values")
        if self.config.output == "sigmoid" and len(x) and (x.min() < 0 or x.max() > 1):
            raise DataError(f"{name} ranges over [{x.min().item():.3g}, {x.max().item():.3g}] "
                            "but a sigmoid generator outputs [0, 1]; use output='identity' for "
                            "real-valued data")

    def write_figures(self, run_dir, data, history, **options):
        """Samples, nearest training images, training curves, and for 1-D data the toy series
        (:mod:`pgm.models.gan_figures`)."""
        from .gan_figures import write_gan_figures

        return write_gan_figures(run_dir, self, data, history, **options)

    def explicit_view(self, sigma: float) -> ExplicitGAN:
        """The contract view p(u) N(x; G(z(u)), sigma^2 I) sharing this GAN's generator."""
        return ExplicitGAN(self, sigma)


def init_gaussian_view(view: LatentVariableModel, source, sigma: float) -> None:
    """Set up an explicit view of ``source``: its config and sizes, the N(., sigma^2 I) head."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    view.sigma, view.config = float(sigma), source.config
    view.data_dim, view.latent_dim = source.data_dim, source.latent_dim
    view.likelihood = make_likelihood("gaussian", scale=view.sigma)


class ExplicitGAN(LatentVariableModel):
    r"""A GAN's generator with Gaussian observation noise: an explicit latent-variable model.

    ``prior(n)`` is :math:`N(0, I)` over the contract latent u; ``decode(u)`` is
    :math:`N(G(z(u)), \sigma^2 I)` with z(u) = u (normal GANs) or :math:`2\Phi(u) - 1`
    (uniform GANs); ``encode(x)`` is the prior (there is no encoder; see the module docstring).
    The generator's parameters are shared with the GAN, not copied.
    """

    name = "gan-explicit"
    amortized_guide = False  # encode(x) is the prior: a valid proposal, not near p(z|x)

    def __init__(self, gan: GAN, sigma: float):
        super().__init__()
        self.gan = gan
        init_gaussian_view(self, gan, sigma)
        self._init_prior(self.latent_dim)
        self.to(gan.device)

    def latent_to_z(self, u: torch.Tensor) -> torch.Tensor:
        """The GAN's z from the standard-normal latent u (identity for normal GANs)."""
        if self.config.z_dist == "uniform":
            return 2 * torch.special.ndtr(u) - 1
        return u

    def encode(self, x, y=None):
        return self.prior(x.shape[0])

    def decode(self, z, y=None):
        return self.likelihood(self.gan.generate(self.latent_to_z(z)))
