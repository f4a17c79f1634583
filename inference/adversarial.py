r"""``fit_gan()``: the adversarial training loop (Goodfellow et al. 2014, Algorithm 1).

The discriminator D and the generator G play

.. math::

    \min_G \max_D \; V(D, G) = \mathbb E_{x \sim p_{data}} \log D(x)
                              + \mathbb E_{z \sim p(z)} \log (1 - D(G(z))).

Each iteration takes ``k`` discriminator steps (each on a fresh real minibatch and fresh
fakes, ascending V) and then one generator step **with D fixed**: D's parameters have
``requires_grad`` switched off while G's loss is backpropagated, and only G's optimizer steps.
The D step generates its fakes under ``no_grad``, so it cannot touch G (tests/test_gan.py
checks both bitwise). Generator losses:

- ``"minimax"``: :math:`\mathbb E \log(1 - D(G(z)))`, the game's own term, which saturates
  when D rejects the fakes confidently (its gradient vanishes early in training);
- ``"non-saturating"`` (default): :math:`-\mathbb E \log D(G(z))`, the paper's practical
  alternative with the same fixed point and strong early gradients.

With ``loss="hinge"`` (Lim & Ye 2017; Miyato et al. 2018, with spectral norm) the game is
played on D's logit :math:`d(x)` instead: D minimises
:math:`\mathbb E\,\max(0, 1 - d(x)) + \mathbb E\,\max(0, 1 + d(G(z)))` and G minimises
:math:`-\mathbb E\, d(G(z))`; D stops pushing on samples it already places beyond the margin.
(``d_real`` and ``d_fake`` below stay :math:`\sigma(d)`, 1/2 at a logit of 0.)

Optional one-sided label smoothing (Salimans et al. 2016) trains D toward ``1 - s`` on real
data (fakes stay at 0). Both players use Adam with betas (0.5, 0.999) (Radford et al. 2016).
After each generator step the averaged generator of a GAN with ``ema`` > 0 is updated
(:meth:`pgm.models.gan.GAN.update_ema`); the eval-mode numbers below use it.

One epoch is one pass of the discriminator over the shuffled training data; G steps once
every k D steps. Per step the loop records D(real) and D(fake) (mean probabilities before the
step), D's accuracy (real > 1/2 and fake < 1/2), and both losses; history.csv holds their
per-epoch means, plus D on the validation data and on fixed fakes in eval mode at the epoch's
end (``d_valid``, ``d_gen``: at the game's equilibrium both are 1/2 and D's loss is 2 log 2),
``seconds``, the training pass's wall time, and ``save_seconds`` (the ``on_epoch`` work, such
as the sample grid). RUN/steps.csv keeps every step.

With ``out`` the run directory has the layout of :func:`pgm.fit` (config.json with model
"gan", model.safetensors, checkpoint.pt, history.csv) and, for 1-D data, snapshots.json: D(x),
the generator's density and the map z -> x at the start and every ``snapshot_every`` epochs,
the material of the paper's Fig. 1 (drawn by :mod:`pgm.models.gan_figures`). Per-epoch work
of the caller's -- such as :func:`pgm.models.gan_figures.save_epoch_samples`, a sample grid
every ``sample_every`` epochs from the same fixed z, so you can sit and watch the samples --
is an ``on_epoch`` callback that gets an :class:`EpochEnd`; the loop draws nothing itself. A
GAN has no validation likelihood to pick a "best" epoch, so model.safetensors holds the last
epoch's weights. ``resume=True`` continues to the result of an uninterrupted run (shuffling
is seeded by (seed, epoch); the RNG state, the optimizers and the logs are in the checkpoint,
the run's one commit point, and the weights and the CSV/JSON views of the logs are written
from it after it and again on resume). ``resume=True`` first checks that the model, data and
settings are those of config.json (only ``epochs`` and ``device`` may change; a change is
written into it). With
``lr_schedule="linear"`` the rates depend on ``epochs``, so only a resume with the same
``epochs`` repeats the uninterrupted run; a constant rate also continues exactly to more
epochs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

import pyro
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pgm import io, runlock, tracking
from pgm.config import from_dict, to_dict
from pgm.device import resolve_device
from pgm.errors import CheckpointError, TrainingDivergedError
from pgm.models.gan_records import (
    FIXED_Z,
    SNAPSHOTS,
    STEP_KEYS,
    STEPS,
    noise_generator,
    save_snapshots,
    snapshot_1d,
    snapshot_grid,
    write_steps,
)

from .svi import _epoch_generator

GENERATOR_LOSSES = ("non-saturating", "minimax")
#: A loss beyond this is an exploded run: a cross-entropy this large means logits of this size.
LOSS_LIMIT = 1e6
LR_SCHEDULES = ("constant", "linear")
LOSSES = ("cross-entropy", "hinge")


@dataclass
class GANFitConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-4  # generator (and discriminator unless lr_d is set)
    lr_d: float | None = None
    lr_schedule: str = "constant"  # or "linear": both rates fall linearly to 0 at the last epoch
    beta1: float = 0.5
    beta2: float = 0.999
    k: int = 1  # discriminator steps per generator step
    loss: str = "cross-entropy"  # the game V(D, G) of the paper, or "hinge"
    generator_loss: str = "non-saturating"  # or "minimax" (the cross-entropy game's G)
    label_smoothing: float = 0.0  # one-sided: D's target on real data is 1 - label_smoothing
    sample_every: int = 5  # epochs between sample grids in RUN/figures (the last is always drawn)
    snapshot_every: int = 1  # 1-D data: epochs between snapshots of D, p_g and z -> x
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.generator_loss not in GENERATOR_LOSSES:
            raise ValueError(f"unknown generator_loss {self.generator_loss!r}; "
                             f"known: {', '.join(GENERATOR_LOSSES)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.loss == "hinge" and (self.label_smoothing
                                     or self.generator_loss != "non-saturating"):
            raise ValueError("label_smoothing and generator_loss belong to the cross-entropy "
                             "loss; the hinge loss has its own margin and generator loss")
        if self.epochs < 1 or self.batch_size < 1 or self.k < 1 or not self.lr > 0:
            raise ValueError("epochs, batch_size, k and lr must be positive")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; "
                             f"known: {', '.join(LR_SCHEDULES)}")
        if self.lr_d is not None and not self.lr_d > 0:
            raise ValueError(f"lr_d must be positive, got {self.lr_d}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must lie in [0, 0.5), got {self.label_smoothing}")
        if self.sample_every < 0 or self.snapshot_every < 0:
            raise ValueError("sample_every and snapshot_every must be >= 0 (0: off)")


# ----------------------------------------------------------------------------- the two steps


def discriminator_step(gan, opt_d: torch.optim.Optimizer, x_real: torch.Tensor, *,
                       label_smoothing: float = 0.0, loss: str = "cross-entropy") -> torch.Tensor:
    """One ascent step of D on V (or a descent on the hinge loss) with fresh fakes; G is
    untouched (fakes under no_grad).

    Returns the detached stats ``[d_loss, d_real, d_fake, d_accuracy]`` (a (4,) tensor, no sync).
    """
    with torch.no_grad():
        x_fake = gan.generate(gan.sample_z(len(x_real)))
    # one pass over both (D has no batch norm: it scores each row on its own): one power
    # iteration of its spectral norm per D step where two passes ran two; 0.86x the time
    logit_real, logit_fake = gan.discriminate(torch.cat([x_real, x_fake])).split(
        [len(x_real), len(x_fake)])
    if loss == "hinge":
        value = F.relu(1 - logit_real).mean() + F.relu(1 + logit_fake).mean()
    elif loss == "cross-entropy":
        target = 1.0 - label_smoothing
        # -[t log D(x) + (1 - t) log(1 - D(x))] - log(1 - D(G(z))), log D = -softplus(-logit)
        value = (target * F.softplus(-logit_real) + (1 - target) * F.softplus(logit_real)).mean() \
            + F.softplus(logit_fake).mean()
    else:
        raise ValueError(f"unknown loss {loss!r}")
    opt_d.zero_grad(set_to_none=True)
    value.backward()
    opt_d.step()
    with torch.no_grad():
        p_real, p_fake = torch.sigmoid(logit_real), torch.sigmoid(logit_fake)
        acc = 0.5 * ((p_real > 0.5).float().mean() + (p_fake < 0.5).float().mean())
        return torch.stack([value.detach(), p_real.mean(), p_fake.mean(), acc])


def generator_step(gan, opt_g: torch.optim.Optimizer, batch_size: int, *,
                   generator_loss: str = "non-saturating",
                   loss: str = "cross-entropy") -> torch.Tensor:
    """One descent step of G with D fixed (its parameters frozen); returns the detached loss."""
    gan.discriminator.requires_grad_(False)
    try:
        logit_fake = gan.discriminate(gan.generate(gan.sample_z(batch_size)))
        if loss == "hinge":
            value = -logit_fake.mean()
        elif loss != "cross-entropy":
            raise ValueError(f"unknown loss {loss!r}")
        elif generator_loss == "non-saturating":
            value = F.softplus(-logit_fake).mean()  # -log D(G(z))
        elif generator_loss == "minimax":
            value = -F.softplus(logit_fake).mean()  # log(1 - D(G(z)))
        else:
            raise ValueError(f"unknown generator_loss {generator_loss!r}")
        opt_g.zero_grad(set_to_none=True)
        value.backward()
        opt_g.step()
    finally:
        gan.discriminator.requires_grad_(True)
    return value.detach()


def _adam(params, lr: float, betas) -> torch.optim.Adam:
    """Adam, with torch's fused kernel where the parameters' device has one (the CPU's since
    torch 2.4: a GAN training step 0.89x the loop's time, one thread), else the loop."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=betas)


def make_optimizers(gan, cfg: GANFitConfig):
    betas = (cfg.beta1, cfg.beta2)
    opt_g = _adam(gan.generator.parameters(), cfg.lr, betas)
    opt_d = _adam(gan.discriminator.parameters(), cfg.lr if cfg.lr_d is None else cfg.lr_d,
                  betas)
    return opt_g, opt_d


# ----------------------------------------------------------------------------- 1-D snapshots


# ----------------------------------------------------------------------------- the loop


def _write_views(out: Path, weights: dict, history: list[dict], steps: list[list],
                 x_grid: torch.Tensor, snapshots: list[dict]) -> None:
    """model.safetensors, history.csv, steps.csv and (1-D data) snapshots.json: views of the
    checkpoint, written after it and again on resume, never read back by training."""
    io.save_weights(weights, out / io.WEIGHTS)
    io.write_history(out / io.HISTORY, history)
    write_steps(out / STEPS, steps)
    if snapshots:
        save_snapshots(out / SNAPSHOTS, x_grid, snapshots)


class EpochEnd(NamedTuple):
    """What :func:`fit_gan`'s ``on_epoch`` callback gets at the end of each epoch."""

    gan: torch.nn.Module
    epoch: int  # 1-based
    due: bool  # a sample grid is due (every ``sample_every`` epochs, and at the last)
    out: Path | None
    data: object
    z_fixed: torch.Tensor  # the same noise every epoch
    x_grid: torch.Tensor | None  # 1-D data: where the snapshots are taken
    snapshot: dict | None  # 1-D data: this epoch's snapshot, if one was taken


def fit_gan(gan, data, config: GANFitConfig | None = None, *, out: str | Path | None = None,
            resume: bool = False, progress: bool | None = None,
            on_epoch: Callable[[EpochEnd], None] | None = None, log=None,
            **overrides) -> list[dict]:
    """Train ``gan`` adversarially on ``data.x_train``; return the history rows (one per epoch).

    ``fit_gan(gan, data, epochs=5, k=2)`` overrides fields of :class:`GANFitConfig`. With ``out``
    the run directory gets config, weights, checkpoint, history, steps and sample grids each
    epoch; ``resume=True`` continues the run found there. For 1-D data the snapshots are also
    left on ``gan.snapshots`` as ``(x_grid, [snapshot, ...])``. ``on_epoch(EpochEnd)`` is
    called at the end of every epoch, before the weights are saved. ``log``: experiment
    tracking of the config and each history row, as in :func:`pgm.fit`. While it writes
    ``out`` it holds the run's lock (:mod:`pgm.runlock`), as :func:`pgm.fit` does.
    """
    cfg = config or GANFitConfig()
    cfg = replace(cfg, **overrides) if overrides else cfg
    with runlock.hold(out, "pgm.fit_gan"), tracking.opened(log, out, resume=resume) as logger:
        return _fit_gan(gan, data, cfg, out=out, resume=resume, progress=progress,
                        on_epoch=on_epoch, log=logger)


def _fit_gan(gan, data, cfg: GANFitConfig, *, out, resume, progress, on_epoch,
             log) -> list[dict]:
    device = resolve_device(cfg.device)
    out = Path(out) if out is not None else None
    x_train, x_valid = data.x_train.to(device), data.x_valid.to(device)
    gan.check_data(x_train, "training data")
    if len(x_valid):
        gan.check_data(x_valid, "validation data")
    gan.to(device).train()
    opt_g, opt_d = make_optimizers(gan, cfg)
    one_d = gan.data_dim == 1
    history: list[dict] = []
    steps: list[list] = []
    snapshots: list[dict] = []
    start_epoch = 0

    if out is not None and resume:  # before any file is touched
        config = io.run_config(gan, data, cfg, device, trainer="adversarial")
        io.check_same_run(out, config)
    if out is not None and resume and io.check_resumable(out):
        io.record_resumed_settings(out, config)
        ckpt = io.resume_checkpoint(out, device)
        io._load_state_dict(gan, ckpt["model"], out / io.CHECKPOINT)
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        start_epoch = ckpt["epoch"]
        history = list(ckpt["history"])
        steps = [[int(r[0]), int(r[1]), *r[2:]] for r in ckpt["steps"].tolist()]
        x_grid, snapshots = ckpt["x_grid"], list(ckpt["snapshots"])
        # a kill may have come between the checkpoint and its views
        _write_views(out, ckpt["model"], history, steps, x_grid, snapshots)
    else:  # a new run, or one resumed that was killed before its first checkpoint
        if not resume:
            io.refuse_existing_run(out)
        pyro.set_rng_seed(cfg.seed)
        x_grid = snapshot_grid(gan, data.x_train, cfg.seed) if one_d else torch.zeros(0)
        if one_d:
            snapshots.append(snapshot_1d(gan, x_grid, 0, cfg.seed))
        config = io.run_config(gan, data, cfg, device, trainer="adversarial")
        if out is not None:
            io.atomic_write_json(out / io.CONFIG, config)
        if log is not None:
            log.log_params(config)

    z_fixed = gan.sample_z(64, noise_generator(cfg.seed, FIXED_Z))
    z_eval = gan.sample_z(max(len(x_valid), 1), noise_generator(cfg.seed, FIXED_Z + 10))
    n = len(x_train)
    bar = tqdm(range(start_epoch, cfg.epochs), initial=start_epoch, total=cfg.epochs,
               desc="fit gan", unit="epoch",
               disable=None if progress is None else not progress)
    for epoch in bar:
        factor = 1 - epoch / cfg.epochs if cfg.lr_schedule == "linear" else 1.0
        for opt, lr in ((opt_g, cfg.lr), (opt_d, cfg.lr if cfg.lr_d is None else cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * factor
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=_epoch_generator(cfg.seed, epoch)).to(device)
        n_steps = math.ceil(n / cfg.batch_size)
        stats = torch.full((n_steps, len(STEP_KEYS)), math.nan, device=device)
        for j in range(n_steps):
            xb = x_train[perm[j * cfg.batch_size:(j + 1) * cfg.batch_size]]
            stats[j, :4] = discriminator_step(gan, opt_d, xb, label_smoothing=cfg.label_smoothing,
                                              loss=cfg.loss)
            if (epoch * n_steps + j + 1) % cfg.k == 0:  # k D steps per G step, across epochs
                stats[j, 4] = generator_step(gan, opt_g, cfg.batch_size,
                                             generator_loss=cfg.generator_loss, loss=cfg.loss)
                gan.update_ema()
        stats = stats.cpu()  # one sync per epoch, so seconds is honest on a GPU
        seconds = time.perf_counter() - t0
        g_steps = (epoch * n_steps + torch.arange(1, n_steps + 1)) % cfg.k == 0  # (n_steps,)
        means = {key: stats[:, i].mean().item() for i, key in enumerate(STEP_KEYS[:4])}
        means["g_loss"] = stats[g_steps, 4].mean().item() if g_steps.any() else math.nan
        used = torch.cat([stats[:, :4].flatten(), stats[g_steps, 4]])
        if not (torch.isfinite(used).all() and (used.abs() < LOSS_LIMIT).all()):
            where = f"; the last good checkpoint is kept in {out}" if out is not None else ""
            raise TrainingDivergedError(
                f"the GAN's losses exploded in epoch {epoch + 1} (largest "
                f"{used.abs().nan_to_num(math.inf).max().item():.3g}, limit {LOSS_LIMIT:g}){where}."
                " Try a smaller --lr or label smoothing, or check the data")

        with torch.no_grad():
            gan.eval()
            d_valid = torch.sigmoid(gan.discriminate(x_valid)).mean().item() \
                if len(x_valid) else math.nan
            d_gen = torch.sigmoid(gan.discriminate(gan.generate(z_eval))).mean().item()
            gan.train()
        if one_d and cfg.snapshot_every and ((epoch + 1) % cfg.snapshot_every == 0
                                             or epoch + 1 == cfg.epochs):
            snapshots.append(snapshot_1d(gan, x_grid, epoch + 1, cfg.seed))
        steps += [[epoch + 1, j + 1, *row] for j, row in enumerate(stats.tolist())]

        t2 = time.perf_counter()
        row = {"epoch": epoch + 1, **means, "d_valid": d_valid, "d_gen": d_gen,
               "lr": opt_g.param_groups[0]["lr"], "lr_d": opt_d.param_groups[0]["lr"],
               "seconds": seconds, "save_seconds": 0.0}
        if log is not None:  # before the checkpoint: a resumed run repeats an unsaved epoch
            log.log_metrics({k: v for k, v in row.items()
                             if k not in ("epoch", "save_seconds")}, epoch + 1)
        if on_epoch is not None:
            due = epoch + 1 == cfg.epochs or bool(cfg.sample_every
                                                  and (epoch + 1) % cfg.sample_every == 0)
            on_epoch(EpochEnd(gan, epoch + 1, due, out, data, z_fixed, x_grid,
                              snapshots[-1] if one_d else None))
        if out is not None:
            row["save_seconds"] = time.perf_counter() - t2  # the sample grid
            # The checkpoint commits the epoch, the logs included; the files written after it
            # are views of it, written again on resume, so a kill anywhere resumes exactly.
            state = {"format": io.RUN_FORMAT, "epoch": epoch + 1, "model": gan.state_dict(),
                     "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                     "rng_cpu": torch.get_rng_state(), "fit_config": to_dict(cfg),
                     "history": [*history, row], "steps": torch.tensor(steps, dtype=torch.float64),
                     "x_grid": x_grid, "snapshots": snapshots}
            if device.type == "cuda":
                state["rng_cuda"] = torch.cuda.get_rng_state(device)
            io.save_checkpoint(state, out / io.CHECKPOINT)
            _write_views(out, gan.state_dict(), [*history, row], steps, x_grid, snapshots)
        history.append(row)
        bar.set_postfix(d_real=f"{means['d_real']:.2f}", d_fake=f"{means['d_fake']:.2f}")
    if one_d:
        gan.snapshots = (x_grid, snapshots)
    gan.eval()
    return history


# ----------------------------------------------------------------------------- entry point


def gan_settings_for(data, arch: str = "mlp") -> dict:
    """Default settings (model and training) for ``data`` and the architecture ``arch``.

    1-D data, the paper's toy: 1-D uniform z, G with two hidden layers of 32, D with two of 64,
    D on standardised data, and two time-scales (Heusel et al. 2017): lr 5e-4 for G, 2e-3 for D,
    both decayed linearly to 0. With one learning rate, or a D as small as G, the generator's
    mean is learnt but its spread is not (D sees too little of it; over seeds its std missed
    the data's by up to 40%); with these settings, over seeds 0-9 at 40 epochs, the mean was
    within 0.061 and the std within 0.059 of the data's (sd 0.5), and D ended at 0.51 on
    validation data and 0.49 on samples; 40 epochs.

    Images in [0, 1], ``arch="mlp"`` (the quickstart's): a 64-D normal z; **G five layers deep and
    narrow** (hidden 32, 64, 128, 256, 512) with **batch norm** after each hidden layer
    (``g_batchnorm``) and its last layer **at half resolution** (``g_upsample`` 2: 14x14
    pre-activations upsampled bilinearly, so no pixel is drawn on its own); **an averaged G**
    (``ema`` 0.999) for everything in eval mode; D 512-256 with leaky ReLUs, dropout 0.3 and
    **spectral normalisation**, and beside it **a coarse D** (``d_coarse`` 256-128, the same kind of
    MLP on the image average-pooled 2x2, which sees the digit's shape rather than its strokes), the
    two logits summed; the tanh output with D on 2x - 1 (:mod:`pgm.models.gan`: with a plain sigmoid
    on uncentred pixels it collapsed to one image); one-sided label smoothing 0.1; **two
    time-scales** (Heusel et al. 2017: lr 3e-4 for G, 6e-4 for D), **constant**, for **1200
    epochs**. On mnist5k (10,000 samples under the feature classifier; :mod:`pgm.mode_coverage`;
    test images: 0.79, 1.86, 78%), seeds 0, 1 and 2: rarest/most common class 0.62, 0.62 and 0.66,
    Fréchet distance in its features 1.12, 1.04 and 0.80, 76.0%, 76.2% and 76.8% of the samples
    labelled with p ≥ 0.9; the rates decaying linearly to 0 over the 1200 epochs: 75.2%, 75.1% and
    74.5% for seeds 0, 1 and 2, and over 600 epochs (the default before) 72.9%, 72.2% and 72.5%
    (classes 0.70, 0.64, 0.62; Fréchet 0.63, 0.72, 0.74; D alone: 71.0%, 71.7%, 71.3%). A decay to 0
    over a short run costs most: 200 epochs at the constant rate label 70.9% and 71.8% (seeds 0 and
    1) against 66% decaying over them. By eye about seven digits in eight readable (seed 0's grid of
    64 at 1200 epochs). A training step costs 1.10x D alone's; the 1200 epochs take about 25 minutes
    on one core (0.70x the step's time before pgm's fixed image maps, dropout masks, fused Adam and
    one D pass per D step: ``bench/gan_step.py``). D is not used at evaluation: an AIS step's G work
    (a value and gradient on 800 latents) is about 13 ms on one thread (0.52x with
    ``F.interpolate``'s upsampling).

    ``arch="dcgan"`` (``pgm train gan --arch conv``; Radford et al. 2016): **a wide G**
    (``g_wide``: a Linear to 256 maps of 7x7, a stride-1 3x3 transposed convolution to 128, two
    stride-2 ones to 64 maps of 14x14 and to the image; batch norm after each but the last),
    **a D with two views** of each image, their logits summed (two stride-2 convolutions, 64 and
    128 channels, dropout 0.3; beside them the MLP GAN's D, ``d_mlp_branch``), no spectral norm
    in the conv D, one lr 2e-4, **constant**, the same average and label smoothing, 200 epochs.
    Seeds 0, 1 and 2: 0.68, 0.69 and 0.70, Fréchet 1.24, 1.29 and 1.37, 60.3%, 60.6% and 59.6%
    labelled with p ≥ 0.9 (seed 0 at 300 epochs: 0.60, 1.41, 62.2%);
    with the rate decaying linearly to 0 over the 200 epochs (the default before), seeds 0, 1
    and 2: 0.77, 0.72 and 0.69, Fréchet 1.34, 1.38 and 1.12, 56% each. Smooth, crisp strokes,
    about three digits in four readable (seeds 1 and 2); 44-56 minutes on one core, and
    about 75x the MLP GAN's G work per AIS step (945 against 12.5 ms, alternated on one
    thread), so the quickstart keeps the MLP GAN.

    How each of these settings was found, and what was tried beside it and not kept (the
    runs, seeds and figures): docs/gan-tuning.md.

    Other real data: a small MLP GAN with D on standardised data, 30 epochs. ``epochs`` is
    returned with the other settings.
    """
    x = data.x_train
    standardise = {"output": "identity", "data_loc": tuple(x.mean(0).tolist()),
                   "data_scale": tuple(x.std(0).clamp_min(1e-6).tolist())}
    if data.data_dim == 1:
        return {"latent_dim": 1, "hidden": (32, 32), "d_hidden": (64, 64), "z_dist": "uniform",
                "activation": "relu", "d_dropout": 0.0, **standardise,
                "lr": 5e-4, "lr_d": 2e-3, "lr_schedule": "linear", "epochs": 40}
    if data.image_shape is not None and x.min() >= 0 and x.max() <= 1:
        images = {"image_shape": data.image_shape, "output": "sigmoid", "ema": 0.999,
                  "label_smoothing": 0.1, "lr": 2e-4, "lr_schedule": "constant"}
        if arch == "dcgan":
            return {**images, "arch": "dcgan", "channels": 64, "spectral_norm": False,
                    "d_dropout": 0.3, "d_mlp_branch": (512, 256), "g_wide": True,
                    "epochs": 200}
        # both halve the image's sides: images with an odd side get neither
        halves = ({"d_coarse": (256, 128), "g_upsample": 2}
                  if all(side % 2 == 0 for side in data.image_shape) else {})
        return {**images, "hidden": (32, 64, 128, 256, 512), "d_hidden": (512, 256),
                "spectral_norm": True, "lr": 3e-4, "lr_d": 6e-4, "g_batchnorm": True,
                **halves, "epochs": 1200}
    return {"image_shape": data.image_shape, "latent_dim": min(8, max(2, data.data_dim)),
            "hidden": (128, 128), "d_dropout": 0.0, **standardise, "epochs": 30}


def train_gan(data, out: str | Path | None = None, *, epochs: int | None = None, seed: int = 0,
              device: str = "auto", resume: bool = False, progress: bool | None = None,
              on_epoch: Callable[[EpochEnd], None] | None = None, log=None, **settings):
    """Build a GAN for ``data`` and train it; return ``(gan, history)``.

    ``settings`` are fields of :class:`pgm.models.gan.GANConfig` (``latent_dim``, ``hidden``,
    ``arch``, ``z_dist``, ...; ``data_dim`` and ``image_shape`` come from the data) and of
    :class:`GANFitConfig` (``lr``, ``k``, ``generator_loss``, ``label_smoothing``, ...); an
    unknown name is a ValueError. Unset model fields get :func:`gan_settings_for`'s defaults.
    ``resume=True`` rebuilds the model from ``out``/config.json (unset fields take the run's
    values, whatever today's defaults) and refuses other settings. ``epochs=None`` takes
    :func:`gan_settings_for`'s number for the data (the run's own on resume). ``log``: experiment
    tracking, as in :func:`pgm.fit`.
    """
    from pgm.models.gan import GAN, GANConfig

    model_keys = {f.name for f in fields(GANConfig)} - {"data_dim"}
    fit_keys = {f.name for f in fields(GANFitConfig)} - {"epochs", "seed", "device"}
    unknown = sorted(set(settings) - model_keys - fit_keys)
    if unknown:
        raise ValueError(f"unknown GAN option(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(model_keys | fit_keys))}")
    defaults, saved = gan_settings_for(data, settings.get("arch", "mlp")), None
    if resume and out is not None and (Path(out) / io.CONFIG).is_file():
        # the run's own settings, not today's defaults (which may have changed since it
        # started); a setting passed here is still compared with the run's below
        saved = io.read_config(out)
        if saved.get("model") == GAN.name:
            defaults = {**to_dict(from_dict(GANConfig, saved["model_config"])),
                        **to_dict(from_dict(GANFitConfig, saved["fit"]))}
            defaults = {k: v for k, v in defaults.items()
                        if k in model_keys | fit_keys | {"epochs"}}
    if settings.get("loss") == "hinge":  # label smoothing belongs to the cross-entropy game
        defaults.pop("label_smoothing", None)
    settings = {**defaults, **settings}
    default_epochs = settings.pop("epochs")
    model_kw = {k: v for k, v in settings.items() if k in model_keys}
    for key in ("hidden", "d_hidden", "d_mlp_branch", "d_coarse", "image_shape", "data_loc",
                "data_scale"):
        if model_kw.get(key) is not None:
            model_kw[key] = tuple(model_kw[key])
    if model_kw.get("output") == "sigmoid":
        model_kw.pop("data_loc", None), model_kw.pop("data_scale", None)
    model_cfg = GANConfig(data_dim=data.data_dim, **model_kw)
    fit_kw = {k: v for k, v in settings.items() if k in fit_keys}
    fit_kw["epochs"] = epochs if epochs is not None else default_epochs
    cfg = GANFitConfig(seed=seed, device=device, **fit_kw)
    if resume and out is not None:
        saved = saved or io.read_config(out)  # (no config.json: its error, naming the file)
        saved_model = from_dict(GANConfig, saved["model_config"])
        if saved.get("model") != GAN.name or saved_model != model_cfg:
            raise CheckpointError(f"{out} holds a different model; resume with the same options")
    torch.manual_seed(seed)  # the initial weights
    gan = GAN(model_cfg)
    history = fit_gan(gan, data, cfg, out=out, resume=resume, progress=progress,
                      on_epoch=on_epoch, log=log)
    return gan, history
