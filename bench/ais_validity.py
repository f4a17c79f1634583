"""Is AIS still a stochastic lower bound, and BDMC an upper one, under each step-size scheme?

On two models with an exact log p(x) -- a Gamma rate with Poisson counts, reached through
:class:`pgm.inference.program.Program` (a positive latent moved to R by its log), and the
linear-Gaussian model -- AIS from the prior and BDMC from exact posterior samples of data
simulated from the model run over several seeds with the step sizes

- ``in-run``: adapted inside the run from the chains whose weights are averaged,
- ``pilot``: tuned by a pilot run, then frozen for a run with fresh draws (pgm's default).

Printed per scheme and seed: mean over datapoints of AIS - exact and BDMC - exact with their
standard errors, and the mean over seeds with the SE of the seeds' means. AIS must not sit
above zero, BDMC not below, beyond Monte Carlo error.

    python bench/ais_validity.py [--seeds 4] [--n 60] [--steps 300] [--chains 16]
"""

from __future__ import annotations

import argparse
import math

import torch

from pgm.inference.ais import ais, bdmc_upper
from pgm.inference.program import Program
from pgm.inference.schedules import sigmoid_schedule
from pgm.models.gamma_poisson import GammaPoisson
from pgm.models.linear_gaussian import linear_gaussian_log_marginal


def gamma_poisson(n: int, counts: int):
    m = GammaPoisson()
    x = m.sample(n, counts)
    f = Program(m.model, m.guide, x).callables()
    lam = torch.distributions.Gamma(m.a, m.b).sample((n,))
    x_sim = torch.poisson(lam.unsqueeze(-1).expand(n, counts).contiguous())
    return f, x, m.log_marginal(x), x_sim, lam.log().unsqueeze(-1), m.log_marginal(x_sim)


def linear_gaussian(n: int, D: int = 5, L: int = 2):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fixtures import linear_gaussian_callables

    g = torch.Generator().manual_seed(0)
    W = torch.randn(D, L, generator=g, dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    sigma = 0.3

    def draw():
        z = torch.randn(n, L, dtype=torch.float64)
        return z @ W.T + b + sigma * torch.randn(n, D, dtype=torch.float64), z

    x, _ = draw()
    x_sim, z_sim = draw()
    f = linear_gaussian_callables(W, b, sigma, q="perturbed")
    return (f, x, linear_gaussian_log_marginal(x, W, b, sigma), x_sim, z_sim,
            linear_gaussian_log_marginal(x_sim, W, b, sigma))


def mean_se(d: torch.Tensor) -> tuple[float, float]:
    return d.mean().item(), (d.std() / math.sqrt(d.numel())).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--counts", type=int, default=1, help="Poisson counts per datapoint")
    args = p.parse_args()
    torch.set_num_threads(1)
    schedule = sigmoid_schedule(args.steps)
    models = {f"gamma-poisson (D={args.counts})": lambda: gamma_poisson(args.n, args.counts),
              "linear-gaussian": lambda: linear_gaussian(args.n)}
    print(f"n={args.n} datapoints, T={args.steps}, {args.chains} chains, AIS from the prior; "
          "nats, mean over datapoints +- SE")
    print(f"{'model':<24} {'scheme':<7} {'seed':>4} {'AIS - exact':>18} {'BDMC - exact':>18} "
          f"{'s':>6}")
    for name, build in models.items():
        torch.manual_seed(1234)
        f, x, exact, x_sim, z_sim, exact_sim = build()
        for scheme in ("in-run", "pilot"):
            lo_all, up_all = [], []
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                g = torch.Generator().manual_seed(1000 + seed)  # (not the global seed: ais())
                kw = dict(schedule=schedule, num_chains=args.chains, adapt=scheme, generator=g)
                lo = ais(f, x, **kw)
                up = bdmc_upper(f, x_sim, z_sim, **kw)
                d_lo, d_up = lo.per_datapoint - exact, up.per_datapoint - exact_sim
                lo_all.append(d_lo)
                up_all.append(d_up)
                (m1, s1), (m2, s2) = mean_se(d_lo), mean_se(d_up)
                print(f"{name:<24} {scheme:<7} {seed:>4} {m1:+9.4f} +- {s1:.4f} "
                      f"{m2:+9.4f} +- {s2:.4f} {lo.seconds + up.seconds:6.1f}", flush=True)
            # across seeds: a seed's datapoints share its random stream, so their errors can
            # be correlated; the seeds' means are independent
            lo_means = torch.stack([d.mean() for d in lo_all])
            up_means = torch.stack([d.mean() for d in up_all])
            (m1, s1), (m2, s2) = mean_se(lo_means), mean_se(up_means)
            print(f"{name:<24} {scheme:<7} {'all':>4} {m1:+9.4f} +- {s1:.4f} "
                  f"{m2:+9.4f} +- {s2:.4f}", flush=True)


if __name__ == "__main__":
    main()
