"""The ``pgm`` command: train, sample, evaluate, report, datasets.

The library returns results; this module prints them. Under ``torchrun``, ``train`` and
``evaluate`` join the launcher's process group (pgm.distributed) and only rank 0 prints
and writes files. ``train`` and ``evaluate`` hold the run directory's lock (pgm.runlock)
while they write it, and ``sample`` while it writes into it: a second writer stops with one
line naming the first."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pgm import distributed, domains, publish, runlock
from pgm.errors import DataError, PgmError

_UNSET = object()  # the default of a train option in the parser of _given
TRAINABLE = ("vae", "vae2", "ae", "gmm", "ppca", "linear-gaussian", "cvae", "gan")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``pgm train: error: argument --n: invalid
    int value: 'x' (see pgm train --help)``) like every other error of pgm."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser(suppress: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The ``pgm`` parser; ``suppress``: train options whose default is left unset (for
    :func:`_given`)."""
    p = _Parser(prog="pgm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model and write a run directory")
    t.add_argument("model", help=f"model to train: {', '.join(TRAINABLE)}")
    t.add_argument("--data", default="mnist5k",
                   help="dataset name (see `pgm datasets`) or a .npz/.npy file or IDX folder")
    t.add_argument("--binarize", default=None,
                   choices=("none", "threshold", "stochastic", "dynamic"),
                   help="how grey pixels become {0,1} for a Bernoulli likelihood "
                        "(default: stochastic for images, none otherwise)")
    t.add_argument("--latent-dim", type=int, default=2, help="dimension of z (default 2)")
    t.add_argument("--hidden", type=_ints, default=(400,),
                   help="hidden layer sizes of the MLPs, comma-separated (default 400)")
    t.add_argument("--activation", default="relu", help="hidden activation (default relu)")
    t.add_argument("--arch", default=None, choices=("mlp", "conv"),
                   help="encoder/decoder architecture (default mlp; conv: images with sides "
                        "divisible by 4; gan: the DCGAN)")
    t.add_argument("--likelihood", default=None,
                   choices=("bernoulli", "gaussian", "gaussian-learned"),
                   help="p(x|z) (default: bernoulli for images, gaussian-learned otherwise)")
    t.add_argument("--likelihood-scale", type=float, default=None,
                   help="fixed scale of 'gaussian', minimum scale of 'gaussian-learned' "
                        "(default 0.1); gmm: the components' minimum scale, shared by SVI "
                        "and EM (default 1e-3); ppca: the noise scale's start (default 1)")
    t.add_argument("--components", type=int, default=100,
                   help="gmm only: number of mixture components (default 100)")
    t.add_argument("--prior", default="standard", choices=("standard", "learned"),
                   help="cvae only: N(0, I) or a learned conditional prior p(z|y)")
    t.add_argument("--objective", default=None,
                   choices=("elbo", "elbo-analytic", "iwae", "iwae-dreg", "em"),
                   help="training bound (default elbo; em for ppca); iwae-dreg: the iwae "
                        "bound with doubly-reparameterized encoder gradients; em: closed-form "
                        "EM, one step per epoch (gmm, ppca)")
    t.add_argument("--particles", type=int, default=1,
                   help="samples per datapoint (K of the iwae bound; default 1)")
    t.add_argument("--epochs", type=int, default=None,
                   help="number of epochs (default 30; gmm: 100; ppca: 200 EM steps; gan: "
                        "1200 on images with values in [0, 1] (200 with --arch conv), 40 on 1-D "
                        "data, 30 on other data)")
    t.add_argument("--batch-size", type=int, default=128, help="minibatch size (default 128)")
    t.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default 1e-3; 1e-2 for gmm and ppca)")
    t.add_argument("--lr-schedule", default="constant",
                   choices=("constant", "cosine", "exponential"),
                   help="learning-rate schedule over epochs (default constant)")
    t.add_argument("--clip-norm", type=float, default=100.0,
                   help="max gradient norm; 0 turns clipping off (default 100)")
    t.add_argument("--kl-warmup", type=int, default=0,
                   help="epochs over which the KL weight rises linearly to 1 (default 0)")
    t.add_argument("--patience", type=int, default=10,
                   help="early stopping: epochs without a better validation bound (the ELBO; "
                        "IWAE_K for --objective iwae, iwae-dreg); 0 = off")
    t.add_argument("--min-epochs", type=int, default=None,
                   help="early stopping never stops before this epoch (default: the "
                        "model's: 30 for gmm, 100 for ppca, 0 otherwise)")
    t.add_argument("--seed", type=int, default=0, help="random seed (split, init, noise)")
    t.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    t.add_argument("--out", default=None, help="run directory (default runs/MODEL-DATA)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out with its saved settings, to its own "
                        "number of epochs unless --epochs is given; any other option given "
                        "must agree with its config.json (only --device may also change)")
    t.add_argument("--no-ae-baseline", action="store_true",
                   help="vae only: skip the autoencoder trained beside it for the "
                        "interpolation figure")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("--log", default=None, choices=("tensorboard", "mlflow", "none"),
                   help="experiment tracking: the config, each epoch's metrics and the figures "
                        "to TensorBoard (RUN/tensorboard) or MLflow (RUN/mlflow.db, or "
                        "--tracking-uri); needs pgm[tensorboard] or pgm[mlflow]. With --resume "
                        "the default continues what the run logged to; none stops it")
    t.add_argument("--tracking-uri", default=None,
                   help="mlflow only: where to log (a server, a database URI; default "
                        "$MLFLOW_TRACKING_URI, else sqlite RUN/mlflow.db)")
    t.set_defaults(**dict.fromkeys(suppress, _UNSET))

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("run", help="run directory")
    s.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--out", default=None,
                   help="PNG path (default RUN/figures/samples-N.png); an .npy beside it")

    e = sub.add_parser("evaluate", help="estimate log p(x) of a trained run: ELBO, IWAE, AIS, "
                                        "BDMC, exact, gaps -> RUN/eval/")
    e.add_argument("run", help="run directory")
    e.add_argument("--k", type=_ints, default=(1, 10, 100, 1000, 5000),
                   help="IWAE sample sizes, comma-separated (default 1,10,100,1000,5000)")
    e.add_argument("--n", type=int, default=1000,
                   help="datapoints of the split for ELBO/IWAE (default 1000)")
    e.add_argument("--split", default="test", choices=("train", "valid", "test"))
    e.add_argument("--ais-steps", type=int, default=500,
                   help="AIS intermediate distributions; 0 turns AIS off (default 500)")
    e.add_argument("--ais-initial", default="auto", choices=("auto", "prior", "q", "laplace"),
                   help="start of the annealing path: auto (the default) is q(z|x) where the "
                        "guide is an inference network with a density, else a Gaussian at the "
                        "posterior's mode (laplace); or the prior")
    e.add_argument("--ais-chains", type=int, default=16, help="AIS chains per datapoint")
    e.add_argument("--ais-pilot-chains", type=int, default=4,
                   help="extra chains per datapoint that tune the step sizes; their weights "
                        "are not used (default 4)")
    e.add_argument("--ais-leapfrog", type=int, default=10, help="leapfrog steps per HMC move")
    e.add_argument("--ais-schedule", default="sigmoid", choices=("sigmoid", "linear"))
    e.add_argument("--ais-n", type=int, default=100,
                   help="AIS runs on the first this-many datapoints (default 100)")
    e.add_argument("--bdmc", action="store_true",
                   help="BDMC upper bound (reverse AIS) on data simulated from the model")
    e.add_argument("--gaps", action="store_true",
                   help="amortization and approximation gaps (Cremer et al. 2018)")
    e.add_argument("--gaps-n", type=int, default=100, help="datapoints for --gaps")
    e.add_argument("--prior-proposal", action="store_true",
                   help="also IWAE with p(z) as the proposal (shows why it fails)")
    e.add_argument("--no-exact", action="store_true",
                   help="skip exact log p(x) (quadrature for a 2-D latent can take minutes)")
    e.add_argument("--sample-quality", action="store_true",
                   help="also Parzen window, nearest-neighbour distances and a Frechet "
                        "distance in classifier features (always on for a GAN)")
    e.add_argument("--posterior-check", type=int, default=3,
                   help="2-D latent: datapoints whose q(z|x) is drawn against a NUTS reference "
                        "posterior (default 3; 0 = off)")
    e.add_argument("--explicit-view", action="store_true",
                   help="measure the generator's view N(mean(z), s^2 I) with s chosen on "
                        "validation data, as for a GAN (Wu et al. 2017), so VAE, GMM and GAN "
                        "rows compare like for like (always on for a GAN)")
    e.add_argument("--no-label-sum", action="store_true",
                   help="conditional model (cvae): log p(x | y) alone, not also log p(x) = "
                        "logsumexp_y [log p(y) + log p(x | y)] (which costs n_classes times)")
    e.add_argument("--preset", default=None, choices=("burda2015", "wu2017", "cremer2018"),
                   help="a paper's protocol; its settings override the options above")
    e.add_argument("--batch-size", type=int, default=100, help="datapoints per batch")
    e.add_argument("--seed", type=int, default=0, help="random seed")
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    e.add_argument("--no-progress", action="store_true", help="hide progress bars")
    e.add_argument("--overwrite", action="store_true",
                   help="replace RUN/eval/ if it exists (in one step, once the new evaluation "
                        "is complete); without it an existing evaluation is kept and the "
                        "command stops before it starts")

    r = sub.add_parser("report", help="one comparison table over several evaluated runs")
    r.add_argument("runs", nargs="+",
                   help="run directories (each one's eval/), or evaluation folders holding a "
                        "results.json (a RUN/eval kept under another name)")
    r.add_argument("--out", default="reports/comparison",
                   help="path stem for the .md, .html and .png, or a folder to write "
                        "comparison.* in (default reports/comparison)")

    q = sub.add_parser("quickstart", help="train a VAE, an autoencoder, a GMM, a CVAE and a "
                                          "GAN, evaluate them all, write one comparison report")
    q.add_argument("--out", default="runs/quickstart", help="directory (default runs/quickstart)")
    q.add_argument("--data", default="mnist5k", help="dataset with labels (default mnist5k)")
    q.add_argument("--size", default="default", choices=("default", "small"),
                   help="default: about six minutes on 2 CPU cores; small: a smoke "
                        "test")
    q.add_argument("--seed", type=int, default=0, help="random seed")
    q.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    q.add_argument("--no-progress", action="store_true", help="hide progress bars")

    sub.add_parser("datasets", help="list the built-in datasets and accepted files")
    return p


def _given(argv: list[str] | None) -> set[str]:
    """The train options given on the command line ``argv``, not taken by default."""
    every = vars(_parser().parse_args(argv))
    given = vars(_parser(suppress=tuple(every)).parse_args(argv))
    return {name for name, value in given.items() if value is not _UNSET}


def _train(args) -> int:
    import contextlib

    from pgm import io
    from pgm.models import get_model_class
    from pgm.tracking import open_logger

    if args.model not in TRAINABLE:
        raise PgmError(f"unknown model {args.model!r}; trainable: {', '.join(TRAINABLE)}")
    data_name = Path(args.data).stem if Path(args.data).exists() else args.data
    out = args.run_dir = Path(args.out or f"runs/{args.model}-{data_name}")
    progress = False if args.no_progress else None
    cls = get_model_class(args.model)
    if cls.trainer == "adversarial" and distributed.launched():
        raise PgmError(f"pgm train {args.model} runs in one process; start it without torchrun")
    if cls.trainer == "adversarial":
        from pgm.run_identity import GAN_OPTIONS, NOT_RECORDED

        ignored = sorted(args.given - set(GAN_OPTIONS) - set(NOT_RECORDED))
        if ignored:  # its settings are gan_settings_for's, per data and --arch
            raise PgmError(
                f"pgm train {args.model} takes --data, --binarize, --seed, --lr, --arch, "
                f"--epochs and --device; {', '.join('--' + o.replace('_', '-') for o in ignored)} "
                "would be ignored (set other GAN settings from Python: "
                "pgm.inference.adversarial.train_gan)")
    with runlock.hold(out, "pgm train"):  # one writer per run, its ae-baseline/ included
        if args.resume:  # before any file is touched: the run is what the command line says
            resumed = _check_resume(args, out, cls)
        else:
            io.refuse_existing_run(out)
            resumed = None
        logger = open_logger(args.log, out, tracking_uri=args.tracking_uri, resume=args.resume)
        with logger or contextlib.nullcontext():
            if cls.trainer == "adversarial":
                return _train_gan(args, out, progress, logger, resumed)
            return _train_svi(args, out, progress, cls, logger, resumed)


def _run_data(config: dict):
    """The dataset a run (its config.json) was trained on, split and binarised as it was."""
    from pgm.data import load_dataset

    d = config["data"]
    data = load_dataset(d["name"], binarize=d["binarize"], seed=d["seed"],
                        valid_fraction=d["valid_fraction"], test_fraction=d["test_fraction"])
    for key, value in json.loads(json.dumps(data.describe())).items():
        if key != "name" and key in d and d[key] != value:  # a user's file replaced since
            raise DataError(f"{d['name']} is not the data the run was trained on: data.{key} "
                            f"is {d[key]!r} in its config.json, {value!r} now")
    return data


def _check_resume(args, out: Path, cls) -> tuple[dict, object]:
    """The run's config.json and data, once the model kind and every option given on the
    command line agree with them (:mod:`pgm.run_identity`); CheckpointError otherwise."""
    from pgm import io
    from pgm.run_identity import GAN_OPTIONS, check_model, check_options

    saved = io.read_config(out)
    check_model(out, saved, cls.name)
    given = args.given & set(GAN_OPTIONS) if cls.trainer == "adversarial" else args.given
    check_options(out, saved, vars(args), given)
    io.check_resumable(out)
    return saved, _run_data(saved)


def _log_figures(logger, figures, history) -> None:
    if logger is not None:
        for path in figures:
            logger.log_figure(path, history[-1]["epoch"] if history else 0)


