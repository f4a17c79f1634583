r"""``pgm quickstart``: the library's whole story in one command.

On one dataset (mnist5k by default) it trains a VAE and the autoencoder beside it, a Gaussian
mixture, a conditional VAE and a GAN; evaluates every one with the same estimators of log p(x)
on the same test images; and writes one comparison report under ``runs/quickstart/``:
``report.html`` (self-contained: the table and each model's figures), ``report.md``,
``comparison.json`` (every run's ``eval/results.json``, with the commands that made it),
``log_px.png`` (each model's best log p(x) and its paired difference to the VAE) and
``samples.png`` (a row of samples from each model).

So that one table can hold them all, every model is trained on the same grey values in [0, 1]
(a GAN has no binarised version) and measured through the same observation model, the
explicit view p_s(x) = ∫ p(z) N(x; mean(z), s² I) dz of Wu et al. (2017) with s chosen per
model on validation data (:mod:`pgm.models.explicit`). The VAEs and the autoencoder train on
the Bernoulli cross-entropy of the grey values, the usual practice: as a density of grey
values it is not normalised, but it is only the training loss; what is measured is the view.
(A Gaussian decoder with a learned per-pixel scale, the normalised alternative, spends its
capacity shrinking the scale of MNIST's always-black pixels: speckled samples and a worse
view, 330 against 436 nats by AIS on the same 50 test images.) The conditional VAE is measured
as a density of x like the others, its label summed out, log p(x) = logsumexp_y [log p(y) +
log p(x | y)] with its uniform p(y) (:mod:`pgm.evaluation`), so its row is ranked against the
VAE; its log p(x | y) stays in its results (``*_given_y``) and the report's note.

Each step is an ordinary ``pgm`` command line (:func:`plan` lists them), printed before it
runs, so a user can rerun or vary any of them. Finished steps are recorded in
``quickstart.json`` and skipped when the quickstart runs again, and a training step that was
interrupted continues from its checkpoint: an interrupted quickstart goes on where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pgm import io

SIZES = ("default", "small")

#: Per size: epochs for the explicit models and the GAN, and the evaluation's settings.
#: "default" takes about six minutes on 2 CPU cores from a fresh clone (5.5 measured twice on a
#: quiet machine: 1.0 and 0.7 to install, 4.5 and 4.9 the quickstart, 0.7 and 1.0 of them the
#: five evaluations, 3.3 and 3.4 the GAN's training; 7.0 in a slow hour); "small" is for tests
#: and smoke runs. The GAN trains
#: 200 of `pgm train gan`'s 1200 epochs at its constant rates (seed 0; a G five hidden layers
#: deep and narrow, with batch norm and a half-resolution output, lr 3e-4, a coarse D beside D:
#: classes 0.59, Fréchet 2.60, 72% of the samples labelled with p >= 0.9; the rates
#: decaying to 0 over the 200 epochs, the default before: 0.63, 0.88, 66%; 300 epochs decaying:
#: 0.65, 1.14, 68%; with D alone 0.64, 1.01, 63%; the four-layer G before it: 0.53, 1.44, 61%;
#: the two-layer G: 0.71, 1.09, 52%; all 1200 epochs, about 25 minutes on one core: 76.0%
#: for seed 0, about seven digits in eight readable; 600 epochs decaying: 72.2-72.9%).
#: AIS: (steps, leapfrog). Every model's AIS starts near its posterior (pgm evaluate's
#: --ais-initial auto): from q(z|x) for the VAE and the CVAE, from the Laplace proposal at the
#: posterior's modes for the autoencoder and the GAN (pgm.inference.laplace). Chosen on the
#: quickstart's own runs (bench/ais_settings.py: 50 test images, paired against T=1000 with
#: 10 leapfrog steps and 4 pilot chains): T=200 with 3 leapfrog steps sits 0.23 nats below
#: that reference for the VAE from q and 0.01 for the autoencoder from Laplace, at a fifth of
#: the T=300 x 10 cost; the GAN's posterior is far from Gaussian even at its modes (-6.2 nats
#: at T=200 x 3), so it keeps 10 leapfrog steps (T=200 x 10: -0.6 nats; the prior start at
#: T=300 x 10, which the quickstart used before, sat 2.1 +- 0.2 below that reference). Today's
#: GAN (batch norm and a half-resolution output in G) fits the test images with a narrower s
#: (0.091), and its posterior is far harder to anneal: T=200, 300 and 500 with 10 leapfrog
#: steps sit 26.2 +- 2.5, 17.9 +- 1.9 and 9.1 +- 1.3 below the reference, the gap about
#: proportional to 1/T. Since AIS from the Laplace proposal runs HMC with its covariances as
#: the mass matrices, the same fit's sigma is narrower (0.075) and, against T=3000 with them,
#: T=300 x 10 sits 23.7 +- 3.2 nats low, T=500 x 10 15.2 +- 2.0, where without them T=500 x
#: 10 sat 34.9 +- 4.1 and T=1000 x 10 19.0 +- 3.1 low: it runs T=300 x 10 (37 s on one thread
#: against 56 s for T=500). The deep G that replaced that GAN's (64, 128, 256, 512) has a
#: posterior with many local maxima: since the Laplace fit climbs from 16 starts and keeps
#: the 4 best (pgm.inference.laplace), T=200 x 10 sits 16.3 +- 2.1 nats below T=2000 x 10
#: from 32 modes (20 test images, s = 0.105), where T=300 x 10 from 4 climbs sat 26.5 below.
#: The better modes narrow EM's s (0.097), where T=100, 200 and 300 x 10 sit 28.4 +- 4.4,
#: 22.3 +- 4.1 and 16.5 +- 3.6 below T=2000 x 10 (5, 10 and 15 s on one thread): it keeps
#: T=300 x 10. The five-layer G since (s = 0.136 in a one-thread run of the quickstart): T=300
#: and 100 x 10 sit 11.2 +- 2.2 and 19.1 +- 2.7 below T=2000 x 10 (the four-layer G at lr
#: 3e-4, s = 0.118: 11.6 +- 1.7 and 19.0 +- 2.4), so T=300 x 10 stays.
SETTINGS = {
    "default": {"epochs": 30, "gan_epochs": 200, "components": 100, "n": 50,
                "k": "1,10,100,1000", "ais_n": 50, "ais_chains": 4, "ais_pilot_chains": 2,
                "ais": (200, 3), "ais_long": (300, 10)},
    "small": {"epochs": 2, "gan_epochs": 2, "components": 10, "n": 10,
              "k": "1,10", "ais_n": 10, "ais_chains": 2, "ais_pilot_chains": 2,
              "ais": (20, 3), "ais_long": (20, 10)},
}


@dataclass(frozen=True)
class Step:
    """One ``pgm`` command line and the run directory it writes."""

    title: str
    argv: tuple[str, ...]
    run: Path

    def command(self) -> str:
        return "pgm " + " ".join(self.argv)

    def argv_now(self) -> list[str]:
        """The command line to run now: a training step that has begun (its config.json is
        written) resumes, from its last checkpoint or, killed before the first, from the
        start; an evaluation not marked finished replaces whatever an interrupted attempt
        published (--overwrite)."""
        if self.argv[0] == "evaluate":
            return [*self.argv, "--overwrite"]
        resume = self.argv[0] == "train" and (self.run / io.CONFIG).is_file()
        return [*self.argv, "--resume"] if resume else list(self.argv)


DONE = "quickstart.json"


def finished(out: str | Path) -> set[str]:
    """The commands of the steps that have finished in ``out``."""
    path = Path(out) / DONE
    return set(json.loads(path.read_text())["finished"]) if path.is_file() else set()


def mark_finished(out: str | Path, step: Step) -> None:
    io.atomic_write_json(Path(out) / DONE,
                         {"finished": sorted(finished(out) | {step.command()})})


@dataclass(frozen=True)
class Model:
    """A run of the quickstart: its name in the report, its run directory and its figures."""

    label: str
    run: Path
    figures: tuple[str, ...]
    long_ais: bool = False  # a posterior far from Gaussian: SETTINGS' ais_long


def models(out: Path) -> list[Model]:
    """The runs the quickstart makes, in the order of the report."""
    return [
        Model("VAE", out / "vae", ("samples.png", "reconstructions.png", "interpolation.png")),
        Model("autoencoder", out / "vae" / "ae-baseline", ()),
        Model("Gaussian mixture", out / "gmm", ("samples.png", "components.png")),
        Model("conditional VAE", out / "cvae", ("class_samples.png", "style_transfer.png")),
        Model("GAN", out / "gan", ("samples.png", "class_histogram.png", "training_curves.png"),
              long_ais=True),
    ]


def plan(out: str | Path = "runs/quickstart", *, data: str = "mnist5k", size: str = "default",
         device: str = "auto", seed: int = 0, progress: bool = True) -> list[Step]:
    """The quickstart's steps: train each model, evaluate each run, nothing else."""
    if size not in SETTINGS:
        raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
    s, out = SETTINGS[size], Path(out)
    common = ("--data", data, "--seed", str(seed), "--device", device)
    quiet = () if progress else ("--no-progress",)
    vae, _, gmm, cvae, gan = (m.run for m in models(out))  # the AE trains beside the VAE

    def train(title, model, run, *extra):
        return Step(title, ("train", model, *common, "--out", str(run), *extra, *quiet), run)

    epochs = ("--epochs", str(s["epochs"]))
    grey = ("--binarize", "none", "--likelihood")
    steps = [
        train("VAE (10-D code) and the autoencoder beside it", "vae", vae, *grey, "bernoulli",
              "--latent-dim", "10", *epochs),
        # lr 3e-2 and no minimum epochs, the settings of the README's table: with pgm train
        # gmm's defaults (lr 1e-2, no early stop before epoch 30) the best validation ELBO
        # of this mixture falls at epoch 2, whose means are still the k-means++ start
        # (training images), and that epoch is the one kept
        train("Gaussian mixture", "gmm", gmm, *grey, "gaussian", "--components",
              str(s["components"]), *epochs, "--lr", "3e-2", "--min-epochs", "0"),
        train("conditional VAE (2-D code)", "cvae", cvae, *grey, "bernoulli",
              "--latent-dim", "2", *epochs),
        train("GAN", "gan", gan, "--epochs", str(s["gan_epochs"])),
    ]
    estimators = ("--explicit-view", "--n", str(s["n"]), "--k", s["k"],
                  "--ais-n", str(s["ais_n"]), "--ais-chains", str(s["ais_chains"]),
                  "--ais-pilot-chains", str(s["ais_pilot_chains"]), "--posterior-check", "0",
                  "--sample-quality", "--seed", str(seed), "--device", device, *quiet)
    for m in models(out):
        T, leapfrog = s["ais_long"] if m.long_ais else s["ais"]
        ais = ("--ais-steps", str(T), "--ais-leapfrog", str(leapfrog))
        steps.append(Step(f"evaluate the {m.label}",
                          ("evaluate", str(m.run), *estimators, *ais), m.run))
    return steps


