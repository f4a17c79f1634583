r"""The GAN's figures, written into RUN/figures/ by :func:`write_gan_figures`.

- ``training_curves.png``: both players' losses and D's outputs (real, fake, validation,
  fixed fakes in eval mode) and accuracy per epoch, every step faint behind the epoch means,
  with the game's equilibrium marked (D = 1/2, D's loss 2 log 2).
- 1-D data, ``toy_series.png``: the GAN paper's Fig. 1 at several stages of training. Each
  panel shows the data density (black dotted, a KDE of the training data), the generator's
  density p_g (green, a KDE of its samples), the discriminator D(x) (blue dashed), and
  underneath the map x = G(z): lines from equally spaced quantiles of p(z) on the lower axis
  to their images on the x axis. Where the lines crowd, p_g is high. Training ends with p_g
  on the data and D close to 1/2 everywhere.
- 2-D data, ``samples.png``: samples over the data.
- Images, ``samples.png`` (64 samples from the same fixed z as the grids drawn during
  training, RUN/figures/samples_epochNNN.png), ``nearest_neighbours.png`` (samples above
  their nearest training images: are they copies?) and ``nn_histogram.png`` (the distance to
  the nearest training image for 1,000 samples and for the test images); for labelled
  images ``class_histogram.png``, the class histogram of 10,000 samples under the feature
  classifier beside the test set's (:mod:`pgm.mode_coverage`; the classifier is cached in
  RUN/cache/, where the evaluation's sample quality finds it).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from pgm import io, plots

from .gan_records import (
    FIXED_Z,
    SNAPSHOTS,
    STEP_KEYS,
    STEPS,
    load_snapshots,
    noise_generator,
    read_steps,
    snapshot_1d,
    snapshot_grid,
)

__all__ = ["epoch_samples_figure", "save_epoch_samples", "toy_panel", "toy_series_figure",
           "training_curves_figure", "write_gan_figures"]

_DATA, _GEN, _DISC = "black", "tab:green", "tab:blue"


def _kde_1d(x: torch.Tensor, grid: torch.Tensor) -> np.ndarray:
    """Gaussian KDE of 1-D points on ``grid`` with Silverman's bandwidth (robust spread)."""
    from pgm.inference.parzen import parzen_log_density

    x = x.reshape(-1).double()
    q = torch.quantile(x, torch.tensor([0.25, 0.75], dtype=torch.float64))
    spread = min(x.std().item(), (q[1] - q[0]).item() / 1.349) or x.std().item()
    h = max(0.9 * spread * len(x) ** -0.2, 1e-6)
    return parzen_log_density(x[:, None], grid[:, None], h).exp().numpy()