def _train_svi(args, out: Path, progress, cls, logger, resumed) -> int:
    """A model trained by SVI (pgm.fit), and the baseline fitted beside it. ``resumed``:
    the run's config.json and data, when it is resumed."""
    import pyro

    from pgm import io
    from pgm.config import from_dict
    from pgm.data import load_dataset
    from pgm.inference.svi import FitConfig, fit
    from pgm.models import get_model_class

    if resumed is not None:  # the run's own settings; its epochs unless --epochs says
        saved, data = resumed
        pyro.set_rng_seed(saved["fit"]["seed"])  # the initial weights of a new run, should
        model = io.build_model(saved)            # it have been killed before its checkpoint
        epochs = saved["fit"]["epochs"] if args.epochs is None else args.epochs
        cfg = from_dict(FitConfig, {**saved["fit"], "epochs": epochs, "device": args.device})
    else:
        pyro.set_rng_seed(args.seed)
        data = load_dataset(args.data, binarize=args.binarize, seed=args.seed)
        model = _build_model(args, data)
        lr = args.lr if args.lr is not None else cls.default_lr
        objective = args.objective or getattr(cls, "default_objective", "elbo")
        epochs = getattr(cls, "default_epochs", 30) if args.epochs is None else args.epochs
        cfg = FitConfig(objective=objective, num_particles=args.particles,
                        epochs=epochs, batch_size=args.batch_size, lr=lr,
                        lr_schedule=args.lr_schedule, clip_norm=args.clip_norm or None,
                        kl_warmup_epochs=args.kl_warmup, patience=args.patience or None,
                        min_epochs=args.min_epochs,
                        seed=args.seed, device=args.device)
    before = _epochs_done(out) if args.resume else 0
    history = fit(model, data, cfg, out=out, resume=args.resume, progress=progress, log=logger)
    if args.resume and history and len(history) == before and distributed.is_main():
        print(f"nothing to train: the run has {before} epoch{'s' * (before != 1)}"
              + (f" (early stopping ended it before its {cfg.epochs})"
                 if before < cfg.epochs else f"; --epochs {before + 10} would train on"))
    baseline = None
    if model.baseline and not args.no_ae_baseline and data.image_shape is not None:
        ae_out = out / f"{model.baseline}-baseline"
        pyro.set_rng_seed(cfg.seed)
        baseline = get_model_class(model.baseline)(model.config)
        fit(baseline, data, cfg, out=ae_out, progress=progress,
            resume=args.resume and (ae_out / io.CONFIG).exists())
    if not distributed.is_main():
        return 0
    figures = model.write_figures(out, data, history,
                                  **({} if baseline is None else {"baseline": baseline}))
    _log_figures(logger, figures, history)
    key = next((k for k in (history[0] if history else {}) if k.startswith("valid_iwae_")),
               "valid_elbo")  # the bound that chose the weights (pgm.inference.svi.fit)
    best = max(history, key=lambda r: r[key]) if history else None
    if best is not None:
        name = f"IWAE_{key.rsplit('_', 1)[1]}" if key != "valid_elbo" else "ELBO"
        print(f"best valid {name} {best[key]:.3f} nats at epoch {best['epoch']} "
              f"({sum(r['seconds'] for r in history):.1f} s of training)")
    print(f"run directory: {out}  ({len(figures)} figures in {out / 'figures'})")
    return 0


