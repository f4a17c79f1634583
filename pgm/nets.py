"""Neural networks that encoders and decoders are built from: an MLP and a small conv pair.

Every network maps a flat (..., in_features) tensor to a flat (..., out_features) tensor, so
heads (likelihoods, Gaussian encoders) never care which architecture sits underneath.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import UnknownNameError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def activation(name: str) -> nn.Module:
    """The activation module called ``name``; unknown names list the known ones."""
    if name not in ACTIVATIONS:
        raise UnknownNameError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """in -> [Linear -> activation] * len(hidden) -> Linear -> out."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int,
                 act: str = "relu"):
        sizes = [in_features, *hidden]
        if any(int(n) < 1 for n in sizes) or out_features < 1:  # torch accepts a 0-wide layer
            raise ValueError(f"layer sizes must be positive: {in_features} -> "
                             f"{', '.join(map(str, hidden))} -> {out_features}")
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), activation(act)]
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)


class ConvEncoder(nn.Module):
    """(..., H*W) grey images -> two stride-2 convolutions -> Linear -> (..., out_features)."""

    def __init__(self, image_shape: tuple[int, int], out_features: int, channels: int = 32,
                 hidden: int = 256, act: str = "relu"):
        super().__init__()
        h, w = image_shape
        if h % 4 or w % 4:
            raise ValueError(f"conv nets need image sides divisible by 4, got {image_shape}")
        self.image_shape = (h, w)
        self.body = nn.Sequential(
            nn.Conv2d(1, channels, 4, stride=2, padding=1), activation(act),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1), activation(act),
            nn.Flatten(),
            nn.Linear(2 * channels * (h // 4) * (w // 4), hidden), activation(act),
            nn.Linear(hidden, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-1]
        out = self.body(x.reshape(-1, 1, *self.image_shape))
        return out.reshape(*batch, -1)


class ConvDecoder(nn.Module):
    """(..., in_features) -> Linear -> two stride-2 transposed convolutions -> (..., k*H*W).

    ``out_per_pixel`` channels per pixel (1 for Bernoulli logits, 2 for a Gaussian mean and
    log-scale) are laid out channel-major, so the result splits with ``chunk(k, -1)``.
    """

    def __init__(self, in_features: int, image_shape: tuple[int, int], out_per_pixel: int = 1,
                 channels: int = 32, hidden: int = 256, act: str = "relu"):
        super().__init__()
        h, w = image_shape
        if h % 4 or w % 4:
            raise ValueError(f"conv nets need image sides divisible by 4, got {image_shape}")
        self.start = (2 * channels, h // 4, w // 4)
        self.body = nn.Sequential(
            nn.Linear(in_features, hidden), activation(act),
            nn.Linear(hidden, 2 * channels * (h // 4) * (w // 4)), activation(act),
            nn.Unflatten(1, self.start),
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1), activation(act),
            nn.ConvTranspose2d(channels, out_per_pixel, 4, stride=2, padding=1),
            nn.Flatten(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        out = self.body(z.reshape(-1, z.shape[-1]))
        return out.reshape(*batch, -1)
