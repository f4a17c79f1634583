r"""Sample-quality measures that need only ``model.sample(n)``: VAE, GAN, GMM alike.

(a) **Nearest neighbours.** The Euclidean distance from each generated sample to its nearest
training image, beside the same distance for held-out test images (what "new but typical"
looks like). Samples much closer to the training set than test images are copies; the figure
shows samples above their nearest training images. Search is chunked: squared distances
:math:`\|s\|^2 + \|x\|^2 - 2 s^\top x` in float64 pick the neighbour, and the reported
distance is recomputed directly as :math:`\|s - x_{nn}\|`, so a sample that *is* a training
point has distance exactly 0.

(b) **Fréchet distance in a classifier's feature space** (the idea of FID, Heusel et al. 2017,
with a small MLP trained on the same data's labels in place of Inception): fit Gaussians
:math:`(\mu_1, \Sigma_1)`, :math:`(\mu_2, \Sigma_2)` to the penultimate-layer features of
samples and data, and report

.. math::

    d^2 = \|\mu_1 - \mu_2\|^2 + \operatorname{Tr}\big(\Sigma_1 + \Sigma_2
          - 2 (\Sigma_1 \Sigma_2)^{1/2}\big),

the squared 2-Wasserstein distance between the Gaussians. The trace of the matrix square root
is computed as :math:`\sum_i \sqrt{\lambda_i}` over the eigenvalues of the symmetric PSD
matrix :math:`\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2}` (same spectrum as
:math:`\Sigma_1\Sigma_2`), in float64; tests/test_sample_quality.py checks it against
``scipy.linalg.sqrtm``. The classifier is trained on the fly or cached in a run directory
(``cache/frechet_classifier.safetensors`` + ``.json``, beside ``eval/``, not in it: an
evaluation is published whole, :mod:`pgm.publish`; reused only when the dataset, split and
settings match). Data without labels use the raw data space as the feature space. Finite
samples bias the distance upward; :func:`sample_quality` reports the floor (held-out test data
against the training data) beside the model's number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from pgm import io, plots
from pgm.inference.parzen import draw_samples
from pgm.mode_coverage import DEFAULT_N, class_coverage
from pgm.nets import MLP

__all__ = [
    "FeatureClassifier", "NearestNeighbours", "feature_classifier", "frechet_distance",
    "frechet_feature_distance", "gaussian_stats", "nearest_neighbour_figure",
    "nearest_neighbour_histogram", "nearest_neighbours", "sample_quality",
]

CLASSIFIER_FILE = "frechet_classifier"


# ----------------------------------------------------------------------------- (a) neighbours


class NearestNeighbours(NamedTuple):
    distance: torch.Tensor  # (N,) float64: Euclidean distance to the nearest reference row
    index: torch.Tensor  # (N,) int64: its row in the reference set


@torch.no_grad()
def nearest_neighbours(samples: torch.Tensor, reference: torch.Tensor, *,
                       chunk_size: int = 1024) -> NearestNeighbours:
    """For each row of ``samples`` (N, D), its nearest row of ``reference`` (M, D)."""
    s = samples.reshape(len(samples), -1).to(torch.float64).cpu()
    r = reference.reshape(len(reference), -1).to(torch.float64).cpu()
    if s.shape[1] != r.shape[1]:
        raise ValueError(f"samples have {s.shape[1]} features, the reference {r.shape[1]}")
    r_sq = (r * r).sum(1)
    idx = []
    for lo in range(0, len(s), chunk_size):
        sb = s[lo:lo + chunk_size]
        d2 = (sb * sb).sum(1)[:, None] + r_sq[None] - 2 * sb @ r.T  # (b, M)
        idx.append(d2.argmin(1))
    index = torch.cat(idx)
    return NearestNeighbours((s - r[index]).norm(dim=1), index)


def _summary(d: torch.Tensor) -> dict:
    d = d.double()
    return {"mean": d.mean().item(),
            "se": (d.std() / math.sqrt(len(d))).item() if len(d) > 1 else math.nan,
            "median": d.median().item(), "min": d.min().item(), "n": len(d)}


def nearest_neighbour_figure(samples, x_train, image_shape, *, n: int = 10,
                             nn_result: NearestNeighbours | None = None, title=None) -> Figure:
    """Samples (top row) above their nearest training images, distances in the title."""
    samples = samples[:n]
    res = nn_result if nn_result is not None else nearest_neighbours(samples, x_train)
    dist = ", ".join(f"{d:.1f}" for d in res.distance[:n].tolist())
    return plots.interpolations({"sample": samples, "nearest training image":
                                 x_train[res.index[:n]]}, image_shape,
                                title=title or f"distances: {dist}")


def nearest_neighbour_histogram(d_samples: torch.Tensor, d_test: torch.Tensor, *,
                                title=None) -> Figure:
    """Histograms of the distance to the nearest training point: samples vs test data."""
    fig = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.add_subplot()
    both = torch.cat([d_samples, d_test]).double().numpy()
    bins = np.linspace(0, both.max() * 1.02 + 1e-12, 40)
    ax.hist(d_test.double().numpy(), bins=bins, density=True, alpha=0.55, color="0.5",
            label=f"test data (mean {d_test.double().mean():.2f})")
    ax.hist(d_samples.double().numpy(), bins=bins, density=True, alpha=0.55, color="tab:blue",
            label=f"samples (mean {d_samples.double().mean():.2f})")
    ax.set_xlabel("Euclidean distance to the nearest training point")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title, fontsize="medium")
    return fig


# ----------------------------------------------------------------------------- (b) Fréchet


def gaussian_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) (ddof=1) of (N, F) features, float64 numpy."""
    f = np.asarray(features.detach().cpu().double() if isinstance(features, torch.Tensor)
                   else features, dtype=np.float64)
    if f.ndim == 1:
        f = f[:, None]
    if len(f) < 2:
        raise ValueError("the Fréchet distance needs at least two feature vectors per set")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, float)), np.atleast_1d(np.asarray(mu2, float))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, float)), np.atleast_2d(np.asarray(cov2, float))
    s1 = _sqrt_psd(cov1)
    m = s1 @ cov2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def frechet_feature_distance(f1, f2) -> float:
    """Fréchet distance between Gaussians fitted to two (N, F) feature sets."""
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