def _epochs_done(out: Path) -> int:
    """Epochs in a run's history.csv (0 where it has none)."""
    path = out / "history.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


def _train_gan(args, out: Path, progress, logger, resumed) -> int:
    """The GAN trains adversarially (pgm.inference.adversarial), on grey values. ``resumed``:
    the run's config.json and data, when it is resumed."""
    from pgm.data import load_dataset
    from pgm.inference.adversarial import train_gan

    if resumed is not None:  # the run's own settings; its epochs unless --epochs says
        saved, data = resumed
        seed, lr = saved["fit"]["seed"], saved["fit"]["lr"]
        epochs = saved["fit"]["epochs"] if args.epochs is None else args.epochs
    else:
        seed, lr, epochs = args.seed, args.lr, args.epochs  # epochs None: per data
        data = load_dataset(args.data, binarize=args.binarize or "none", seed=seed)
    settings = {} if lr is None else {"lr": lr}
    if args.arch is not None:  # conv: the DCGAN, with its own defaults; a resumed run
        settings["arch"] = {"conv": "dcgan", "mlp": "mlp"}[args.arch]  # refuses another arch
    from pgm.models.gan_figures import save_epoch_samples

    gan, history = train_gan(data, out, epochs=epochs, seed=seed, device=args.device,
                             resume=args.resume, progress=progress,
                             on_epoch=save_epoch_samples, log=logger, **settings)
    figures = gan.write_figures(out, data, history)
    _log_figures(logger, figures, history)
    print(f"trained {len(history)} epochs; D(real) {history[-1]['d_real']:.3f}, "
          f"D(fake) {history[-1]['d_fake']:.3f} (no loss says how good a GAN is: "
          f"look at {out / 'figures'}, or run `pgm evaluate {out}`)")
    print(f"run directory: {out}  ({len(figures)} figures)")
    return 0


