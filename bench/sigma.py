"""The explicit view's sigma: EM with AIS as the E-step against a grid of AIS runs.

A GAN and a VAE (grey mnist5k, the quickstart's kind) get their view's sigma on the same 20
validation images twice, alternately in this process: :func:`pgm.models.explicit.fit_sigma`
(what ``pgm evaluate`` uses) and :func:`pgm.models.explicit.choose_sigma` on its default grid
(what it used before), both with AIS of 100 steps and 4 chains. Printed: the sigma each
chooses, its validation log p_sigma(x) by AIS with SE, seconds, and the ratio.

    python bench/sigma.py [--gan-epochs 30] [--vae-epochs 10]
"""

from __future__ import annotations

import argparse

import torch

import pgm
from pgm.inference.adversarial import train_gan
from pgm.models.explicit import choose_sigma, fit_sigma


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gan-epochs", type=int, default=30)
    p.add_argument("--vae-epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = pgm.load_dataset("mnist5k", binarize="none")
    torch.manual_seed(0)
    gan, _ = train_gan(data, epochs=args.gan_epochs, device="cpu", progress=False)
    torch.manual_seed(0)
    vae = pgm.VAE(data_dim=784, latent_dim=10, hidden=(400,), likelihood="bernoulli")
    pgm.fit(vae, data, epochs=args.vae_epochs, progress=False)
    kw = dict(n=20, ais_steps=100, ais_chains=4, seed=0)
    print(f"torch {torch.__version__}, 1 thread; GAN {args.gan_epochs} epochs, VAE 784-400-10 "
          f"{args.vae_epochs} epochs; 20 validation images, AIS 100 steps x 4 chains")
    print(f"{'model':<5} {'method':<22} {'sigma':>7} {'log p_sigma (AIS)':>20} {'AIS runs':>8} "
          f"{'s':>7}")
    for name, model in (("GAN", gan), ("VAE", vae)):
        seconds = {"em": [], "grid": []}
        for _ in range(args.repeats):
            em = fit_sigma(model, data.x_valid, **kw)
            seconds["em"].append(em.seconds)
            grid = choose_sigma(model, data.x_valid, method="ais", **kw)
            seconds["grid"].append(grid.seconds)
        for label, c in (("EM (fit_sigma)", em), ("grid (choose_sigma)", grid)):
            i = c.sigmas.index(c.sigma)
            t = min(seconds["em" if c is em else "grid"])
            print(f"{name:<5} {label:<22} {c.sigma:7.3f} {c.log_px[i]:12.1f} +- {c.se[i]:5.1f} "
                  f"{len(c.sigmas):8d} {t:7.1f}")
        print(f"{name:<5} EM / grid seconds = {min(seconds['em']) / min(seconds['grid']):.2f}")


if __name__ == "__main__":
    main()
