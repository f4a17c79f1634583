"""Accuracy per second: each estimator's error against the exact log p(x), beside its cost.

Two models with a known log p(x): the linear-Gaussian model (D=20, L=4, a mean-field guide
off the posterior's centre; closed form) and a 784-400-2 VAE trained on mnist5k (a 2-D latent;
adaptive quadrature to 1e-3 nats). On the same datapoints, in one process, every estimator
at a range of settings -- IWAE with K draws; AIS from the prior and AIS from the guide q(z|x)
with T steps and C chains (step sizes tuned by 4 pilot chains, whose cost is included) -- is
run once, and the table gives its mean absolute error, its mean signed error (a lower bound
should be <= 0) and its seconds per datapoint. The figure draws error against seconds, one
line per estimator and model.

    python bench/accuracy.py [--n 20] [--epochs 20] [--figure accuracy.png]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import pgm
from pgm.inference.adapter import latent_callables
from pgm.inference.ais import ais
from pgm.inference.bounds import iwae_bound
from pgm.inference.quadrature import quadrature_log_marginal
from pgm.inference.schedules import sigmoid_schedule
from pgm.models.linear_gaussian import linear_gaussian_log_marginal, linear_gaussian_sample

IWAE_KS = (1, 10, 100, 1000, 5000)
AIS_PRIOR = ((100, 16), (300, 16), (1000, 16), (300, 4))
AIS_Q = ((10, 16), (30, 16), (100, 16), (300, 16), (100, 4))


def linear_gaussian(n: int):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fixtures import linear_gaussian_callables

    g = torch.Generator().manual_seed(0)
    W = torch.randn(20, 4, generator=g, dtype=torch.float64)
    b = torch.randn(20, generator=g, dtype=torch.float64)
    x, _ = linear_gaussian_sample(W, b, 0.3, n, generator=g)
    f = linear_gaussian_callables(W, b, 0.3, q="perturbed")
    return f, x, linear_gaussian_log_marginal(x, W, b, 0.3)


def vae_2d(n: int, epochs: int):
    data = pgm.load_dataset("mnist5k")
    torch.manual_seed(0)
    model = pgm.VAE(data_dim=784, latent_dim=2, hidden=(400,))
    pgm.fit(model, data, epochs=epochs, progress=False)
    model.eval()
    x = data.x_test[:n]
    f = latent_callables(model)
    exact = quadrature_log_marginal(f.log_joint, x, latent_dim=2, tol=1e-3).per_datapoint
    return f, x, exact


def settings():
    for K in IWAE_KS:
        yield "IWAE", f"K={K}", lambda f, x, g, K=K: iwae_bound(f, x, Ks=(K,))[K]
    for initial, grid in (("prior", AIS_PRIOR), ("q", AIS_Q)):
        for T, C in grid:
            yield (f"AIS from {initial}", f"T={T} C={C}",
                   lambda f, x, g, T=T, C=C, i=initial: ais(
                       f, x, schedule=sigmoid_schedule(T), num_chains=C, initial=i, generator=g))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20, help="datapoints per model")
    p.add_argument("--epochs", type=int, default=20, help="training epochs of the 2-D VAE")
    p.add_argument("--figure", default="accuracy.png")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, n={args.n} datapoints per model; errors in "
          "nats against the exact log p(x)")
    models = {"linear-Gaussian": linear_gaussian(args.n), "VAE 784-400-2": vae_2d(args.n,
                                                                                 args.epochs)}
    rows = []
    print(f"{'model':<16} {'estimator':<15} {'setting':<12} {'|error|':>8} {'error':>8} "
          f"{'s/datapoint':>12}")
    for model, (f, x, exact) in models.items():
        for family, setting, run in settings():
            torch.manual_seed(1)
            g = torch.Generator().manual_seed(2)  # (never the global RNG's seed: see ais())
            t0 = time.perf_counter()
            est = run(f, x, g)
            seconds = (time.perf_counter() - t0) / len(x)
            err = est.per_datapoint - exact
            rows.append((model, family, setting, err.abs().mean().item(), err.mean().item(),
                         seconds))
            print(f"{model:<16} {family:<15} {setting:<12} {rows[-1][3]:8.4f} {rows[-1][4]:+8.4f} "
                  f"{seconds:12.3g}", flush=True)
    figure(rows, args.figure)
    print(f"figure: {args.figure}")


def figure(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r[0] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for family, marker in (("IWAE", "o"), ("AIS from prior", "s"), ("AIS from q", "^")):
            pts = [r for r in rows if r[0] == model and r[1] == family]
            # one line over K, or over T at the family's most common chain count; runs with
            # other counts as open markers beside it
            chains = [r[2].split(" C=")[1] for r in pts if " C=" in r[2]]
            main = f" C={max(chains, key=chains.count)}" if chains else None  # ties: the first
            line = [r for r in pts if main is None or r[2].endswith(main)]
            rest = [r for r in pts if r not in line]
            drawn = ax.plot([r[5] for r in line], [max(r[3], 1e-5) for r in line],
                            marker=marker,
                            label=family + (f", {main[3:]} chains" if rest else ""))
            if rest:
                ax.plot([r[5] for r in rest], [max(r[3], 1e-5) for r in rest], marker=marker,
                        linestyle="none", markerfacecolor="none",
                        color=drawn[0].get_color(),
                        label=f"{family}, {rest[0][2].split('C=')[1]} chains")
            for r in pts:  # other counts labelled below left, the line's points above right
                ax.annotate((r[2].removesuffix(main) if main else r[2]).replace(" C=", ", C="),
                            (r[5], max(r[3], 1e-5)), fontsize=7, textcoords="offset points",
                            xytext=(-4, -10) if r in rest else (4, 3),
                            ha="right" if r in rest else "left")
        ax.set(xscale="log", yscale="log", xlabel="seconds per datapoint (1 CPU thread)",
               ylabel="mean |estimate - exact log p(x)| (nats)", title=model)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()  # the same families in each
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