def _build_model(args, data):
    """The model named on the command line, sized for ``data``."""
    from pgm.models import get_model_class

    cls = get_model_class(args.model)
    images = data.image_shape is not None
    scale = {} if args.likelihood_scale is None else {"likelihood_scale": args.likelihood_scale}
    if args.model == "gmm":
        likelihood = args.likelihood or ("bernoulli" if images else "gaussian")
        if likelihood == "bernoulli" and scale:
            raise PgmError("--likelihood-scale applies to Gaussian components; these are "
                           "Bernoulli (add --likelihood gaussian --binarize none)")
        return cls(cls.Config(data_dim=data.data_dim, components=args.components,
                              likelihood="gaussian" if likelihood != "bernoulli" else likelihood,
                              **({"min_scale": args.likelihood_scale} if scale else {})))
    if cls.name == "ppca":  # a fixed noise scale if one is given, else learned
        return cls(cls.Config(data_dim=data.data_dim, latent_dim=args.latent_dim,
                              sigma=args.likelihood_scale))
    if args.model == "vae2":  # Burda et al.'s sizes: 100-50 stochastic, 200/100 tanh units
        return cls(cls.Config(data_dim=data.data_dim, likelihood=args.likelihood or (
            "bernoulli" if images else "gaussian-learned")))
    extra = {}
    if args.model == "cvae":
        if data.y_train is None or data.n_classes is None:
            raise PgmError(f"the cvae needs labels; {data.name} has none (give a .npz with y)")
        extra = {"n_classes": data.n_classes, "prior": args.prior}
    likelihood = args.likelihood or ("bernoulli" if images else "gaussian-learned")
    if likelihood == "bernoulli" and scale:
        raise PgmError("--likelihood-scale applies to a Gaussian likelihood; this one is "
                       "Bernoulli (add --likelihood gaussian --binarize none)")
    return cls(cls.Config(
        data_dim=data.data_dim, latent_dim=args.latent_dim, hidden=args.hidden,
        activation=args.activation, arch=args.arch or "mlp", image_shape=data.image_shape,
        likelihood=likelihood, **scale, **extra))


def _sample(args) -> int:
    import numpy as np
    import pyro

    from pgm import io, plots

    run = io.load_run(args.run)
    if args.n < 1:
        raise PgmError(f"-n must be positive, got {args.n}")
    pyro.set_rng_seed(args.seed)
    out = Path(args.out or Path(args.run) / "figures" / f"samples-{args.n}.png")
    png, npy = out.with_suffix(".png"), out.with_suffix(".npy")
    run_dir = Path(args.run).resolve()
    inside = out.resolve().is_relative_to(run_dir)
    if inside and not out.resolve().is_relative_to(run_dir / "figures"):
        raise PgmError(f"--out {out} lies in the run's own files; pgm sample writes into a run "
                       f"only under {Path(args.run) / 'figures'}")
    x = run.model.sample(args.n)
    shape = run.config["data"].get("image_shape")
    drawn = plots.drawable(x.shape[-1], shape)
    with runlock.hold(args.run if inside else None, "pgm sample"):  # writes into the run
        if drawn:
            plots.save_figure(plots.samples(x, tuple(shape) if shape else None), png)
        buf = __import__("io").BytesIO()
        np.save(buf, x.numpy())
        io.atomic_write_bytes(npy, buf.getvalue())
    print(f"wrote {png} and {npy}" if drawn else
          f"wrote {npy} (points of {x.shape[-1]} coordinates: no figure)")
    return 0


def _progress_bars(enabled: bool | None):
    from tqdm.auto import tqdm

    bars: dict = {}

    def report(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=total, desc=stage, disable=enabled is False)
        bar = bars[stage]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return report


def _evaluate(args) -> int:
    from pgm import io

    io.read_config(args.run)  # one line, and no folder made, if no run is there
    with runlock.hold(args.run, "pgm evaluate"):  # one writer of RUN/eval at a time
        if not args.overwrite:  # before minutes of work, not after
            publish.check_absent(args.run)
        return _evaluate_run(args)