def toy_panel(ax, x_grid: torch.Tensor, snapshot: dict, data_density: np.ndarray, *,
              legend: bool = False) -> None:
    """One panel of the paper's Fig. 1 on ``ax`` (see the module docstring)."""
    xg = x_grid.numpy()
    d, pg = snapshot["d"].numpy(), snapshot["pg"].numpy()
    top = 1.1 * max(1.0, float(data_density.max()))  # p_g above it is clipped (marked ^)
    ax.plot(xg, data_density, ls=":", color=_DATA, lw=1.6, label=r"data $p_{data}$")
    ax.plot(xg, np.minimum(pg, top), color=_GEN, lw=1.4, label=r"generator $p_g$")
    if pg.max() > top:
        ax.plot(xg[pg.argmax()], top, marker="^", color=_GEN, ms=5, clip_on=False)
    # D is trained only where data or samples lie: drawn faint elsewhere
    seen = (data_density + pg) > 0.01 * max(data_density.max(), 1e-12)
    ax.plot(xg, d, ls="--", color=_DISC, lw=0.8, alpha=0.35)
    ax.plot(xg, np.where(seen, d, np.nan), ls="--", color=_DISC, lw=1.4,
            label=r"discriminator $D(x)$")
    ax.axhline(0.5, color="0.8", lw=0.6, zorder=0)
    # the map z -> x under the axis: z quantiles on the lower line, G(z) on the upper
    y_x, y_z = -0.12 * top, -0.5 * top
    lo, hi = xg[0], xg[-1]
    z, gz = snapshot["z"].numpy(), snapshot["gz"].numpy()
    zpos = lo + (hi - lo) * (0.1 + 0.8 * (z - z.min()) / max(z.max() - z.min(), 1e-12))
    for a, b in zip(zpos, gz):
        inside = lo <= b <= hi
        ax.annotate("", xy=(min(max(b, lo), hi), y_x), xytext=(a, y_z),
                    arrowprops=dict(arrowstyle="-|>" if inside else "-", lw=0.6,
                                    color="0.35" if inside else "tab:red", shrinkA=0,
                                    shrinkB=0, mutation_scale=6))
    ax.plot([lo, hi], [y_x, y_x], color="black", lw=0.8)
    ax.plot([lo + 0.1 * (hi - lo), lo + 0.9 * (hi - lo)], [y_z, y_z], color="black", lw=0.8)
    ax.text(lo, y_x, "x ", ha="right", va="center", fontsize="small")
    ax.text(lo + 0.1 * (hi - lo), y_z, "z ", ha="right", va="center", fontsize="small")
    ax.set_xlim(lo - 0.03 * (hi - lo), hi)
    ax.set_ylim(y_z - 0.05 * top, top)
    ax.set_yticks([t for t in (0, 0.5, 1.0) if t <= top])
    ax.spines[["top", "right"]].set_visible(False)
    d_data = float((d * data_density).sum() / max(data_density.sum(), 1e-12))
    d_gen = float((d * pg).sum() / max(pg.sum(), 1e-12))
    ax.set_title(f"epoch {snapshot['epoch']}: D(data) {d_data:.2f}, D(G(z)) {d_gen:.2f}",
                 fontsize="small")
    if legend:
        ax.legend(loc="upper left", fontsize="x-small", frameon=False)


def _pick_stages(epochs: list[int], n: int) -> list[int]:
    """Indices of up to n snapshots spread geometrically: start, early, ..., last."""
    if len(epochs) <= n:
        return list(range(len(epochs)))
    last = max(epochs[-1], 1)
    targets = [0] + [last ** (i / (n - 1)) for i in range(1, n)]
    chosen: list[int] = []
    for t in targets:
        i = min(range(len(epochs)), key=lambda j: (abs(epochs[j] - t), j))
        while i in chosen and i + 1 < len(epochs):
            i += 1
        if i not in chosen:
            chosen.append(i)
    return sorted(chosen)


def toy_series_figure(x_grid: torch.Tensor, snapshots: list[dict], x_data: torch.Tensor, *,
                      stages: int = 5, title=None) -> Figure:
    """Fig. 1 of the GAN paper: :func:`toy_panel` at up to ``stages`` stages of training."""
    data_density = _kde_1d(x_data, x_grid)
    picks = _pick_stages([int(s["epoch"]) for s in snapshots], stages)
    fig = Figure(figsize=(3.0 * len(picks), 3.2), layout="constrained")
    axes = fig.subplots(1, len(picks), squeeze=False)[0]
    for k, (ax, i) in enumerate(zip(axes, picks)):
        toy_panel(ax, x_grid, snapshots[i], data_density, legend=k == 0)
    fig.suptitle(title or "GAN on 1-D data: data (dotted), generator (green), D (dashed); "
                 "below: z -> x = G(z)", fontsize="medium")
    return fig


def save_epoch_samples(end) -> None:
    """An ``on_epoch`` callback for :func:`pgm.inference.adversarial.fit_gan`: when a grid is
    due, RUN/figures/samples_epochNNN.png from :func:`epoch_samples_figure`."""
    if end.out is None or not end.due:
        return
    fig = epoch_samples_figure(end.gan, end.z_fixed, end.data, end.epoch, x_grid=end.x_grid,
                               snapshot=end.snapshot)
    if fig is not None:
        plots.save_figure(fig, Path(end.out) / "figures" / f"samples_epoch{end.epoch:03d}.png")