class FeatureClassifier(nn.Module):
    """x -> MLP -> ReLU features (F,) -> linear class logits. ``features(x)`` is the
    penultimate layer the Fréchet distance is measured in."""

    def __init__(self, data_dim: int, n_classes: int, hidden: tuple[int, ...] = (256,),
                 features: int = 64):
        super().__init__()
        self.body = nn.Sequential(MLP(data_dim, hidden, features), nn.ReLU())
        self.head = nn.Linear(features, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


#: The classifier last trained in this process, by its settings: (weights, test accuracy).
_TRAINED: dict[str, tuple[dict, float]] = {}


def _classifier_meta(data, hidden, features, epochs, seed) -> dict:
    return {"data": data.describe(), "hidden": list(hidden), "features": features,
            "epochs": epochs, "seed": seed}


def feature_classifier(data, *, path: str | Path | None = None, hidden=(256,),
                       features: int = 64, epochs: int = 10, batch_size: int = 128,
                       lr: float = 1e-3, seed: int = 0) -> FeatureClassifier:
    """The classifier whose features the Fréchet distance uses, trained on ``data``'s labels.

    With ``path`` (a file stem, e.g. ``RUN/eval/frechet_classifier``) it is loaded from
    ``path.safetensors`` when ``path.json`` records the same data and settings, and saved
    there after training otherwise. ``extra`` accuracy on the test split is in ``.accuracy``.
    """
    if data.y_train is None or data.n_classes is None:
        raise ValueError(f"{data.name} has no labels to train a feature classifier on")
    meta = _classifier_meta(data, hidden, features, epochs, seed)
    model = FeatureClassifier(data.data_dim, data.n_classes, tuple(hidden), features)
    if path is not None:
        path = Path(path)
        meta_path, weights = path.with_suffix(".json"), path.with_suffix(".safetensors")
        if meta_path.is_file() and weights.is_file():
            saved = json.loads(meta_path.read_text())
            if {k: saved.get(k) for k in meta} == meta:
                io.load_weights(model, weights)
                model.accuracy = saved.get("test_accuracy", math.nan)
                return model.eval()
    key = json.dumps(meta, sort_keys=True)
    if key in _TRAINED:  # trained in this process (the quickstart evaluates five runs)
        state, model.accuracy = _TRAINED[key]
        model.load_state_dict(state)
        if path is not None:
            io.save_weights(model, weights)
            io.atomic_write_json(meta_path, {**meta, "test_accuracy": model.accuracy})
        return model.eval()
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        model = FeatureClassifier(data.data_dim, data.n_classes, tuple(hidden), features)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        x, y = data.x_train.float(), data.y_train
        for _ in range(epochs):
            perm = torch.randperm(len(x))
            for i in range(0, len(x), batch_size):
                idx = perm[i:i + batch_size]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(data.x_test).argmax(1) == data.y_test).double().mean().item() \
            if len(data.x_test) else math.nan
    model.accuracy = acc
    _TRAINED.clear()  # one data set at a time
    _TRAINED[key] = ({k: v.clone() for k, v in model.state_dict().items()}, acc)
    if path is not None:
        io.save_weights(model, weights)
        io.atomic_write_json(meta_path, {**meta, "test_accuracy": acc})
    return model


