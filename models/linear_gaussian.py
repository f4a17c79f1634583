r"""Probabilistic PCA as a Pyro model/guide pair, with its closed-form log p(x) and posterior.

:math:`z \sim \mathcal N(0, I_L)`, :math:`x | z \sim \mathcal N(Wz + b, \sigma^2 I_D)`, so
exactly (Tipping & Bishop 1999)

.. math::

    x \sim \mathcal N(b,\ WW^\top + \sigma^2 I_D), \qquad
    z | x \sim \mathcal N\big(S W^\top (x - b) / \sigma^2,\ S\big), \qquad
    S = (I_L + W^\top W / \sigma^2)^{-1}.

:func:`linear_gaussian_log_marginal` and :func:`linear_gaussian_posterior` compute them for any
W, b, sigma, and :func:`linear_gaussian_sample` draws pairs (x, z) from the model, each z an
exact sample of p(z | x): the known answers the stochastic estimators are tested against.

The guide is an amortized diagonal Gaussian with a linear encoder, so the ELBO is strictly
below log p(x) unless the true posterior covariance happens to be diagonal. Every estimator can
be checked against :meth:`LinearGaussian.exact_log_marginal` through the same contract as a
VAE.

**The noise scale** is fixed at ``sigma`` when one is given, and learned (a log-scale
parameter) when ``sigma=None``, the default. Trained by the ELBO, the model then reaches the
maximum-likelihood solution of probabilistic PCA (:func:`ppca_ml`): at
:math:`W_{ML} = U (\Lambda - \sigma^2 I)^{1/2}` the posterior covariance
:math:`\sigma^2 (\sigma^2 I + W^\top W)^{-1}` is diagonal, so the diagonal guide is exact
there and the ELBO's maximum is the likelihood's (Lucas et al. 2019). :meth:`initialize`
starts b at the data's mean and sigma at its root-mean-square spread; W stays random.
Gradient training gets there slowly where eigenvalues lie close together (on the digits
data, 10-D code: 0.3 nats short after 200 epochs), so ``pgm train ppca`` fits by
closed-form EM by default (:meth:`em_step`, one step per epoch; 0.01 nats short after 50
steps, 3e-5 after 100): tests/test_linear_gaussian.py checks the default fit against
:func:`ppca_ml`'s held-out log-likelihood to 0.05 nats per datapoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pgm.errors import DataError
from pgm.inference.bounds import check_data
from pgm.likelihoods import Gaussian
from pgm.protocol import LatentVariableModel

_LOG_2PI = math.log(2 * math.pi)


def _check_linear_gaussian(W: Tensor, b: Tensor, sigma: float | Tensor) -> tuple[int, int]:
    if W.dim() != 2:
        raise ValueError(f"W must have shape (D, L), got {tuple(W.shape)}")
    D, L = W.shape
    if b.shape != (D,):
        raise ValueError(f"b must have shape ({D},), got {tuple(b.shape)}")
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be positive, got {float(sigma)}")
    return D, L


def linear_gaussian_log_marginal(x: Tensor, W: Tensor, b: Tensor, sigma: float | Tensor) -> Tensor:
    r"""Closed-form :math:`\log \mathcal{N}(x; b, WW^\top + \sigma^2 I)`, ``(B,)`` float64."""
    D, _ = _check_linear_gaussian(W, b, sigma)
    check_data(x)
    if x.dim() != 2 or x.shape[1] != D:
        raise ValueError(f"x must have shape (B, {D}), got {tuple(x.shape)}")
    W, b, x = W.double(), b.double(), x.double()
    cov = W @ W.T + float(sigma) ** 2 * torch.eye(D, dtype=torch.float64, device=W.device)
    chol = torch.linalg.cholesky(cov)  # (D, D)
    y = torch.linalg.solve_triangular(chol, (x - b).T, upper=False)  # (D, B)
    return -0.5 * (y * y).sum(0) - torch.log(torch.diagonal(chol)).sum() - 0.5 * D * _LOG_2PI


def linear_gaussian_posterior(
    x: Tensor, W: Tensor, b: Tensor, sigma: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Exact posterior of the linear-Gaussian model: means ``(B, L)`` and covariance ``(L, L)``."""
    _, L = _check_linear_gaussian(W, b, sigma)
    s2 = float(sigma) ** 2
    precision = torch.eye(L, dtype=W.dtype, device=W.device) + W.T @ W / s2
    cov = torch.linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    mean = (x.to(W.dtype) - b) @ W @ cov / s2  # (B, L); cov is symmetric
    return mean, cov