def epoch_samples_figure(gan, z_fixed: torch.Tensor, data, epoch: int, *,
                         snapshot: dict | None = None, x_grid=None) -> Figure | None:
    """What fit_gan draws every few epochs: G(z_fixed) for images, samples over the data for
    2-D points, one toy panel for 1-D data; None for other data."""
    was_training = gan.training
    gan.eval()
    try:
        with torch.no_grad():
            if data.image_shape is not None:
                return plots.image_grid(gan.generate(z_fixed).cpu(), data.image_shape, ncols=8,
                                        title=f"GAN samples, epoch {epoch}")
            if gan.data_dim == 2:
                g = torch.Generator().manual_seed(0)
                return plots.samples(gan.sample(1000, generator=g).cpu(), None,
                                     x_data=data.x_train, title=f"GAN samples, epoch {epoch}")
            if gan.data_dim == 1 and snapshot is not None:
                fig = Figure(figsize=(4.0, 3.2), layout="constrained")
                toy_panel(fig.add_subplot(), x_grid, snapshot, _kde_1d(data.x_train, x_grid),
                          legend=True)
                return fig
    finally:
        gan.train(was_training)
    return None


def _col(rows, key) -> np.ndarray:
    return np.array([float(r.get(key, math.nan)) for r in rows], dtype=np.float64)