# ----------------------------------------------------------------------------- both


@torch.no_grad()
def sample_quality(model, data, *, n: int | None = None, run_dir: str | Path | None = None,
                   seed: int = 0, classifier: FeatureClassifier | None = None,
                   samples: torch.Tensor | None = None, return_distances: bool = False,
                   n_classes_samples: int = DEFAULT_N):
    """Nearest-neighbour and Fréchet summaries of ``n`` samples of ``model`` (default: as
    many as training points) and, for labelled data, the class histogram of
    ``n_classes_samples`` samples (:mod:`pgm.mode_coverage`; of ``samples`` themselves when
    they are given). Returns a JSON-able dict::

        {"n_samples", "nearest_neighbour": {"samples": {mean, se, median, min, n},
                                            "test": {...}, "ratio"},
         "frechet": {"samples_vs_train", "test_vs_train", "features", "classifier_accuracy"},
         "classes": {"samples": {counts, fractions, n, rarest, most_common, ratio, missing,
                                 confident},
                     "test": {...}, "classifier_accuracy"}}  # labelled data only

    ``ratio`` < 1 means samples sit closer to training points than test data do (copying).
    ``test_vs_train`` is the finite-sample floor of the Fréchet distance on this data.
    ``return_distances=True`` returns ``(summary, {"samples": (n,), "test": (N_test,)})``,
    the per-point nearest-neighbour distances, for :func:`nearest_neighbour_histogram`.
    """
    n = n or len(data.x_train)
    s = samples if samples is not None else draw_samples(model, n, seed=seed)
    x_train, x_test = data.x_train.float(), data.x_test.float()
    nn_s = nearest_neighbours(s, x_train).distance
    nn_t = nearest_neighbours(x_test, x_train).distance if len(x_test) else torch.zeros(0)
    out = {"n_samples": len(s), "nearest_neighbour": {
        "samples": _summary(nn_s), "test": _summary(nn_t) if len(nn_t) else None,
        "ratio": (nn_s.mean() / nn_t.mean()).item() if len(nn_t) else math.nan}}
    if classifier is None and data.y_train is not None and data.n_classes is not None:
        path = None if run_dir is None else Path(run_dir) / "cache" / CLASSIFIER_FILE
        classifier = feature_classifier(data, path=path)
    if classifier is not None:
        def feats(x):
            return torch.cat([classifier.features(x[i:i + 1000].float())
                              for i in range(0, len(x), 1000)])
        f_s, f_train, f_test = feats(s), feats(x_train), feats(x_test)
        kind, acc = "classifier", getattr(classifier, "accuracy", math.nan)
        coverage = None
        if data.n_classes is not None:
            many = s if samples is not None else draw_samples(model, n_classes_samples,
                                                              seed=seed)
            coverage = class_coverage(many, data, classifier)
    else:
        f_s, f_train, f_test, kind, acc = s, x_train, x_test, "raw", math.nan
        coverage = None
    out["frechet"] = {
        "samples_vs_train": frechet_feature_distance(f_s, f_train),
        "test_vs_train": frechet_feature_distance(f_test, f_train) if len(f_test) > 1
        else math.nan,
        "features": kind, "classifier_accuracy": acc, "n_train": len(x_train),
        "n_test": len(x_test)}
    if coverage is not None:
        out["classes"] = coverage
    if return_distances:
        return out, {"samples": nn_s, "test": nn_t}
    return out