def _evaluate_run(args) -> int:
    from dataclasses import replace

    from pgm import io
    from pgm.device import resolve_device
    from pgm.evaluation import EvalConfig, evaluate, with_preset
    from pgm.report import table_rows, write_evaluation

    run = io.load_run(args.run)
    d = run.config["data"]
    data = _run_data(run.config)
    cfg = with_preset(EvalConfig(
        ks=args.k, n=args.n, split=args.split, batch_size=args.batch_size,
        prior_proposal=args.prior_proposal, ais_steps=args.ais_steps,
        ais_chains=args.ais_chains, ais_pilot_chains=args.ais_pilot_chains,
        ais_leapfrog=args.ais_leapfrog,
        ais_schedule=args.ais_schedule, ais_initial=args.ais_initial, ais_n=args.ais_n,
        bdmc=args.bdmc, gaps=args.gaps,
        gaps_n=args.gaps_n, exact=not args.no_exact, posterior_check=args.posterior_check,
        explicit_view=args.explicit_view, sample_quality=args.sample_quality,
        label_sum=not args.no_label_sum, seed=args.seed, device=args.device),
        args.preset)
    n_split = len(getattr(data, f"x_{cfg.split}"))
    if cfg.n > n_split:  # every datapoint there is; results.json records the n used
        print(f"note: --n {cfg.n} is more than the {n_split} datapoints of the {cfg.split} "
              f"split; evaluating all {n_split}", file=sys.stderr)
        cfg = replace(cfg, n=n_split)
    device = resolve_device(cfg.device)
    n_ais, world = min(cfg.ais_n, cfg.n), distributed.world_size()
    if distributed.is_main() and cfg.ais_steps and 0 < -(-n_ais // cfg.batch_size) < world:
        print(f"note: AIS's {n_ais} datapoints make fewer batches of {cfg.batch_size} than the "
              f"{world} ranks, so some ranks idle; a smaller --batch-size spreads them (values "
              "depend on --batch-size, not on the number of ranks)", file=sys.stderr)
    ev = evaluate(run.model, data, config=cfg, cache_dir=args.run, progress=_progress_bars(
        False if args.no_progress or not distributed.is_main() else None))
    if not distributed.is_main():
        return 0
    for flag, asked, prefix, needs in (
            ("--bdmc", cfg.bdmc, "bdmc_", "continuous latents and data it can simulate"),
            ("--gaps", cfg.gaps, "gap_", "continuous latents and a guide with a density")):
        if asked and not any(name.startswith(prefix) for name in ev.estimators):
            print(f"note: {flag} does not apply to this {run.config['model']} run (it needs "
                  f"{needs}): not run", file=sys.stderr)
    results = write_evaluation(args.run, ev, dataset=d["name"], device=str(device),
                               world_size=world, overwrite=args.overwrite)
    for s, row in zip(results["estimators"].values(), table_rows(results)):
        of = ("  (of log p(x | y))" if s.get("quantity") == "log p(x | y)"
              and not row[0].endswith("_given_y") else "")  # a CVAE's gaps and BDMC rows
        if "(value: " in row[1]:  # a diagnostic among the estimates (NUTS's R-hat)
            of = "  (" + row[1].split("(value: ", 1)[1]
        print(f"{row[0]:18s} {row[2]:>10s} ± {row[3]:<7s} n={row[4]:<5s} {row[5]:>7s} s{of}")
    for c in results["checks"]:
        if c["ok"] is False:
            print(f"warning: {c['lower']} > {c['upper']} by {c['diff_mean']:.3f} ± "
                  f"{c['diff_se']:.3f} nats", file=sys.stderr)
        elif c["ok"] is None:
            print(f"note: {c['lower']} > {c['upper']} by {c['diff_mean']:.3f} nats on one "
                  "datapoint, which has no standard error to judge it by", file=sys.stderr)
    print(f"best estimate of log p(x): {results['best']}"
          + (f"; of log p(x | y): {results['best_given_y']}" if "best_given_y" in results
             else ""))
    print(f"wrote {Path(args.run) / 'eval'}/results.json, report.md, report.html")
    return 0


def _report(args) -> int:
    from pgm import io, plots
    from pgm.report import comparison, comparison_figure, paired_differences, short_names
    from pgm.schema import read_results

    results = []
    for run in args.runs:
        path = publish.evaluation_dir(run) / "results.json"
        if not path.is_file():
            raise PgmError(f"{run} has no eval/results.json; run `pgm evaluate {run}` first")
        results.append(read_results(path))
    out = Path(args.out)
    if out.is_dir() or args.out.endswith(("/", os.sep)):  # a folder: the files go inside it
        out = out / "comparison"
    for path in (out.with_suffix(s) for s in (".png", ".md", ".html")):
        if path.is_dir():  # before any of the three is written
            raise PgmError(f"{path} is a folder; pass another --out")
    names = [r.get("label") or s for r, s in zip(results, short_names(args.runs))]
    paired = paired_differences(results, args.runs)
    figure = plots.save_figure(comparison_figure(results, paired, names), out.with_suffix(".png"))
    md, page = comparison(results, paired=paired, figure=figure, names=names, paths=args.runs)
    from pgm.representation import incommensurable

    for i, why in incommensurable(results).items():
        print(f"warning: {args.runs[i]}: numbers not comparable with {args.runs[0]}: "
              f"{'; '.join(why)}", file=sys.stderr)
    io.atomic_write_text(out.with_suffix(".md"), md)
    io.atomic_write_text(out.with_suffix(".html"), page)
    print(md)
    print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.html')} and {figure}")
    return 0


def _quickstart(args) -> int:
    import time

    from pgm.quickstart import finished, mark_finished, plan, write_report

    steps = plan(args.out, data=args.data, size=args.size, device=args.device, seed=args.seed,
                 progress=not args.no_progress)
    t_start = time.perf_counter()
    for i, step in enumerate(steps, 1):
        head = f"[{i}/{len(steps)}] {step.title}"
        if step.command() in finished(args.out):
            print(f"{head}: finished earlier, skipped")
            continue
        print(f"{head}\n  $ {step.command()}", flush=True)
        t0 = time.perf_counter()
        code = main(step.argv_now())
        if code:
            print(f"pgm quickstart: step {i} failed; run `pgm quickstart` again (with the same "
                  "options) to continue from there", file=sys.stderr)
            return code
        mark_finished(args.out, step)
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    paths = write_report(args.out, steps)
    print(f"quickstart done in {time.perf_counter() - t_start:.0f} s; open {paths[0]} "
          f"(also {paths[1].name}, {paths[2].name})")
    return 0


def _datasets(args) -> int:
    from pgm.data import available_datasets

    for name, text in available_datasets().items():
        print(f"{name:12s} {text}")
    print("\nFiles: a .npz (arrays x, optional y) or .npy file, or a folder of MNIST IDX files.")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings (e.g. a sigma on the edge of its grid) as one line, not a source dump."""
    print(f"warning: {message}", file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch scheduler's preemption or time limit), handled as Ctrl-C is:
    the writes in progress unwind, the run's lock is released, and the exit code is 143."""


def _terminate(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading
    import warnings

    warnings.showwarning = _show_warning
    # (only the main thread may set a handler; main() called from another thread keeps SIGTERM's)
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return _main(argv)
    finally:
        if main_thread:  # (None: a handler set outside Python, which SIG_DFL stands in for)
            signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)


def _interrupted_run(run_dir: Path | None) -> str:
    """What an interrupted ``pgm train`` left in ``run_dir``, and how to go on."""
    from pgm import io

    if run_dir is not None and (run_dir / io.CHECKPOINT).is_file():
        return "the last checkpoint is kept (continue with --resume)"
    if run_dir is not None and (run_dir / io.CONFIG).is_file():
        return "no epoch had finished, so there is no checkpoint (--resume starts the run again)"
    return "nothing was saved"


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    args.given = _given(argv) if args.command == "train" else set()
    handler = {"train": _train, "sample": _sample, "evaluate": _evaluate, "report": _report,
               "quickstart": _quickstart, "datasets": _datasets}[args.command]
    try:
        domains.check(args.command, args)
        if args.command in ("train", "evaluate"):
            distributed.init(args.device)
        return handler(args)
    except (PgmError, ValueError, RuntimeError) as e:
        rank = distributed.rank()
        if rank == 0 or not isinstance(e, PgmError | ValueError):  # those arise on every rank
            where = f" on rank {rank}" if rank else ""
            print(f"pgm {args.command}: error{where}: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only --out, a file where a folder should be, a full disk
        if distributed.rank() == 0:
            where = e.filename if e.filename is not None else ""
            print(f"pgm {args.command}: error: {e.strerror or e}"
                  + (f": {where}" if where else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        print("\n" + ("terminated" if terminated else "interrupted") + "; " + {
            "train": _interrupted_run(getattr(args, "run_dir", None)),
            "evaluate": "the previous evaluation, if any, is kept as it was"}.get(
                args.command, "nothing was left half-written"), file=sys.stderr)
        return 143 if terminated else 130
    finally:
        distributed.close()


if __name__ == "__main__":
    sys.exit(main())
