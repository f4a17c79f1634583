"""pgm: deep generative models the probabilistic-programming way, on Pyro and PyTorch.

Models are Pyro model/guide pairs (:class:`pgm.protocol.LatentVariableModel`), trained by one
SVI loop (:func:`pgm.fit`) and measured by estimators of log p(x) built on the same contract.
"""

__version__ = "0.1.0"

import warnings  # noqa: E402

# tqdm.auto falls back to text bars in a notebook without ipywidgets; say nothing about it.
warnings.filterwarnings("ignore", message="IProgress not found")

from pgm.data import Dataset, available_datasets, load_dataset  # noqa: E402
from pgm.evaluation import EvalConfig, evaluate  # noqa: E402
from pgm.inference.svi import FitConfig, fit  # noqa: E402
from pgm.io import Run, load_run  # noqa: E402
from pgm.models import (  # noqa: E402
    CVAE,
    GAN,
    GMM,
    MODELS,
    VAE,
    Autoencoder,
    TwoLayerVAE,
    VAEConfig,
)
from pgm.protocol import LatentVariableModel  # noqa: E402
from pgm.report import write_evaluation  # noqa: E402

__all__ = [
    "CVAE", "GAN", "GMM", "MODELS", "VAE", "Autoencoder", "Dataset", "EvalConfig", "FitConfig",
    "LatentVariableModel", "Run", "TwoLayerVAE", "VAEConfig", "available_datasets", "evaluate",
    "fit", "load_dataset", "load_run", "write_evaluation",
]
