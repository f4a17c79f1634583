"""AIS's accuracy against its cost on a trained run: steps T, leapfrog steps L, pilot chains P.

On the first ``--n`` test images of a run's explicit view (sigma given, as ``pgm evaluate``
chose it), AIS at each setting is compared image by image with a long reference run
(T=1000, L=10, 4 chains + 4 pilot chains) on the same images, in one process:

    python bench/ais_settings.py runs/quickstart/vae --sigma 0.144 --initial q
    python bench/ais_settings.py runs/quickstart/gan --sigma 0.212 --initial prior

``work`` is T (L + 1) (C + P): gradient evaluations per datapoint. The quickstart's settings
(pgm/quickstart.py) come from this table.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import pgm
from pgm.inference.adapter import latent_callables
from pgm.inference.ais import ais
from pgm.inference.schedules import sigmoid_schedule
from pgm.models.explicit import explicit_view

SETTINGS = [(300, 4, 4, 10), (300, 4, 2, 10), (200, 4, 2, 10), (150, 4, 2, 10),
            (100, 4, 2, 10), (50, 4, 2, 10), (500, 4, 2, 2), (300, 4, 2, 3), (200, 4, 2, 3),
            (150, 4, 2, 5)]
REFERENCE = (1000, 4, 4, 10)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--sigma", type=float, required=True)
    p.add_argument("--initial", choices=("q", "prior"), required=True)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run = pgm.load_run(args.run)
    d = run.config["data"]
    data = pgm.load_dataset(d["name"], binarize=d["binarize"], seed=d["seed"],
                            valid_fraction=d["valid_fraction"], test_fraction=d["test_fraction"])
    model = run.model.eval()
    view = explicit_view(model, args.sigma)
    x = data.x_test[:args.n]
    y = data.y_test[:args.n] if getattr(model, "conditional", False) else None
    f = latent_callables(view, y)
    ref = None
    print(f"{'T':>5s} {'C':>2s} {'P':>2s} {'L':>3s} {'work':>7s} {'mean':>10s} "
          f"{'minus reference':>18s} {'seconds':>8s}")
    for T, C, P, L in [REFERENCE, *SETTINGS]:
        gen = torch.Generator().manual_seed(1)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        r = ais(f, x, schedule=sigmoid_schedule(T), num_chains=C, pilot_chains=P,
                num_leapfrog=L, initial=args.initial, generator=gen)
        seconds = time.perf_counter() - t0
        ref = r.per_datapoint if ref is None else ref
        diff = r.per_datapoint - ref
        se = diff.std().item() / math.sqrt(len(diff))
        print(f"{T:5d} {C:2d} {P:2d} {L:3d} {T * (L + 1) * (C + P):7d} {r.mean:10.3f} "
              f"{diff.mean().item():+9.3f} ± {se:5.3f} {seconds:8.1f}", flush=True)


if __name__ == "__main__":
    main()
