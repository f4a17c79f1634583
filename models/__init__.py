"""Model families, one file each, and the registry that maps names to classes."""

from pgm.errors import UnknownNameError

from .cvae import CVAE, CVAEConfig, HalfImageCVAE
from .gan import GAN, ExplicitGAN, GANConfig
from .gmm import GMM, GMMConfig
from .linear_gaussian import LinearGaussian, LinearGaussianConfig
from .vae import VAE, Autoencoder, VAEConfig
from .vae2 import TwoLayerVAE, TwoLayerVAEConfig

MODELS = {cls.name: cls for cls in (VAE, Autoencoder, TwoLayerVAE, LinearGaussian, GMM, CVAE,
                                       HalfImageCVAE, GAN)}
MODELS["linear-gaussian"] = LinearGaussian  # the model's older name, kept as an alias


def get_model_class(name: str):
    """The model class registered as ``name``; unknown names list the known ones."""
    if name not in MODELS:
        raise UnknownNameError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


__all__ = [
    "CVAE", "GAN", "GMM", "MODELS", "VAE", "Autoencoder", "CVAEConfig", "ExplicitGAN",
    "GANConfig", "GMMConfig", "HalfImageCVAE",
    "LinearGaussian", "LinearGaussianConfig", "TwoLayerVAE", "TwoLayerVAEConfig", "VAEConfig",
    "get_model_class",
]
