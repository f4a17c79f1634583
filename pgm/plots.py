"""Figures for deep generative models: pure functions of tensors that return matplotlib Figures.

Images are rows of an (N, D) array, flattened row-major with values in [0, 1], drawn with
``image_shape=(H, W)``; data that is not images uses ``image_shape=None`` and is 2-D points
(N, 2). Nothing here touches pyplot's global state: figures are ``matplotlib.figure.Figure``
objects rendered with the Agg canvas; write them with :func:`save_figure`.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from pgm.errors import DataError

__all__ = [
    "bounds_vs_k",
    "elbo_curves",
    "gap_histogram",
    "image_grid",
    "interpolations",
    "latent_scatter",
    "linear_path",
    "log_px_comparison",
    "manifold",
    "reconstructions",
    "samples",
    "save_figure",
]

CELL_IN = 0.55  # inches per image tile
_PAD = 1  # pixels of white between tiles
_MIN_PX = 24  # smaller images are upscaled by pixel repetition
_DATA_COLOR = "0.6"
_C0, _C1 = "tab:blue", "tab:orange"


# ----------------------------------------------------------------------------- helpers


def _np(x) -> np.ndarray:
    """A float64 numpy copy of a tensor or array-like (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _images(x, image_shape) -> np.ndarray:
    """(N, H, W) images in [0, 1] from an (N, D) or (N, H, W) array."""
    h, w = (int(s) for s in image_shape)
    a = _np(x)
    if a.ndim == 1:
        a = a[None]
    if a.ndim == 3 and a.shape[1:] == (h, w):
        return np.clip(a, 0.0, 1.0)
    if a.ndim != 2 or a.shape[1] != h * w:
        raise DataError(f"expected images of shape (N, {h * w}) for image_shape ({h}, {w}), "
                        f"got {tuple(a.shape)}")
    return np.clip(a.reshape(-1, h, w), 0.0, 1.0)


def drawable(data_dim: int, image_shape) -> bool:
    """Whether samples of this data can be drawn: images, or 2-D points."""
    return image_shape is not None or data_dim == 2


def _points(x, name="points") -> np.ndarray:
    """(N, 2) points from an array-like."""
    a = _np(x)
    if a.ndim != 2 or a.shape[1] != 2:
        raise DataError(f"expected {name} of shape (N, 2), got {tuple(a.shape)}")
    return a


def _upscale(images: np.ndarray) -> np.ndarray:
    """Repeat pixels of small images (e.g. 8x8) so a 1-pixel gap between tiles stays thin."""
    k = max(1, math.ceil(_MIN_PX / min(images.shape[1:])))
    return images if k == 1 else images.repeat(k, axis=1).repeat(k, axis=2)


def _tile(images: np.ndarray, nrows: int, ncols: int, pad: int = _PAD) -> np.ndarray:
    """Tile (N, H, W) images row by row into one canvas; gaps and blank cells are white."""
    images = _upscale(images)
    n, h, w = images.shape
    canvas = np.ones((nrows * (h + pad) - pad, ncols * (w + pad) - pad))
    for i in range(min(n, nrows * ncols)):
        r, c = divmod(i, ncols)
        canvas[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = images[i]
    return canvas


def _labelled_rows(fig: Figure, strips: list[tuple[str, np.ndarray]]) -> None:
    """Stack (label, images) strips on one axes, one row each, labels to the left."""
    canvases = [(name, _tile(imgs, 1, len(imgs))) for name, imgs in strips]
    height = canvases[0][1].shape[0]
    width = max(c.shape[1] for _, c in canvases)
    gap = max(2, height // 8)
    canvas = np.ones((len(canvases) * (height + gap) - gap, width))
    ax = fig.add_subplot()
    for r, (name, c) in enumerate(canvases):
        top = r * (height + gap)
        canvas[top: top + height, : c.shape[1]] = c
        ax.text(-gap, top + (height - 1) / 2, name, ha="right", va="center", fontsize="small")
    _show(ax, canvas)


def _show(ax, canvas: np.ndarray) -> None:
    ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _title_in(title) -> float:
    """Extra figure height (inches) for a suptitle."""
    return 0.35 if title else 0.0


def _suptitle(fig: Figure, title) -> None:
    if title:
        fig.suptitle(title, fontsize="medium")


# ----------------------------------------------------------------------------- saving


def save_figure(fig: Figure, path, *, dpi: int = 150) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (see :func:`pgm.io.atomic_write_bytes`)."""
    from pgm.io import atomic_write_bytes

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.05,
                    facecolor="white")
    finally:
        if getattr(fig.canvas, "manager", None) is not None:  # created through pyplot
            import matplotlib.pyplot as plt

            plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------- images


def image_grid(images, image_shape, *, ncols: int = 8, title=None) -> Figure:
    """Grey images tiled in a grid of ``ncols`` columns, without ticks."""
    imgs = _images(images, image_shape)
    n = len(imgs)
    if n == 0:
        raise DataError("image_grid needs at least one image")
    ncols = max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    h, w = imgs.shape[1:]
    width = ncols * CELL_IN * max(1.0, w / h)
    height = nrows * CELL_IN * max(1.0, h / w)
    fig = Figure(figsize=(width, height + _title_in(title)), layout="constrained")
    _show(fig.add_subplot(), _tile(imgs, nrows, ncols))
    _suptitle(fig, title)
    return fig


def reconstructions(x, x_rec, image_shape, *, n: int = 10, title=None) -> Figure:
    """Inputs above their reconstructions; for 2-D points a scatter with lines joining pairs."""
    if image_shape is None:
        return _point_reconstructions(x, x_rec, title)
    xs, xr = _images(x, image_shape), _images(x_rec, image_shape)
    if len(xs) != len(xr):
        raise DataError(f"x has {len(xs)} rows but x_rec has {len(xr)}")
    n = max(1, min(int(n), len(xs)))
    fig = Figure(figsize=(n * CELL_IN + 1.1, 2.1 * CELL_IN + _title_in(title)),
                 layout="constrained")
    _labelled_rows(fig, [("input", xs[:n]), ("reconstruction", xr[:n])])
    _suptitle(fig, title)
    return fig


def _point_reconstructions(x, x_rec, title) -> Figure:
    xs, xr = _points(x, "x"), _points(x_rec, "x_rec")
    if len(xs) != len(xr):
        raise DataError(f"x has {len(xs)} rows but x_rec has {len(xr)}")
    fig = Figure(figsize=(5.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    ax.add_collection(LineCollection(np.stack([xs, xr], axis=1), colors="0.55",
                                     linewidths=0.6, alpha=0.7, zorder=1))
    size = _marker_size(len(xs))
    ax.scatter(*xs.T, s=size, color=_C0, label="input", zorder=2)
    ax.scatter(*xr.T, s=size, color=_C1, label="reconstruction", zorder=3)
    ax.legend(loc="best", fontsize="small", frameon=True)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal", adjustable="datalim")
    ax.autoscale_view()
    _suptitle(fig, title)
    return fig


def _marker_size(n: int) -> float:
    return float(np.clip(250.0 / math.sqrt(max(n, 1)), 2.0, 20.0))


def samples(x_samples, image_shape, *, x_data=None, title=None) -> Figure:
    """Samples as a square-ish image grid; for 2-D points a scatter over ``x_data`` (grey)."""
    if image_shape is not None:
        n = len(_np(x_samples))
        return image_grid(x_samples, image_shape, ncols=max(1, math.ceil(math.sqrt(n))),
                          title=title)
    xs = _points(x_samples, "x_samples")
    fig = Figure(figsize=(5.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    if x_data is not None:
        xd = _points(x_data, "x_data")
        ax.scatter(*xd.T, s=_marker_size(len(xd)), color=_DATA_COLOR, alpha=0.5,
                   linewidths=0, label="data", zorder=1)
    ax.scatter(*xs.T, s=_marker_size(len(xs)), color=_C0, alpha=0.8, linewidths=0,
               label="samples", zorder=2)
    ax.legend(loc="best", fontsize="small", markerscale=2.0)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal", adjustable="datalim")
    _suptitle(fig, title)
    return fig


# ----------------------------------------------------------------------------- training curves


def _read_history(history) -> list[dict]:
    if isinstance(history, (str, os.PathLike)):
        with open(history, newline="") as fh:
            return list(csv.DictReader(fh))
    return list(history)


def _col(rows: list[dict], key: str) -> np.ndarray:
    """A float column; missing or empty entries become NaN."""
    out = []
    for r in rows:
        v = r.get(key)
        try:
            out.append(float(v) if v not in (None, "") else math.nan)
        except (TypeError, ValueError):
            out.append(math.nan)
    return np.asarray(out, dtype=np.float64)


def elbo_curves(history) -> Figure:
    """Train and valid ELBO (nats / datapoint) against epoch; marks the best valid epoch.

    ``history`` is a list of dicts or a CSV path with columns epoch, train_elbo, valid_elbo.
    """
    rows = _read_history(history)
    if not rows:
        raise DataError("elbo_curves needs at least one epoch of history")
    epoch = _col(rows, "epoch")
    if np.isnan(epoch).all():
        epoch = np.arange(1, len(rows) + 1, dtype=np.float64)
    fig = Figure(figsize=(6.0, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for key, label, color in (("train_elbo", "train", _C0), ("valid_elbo", "valid", _C1)):
        y = _col(rows, key)
        ok = np.isfinite(y) & np.isfinite(epoch)
        if ok.any():
            ax.plot(epoch[ok], y[ok], color=color, label=label, lw=1.6,
                    marker="o" if ok.sum() <= 30 else None, ms=3)
    valid = _col(rows, "valid_elbo")
    ok = np.isfinite(valid) & np.isfinite(epoch)
    if ok.any():
        i = np.flatnonzero(ok)[np.argmax(valid[ok])]
        ax.axvline(epoch[i], color="0.5", ls=":", lw=1.0, zorder=0)
        ax.plot([epoch[i]], [valid[i]], marker="*", ms=13, color=_C1, mec="k", mew=0.6,
                ls="none", zorder=5,
                label=f"best valid: epoch {epoch[i]:g}, {valid[i]:.2f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats / datapoint)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    if len(epoch) and np.all(np.isfinite(epoch)) and np.allclose(epoch, np.round(epoch)):
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


# ----------------------------------------------------------------------------- latent space


def latent_scatter(z, y=None, *, title=None) -> Figure:
    """2-D codes (N, 2), coloured by integer label ``y`` with a discrete (tab10) colour bar."""
    zs = _points(z, "z")
    fig = Figure(figsize=(5.6 if y is not None else 4.8, 4.6), layout="constrained")
    ax = fig.add_subplot()
    size = _marker_size(len(zs))
    if y is None:
        ax.scatter(*zs.T, s=size, color=_C0, alpha=0.6, linewidths=0)
    else:
        ys = _np(y).reshape(-1)
        if len(ys) != len(zs):
            raise DataError(f"z has {len(zs)} rows but y has {len(ys)}")
        classes = np.unique(ys)
        idx = np.searchsorted(classes, ys)
        base = "tab10" if len(classes) <= 10 else "tab20"
        colors = [_cmap_color(base, k) for k in range(len(classes))]
        cmap = ListedColormap(colors)
        norm = BoundaryNorm(np.arange(len(classes) + 1) - 0.5, len(classes))
        order = np.random.default_rng(0).permutation(len(zs))  # no class drawn wholly on top
        sc = ax.scatter(*zs[order].T, c=idx[order], cmap=cmap, norm=norm, s=size, alpha=0.7,
                        linewidths=0)
        cb = fig.colorbar(sc, ax=ax, ticks=np.arange(len(classes)), fraction=0.05, pad=0.02)
        cb.ax.set_yticklabels([f"{c:g}" for c in classes])
        cb.set_label("label")
        cb.solids.set_alpha(1.0)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_aspect("equal", adjustable="datalim")
    _suptitle(fig, title)
    return fig


def _cmap_color(name: str, k: int):
    from matplotlib import colormaps

    cmap = colormaps[name]
    return cmap(k % cmap.N)


def _normal_quantiles(n: int) -> torch.Tensor:
    p = torch.linspace(0.05, 0.95, n, dtype=torch.float64)
    q = torch.distributions.Normal(0.0, 1.0).icdf(p)
    return ((q - q.flip(0)) / 2).float()  # exactly antisymmetric around 0


def manifold(decode_mean: Callable[[torch.Tensor], torch.Tensor], image_shape, *, n: int = 20,
             title=None) -> Figure:
    """Decoder means over an n x n grid of standard-normal quantiles, tiled into one image.

    Codes run over Phi^-1(linspace(0.05, 0.95, n)): z1 left to right, z2 bottom to top
    (Kingma & Welling 2014, Fig. 4). ``decode_mean`` gets an (n*n, 2) float32 tensor.
    For ``image_shape=None`` the decoded 2-D points are drawn as the image of the code grid.
    """
    n = int(n)
    q = _normal_quantiles(n)
    z2, z1 = torch.meshgrid(q.flip(0), q, indexing="ij")  # row 0 is the top (largest z2)
    codes = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1)
    with torch.no_grad():
        out = decode_mean(codes)
    if image_shape is None:
        return _point_manifold(_points(out, "decoded points"), n, title)
    imgs = _images(out, image_shape)
    if len(imgs) != n * n:
        raise DataError(f"decode_mean returned {len(imgs)} rows for {n * n} codes")
    h, w = imgs.shape[1:]
    cell = max(0.25, min(CELL_IN, 9.0 / n))
    fig = Figure(figsize=(n * cell * max(1.0, w / h) + 0.6,
                          n * cell * max(1.0, h / w) + 0.5 + _title_in(title)),
                 layout="constrained")
    ax = fig.add_subplot()
    canvas = _tile(imgs, n, n, pad=0)
    ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ch, cw = canvas.shape[0] / n, canvas.shape[1] / n  # cell size in canvas pixels
    qs = q.numpy()
    ends = [0, n - 1]
    ax.set_xticks([(j + 0.5) * cw - 0.5 for j in ends], [f"{qs[j]:.2f}" for j in ends])
    ax.set_yticks([(i + 0.5) * ch - 0.5 for i in ends], [f"{qs[n - 1 - i]:.2f}" for i in ends])
    ax.tick_params(labelsize="small", length=2)
    ax.set_xlabel("$z_1$", labelpad=-6)
    ax.set_ylabel("$z_2$", labelpad=-10)
    _suptitle(fig, title)
    return fig


def _point_manifold(pts: np.ndarray, n: int, title) -> Figure:
    if len(pts) != n * n:
        raise DataError(f"decode_mean returned {len(pts)} rows for {n * n} codes")
    grid = pts.reshape(n, n, 2)
    fig = Figure(figsize=(5.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    lines = [grid[i] for i in range(n)] + [grid[:, j] for j in range(n)]
    ax.add_collection(LineCollection(lines, colors="0.6", linewidths=0.7))
    ax.scatter(*pts.T, s=8, color=_C0, zorder=2)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal", adjustable="datalim")
    ax.autoscale_view()
    _suptitle(fig, title)
    return fig


# ----------------------------------------------------------------------------- interpolation


def linear_path(z0, z1, steps: int) -> torch.Tensor:
    """(steps, L) codes on the straight line from z0 to z1; the endpoints are exact."""
    if int(steps) < 2:
        raise DataError(f"linear_path needs steps >= 2, got {steps}")
    a = torch.as_tensor(z0).detach().reshape(-1)
    b = torch.as_tensor(z1).detach().to(a.device).reshape(-1)
    if a.shape != b.shape:
        raise DataError(f"z0 and z1 differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    dtype = a.dtype if a.is_floating_point() else torch.get_default_dtype()
    a, b = a.to(dtype), b.to(dtype)
    t = torch.linspace(0.0, 1.0, int(steps), dtype=dtype, device=a.device)[:, None]
    path = (1 - t) * a + t * b
    path[0], path[-1] = a, b
    return path


def interpolations(rows: Mapping[str, object], image_shape, *, title=None) -> Figure:
    """One row of images per entry of ``rows`` (name -> (S, D) path), names on the left.

    For ``image_shape=None`` each entry is an (S, 2) path of points drawn as a line.
    """
    items: list[tuple[str, object]] = list(rows.items())
    if not items:
        raise DataError("interpolations needs at least one row")
    if image_shape is None:
        return _point_interpolations(items, title)
    paths = [(str(name), _images(v, image_shape)) for name, v in items]
    ncols = max(len(p) for _, p in paths)
    label_in = 0.15 + 0.075 * max(len(name) for name, _ in paths)
    fig = Figure(figsize=(ncols * CELL_IN + label_in,
                          len(paths) * 1.05 * CELL_IN + _title_in(title)),
                 layout="constrained")
    _labelled_rows(fig, paths)
    _suptitle(fig, title)
    return fig


def _point_interpolations(items: Iterable[tuple[str, object]], title) -> Figure:
    fig = Figure(figsize=(5.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for k, (name, v) in enumerate(items):
        p = _points(v, f"row {name!r}")
        ax.plot(*p.T, marker="o", ms=3, lw=1.2, color=_cmap_color("tab10", k), label=str(name))
        ax.plot(*p[[0, -1]].T, ls="none", marker="s", ms=6, mfc="none",
                color=_cmap_color("tab10", k))
    ax.legend(loc="best", fontsize="small")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal", adjustable="datalim")
    _suptitle(fig, title)
    return fig


# ----------------------------------------------------------------------------- evaluation


def bounds_vs_k(ks, means, ses, *, lines: Mapping[str, tuple[float, float]] | None = None,
                n: int | None = None, title=None) -> Figure:
    """IWAE_K (mean +- SE per datapoint) against K on a log axis, with horizontal reference
    lines (e.g. AIS, exact) given as ``{label: (mean, se)}``, bands of +-1 SE."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    ax.errorbar(ks, means, yerr=ses, marker="o", capsize=3, color=_C0, label="IWAE$_K$")
    colors = ["tab:green", "tab:red", "tab:purple", "tab:brown"]
    for (label, (m, se)), c in zip((lines or {}).items(), colors):
        ax.axhline(m, color=c, lw=1.5, ls="--", label=f"{label}: {m:.2f} ± {se:.2f}")
        if se == se:  # not NaN
            ax.axhspan(m - se, m + se, color=c, alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("K (importance samples)")
    ax.set_ylabel("log p(x) estimate (nats / datapoint)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    suffix = f" (same {n} datapoints)" if n else ""
    ax.set_title((title or "bounds on log p(x) against K") + suffix, fontsize=11)
    fig.tight_layout()
    return fig


def gap_histogram(gaps: Mapping[str, object], *, title=None) -> Figure:
    """Histograms of per-datapoint gaps in nats, e.g. ``{"log p(x) - ELBO": tensor (N,)}``."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    arrays = {k: _np(v) for k, v in gaps.items()}
    lo = min(a.min() for a in arrays.values())
    hi = max(a.max() for a in arrays.values())
    bins = np.linspace(min(lo, 0.0), hi if hi > lo else lo + 1, 40)
    for (label, a), c in zip(arrays.items(), [_C0, _C1, "tab:green", "tab:red"]):
        ax.hist(a, bins=bins, alpha=0.55, color=c,
                label=f"{label}: mean {a.mean():.2f}, median {np.median(a):.2f}")
    ax.axvline(0, color="0.3", lw=1)
    ax.set_xlabel("gap (nats)")
    ax.set_ylabel("datapoints")
    ax.legend(fontsize=9)
    ax.set_title(title or "per-datapoint gaps", fontsize=11)
    fig.tight_layout()
    return fig


def _point_with_se(ax, mean, y, se, text, color, **kw) -> None:
    """A point with its ± SE bar, labelled ``text ± se`` above it ("± –" where there is no SE,
    as for one image)."""
    known = se is not None and math.isfinite(se)
    ax.errorbar(mean, y, xerr=se if known else None, fmt="o", color=color, capsize=3, **kw)
    ax.annotate(f"{text} ± {f'{se:.1f}' if known else '–'}", (mean, y), xytext=(0, 6),
                textcoords="offset points", ha="center", fontsize=8, color=color)


def log_px_comparison(names, best, paired, *, flagged=(), title=None) -> Figure:
    """Models side by side: each one's best log p(x) estimate, mean ± SE over the test images
    (left), and its paired difference to the first row, mean ± SE of the per-image
    differences (right), which is what ranks them: across images log p(x) varies by tens of
    nats, so the left error bars overlap where the right ones need not.

    ``best``: per row ``(estimator, mean, se)`` or None; ``paired``: per row ``(mean, se)`` or
    None (the first row is the reference); rows in ``flagged`` (indices) are not comparable
    with the first: drawn grey on the left, "not comparable" on the right."""
    n = len(names)
    fig = Figure(figsize=(10.0, 1.3 + 0.5 * n), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    grey = "0.6"
    for i, b in enumerate(best):
        y, color = -i, grey if i in flagged else _C0
        if b is not None:
            name, mean, se = b
            _point_with_se(ax1, mean, y, se, f"{name} {mean:.1f}", color,
                           mfc="white" if i in flagged else color)
        if i == 0:
            ax2.plot(0, y, "D", color="0.3")
            ax2.annotate("reference", (0, y), xytext=(0, 6), textcoords="offset points",
                         ha="center", fontsize=8, color="0.3")
        elif i in flagged or paired[i] is None:  # in the middle of the panel
            ax2.text(0.5, y, "not comparable" if i in flagged else "no per-image values",
                     transform=ax2.get_yaxis_transform(), ha="center", va="center",
                     fontsize=8, color=grey, style="italic")
        else:
            mean, se = paired[i]
            _point_with_se(ax2, mean, y, se, f"{mean:+.1f}", _C1)
    ax2.axvline(0, color="0.3", lw=1)
    ax1.set_yticks([-i for i in range(n)], names)
    ax1.set_ylim(-n + 0.5, 0.6)
    ax1.set_xlabel("best estimate of log p(x), nats per image (± SE)")
    ax2.set_xlabel(f"paired difference to {names[0]}, nats per image (± SE)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, axis="x")
        ax.margins(x=0.15)
    if not any(p is not None and i not in flagged for i, p in enumerate(paired) if i):
        ax2.set_xlim(-1, 1)  # the reference alone: an axis of nats, not of 1e-17
    _suptitle(fig, title or "log p(x) on the same test images")
    return fig


# ----------------------------------------------------------------------------- a labelled grid

_MIN_PX = 24


def upscale_min(a: np.ndarray) -> np.ndarray:
    """Repeat pixels so that a tile's short side has at least _MIN_PX pixels."""
    k = max(1, math.ceil(_MIN_PX / min(a.shape[-2:])))
    return a if k == 1 else a.repeat(k, axis=-2).repeat(k, axis=-1)


def labelled_grid(images, image_shape, *, row_labels=None, col_labels=None, captions=None,
                   blank_after: int | None = None, split_row: int | None = None,
                   title=None) -> Figure:
    """An (R, C) grid of images with optional row/column labels and a caption under each tile.

    ``images``: (R, C, D) with values in [0, 1]. ``blank_after``: a white gap column after
    this column index. ``split_row``: draw a thin red line at that pixel row of every tile
    (where the given top half of an image ends).
    """
    a = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images,
                   dtype=np.float64)
    if a.ndim != 3:
        raise DataError(f"expected (rows, cols, D) images, got shape {a.shape}")
    R, C, _ = a.shape
    h, w = image_shape
    tiles = upscale_min(np.clip(a.reshape(R, C, h, w), 0, 1))
    th, tw = tiles.shape[-2:]
    k = th // h
    pad_x = max(2, tw // 14)
    pad_y = pad_x + (int(th * 0.45) if captions is not None else 0)
    gap = tw // 3 if blank_after is not None else 0  # white space after column blank_after
    x0 = {c: c * (tw + pad_x) + (gap if blank_after is not None and c > blank_after else 0)
          for c in range(C)}
    canvas = np.ones((R * (th + pad_y) - pad_y, C * (tw + pad_x) - pad_x + gap))
    for c in range(C):
        for r in range(R):
            y = r * (th + pad_y)
            canvas[y:y + th, x0[c]:x0[c] + tw] = tiles[r, c]
    label_in = 0.0 if row_labels is None else 0.12 + 0.07 * max(len(str(s)) for s in row_labels)
    cap_in = 0.2 if captions is not None else 0.0
    head_in = 0.2 if col_labels is not None else 0.0
    cell = CELL_IN * max(1.0, w / h)
    fig = Figure(figsize=((C + gap / tw) * cell + label_in + 0.1,
                          R * (CELL_IN + cap_in) + head_in + (0.35 if title else 0.0)),
                 layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if split_row is not None:
        for xs in x0.values():
            for r in range(R):
                y = r * (th + pad_y) + split_row * k - 0.5
                ax.plot([xs - 0.5, xs + tw - 0.5], [y, y], color="tab:red", lw=0.6)
    if row_labels is not None:
        for r, s in enumerate(row_labels):
            ax.text(-pad_x, r * (th + pad_y) + th / 2, str(s), ha="right", va="center",
                    fontsize="small")
    if col_labels is not None:
        for c, s in enumerate(col_labels):
            if c in x0:
                ax.text(x0[c] + tw / 2, -pad_x, str(s), ha="center", va="bottom",
                        fontsize="small")
    if captions is not None:
        for r in range(R):
            for c in range(C):
                text = captions[r][c]
                if text:
                    ax.text(x0[c] + tw / 2, r * (th + pad_y) + th + 1, text, ha="center",
                            va="top", fontsize=6)
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig
