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
settings are those of config.json (only ``epochs`` and ``device`` may change). With
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
    generator_loss: str = "non-saturating"  # or "minimax"
    label_smoothing: float = 0.0  # one-sided: D's target on real data is 1 - label_smoothing
    sample_every: int = 5  # epochs between sample grids in RUN/figures (the last is always drawn)
    snapshot_every: int = 1  # 1-D data: epochs between snapshots of D, p_g and z -> x
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.generator_loss not in GENERATOR_LOSSES:
            raise ValueError(f"unknown generator_loss {self.generator_loss!r}; "
                             f"known: {', '.join(GENERATOR_LOSSES)}")
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
                       label_smoothing: float = 0.0) -> torch.Tensor:
    """One ascent step of D on V with fresh fakes; G is untouched (fakes under no_grad).

    Returns the detached stats ``[d_loss, d_real, d_fake, d_accuracy]`` (a (4,) tensor, no sync).
    """
    with torch.no_grad():
        x_fake = gan.generate(gan.sample_z(len(x_real)))
    logit_real, logit_fake = gan.discriminate(x_real), gan.discriminate(x_fake)  # (B,), (B,)
    target = 1.0 - label_smoothing
    # -[t log D(x) + (1 - t) log(1 - D(x))] - log(1 - D(G(z))), with log D = -softplus(-logit)
    loss = (target * F.softplus(-logit_real) + (1 - target) * F.softplus(logit_real)).mean() \
        + F.softplus(logit_fake).mean()
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    with torch.no_grad():
        p_real, p_fake = torch.sigmoid(logit_real), torch.sigmoid(logit_fake)
        acc = 0.5 * ((p_real > 0.5).float().mean() + (p_fake < 0.5).float().mean())
        return torch.stack([loss.detach(), p_real.mean(), p_fake.mean(), acc])


def generator_step(gan, opt_g: torch.optim.Optimizer, batch_size: int, *,
                   generator_loss: str = "non-saturating") -> torch.Tensor:
    """One descent step of G with D fixed (its parameters frozen); returns the detached loss."""
    gan.discriminator.requires_grad_(False)
    try:
        logit_fake = gan.discriminate(gan.generate(gan.sample_z(batch_size)))
        if generator_loss == "non-saturating":
            loss = F.softplus(-logit_fake).mean()  # -log D(G(z))
        elif generator_loss == "minimax":
            loss = -F.softplus(logit_fake).mean()  # log(1 - D(G(z)))
        else:
            raise ValueError(f"unknown generator_loss {generator_loss!r}")
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
    finally:
        gan.discriminator.requires_grad_(True)
    return loss.detach()


