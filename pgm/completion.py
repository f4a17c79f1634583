r"""The structured-output task of Sohn et al. (2015), end to end: predict the bottom half of an
image from its top half with :class:`pgm.models.cvae.HalfImageCVAE` and with the deterministic
:class:`pgm.models.cvae.CompletionBaseline`, and compare their test conditional
log-likelihoods :math:`\log p(\text{bottom} | \text{top})`: the baseline's exactly, the CVAE's
by importance sampling through the contract (:func:`conditional_log_likelihood`, the IWAE
bound with the top half bound as y, a lower bound that tightens as K grows).

:func:`fit_completion` trains both (the CVAE with :func:`pgm.fit`, the baseline by maximum
likelihood in :func:`fit_baseline`) and measures them.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch

from pgm.data import Dataset
from pgm.inference.adapter import latent_callables
from pgm.inference.bounds import log_importance_weights, log_mean_exp
from pgm.models.cvae import (
    CompletionBaseline,
    HalfImageCVAE,
    HalfImageCVAEConfig,
    completion_dataset,
)


def fit_baseline(baseline: CompletionBaseline, data: Dataset, *, epochs: int = 30,
                 batch_size: int = 128, lr: float = 1e-3, patience: int | None = 10,
                 seed: int = 0) -> list[dict]:
    """Maximum likelihood on (top = data.y, bottom = data.x) with Adam; best valid weights kept.

    History rows have the keys of :func:`pgm.fit`'s (``train_elbo``/``valid_elbo`` hold the
    exact mean log p(bottom | top)), so the same ELBO-curve figure draws them.
    """
    opt = torch.optim.Adam(baseline.parameters(), lr=lr)
    xt, yt, xv, yv = data.x_train, data.y_train, data.x_valid, data.y_valid
    history, best, best_state, bad = [], -math.inf, copy.deepcopy(baseline.state_dict()), 0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(seed + epoch))
        total = 0.0
        baseline.train()
        for i in range(0, len(xt), batch_size):
            idx = perm[i:i + batch_size]
            loss = -baseline.log_prob(xt[idx], yt[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        seconds = time.perf_counter() - t0
        baseline.eval()
        with torch.no_grad():
            valid = baseline.log_prob(xv, yv).mean().item() if len(xv) else -total / len(xt)
        history.append({"epoch": epoch + 1, "train_elbo": -total / len(xt),
                        "valid_elbo": valid, "seconds": seconds})
        if valid > best:
            best, bad, best_state = valid, 0, copy.deepcopy(baseline.state_dict())
        else:
            bad += 1
            if patience is not None and bad >= patience:
                break
    baseline.load_state_dict(best_state)
    baseline.eval()
    return history


@torch.no_grad()
def conditional_log_likelihood(model, x: torch.Tensor, y: torch.Tensor, K: int = 1000, *,
                               batch_size: int = 100) -> torch.Tensor:
    r"""The IWAE bound :math:`\log \frac1K \sum_k p(x, z_k | y) / q(z_k | x, y)` with y bound,
    (B,) float64: a lower bound on log p(x | y) that tightens as K grows."""
    was_training = model.training
    model.eval()
    out = [log_mean_exp(log_importance_weights(latent_callables(model, y[i:i + batch_size]),
                                               x[i:i + batch_size], K))
           for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out)


@dataclass
class CompletionResult:
    """Both completion models, their histories and test log p(bottom | top) (nats / image)."""

    cvae: HalfImageCVAE
    baseline: CompletionBaseline
    data: Dataset  # x = bottom halves, y = top halves
    cvae_history: list[dict]
    baseline_history: list[dict]
    cvae_cll: torch.Tensor  # (N_test,) importance-sampled, K particles
    baseline_cll: torch.Tensor  # (N_test,) exact
    K: int
    seconds: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Means and standard errors of both test conditional log-likelihoods, and timings."""
        def stats(v):
            return {"mean": v.mean().item(), "se": (v.std() / math.sqrt(len(v))).item(),
                    "n": len(v)}

        diff = self.cvae_cll - self.baseline_cll.to(torch.float64)
        return {"cvae": {**stats(self.cvae_cll), "K": self.K},
                "baseline": stats(self.baseline_cll.to(torch.float64)),
                "cvae_minus_baseline": stats(diff), "seconds": self.seconds}


def fit_completion(data: Dataset, *, epochs: int = 30, latent_dim: int = 16,
                   hidden: tuple[int, ...] = (256,), split_row: int | None = None,
                   K: int = 100, n_test: int | None = None, seed: int = 0, lr: float = 1e-3,
                   batch_size: int = 128, progress: bool | None = False) -> CompletionResult:
    """Train :class:`HalfImageCVAE` (with :func:`pgm.fit`) and :class:`CompletionBaseline`
    on ``data``'s images split into top and bottom, then measure test log p(bottom | top).

    The CVAE's value is the K-sample importance estimate (:func:`conditional_log_likelihood`),
    the baseline's is exact. ``n_test`` limits the number of test images measured.
    """
    import pyro

    from pgm.inference.svi import fit

    cd = completion_dataset(data, split_row)
    cfg = HalfImageCVAEConfig(image_shape=data.image_shape, split_row=split_row,
                              latent_dim=latent_dim, hidden=tuple(hidden))
    seconds = {}
    pyro.set_rng_seed(seed)
    cvae = HalfImageCVAE(cfg)
    t0 = time.perf_counter()
    cvae_history = fit(cvae, cd, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                       device="cpu", progress=progress)
    seconds["cvae_fit"] = time.perf_counter() - t0
    pyro.set_rng_seed(seed)
    baseline = CompletionBaseline(cfg.top_dim, cfg.bottom_dim, tuple(hidden))
    t0 = time.perf_counter()
    baseline_history = fit_baseline(baseline, cd, epochs=epochs, lr=lr, batch_size=batch_size,
                                    seed=seed)
    seconds["baseline_fit"] = time.perf_counter() - t0
    xt, yt = cd.x_test[:n_test], cd.y_test[:n_test]
    t0 = time.perf_counter()
    pyro.set_rng_seed(seed)
    cvae_cll = conditional_log_likelihood(cvae.eval(), xt, yt, K)
    seconds["cvae_cll"] = time.perf_counter() - t0
    with torch.no_grad():
        baseline_cll = baseline.log_prob(xt, yt).to(torch.float64)
    return CompletionResult(cvae, baseline, cd, cvae_history, baseline_history, cvae_cll,
                            baseline_cll, K, seconds)