def linear_gaussian_sample(
    W: Tensor, b: Tensor, sigma: float | Tensor, n: int, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Simulate ``n`` pairs from the model: ``x`` ``(n, D)`` and ``z`` ``(n, L)``.

    Each z is an exact sample of p(z | x) for its x (what BDMC needs).
    """
    D, L = _check_linear_gaussian(W, b, sigma)
    z = torch.randn(n, L, generator=generator, dtype=W.dtype, device=W.device)
    noise = torch.randn(n, D, generator=generator, dtype=W.dtype, device=W.device)
    return z @ W.T + b + float(sigma) * noise, z


def ppca_ml(x: Tensor, latent_dim: int) -> tuple[Tensor, Tensor, float]:
    r"""Closed-form maximum-likelihood PPCA (Tipping & Bishop 1999): ``W`` (D, L), ``b``, sigma.

    With the training covariance :math:`C = U \Lambda U^\top` (eigenvalues descending,
    divided by N): :math:`b = \bar x`, :math:`\sigma^2 = \frac{1}{D-L}\sum_{j>L}\lambda_j`
    (the mean discarded eigenvalue) and :math:`W = U_L(\Lambda_L - \sigma^2 I)^{1/2}`.
    """
    x = x.double()
    D = x.shape[1]
    if not 0 < latent_dim < D:
        raise ValueError(f"latent_dim must lie in [1, {D - 1}], got {latent_dim}")
    b = x.mean(0)
    lam, U = torch.linalg.eigh(torch.cov((x - b).T, correction=0))
    lam, U = lam.flip(0), U.flip(1)
    s2 = float(lam[latent_dim:].mean())
    W = U[:, :latent_dim] * (lam[:latent_dim] - s2).clamp_min(0).sqrt()
    return W, b, math.sqrt(s2)


class _NoiseScale(Gaussian):
    """The Gaussian head N(h, sigma^2 I) with the model's current sigma (learned or fixed)."""

    def __init__(self, owner: nn.Module):
        self._owner = [owner]  # a list: no submodule registration, no reference cycle in repr

    @property
    def scale(self) -> float:
        return self._owner[0].sigma.item()

    def __call__(self, h):
        return dist.Normal(h, self._owner[0].sigma.expand_as(h)).to_event(1)


@dataclass
class LinearGaussianConfig:
    data_dim: int
    latent_dim: int = 2
    sigma: float | None = None  # observation noise scale: fixed if given, else learned

    def __post_init__(self):
        if self.data_dim < 1 or self.latent_dim < 1:
            raise ValueError("data_dim and latent_dim must be positive")
        if self.sigma is not None and not self.sigma > 0:
            raise ValueError(f"sigma must be > 0 or None (learned), got {self.sigma}")


class LinearGaussian(LatentVariableModel):
    """``LinearGaussian(data_dim=5, latent_dim=2)`` (noise scale learned) or ``sigma=0.5``
    (fixed); decoder ``Wz + b``."""

    name = "ppca"
    Config = LinearGaussianConfig
    exact_method = "closed form"
    default_lr = 1e-2
    closed_form_em = True
    default_objective = "em"
    default_epochs = 200
    default_min_epochs = 100

    def __init__(self, config: LinearGaussianConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else LinearGaussianConfig(**kwargs)
        c = self.config
        self.data_dim, self.latent_dim = c.data_dim, c.latent_dim
        self.decoder = nn.Linear(c.latent_dim, c.data_dim)
        self.encoder = nn.Linear(c.data_dim, 2 * c.latent_dim)
        self._init_prior(c.latent_dim)
        if c.sigma is None:
            self.log_sigma = nn.Parameter(torch.zeros(()))
        else:
            self.register_buffer("log_sigma", torch.tensor(math.log(c.sigma)),
                                 persistent=False)
        self.likelihood = _NoiseScale(self)

    @property
    def sigma(self) -> Tensor:
        """The observation noise scale (a 0-dim tensor)."""
        return self.log_sigma.exp()

    @torch.no_grad()
    def initialize(self, x: Tensor, y: Tensor | None = None) -> None:
        """b at the data's mean; a learned sigma at its root-mean-square spread."""
        if len(x) < 2:
            raise DataError(f"probabilistic PCA needs at least two training rows, got {len(x)}")
        if self.config.sigma is None and not bool((x.var(0) > 0).any()):
            raise DataError("the training data do not vary (every column is constant): "
                            "PPCA's learned noise scale would be 0")
        self.decoder.bias.copy_(x.mean(0))
        if self.config.sigma is None:
            self.log_sigma.copy_(x.var(0).mean().clamp_min(1e-12).sqrt().log())

    @torch.no_grad()
    def em_step(self, x: Tensor) -> float:
        r"""One closed-form EM step for W, b, sigma (Tipping & Bishop 1999, eqs. 29-30); returns
        mean log p(x) before it. W is rotated so that :math:`W^\top W` is diagonal (p(x)
        depends on :math:`WW^\top` only), and the guide is set to the new posterior: its
        mean map :math:`S W^\top (x - b) / \sigma^2` and its variances diag S, exact since S
        is then diagonal. A fixed sigma stays fixed."""
        xs = x.detach().double()
        W, b = self.decoder.weight.double(), xs.mean(0)
        s2 = float(self.sigma) ** 2
        log_px = float(self.exact_log_marginal(xs).mean())
        C = torch.cov((xs - b).T, correction=0).reshape(xs.shape[1], -1)  # (D, D), D = 1 too
        D, L = W.shape
        eye = torch.eye(L, dtype=torch.float64, device=W.device)
        Minv = torch.linalg.inv(W.T @ W + s2 * eye)
        CW = C @ W
        W_new = CW @ torch.linalg.inv(s2 * eye + Minv @ W.T @ CW)
        s2_new = float(torch.trace(C - CW @ Minv @ W_new.T)) / D if self.config.sigma is None \
            else s2
        # p(x) depends on W W^T only: rotate W so that W^T W is diagonal, and with it the
        # posterior covariance, which the diagonal guide can then hold exactly
        W_new = W_new @ torch.linalg.eigh(W_new.T @ W_new).eigenvectors
        self.decoder.weight.copy_(W_new)
        self.decoder.bias.copy_(b)
        self.log_sigma.fill_(0.5 * math.log(s2_new))
        S = s2_new * torch.linalg.inv(s2_new * eye + W_new.T @ W_new)
        A = S @ W_new.T / s2_new  # (L, D): posterior mean = A (x - b)
        self.encoder.weight.zero_()
        self.encoder.weight[:L].copy_(A)
        self.encoder.bias[:L].copy_(-A @ b)
        self.encoder.bias[L:].copy_(torch.diagonal(S).log())  # the guide's log-variance
        return log_px

    def encode(self, x, y=None):
        m, s = self.encoder(x).chunk(2, dim=-1)
        return dist.Normal(m, torch.exp(0.5 * s)).to_event(1)

    def decode(self, z, y=None):
        return self.likelihood(self.decoder(z))

    @torch.no_grad()
    def exact_log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; b, WW^T + sigma^2 I) per datapoint, (B,) float64."""
        return linear_gaussian_log_marginal(x, self.decoder.weight, self.decoder.bias,
                                            self.sigma)

    @torch.no_grad()
    def exact_posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        """p(z | x) = N(mean(x), S), batch shape (B,)."""
        mean, cov = linear_gaussian_posterior(x, self.decoder.weight, self.decoder.bias,
                                              self.sigma)
        return dist.MultivariateNormal(mean, covariance_matrix=cov.expand(len(x), -1, -1))
