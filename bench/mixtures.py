"""Mixtures and PPCA against their references on the same split: held-out log-likelihood.

On the digits data (1,797 8x8 images, grey values scaled to [0, 1], split by seed 0:
1,437 train / 180 valid / 180 test), nats per test image, mean ± SE over the images:

- a diagonal Gaussian mixture of M components trained by `pgm train gmm` with its defaults,
  by SVI (exact -log p(x) by enumeration) and by `--objective em`, beside scikit-learn's
  GaussianMixture(M, covariance_type="diag") with its defaults (reg_covar 1e-6 added to every
  variance, the counterpart of pgm's floor min_scale = 1e-3 on the standard deviation), for
  several seeds (k-means initialisations). With a floor of 1e-3 on data quantised to
  sixteenths, a test image with ink where a component's training images had none scores
  thousands of nats below the rest, so the table gives the median and the count of such
  images (log p < -1000) beside the mean, and the median paired difference pgm - sklearn;
- probabilistic PCA with an L-D code trained by `pgm train ppca` with its defaults, beside
  the closed-form maximum-likelihood solution (Tipping & Bishop 1999) of the training data.

    python bench/mixtures.py [--components 50] [--seeds 0,1,2] [--latent-dim 10]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

import pgm
from pgm.cli import main
from pgm.models.linear_gaussian import linear_gaussian_log_marginal, ppca_ml


def _mean_se(v: np.ndarray) -> str:
    return f"{v.mean():8.2f} ± {v.std(ddof=1) / math.sqrt(len(v)):5.2f}"


def _train(model: str, out: Path, *extra: str) -> pgm.io.Run:
    argv = ["train", model, "--data", "digits", "--binarize", "none", "--out", str(out),
            "--no-progress", *extra]
    assert main(argv) == 0, argv
    return pgm.load_run(out)


def main_(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--components", type=int, default=50)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--latent-dim", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = pgm.load_dataset("digits", binarize="none")
    xtr, xte = data.x_train.double().numpy(), data.x_test.double().numpy()
    M = args.components
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            sk = GaussianMixture(M, covariance_type="diag", random_state=seed).fit(xtr)
            ref = sk.score_samples(xte)
            rows.append((f"sklearn GaussianMixture, seed {seed}", sk.score(xtr), ref, None))
            for name, extra in (("SVI", ()), ("EM", ("--objective", "em"))):
                run = _train("gmm", Path(tmp) / f"gmm-{name}-{seed}", "--likelihood", "gaussian",
                             "--components", str(M), "--seed", str(seed), *extra)
                lp = run.model.exact_log_marginal(data.x_test).numpy()
                tr = run.model.exact_log_marginal(data.x_train).mean().item()
                epochs = len(pgm.io.read_history(Path(tmp) / f"gmm-{name}-{seed}" / "history.csv"))
                rows.append((f"pgm gmm {name} defaults ({epochs} epochs), seed {seed}", tr, lp,
                             lp - ref))
        print(f"\nGaussian mixtures, M = {M}, diagonal; digits, nats per image "
              f"(test: mean ± SE over {len(xte)} images; median)")
        print(f"{'':52s} {'train':>8s}  {'test mean':>16s}  {'median':>7s}  "
              f"{'< -1000':>7s}  {'median paired - sklearn':>23s}")
        for label, tr, lp, diff in rows:
            paired = "" if diff is None else f"{np.median(diff):23.2f}"
            print(f"{label:52s} {tr:8.2f}  {_mean_se(lp)}  {np.median(lp):7.2f}  "
                  f"{int((lp < -1000).sum()):7d}  {paired}")

        L = args.latent_dim
        W, b, s = ppca_ml(data.x_train, L)
        ref = linear_gaussian_log_marginal(data.x_test, W, b, s).numpy()
        run = _train("ppca", Path(tmp) / "ppca", "--latent-dim", str(L))
        lp = run.model.exact_log_marginal(data.x_test).numpy()
        print(f"\nPPCA, L = {L}; digits, nats per test image")
        print(f"closed-form ML (sigma {s:.4f})        {_mean_se(ref)}")
        print(f"pgm train ppca defaults (sigma {run.model.sigma.item():.4f}) {_mean_se(lp)}  "
              f"paired {_mean_se(lp - ref)}")


if __name__ == "__main__":
    main_()