def samples_figure(runs: list[Model], n: int = 10, seed: int = 0):
    """One row of ``n`` samples (decoder means; G(z) for the GAN) per run, same seed each."""
    import torch

    from pgm import plots

    rows, shape = {}, None
    for m in runs:
        run = io.load_run(m.run)
        shape = shape or run.config["data"].get("image_shape")
        torch.manual_seed(seed)
        rows[m.label] = run.model.eval().sample(n)
    if shape is None:
        return None
    return plots.interpolations(rows, tuple(shape), title="samples of every model")


def write_report(out: str | Path, steps: list[Step]) -> list[Path]:
    """``report.html``, ``report.md``, ``comparison.json``, ``log_px.png`` and ``samples.png``
    over the quickstart's runs."""
    from pgm import plots
    from pgm.report import CSS, _img, comparison, comparison_figure, paired_differences

    out = Path(out)
    runs = [m for m in models(out) if (m.run / "eval" / "results.json").is_file()]
    results = [json.loads((m.run / "eval" / "results.json").read_text()) for m in runs]
    for m, r in zip(runs, results):
        r["label"] = m.label
    paired = paired_differences(results, [m.run for m in runs])
    figure = [plots.save_figure(comparison_figure(results, paired), out / "log_px.png")] \
        if runs else []
    md, page = comparison(results, paired=paired, figure=figure[0] if figure else None)
    table_html = page.split("<body>", 1)[1].rsplit("</body>", 1)[0]
    fig = samples_figure(runs) if runs else None
    samples = [plots.save_figure(fig, out / "samples.png")] if fig is not None else []
    table_html += "".join(_img(p) for p in samples)
    md += "".join(f"\n![samples of every model]({p.name})\n" for p in samples)
    sections, md_figs = [], []
    for m in runs:
        paths = [m.run / "figures" / f for f in m.figures if (m.run / "figures" / f).is_file()]
        evaluation = m.run / "eval" / "figures" / "bounds_vs_k.png"
        paths += [evaluation] if evaluation.is_file() else []
        sections.append(f"<h2>{m.label}</h2><p>run <code>{m.run}</code>, full report "
                        f"<code>{m.run / 'eval' / 'report.html'}</code></p>"
                        + "".join(_img(p) for p in paths))
        md_figs += [f"## {m.label}", ""] + [f"![{p.stem}]({p.relative_to(out)})" for p in paths]
    commands = "".join(f"<li><code>{s.command()}</code></li>" for s in steps)
    html = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>pgm quickstart</title>"
            f"<style>{CSS}</style></head><body><h1>pgm quickstart</h1>{table_html}"
            + "".join(sections) + f"<h2>Commands</h2><ol>{commands}</ol></body></html>")
    md += "\n" + "\n".join(md_figs) + "\n\n## Commands\n\n" + "\n".join(
        f"1. `{s.command()}`" for s in steps) + "\n"
    payload = {"schema": "pgm-quickstart", "version": 1,
               "commands": [s.command() for s in steps], "runs": results}
    return [io.atomic_write_text(out / "report.html", html),
            io.atomic_write_text(out / "report.md", md),
            io.atomic_write_json(out / "comparison.json", payload), *figure, *samples]
