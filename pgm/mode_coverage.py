r"""Mode coverage as a number: the class histogram of a model's samples.

Label each of n samples (10,000 by default) with the argmax of the feature classifier of
:mod:`pgm.sample_quality` (an MLP trained on the data's labels) and count per class; do the
same for the test images. A generator that drops a mode (a digit) shows an empty or thin
bar where the test set has a full one. The number reported is

.. math::

    r = \frac{\min_c n_c}{\max_c n_c} \in [0, 1],

the rarest class's count over the most common one's: 0 when a class is missing, 1 for a
perfectly even histogram, and the test set's own r (about 0.8 on mnist5k's 500 test images,
whose classes are not balanced) is what a generator that matches the data would show, up to
sampling noise (with 10,000 samples a class of ~10% has a relative standard error of ~3%).
The classifier's own errors move both histograms alike; its test accuracy is recorded
beside them. A sample the classifier labels as some digit need not look like one, so each
summary also gives ``confident``: the share of images the classifier labels with probability
at least :data:`CONFIDENT` (0.9), the test set's beside the samples'. It separates how many
samples are recognisable digits from which digits they are: a generator whose malformed
images the classifier files under a few classes has a low r for another reason than dropped
modes (mnist5k: 78% of the test images are labelled that surely, 41-42% of the DCGAN's
samples, and among those the DCGAN's ratio is 0.46-0.57 against 0.43-0.50 over all). The
classifier is sure of some non-digits too (the quickstart's Gaussian mixture: noisy blurs,
58% labelled with p >= 0.9, nearly all as one class), so the share is what this classifier
recognises, not how clean a sample looks. Read r and the confident share together with the
Fréchet distance and the samples themselves.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure

__all__ = ["CONFIDENT", "DEFAULT_N", "class_counts", "class_coverage",
           "class_histogram_figure", "class_summary", "confident_share"]

#: Samples labelled by default.
DEFAULT_N = 10_000
#: The classifier probability from which an image counts as surely labelled.
CONFIDENT = 0.9


@torch.no_grad()
def _labels(classifier, x: torch.Tensor, chunk: int, caller: str) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
    """Each row's most probable class under ``classifier`` and its probability (the softmax
    of the logits), ``chunk`` rows per call, on the CPU: one pass serves the histogram and
    the confident share."""
    if x.ndim != 2:
        raise ValueError(f"{caller} needs (N, D) inputs, got shape {tuple(x.shape)}")
    top = [classifier(x[i:i + chunk].float()).softmax(1).max(1)
           for i in range(0, len(x), chunk)]
    if not top:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0)
    return (torch.cat([t.indices for t in top]).cpu(), torch.cat([t.values for t in top]).cpu())


def class_counts(classifier, x: torch.Tensor, n_classes: int, *,
                 chunk: int = 1000) -> torch.Tensor:
    """(n_classes,) int64: how many rows of ``x`` (N, D) the classifier labels as each class."""
    return torch.bincount(_labels(classifier, x, chunk, "class_counts")[0], minlength=n_classes)


def confident_share(classifier, x: torch.Tensor, *, threshold: float = CONFIDENT,
                    chunk: int = 1000) -> float:
    """The share of rows of ``x`` (N, D) whose most probable class under ``classifier`` (the
    softmax of its logits) has probability at least ``threshold``."""
    if x.ndim == 2 and not len(x):
        raise ValueError(f"confident_share needs (N, D) inputs, N >= 1, got {tuple(x.shape)}")
    return (_labels(classifier, x, chunk, "confident_share")[1] >= threshold).double().mean().item()


def class_summary(counts) -> dict:
    """JSON-able summary of a histogram: counts, fractions, the rarest and most common class
    and the ratio of their counts."""
    c = [int(v) for v in (counts.tolist() if isinstance(counts, torch.Tensor) else counts)]
    n = sum(c)
    if not c or n == 0:
        raise ValueError("a class histogram needs at least one class and one labelled point")
    rarest, common = int(np.argmin(c)), int(np.argmax(c))
    return {"counts": c, "fractions": [v / n for v in c], "n": n, "rarest": rarest,
            "most_common": common, "ratio": c[rarest] / c[common],
            "missing": [k for k, v in enumerate(c) if v == 0]}


def class_coverage(samples: torch.Tensor, data, classifier) -> dict:
    """``{"samples": summary, "test": summary or None, "classifier_accuracy"}`` for
    ``samples`` (N, D) and ``data.x_test`` under ``classifier`` (:func:`class_summary`)."""
    if data.n_classes is None:
        raise ValueError(f"{data.name} has no labels, so no class histogram")
    k = data.n_classes

    def summary(x):  # one pass of the classifier for both numbers
        labels, top = _labels(classifier, x, 1000, "class_coverage")
        return {**class_summary(torch.bincount(labels, minlength=k)),
                "confident": (top >= CONFIDENT).double().mean().item()}

    return {"samples": summary(samples),
            "test": summary(data.x_test) if len(data.x_test) else None,
            "classifier_accuracy": getattr(classifier, "accuracy", math.nan)}


def class_histogram_figure(coverage: dict, *, title: str | None = None) -> Figure:
    """Bars of each class's share: the samples' beside the test set's, each labelled with
    its rarest/most-common ratio (from :func:`class_coverage`'s dict)."""
    s, t = coverage["samples"], coverage.get("test")
    k = len(s["counts"])
    fig = Figure(figsize=(6.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    pos = np.arange(k)
    width = 0.4 if t else 0.8
    def sure(h):  # the share labelled surely, where the summary has it
        return (f"; {h['confident']:.0%} with p ≥ {CONFIDENT:g}"
                if h.get("confident") is not None else "")

    ax.bar(pos - (width / 2 if t else 0), s["fractions"], width, color="tab:blue",
           label=f"samples (n={s['n']:,}): rarest/most common {s['ratio']:.2f}{sure(s)}")
    if t:
        ax.bar(pos + width / 2, t["fractions"], width, color="0.6",
               label=f"test data (n={t['n']:,}): {t['ratio']:.2f}{sure(t)}")
    for c in s["missing"]:
        ax.text(c - (width / 2 if t else 0), 0, "none", rotation=90, ha="center", va="bottom",
                fontsize="x-small", color="tab:red")
    ax.axhline(1 / k, color="0.3", ls=":", lw=0.8)
    ax.set_ylim(0, 1.45 * max(s["fractions"] + (t["fractions"] if t else [])))
    ax.set_xticks(pos)
    ax.set_xlabel("class (the feature classifier's argmax)")
    ax.set_ylabel("share")
    ax.legend(fontsize="small", loc="upper left")
    acc = coverage.get("classifier_accuracy")
    ax.set_title(title or "class histogram of the samples" + (
        f" (classifier's test accuracy {acc:.1%})" if acc is not None and math.isfinite(acc)
        else ""), fontsize="medium")
    return fig
