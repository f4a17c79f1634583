r"""What an evaluation's numbers are log-likelihoods *of*, and whether two runs' numbers can
share a column.

A log p(x) is only comparable with another on the same test images in the same
representation. Three things break that silently:

- **Binarised vs grey pixels.** On binarised pixels (``binarize`` = stochastic, threshold,
  dynamic) log p(x) is a log-*probability* of a point in {0,1}^D (at most 0); on grey values
  (``none``) it is a log-*density* over [0,1]^D, in other units, unbounded above. A Parzen
  window, a Gaussian density, on binary data gives positive "log-likelihoods" for the same
  reason.
- **Different test images**: another dataset, split, seed or binarisation draw. The
  evaluated split is fingerprinted (SHA-256 of its float32 values), so this is checked, not
  trusted.
- **An unnormalised likelihood**: a Bernoulli on grey values is a cross-entropy, not a
  density of anything.
- **A conditional model** (the CVAE) measured as log p(x | y), not log p(x): ``pgm evaluate``
  sums its label out (``quantity`` ``log p(x)``, :mod:`pgm.evaluation`) unless told not to
  (``--no-label-sum``: ``quantity`` ``log p(x | y)``).

Comparable rows can still differ in the *observation model*: a VAE's learned per-pixel
Gaussian scale can shrink on pixels that are always 0 (MNIST's are 8-bit, ~80% exactly 0), so
its density grows without bound there, while a GAN measured through its explicit view
:math:`\mathcal N(G(z), \sigma^2 I)` has one isotropic :math:`\sigma`. Such numbers are
densities of the same data, but they measure the observation model as much as the
generator; :mod:`pgm.models.explicit` gives every model the same view for a like-for-like
comparison (Wu et al. 2017), and the report names each row's observation model.
"""

from __future__ import annotations

import hashlib

import torch

BINARY_MODES = ("stochastic", "threshold", "dynamic")


def fingerprint(x: torch.Tensor) -> str:
    """SHA-256 (first 16 hex digits) of ``x``'s float32 values: equal for the same images."""
    data = x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def observation(model, explicit_sigma: float | None = None) -> str:
    """The observation model p(x|z) whose density an evaluation measures."""
    if explicit_sigma is not None:
        return f"explicit view N(mean, s^2 I), s={explicit_sigma:g} chosen on validation data"
    lik = getattr(model, "likelihood", None)
    if lik is None:
        return "none (implicit model)"
    settings = ", ".join(f"{k} {v:g}" for k, v in lik.config().items() if k != "name")
    if model.latent == "discrete" and lik.name == "gaussian-learned":
        return f"gaussian, learned diagonal scale per component ({settings})"
    return f"{lik.name} ({settings})" if settings else lik.name


def representation(data, model, *, split: str, explicit_sigma: float | None = None,
                   label_sum: bool = False) -> dict:
    """The results.json fields ``representation`` and ``test_images`` for an evaluation of
    ``model`` on ``data``'s ``split``; ``label_sum``: a conditional model's label was summed
    out (its estimators without a suffix are of log p(x))."""
    binarize = data.binarize
    obs = observation(model, explicit_sigma)
    if binarize in BINARY_MODES:
        values, density = "binary {0,1}", "log-probability (discrete)"
    else:
        values, density = "as given (grey / real values)", "log-density (continuous)"
        if obs.startswith("bernoulli"):
            density = "not normalised (Bernoulli on grey values)"
    x = getattr(data, f"x_{split}")
    of = "log p(x | y), given the label" if getattr(model, "conditional", False) else "log p(x)"
    rep = {"binarize": binarize, "values": values, "density": density, "observation": obs,
           "quantity": of}
    if label_sum and getattr(model, "conditional", False):
        rep.update(quantity="log p(x)", labels="summed out: log p(x) = logsumexp_y [log p(y) "
                   "+ log p(x | y)]; log p(x | y) in the estimators named *_given_y")
    return {"representation": rep,
            "test_images": {"dataset": data.name, "split": split, "n_split": len(x),
                            "sha256": fingerprint(x)}}


def short_label(results: dict) -> str:
    """'grey, log-density' / 'binary (stochastic), log-probability' / 'unknown'."""
    rep = results.get("representation")
    if rep is None:
        return "unknown (results.json without representation)"
    kind = rep["density"].split(" (")[0]
    if rep["binarize"] in BINARY_MODES:
        return f"binary ({rep['binarize']}), {kind}"
    return f"grey values, {kind}"


def incommensurable(results: list[dict]) -> dict[int, list[str]]:
    """For each row (index) whose log-likelihoods cannot share a column with the first row's,
    the reasons. Rows with unknown representation are listed as unverifiable."""
    problems: dict[int, list[str]] = {}
    if not results:
        return problems
    ref = results[0]
    ref_rep, ref_img = ref.get("representation"), ref.get("test_images")
    for i, r in enumerate(results):
        rep, img = r.get("representation"), r.get("test_images")
        why = []
        if rep is None or img is None:
            why.append("no representation/test-image record (evaluated by an older pgm): "
                       "cannot verify")
        else:
            if rep["density"].startswith("not normalised"):
                why.append("a Bernoulli likelihood on grey values is not a normalised density")
            if i and ref_rep is not None and rep["density"] != ref_rep["density"]:
                why.append(f"{rep['density']} vs {ref_rep['density']} in the first row")
            quantity = rep.get("quantity", "log p(x)")
            if i and ref_rep is not None and quantity != ref_rep.get("quantity", "log p(x)"):
                why.append(f"{quantity} vs {ref_rep.get('quantity', 'log p(x)')} in the first "
                           "row: knowing the label raises the likelihood (log p(x) >= "
                           "log p(y) + log p(x | y))")
            if i and ref_img is not None and img["sha256"] != ref_img["sha256"]:
                why.append(f"other test images ({img['dataset']}/{img['split']}, "
                           f"binarize {rep['binarize']}) than the first row "
                           f"({ref_img['dataset']}/{ref_img['split']}, "
                           f"binarize {ref_rep['binarize'] if ref_rep else '?'})")
        if why:
            problems[i] = why
    return problems
