"""AIS's accuracy against its cost on a trained run: steps T, leapfrog steps L, pilot chains P.

On the first ``--n`` test images of a run's explicit view (sigma given, as ``pgm evaluate``
chose it), AIS at each setting is compared image by image with a long reference run
(T=1000, L=10, 4 chains + 4 pilot chains) on the same images, in one process:

    python bench/ais_settings.py runs/quickstart/vae --sigma 0.144 --initial q
    python bench/ais_settings.py runs/quickstart/gan --sigma 0.212 --initial prior
    python bench/ais_settings.py runs/quickstart/gan --sigma 0.212 --initial laplace

``--initial laplace`` starts from :func:`pgm.inference.laplace.laplace_proposal` (its fit is
timed once and printed; every setting shares it) and, as ``pgm evaluate`` does, runs HMC with
its heaviest Gaussians' covariances as the mass matrices (``--mass identity``: without;
``--reference-mass``: the reference run's choice, default the same). ``--reference`` chooses
where the reference run starts (default: where the settings start), so that starts can be compared
against one reference.

``work`` is T (L + 1) (C + P): gradient evaluations per datapoint of a step that evaluates
its start again (the README's tables use it; AIS now reuses the last transition's
evaluation and does T L (C + P)). The quickstart's settings
(pgm/quickstart.py) come from this table.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

import pgm
from pgm.inference.adapter import latent_callables
from pgm.inference.ais import ais
from pgm.inference.laplace import AIS_DEFENSIVE, fit_laplace, laplace_proposal
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
    p.add_argument("--initial", choices=("q", "prior", "laplace"), required=True)
    p.add_argument("--reference", choices=("q", "prior", "laplace"), default=None)
    p.add_argument("--defensive", type=float, default=AIS_DEFENSIVE,
                   help="the prior's share in the Laplace proposal (default: pgm evaluate's)")
    p.add_argument("--modes", type=int, default=4, help="the Laplace proposal's modes")
    p.add_argument("--ascents", type=int, default=16,
                   help="the Laplace fit's ascents, pruned to the --modes best")
    p.add_argument("--starts", type=int, default=16,
                   help="the Laplace fit's draws per source, of which the --ascents best climb")
    p.add_argument("--reference-file", default=None,
                   help="keep the reference run's per-datapoint values here (.pt) and reuse "
                        "them when the file exists")
    p.add_argument("--settings", default=None,
                   help="T,C,P,L;T,C,P,L;... instead of the built-in list")
    p.add_argument("--mass", choices=("laplace", "identity"), default="laplace",
                   help="from Laplace: HMC's mass matrices (default: pgm evaluate's)")
    p.add_argument("--reference-mass", choices=("laplace", "identity"), default=None)
    p.add_argument("--reference-setting", default=None,
                   help="T,C,P,L of the reference run (default: 1000,4,4,10)")
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
    starts = {"q": (f, "q", None), "prior": (f, "prior", None)}
    if "laplace" in (args.initial, args.reference):
        torch.manual_seed(0)
        t0 = time.perf_counter()
        fit = fit_laplace(f, x, modes=args.modes, ascents=args.ascents,
                          starts=args.starts)
        starts["laplace"] = (laplace_proposal(f, x, defensive=args.defensive, fitted=fit), "q",
                             fit.inverse_mass_sqrt())
        print(f"Laplace proposal fitted in {time.perf_counter() - t0:.1f} s")
    settings = SETTINGS if args.settings is None else [
        tuple(int(v) for v in item.split(",")) for item in args.settings.split(";")]
    ref = None
    if args.reference_file and os.path.exists(args.reference_file):
        ref = torch.load(args.reference_file)
        assert len(ref) == len(x), "the reference file holds another number of datapoints"
        print(f"reference from {args.reference_file}: mean {ref.mean().item():.3f}")
    print(f"{'T':>5s} {'C':>2s} {'P':>2s} {'L':>3s} {'work':>7s} {'mean':>10s} "
          f"{'minus reference':>18s} {'seconds':>8s}")
    reference = REFERENCE if args.reference_setting is None else tuple(
        int(v) for v in args.reference_setting.split(","))
    for i, (T, C, P, L) in enumerate([reference, *settings]):
        if i == 0 and ref is not None:
            continue
        start, mass_choice = args.initial, args.mass
        if i == 0:  # the reference run
            start, mass_choice = args.reference or start, args.reference_mass or mass_choice
        g, initial, mass = starts[start]
        if mass_choice == "identity":
            mass = None
        gen = torch.Generator().manual_seed(1)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        r = ais(g, x, schedule=sigmoid_schedule(T), num_chains=C, pilot_chains=P,
                num_leapfrog=L, initial=initial, generator=gen, inverse_mass_sqrt=mass)
        seconds = time.perf_counter() - t0
        if ref is None:
            ref = r.per_datapoint
            if args.reference_file:
                torch.save(ref, args.reference_file)
        diff = r.per_datapoint - ref
        se = diff.std().item() / math.sqrt(len(diff))
        print(f"{T:5d} {C:2d} {P:2d} {L:3d} {T * (L + 1) * (C + P):7d} {r.mean:10.3f} "
              f"{diff.mean().item():+9.3f} ± {se:5.3f} {seconds:8.1f}", flush=True)


if __name__ == "__main__":
    main()