def training_curves_figure(history: list[dict], steps: list[list] | None = None, *,
                           generator_loss: str = "non-saturating", loss: str = "cross-entropy",
                           title=None) -> Figure:
    """Losses (left) and D's outputs and accuracy (right) per epoch; steps faint behind. The
    dotted lines: each loss where D's logit is 0 (D = 1/2), for the game ``loss`` played."""
    fig = Figure(figsize=(10.0, 3.6), layout="constrained")
    ax_l, ax_d = fig.subplots(1, 2)
    ep = _col(history, "epoch")
    if steps:
        st = np.asarray(steps, dtype=np.float64)
        per_epoch = {int(e): int(st[st[:, 0] == e, 1].max()) for e in np.unique(st[:, 0])}
        t = st[:, 0] - 1 + st[:, 1] / np.array([per_epoch[int(e)] for e in st[:, 0]])
        stride = max(1, len(st) // 4000)
        for key, ax, color in (("d_loss", ax_l, "tab:red"), ("g_loss", ax_l, "tab:purple"),
                               ("d_real", ax_d, _DATA), ("d_fake", ax_d, _GEN)):
            y = st[:, 2 + STEP_KEYS.index(key)]
            ok = ~np.isnan(y)
            ax.plot(t[ok][::stride], y[ok][::stride], color=color, lw=0.4, alpha=0.25)
    ax_l.plot(ep, _col(history, "d_loss"), "-o", ms=2.5, color="tab:red", label="D loss")
    ax_l.plot(ep, _col(history, "g_loss"), "-o", ms=2.5, color="tab:purple", label="G loss")
    if loss == "hinge":  # max(0, 1 - 0) + max(0, 1 + 0) and -0 at a logit of 0
        d_ref, g_ref = 2.0, 0.0
    else:  # 2 log 2, and -log(1/2) or log(1/2) for G
        d_ref = 2 * math.log(2)
        g_ref = math.log(2) * (1 if generator_loss == "non-saturating" else -1)
    ax_l.axhline(d_ref, color="tab:red", ls=":", lw=0.9, label="D loss at D = 1/2")
    ax_l.axhline(g_ref, color="tab:purple", ls=":", lw=0.9, label="G loss at D = 1/2")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("loss" if loss == "hinge" else "loss (nats)")  # a margin is no log-prob
    ax_l.legend(fontsize="x-small")
    ax_d.plot(ep, _col(history, "d_real"), "-", color=_DATA, label="D(real), training")
    ax_d.plot(ep, _col(history, "d_fake"), "-", color=_GEN, label="D(G(z)), training")
    ax_d.plot(ep, _col(history, "d_valid"), "--", color=_DATA, label="D(valid), eval")
    ax_d.plot(ep, _col(history, "d_gen"), "--", color=_GEN, label="D(G(z)), eval")
    ax_d.plot(ep, _col(history, "d_accuracy"), "-", color="tab:orange", label="D accuracy")
    ax_d.axhline(0.5, color="0.5", ls=":", lw=0.9)
    ax_d.set_ylim(-0.02, 1.02)
    ax_d.set_xlabel("epoch")
    ax_d.legend(fontsize="x-small", ncol=2)
    fig.suptitle(title or "GAN training: no loss tells you how good the generator is",
                 fontsize="medium")
    return fig


@torch.no_grad()
def write_gan_figures(run_dir: str | Path, model, data, history: list[dict], *,
                      n: int = 64) -> list[Path]:
    """Write the figures of the module docstring into RUN/figures/; return their paths."""
    from pgm.inference.parzen import draw_samples
    from pgm.mode_coverage import DEFAULT_N, class_coverage, class_histogram_figure
    from pgm.sample_quality import (
        CLASSIFIER_FILE,
        feature_classifier,
        nearest_neighbour_figure,
        nearest_neighbour_histogram,
        nearest_neighbours,
    )

    run_dir = Path(run_dir)
    fig_dir = run_dir / "figures"
    model = model.eval()
    fit_cfg = io.read_config(run_dir).get("fit", {}) if (run_dir / io.CONFIG).is_file() else {}
    seed = int(fit_cfg.get("seed", 0))
    written = []
    if history:
        steps = read_steps(run_dir / STEPS, int(history[-1]["epoch"]))
        curves = training_curves_figure(
            history, steps, generator_loss=fit_cfg.get("generator_loss", "non-saturating"),
            loss=fit_cfg.get("loss", "cross-entropy"))
        written.append(plots.save_figure(curves, fig_dir / "training_curves.png"))
    if model.data_dim == 1:
        snaps = load_snapshots(run_dir / SNAPSHOTS) or getattr(model, "snapshots", None)
        if snaps is None:  # a model trained elsewhere: its state now
            grid = snapshot_grid(model, data.x_train, seed)
            snaps = (grid, [snapshot_1d(model, grid, int(history[-1]["epoch"])
                                        if history else 0, seed)])
        written.append(plots.save_figure(toy_series_figure(snaps[0], snaps[1], data.x_train),
                                         fig_dir / "toy_series.png"))
    elif model.data_dim == 2 and data.image_shape is None:
        g = torch.Generator().manual_seed(seed)
        written.append(plots.save_figure(
            plots.samples(model.sample(1000, generator=g).cpu(), None, x_data=data.x_train,
                          title="GAN samples over the data"), fig_dir / "samples.png"))
    if data.image_shape is not None:
        z = model.sample_z(n, noise_generator(seed, FIXED_Z))
        x = model.generate(z).cpu()
        written.append(plots.save_figure(
            plots.samples(x, data.image_shape, title="GAN samples x = G(z)"),
            fig_dir / "samples.png"))
        res = nearest_neighbours(x[:10], data.x_train)
        written.append(plots.save_figure(
            nearest_neighbour_figure(x, data.x_train, data.image_shape, nn_result=res,
                                     title="GAN samples above their nearest training images "
                                     f"(mean distance {res.distance.mean():.2f})"),
            fig_dir / "nearest_neighbours.png"))
        if len(data.x_test):
            many = model.sample(1000, generator=torch.Generator().manual_seed(seed)).cpu()
            written.append(plots.save_figure(nearest_neighbour_histogram(
                nearest_neighbours(many, data.x_train).distance,
                nearest_neighbours(data.x_test, data.x_train).distance,
                title="GAN: distance to the nearest training image (copies sit near 0)"),
                fig_dir / "nn_histogram.png"))
        if data.n_classes is not None:
            written.append(plots.save_figure(class_histogram_figure(
                class_coverage(draw_samples(model, DEFAULT_N, seed=seed), data,
                               feature_classifier(data, path=run_dir / "cache" /
                                                  CLASSIFIER_FILE)),
                title=f"GAN: class histogram of {DEFAULT_N:,} samples (mode coverage)"),
                fig_dir / "class_histogram.png"))
    return written