def make_optimizers(gan, cfg: GANFitConfig):
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=cfg.lr, betas=betas)
    opt_d = torch.optim.Adam(gan.discriminator.parameters(),
                             lr=cfg.lr if cfg.lr_d is None else cfg.lr_d, betas=betas)
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
        io.check_same_run(out, io.run_config(gan, data, cfg, device, trainer="adversarial"))
    if out is not None and resume and io.check_resumable(out):
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
            stats[j, :4] = discriminator_step(gan, opt_d, xb, label_smoothing=cfg.label_smoothing)
            if (epoch * n_steps + j + 1) % cfg.k == 0:  # k D steps per G step, across epochs
                stats[j, 4] = generator_step(gan, opt_g, cfg.batch_size,
                                             generator_loss=cfg.generator_loss)
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
    validation data and 0.49 on samples; 40 epochs. Images in [0, 1]: GANConfig's defaults
    (an MLP GAN, 64-D normal z, leaky ReLUs, dropout 0.3 in D, sigmoid output), one-sided label
    smoothing 0.1, a linearly decaying lr (on mnist5k these kept the samples varied where a
    plain sigmoid/uncentred setting collapsed to one image; see :mod:`pgm.models.gan`), an
    averaged generator (``ema`` 0.999), **spectral normalisation in D**, **two
    time-scales** (lr 3e-4 for G, 6e-4 for D), **batch norm in G** (``g_batchnorm``) and
    **G drawing at half resolution** (``g_upsample`` 2), **a deep, narrow G** (hidden 32, 64,
    128, 256, 512; D kept at 512, 256), **600 epochs**.

    Measured on mnist5k (seed 0, 100 epochs; :mod:`pgm.mode_coverage`: the class histogram of
    10,000 samples under the feature classifier, rarest/most common class, test set 0.79;
    Fréchet distance in its features, test set 1.86): without spectral norm and with one lr
    (the previous default) the ratio was 0.025 (57 zeros in 10,000) and the Fréchet distance
    95, the samples speckled blots; spectral norm alone: 0.23 and 30, smoother but blobby
    strokes; spectral norm and lr_d 6e-4: 0.42 and 13.7 (seed 1: 0.41 and 19.6), every digit
    drawn, about half of them cleanly, the rest with broken or blotted strokes; spectral norm
    with batch 32 (twice the G steps, one lr): 0.32 and 26.9. **300 epochs** (23,400 steps;
    the default since): 0.82 and 3.6 (seed 1: 0.65 and 7.2), every digit about as often as in
    the test set; 200 epochs: 0.52 and 10.6. The strokes stay speckled and, for seed 1, often
    blotted: an MLP generator draws each pixel on its own, and the classifier's features do
    not see the speckle. Spectral norm makes an epoch 1.33x as long (1.73 s against 1.30 s on
    one thread) and costs nothing at evaluation: G is unchanged, so an AIS step costs what it
    did.

    **Batch norm after each hidden layer of G** (``g_batchnorm``) **and a G that draws at half
    resolution** (``g_upsample`` 2: its last Linear gives 14x14 pre-activations, upsampled
    bilinearly to 28x28 before the tanh, so neighbouring pixels share them and no pixel is
    drawn on its own), the defaults since. Seeds 0 and 1, 300 epochs: classes 0.69 and 0.65,
    Fréchet 0.57 and 1.10, 56% of the samples labelled with p ≥ 0.9 in each (the DCGAN's
    share; test images 78%), smooth strokes without speckle, about two digits in three
    readable; the seed-0 run built its G by swapping the last Linear after the fact, so its
    initial weights differ from the library's construction (seed 1 is the library's own).
    Without either: 0.82 and 0.65, Fréchet 3.4 and 7.2, 48% (seed 0), speckled and often
    blotted strokes, about a third readable. Batch norm alone: 0.67 and 0.75, Fréchet 1.06
    and 1.01, 52% and 53%, fewer blots, about half readable, still speckled. Over training
    (seed 1): 0.74, 0.64, 0.65 and Fréchet 1.34, 1.15, 1.10 at epochs 100, 200, 300 (54%
    surely labelled at 200). Shorter schedules (the lr decays to 0 at the last epoch; seed
    0): 100 epochs 0.64, Fréchet 1.66, 44%, the strokes smooth but often broken (batch norm
    alone: 0.65 and 0.63, Fréchet 3.4 and 2.7, 40% and 42%; neither: 0.42 and 0.41, 12.4
    and 18.7, 43% and 39%); 200 epochs 0.67, Fréchet 1.0, 51%, about half readable (the
    quickstart's). A training step costs the same (0.97x the plain G's, six interleaved runs of
    20 steps, one thread). At evaluation the batch norm is a fixed affine map; a value and
    gradient of G on 800 latents (an AIS step's generator work) takes 1.28x the plain G's
    (23.0 and 23.6 against 17.9 and 18.5 ms; two runs of 40 interleaved steps, one thread;
    batch norm alone 1.10x), about 40x less than the wide DCGAN's G. Tried and not kept (seed
    0, 100 epochs, batch norm in G): the two-view D of the DCGAN (a 32-channel conv D beside
    the MLP D; 3.2x the time per epoch) and the conv D alone both dropped digits (classes 0.00
    and 0.01 at 75 epochs, mostly ones, sevens and nines, with smooth strokes). Small DCGANs
    for the quickstart's budget (the wide G and two-view D with 16 or 32 channels, 2.4x and
    5x the MLP GAN's time per epoch): 16 channels at 100 epochs 0.48, Fréchet 4.6, 37%; 32
    channels stopped at 50 (0.58, 4.4, 39%); both grids as blotted as the MLP GAN's.

    **A deep, narrow G** (``hidden`` 64, 128, 256, 512 where it was 256, 512; D kept at 512,
    256, which ``d_hidden``'s default, the reverse of G's, no longer gives), the default since:
    depth, not width, is what moved the share of samples the classifier labels surely. Seeds 0,
    1 and 2, 300 epochs: classes 0.64, 0.69 and 0.69, Fréchet 0.79, 0.92 and 0.92, 63.5%, 63.7%
    and 63.3% labelled with p ≥ 0.9 (the two-layer G's 56% and 56% for seeds 0 and 1); at epoch
    200 of the same runs 62.0%, 61.8% and 62.6% (54% for the two-layer G, seed 1). Over G's
    sizes (seed 1, 300 epochs, p ≥ 0.9 / classes / Fréchet): (256, 1024) 57% / 0.66 / 0.74
    (width alone: no gain); (128, 256, 512) 59% / 0.69 / 0.79 (seed 0: 60%); (256, 512, 512) 59%
    / 0.71 / 0.70; (256, 512, 1024) 62% / 0.75 / 0.62 (seed 0: 62%), at 1.8x the AIS step's G
    work and 1.28x the training step; (32, 64, 128, 256, 512) 66% / 0.60 / 0.78, the rarest
    digit rarer (test images 0.79). Cost of the default, interleaved on one thread against the
    two-layer G: a value and gradient on 800 latents 1.08x (24.3 against 22.5 ms), a training
    step 1.03x (22.3 against 21.5 ms). By eye about six digits in ten readable, fewer broken
    strokes; the rest still malformed. A deep D as well (512, 256, 128, 64): 63%; dropout 0.5 in
    D: 60%; an average with ema 0.9999 broke (Fréchet 414 at epoch 100). Other changes that did
    not move the two-layer G (seed 1, 300 epochs): a 7x7 output upsampled 4x (blobby, digits
    dropped: classes 0.18), differentiable augmentation in D (translation and cutout, 49%), a
    wide D (1024, 512, 256; 58% at 1.7x the training time), Adam's betas (0, 0.9) (57%).

    **G's learning rate 3e-4** (it was 2e-4, D's kept at 6e-4), the default since, with the deep
    G. Seeds 0, 1 and 2, 300 epochs (the same data split): classes 0.66, 0.66 and 0.68, Fréchet
    0.64, 0.94 and 0.72, 65.4%, 65.7% and 66.2% labelled with p ≥ 0.9 (at 2e-4: 0.64, 0.69,
    0.69; 0.79, 0.92, 0.92; 63.5%, 63.7%, 63.3%); at epoch 200 of the same runs 65.0%, 65.8% and
    65.1% (at 2e-4: 62.0%, 61.8%, 62.6%), so the quickstart's 200 epochs gain the most. D's lr
    raised with it (9e-4, seed 0): 64.8%, Fréchet 0.92; G at 4e-4: no better than 3e-4. The
    cost per step is unchanged. **Twice the epochs** (``epochs=600``, ``pgm train gan --epochs
    600``; the lr then decays over 600): seeds 0, 1 and 2 classes 0.71, 0.68 and 0.71, Fréchet
    0.58, 0.48 and 0.41, 68.5%, 69.3% and 69.7% labelled with p ≥ 0.9; at epoch 300 of the same
    runs 67.7%, 67.4% and 68.9%; by eye a little cleaner, still about three digits in ten
    malformed. Twice the training time (about ten minutes on 2 CPU cores).

    **Five layers and 600 epochs** (``hidden`` 32, 64, 128, 256, 512; the same 276,480
    multiply-adds per sample as the four layers, one small layer more), the defaults since.
    Seeds 0, 1 and 2 at 300 epochs: classes 0.68, 0.66 and 0.65, Fréchet 0.73, 1.00 and 0.72,
    66.1%, 67.7% and 67.4% labelled with p ≥ 0.9 (four layers: 65.4%, 65.7%, 66.2%); at 600
    epochs: classes 0.69, 0.66 and 0.68, Fréchet 0.45, 0.54 and 0.46, 71.0%, 71.7% and
    71.3% (four layers: 68.5%, 69.3%, 69.7%; classes 0.71, 0.68, 0.71, Fréchet 0.58, 0.48,
    0.41), so a few more sure digits for a little less even a histogram; by eye about seven
    digits in ten readable. Cost, alternated on one thread against the four-layer G: a value and
    gradient on 800 latents 1.03x (24.8 against 24.0 ms), AIS T=100 x 10 on 50 images 0.97x
    (12.0 against 12.4 s); the 600 epochs took 17.9 minutes on one thread beside another job.
    Not kept: top-k training (Sinha et al. 2020: G's loss on the half of each batch of fakes D
    scores highest, k falling from the batch as 0.99 per epoch; four layers, 300 epochs): 65.6%
    and 63.1% for seeds 0 and 1 (65.4%, 65.7% without).

    **The DCGAN** (``arch="dcgan"``, ``pgm train gan --arch conv``): **a wide generator**
    (``g_wide``: a Linear to 256 maps of 7x7, a stride-1 3x3 transposed convolution to 128, then
    two stride-2 ones to 64 maps of 14x14 and to the image; batch norm after each but the last),
    one lr 2e-4 (Radford et al. 2016), no spectral norm, **a discriminator with two views of
    each image**, their logits summed: the conv D (two stride-2 convolutions, 64 and 128
    channels, leaky ReLU, **dropout 0.3** after each) and the MLP GAN's D on the whole image
    (512-256, dropout 0.3, spectral norm; ``d_mlp_branch``); the same average, label smoothing
    and linear decay, 200 epochs. Seeds 0, 1 and 2 at 200 epochs: class ratio 0.77, 0.72 and
    0.69, Fréchet 1.34, 1.38 and 1.12, 56% of the samples labelled with p ≥ 0.9 in each (test
    images: 0.79, 1.86, 78%); every digit drawn about as often as in the test set (eights the
    most common, 11.3%, 12.3% and 12.1%; twos, sixes and fives the rarest, 8.7%, 8.8% and 8.3%).
    Smooth, crisp strokes, about seven digits in ten readable; the rest are mostly digits with a
    stroke too many or too few, a few blots. Over training (seed 0, epochs 25, 50, 100, 150,
    200): ratio 0.30, 0.68, 0.72, 0.77, 0.77 and Fréchet 26, 3.3, 1.7, 1.42, 1.34, flat from
    epoch 150 (seed 1: 0.59, 0.69, 0.68, 0.72 and 3.7, 1.6, 1.5, 1.38 at 50, 100, 125, 200; seed
    2: 0.65, 0.67, 0.69, 0.69 and 3.6, 1.24, 1.18, 1.12 at 50, 125, 150, 200). The narrow G
    (``g_wide=False``: the Linear straight to 128 maps, 0.44x G's weights; the default before)
    with the same D: 0.55 and 0.53, Fréchet 3.4 and 5.2, 48% and 46%, about two digits in three
    readable, and behind from the start (seed 0 at 50 epochs: 0.35 and 10.6). With the conv D
    alone as well (the default before that): 0.46 and 0.49, Fréchet 9.4 and 10.4, 41% and 42%,
    strokes as smooth, more malformed digits; at 100 and 150 epochs (seed 0) 0.43, 0.45 and
    Fréchet 10.6, 10.0. Without dropout (conv D alone, 150 epochs) the conv D learns the 4,000
    training images' strokes and the generator settles early: 0.32 and 13.2 at 150 epochs, flat
    from epoch 50 (seed 1: 0.33 and 14.3).

    Its cost, interleaved on one thread: a training step of the wide G costs 1.34x the
    narrow G's (235 against 175 ms per batch of 64, both with the pair; the pair costs 1.15x
    the conv D alone), 54-56 minutes for the 200 epochs on one core (three runs), about 8x the
    MLP GAN's time per epoch. At evaluation D is not used, but G is, at every AIS step: a value and
    gradient of the wide G on 800 latents takes 1.95x the narrow G's and 54x the MLP GAN's
    (887, 499 and 18 ms), so the quickstart keeps the MLP GAN.

    Tried and not kept (seed 0, the conv D alone, 100 epochs unless said): spectral norm with two
    time-scales (lr 1e-4 for G, 4e-4 for D: 0.23 and 13.2, blotchy strokes); random
    translations of D's inputs by up to 3 pixels (differentiable augmentation, Zhao et al.
    2020: 0.03 and 58, strokes clean but ones all but gone and many shapes no digit); dropout
    with D's lr 3x G's (0.34 and 23.3); a third convolution in D (7x7 -> 4x4; 0.28 and 19.4 at
    50 epochs against 0.26 and 16.0 without, stopped there); the R1 gradient penalty on real
    data (Mescheder et al. 2018, γ = 1; 0.30 and 14.0 at 50 epochs, 1.2x slower, stopped
    there); dropout 0.5 over 200 epochs (0.33 and 15.3 at 50 against 0.29 and 16.5 with 0.3: a
    lead within the runs' spread, stopped at 75 for want of time); a minibatch-standard-deviation
    channel before D's last layer (Karras et al. 2018), 200 epochs, seeds 0 and 1: Fréchet 8.4
    and 8.8 against 9.4 and 10.4, but ratio 0.47 and 0.42 against 0.46 and 0.49 (ones scarcer
    still) and the same share of samples the classifier labels with p ≥ 0.9 (41%, 43%; 41%
    and 42% without). The conv G with the MLP GAN's D alone (512-256, dropout 0.3, spectral
    norm, lr_d 6e-4; seed 0, 200 epochs) scores best by every number: ratio 0.68, Fréchet
    1.66 (the test images' own: 1.86), 46% labelled with p ≥ 0.9; but its strokes are
    blotched and broken like the MLP GAN's, where the conv D's are smooth: the classifier's
    features do not see stroke texture. The MLP generator with the two-view D collapsed to one
    or two digits within 25 epochs (lr_d 6e-4 with 64 channels; one lr with 32), so the MLP
    GAN keeps its own D. With 32 channels and spectral norm it had ratio 0.012 and
    Fréchet 94 at 25 epochs.

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
                  "label_smoothing": 0.1, "lr": 2e-4, "lr_schedule": "linear"}
        if arch == "dcgan":
            return {**images, "arch": "dcgan", "channels": 64, "spectral_norm": False,
                    "d_dropout": 0.3, "d_mlp_branch": (512, 256), "g_wide": True,
                    "epochs": 200}
        return {**images, "hidden": (32, 64, 128, 256, 512), "d_hidden": (512, 256),
                "spectral_norm": True, "lr": 3e-4, "lr_d": 6e-4, "g_batchnorm": True,
                "g_upsample": 2, "epochs": 600}
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
    settings = {**defaults, **settings}
    default_epochs = settings.pop("epochs")
    model_kw = {k: v for k, v in settings.items() if k in model_keys}
    for key in ("hidden", "d_hidden", "d_mlp_branch", "image_shape", "data_loc", "data_scale"):
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
