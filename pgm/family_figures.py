"""Figures of the mixture model and the conditional VAE, written into RUN/figures/.

:func:`write_gmm_figures` (a :class:`pgm.models.gmm.GMM` run):

- ``components.png``: the component means as images, sorted by weight, weights underneath
  (for 2-D data: the data with each component's 2-sigma ellipse)
- ``samples.png``: the lecture's sampler, m ~ p(m) then x ~ p(x | m)
- ``responsibilities.png``: test images and the components with the largest p(m | x)
- ``elbo.png``: train/valid log-likelihood per epoch (exact for the mixture)

:func:`write_cvae_figures` (a :class:`pgm.models.cvae.CVAE` run):

- ``style_transfer.png``: one test image per digit (rows), its code decoded as every digit
- ``class_samples.png``: one row of samples x ~ p(x | y) per class
- ``reconstructions.png``, ``elbo.png``, and ``latent.png`` for a 2-D latent

:func:`latent_sampler_figure`: a VAE's decoded samples with codes from N(0, I) beside codes
from a Gaussian mixture fitted to its training codes. :func:`completion_figure`: the
structured-output task, top halves completed by the CVAE (several draws) and by the
deterministic baseline, beside the truth.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

from pgm import plots
from pgm.errors import DataError

__all__ = [
    "class_samples_figure",
    "completion_figure",
    "gmm_components_figure",
    "latent_sampler_figure",
    "responsibilities_figure",
    "style_transfer_figure",
    "write_cvae_figures",
    "write_gmm_figures",
]

_MIN_PX = 24


# ----------------------------------------------------------------------------- a labelled grid


def _upscale(a: np.ndarray) -> np.ndarray:
    k = max(1, math.ceil(_MIN_PX / min(a.shape[-2:])))
    return a if k == 1 else a.repeat(k, axis=-2).repeat(k, axis=-1)


def _labelled_grid(images, image_shape, *, row_labels=None, col_labels=None, captions=None,
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
    tiles = _upscale(np.clip(a.reshape(R, C, h, w), 0, 1))
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
    cell = plots.CELL_IN * max(1.0, w / h)
    fig = Figure(figsize=((C + gap / tw) * cell + label_in + 0.1,
                          R * (plots.CELL_IN + cap_in) + head_in + (0.35 if title else 0.0)),
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


def _device(model) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------- mixture


@torch.no_grad()
def gmm_components_figure(model, image_shape, *, x_data=None, max_components: int = 100,
                          ncols: int = 10) -> Figure:
    """Component means sorted by weight (largest first), each captioned with its weight.

    For 2-D data (``image_shape=None``): the data in grey and each component's 2-sigma
    ellipse, line width growing with the weight.
    """
    w = model.weights.detach().cpu()
    order = torch.argsort(w, descending=True)
    if image_shape is None:
        return _gmm_ellipses(model, order, x_data)
    order = order[:max_components]
    means = model.means.detach().cpu()[order]
    n = len(order)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    grid = torch.ones(nrows * ncols, means.shape[1])
    grid[:n] = means
    caps = [f"{w[i]:.2g}" for i in order.tolist()] + [""] * (nrows * ncols - n)
    shown = "" if n == len(w) else f" (the {n} heaviest of {len(w)})"
    return _labelled_grid(grid.reshape(nrows, ncols, -1), image_shape,
                          captions=[caps[r * ncols:(r + 1) * ncols] for r in range(nrows)],
                          title=f"GMM: component means E[x|m] by weight p(m){shown}")


def _gmm_ellipses(model, order, x_data) -> Figure:
    if model.config.likelihood != "gaussian" or model.data_dim != 2:
        raise DataError("the ellipse figure needs a Gaussian mixture on 2-D data")
    w = model.weights.detach().cpu()
    mu, sd = model.means.detach().cpu(), model.scales.detach().cpu()
    fig = Figure(figsize=(5.2, 4.8), layout="constrained")
    ax = fig.add_subplot()
    if x_data is not None:
        xd = plots._points(x_data, "x_data")
        ax.scatter(*xd.T, s=plots._marker_size(len(xd)), color="0.6", alpha=0.5, linewidths=0)
    for rank, i in enumerate(order.tolist()):
        color = plots._cmap_color("tab10", rank)
        ax.add_patch(Ellipse(tuple(mu[i].tolist()), 4 * sd[i, 0].item(), 4 * sd[i, 1].item(),
                             fill=False, color=color, lw=min(3.0, 0.8 + 8 * w[i].item())))
        ax.plot(*mu[i].tolist(), marker="+", color=color, ms=8)
        if rank < 10:
            ax.annotate(f"{w[i]:.2f}", tuple(mu[i].tolist()), fontsize="x-small", color=color,
                        xytext=(4, 4), textcoords="offset points",
                        bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7))
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal", adjustable="datalim")
    ax.autoscale_view()
    fig.suptitle("GMM: components (2-sigma ellipses) and weights", fontsize="medium")
    return fig


@torch.no_grad()
def responsibilities_figure(model, x, image_shape, *, n: int = 8, top: int = 5) -> Figure:
    """Test images (first column) and the ``top`` components with the largest p(m | x)."""
    x = x[:n]
    r = model.responsibilities(x.to(_device(model))).cpu()  # (n, M)
    top = min(top, r.shape[1])
    val, idx = r.topk(top, dim=1)
    means = model.means.detach().cpu()
    rows = torch.stack([torch.cat([x[i:i + 1].cpu(), means[idx[i]]]) for i in range(len(x))])
    caps = [[""] + [f"{v:.2f}" for v in val[i].tolist()] for i in range(len(x))]
    return _labelled_grid(rows, image_shape, captions=caps, blank_after=0,
                          col_labels=["input"] + [f"#{k + 1}" for k in range(top)],
                          title="GMM: the most responsible components, p(m|x) underneath")


@torch.no_grad()
def write_gmm_figures(run_dir, model, data, history, *, n: int = 64) -> list[Path]:
    """Write the mixture's figures (module docstring) into RUN/figures/; return their paths."""
    fig_dir = Path(run_dir) / "figures"
    model = model.eval()
    shape = data.image_shape
    written = []
    if shape is not None or model.data_dim == 2:  # images or points in the plane
        if shape is not None or model.config.likelihood == "gaussian":
            written.append(plots.save_figure(
                gmm_components_figure(model, shape, x_data=data.x_train),
                fig_dir / "components.png"))
        written.append(plots.save_figure(
            plots.samples(model.sample(n if shape is not None else 1000, mean=False).cpu(),
                          shape, x_data=data.x_train,
                          title="GMM: samples m ~ p(m), x ~ p(x|m)"),
            fig_dir / "samples.png"))
    if shape is not None and len(data.x_test):
        written.append(plots.save_figure(responsibilities_figure(model, data.x_test, shape),
                                         fig_dir / "responsibilities.png"))
    if history:
        written.append(plots.save_figure(plots.elbo_curves(history), fig_dir / "elbo.png"))
    return written


@torch.no_grad()
def latent_sampler_figure(vae, data, gmm_components: int = 10, *, n: int = 64,
                          seed: int = 0) -> Figure:
    """A VAE's decoded samples from z ~ N(0, I) beside z ~ a GMM fitted to its codes.

    The mixture (diagonal Gaussians, EM; :func:`pgm.models.gmm.fit_latent_gmm`) is fitted to
    the encoder means of the training images. The title gives the mean log-density of the
    test codes under both distributions: how much better the mixture describes where the
    codes actually lie. For a 2-D latent a third panel shows the codes and both samples.
    """
    from pgm.models.gmm import fit_latent_gmm

    if data.image_shape is None:
        raise DataError("latent_sampler_figure draws images; the data holds none")
    vae = vae.eval()
    device = _device(vae)
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        gmm = fit_latent_gmm(vae, data.x_train, gmm_components)
        z_prior = vae.prior(n).sample()
        z_gmm = gmm.sample(n, mean=False).to(device)
    finally:
        torch.set_rng_state(gen_state)
    x_prior = vae.decode(z_prior).mean.cpu()
    x_gmm = vae.decode(z_gmm).mean.cpu()
    codes = vae.encode(data.x_test.to(device)).mean
    lp_prior = vae.prior(len(codes)).log_prob(codes).mean().item()
    lp_gmm = gmm.exact_log_marginal(codes).mean().item()
    ncols = max(1, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    two_d = vae.latent_dim == 2
    cell = plots.CELL_IN * 0.8
    fig = Figure(figsize=(2 * ncols * cell + (4.2 if two_d else 0.0) + 0.4,
                          max(nrows * cell, 3.6 if two_d else 0.0) + 0.9),
                 layout="constrained")
    subs = fig.subfigures(1, 3 if two_d else 2, wspace=0.02,
                          width_ratios=[1, 1, 1.1] if two_d else None)
    for sub, xs, label in ((subs[0], x_prior, "z ~ N(0, I)"),
                           (subs[1], x_gmm, f"z ~ GMM({gmm_components}) fitted to the codes")):
        ax = sub.add_subplot()
        imgs = _upscale(np.clip(xs.numpy().reshape(-1, *data.image_shape), 0, 1))
        th, tw = imgs.shape[1:]
        canvas = np.ones((nrows * (th + 1) - 1, ncols * (tw + 1) - 1))
        for i in range(len(imgs)):
            r, c = divmod(i, ncols)
            canvas[r * (th + 1):r * (th + 1) + th, c * (tw + 1):c * (tw + 1) + tw] = imgs[i]
        ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize="small")
    if two_d:
        ax = subs[2].add_subplot()
        zc = vae.encode(data.x_train.to(device)).mean.cpu().numpy()
        ax.scatter(*zc.T, s=2, color="0.6", alpha=0.4, linewidths=0, label="training codes")
        ax.scatter(*z_prior.cpu().numpy().T, s=10, color="tab:blue", label="N(0, I)")
        ax.scatter(*z_gmm.cpu().numpy().T, s=10, color="tab:orange", label="GMM")
        ax.legend(fontsize="x-small", loc="best", markerscale=1.5)
        ax.set_xlabel("$z_1$")
        ax.set_ylabel("$z_2$")
        ax.set_aspect("equal", adjustable="datalim")
    fig.suptitle(f"{type(vae).__name__} decoder means. Test codes' mean log-density: "
                 f"N(0, I) {lp_prior:.2f}, GMM {lp_gmm:.2f} nats", fontsize="medium")
    return fig


# ----------------------------------------------------------------------------- conditional VAE


def _one_per_class(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Index of the first example of each class present in y, in class order."""
    idx = [int((y == c).nonzero()[0]) for c in range(n_classes) if (y == c).any()]
    return torch.tensor(idx, dtype=torch.long)


@torch.no_grad()
def style_transfer_figure(model, x, y, image_shape) -> Figure:
    """Rows: test images; first column the input, then its code decoded with y = 0..C-1."""
    dev = _device(model)
    out = model.transfer(x.to(dev), y.to(dev)).cpu()  # (B, C, D)
    rows = torch.cat([x.cpu()[:, None], out], dim=1)
    return _labelled_grid(rows, image_shape, blank_after=0,
                          col_labels=["input"] + [str(c) for c in range(model.n_classes)],
                          row_labels=[f"y={int(v)}" for v in y],
                          title="CVAE: the style (code of x, y) decoded as every digit")


@torch.no_grad()
def class_samples_figure(model, image_shape, *, per_class: int = 10) -> Figure:
    """One row per class c: decoder means of z ~ p(z | c), x ~ p(x | z, c)."""
    C = model.n_classes
    y = torch.arange(C, device=_device(model)).repeat_interleave(per_class)
    xs = model.sample(len(y), y).cpu().reshape(C, per_class, -1)
    return _labelled_grid(xs, image_shape, row_labels=[f"y={c}" for c in range(C)],
                          title="CVAE: class-conditional samples p(x|y)")


@torch.no_grad()
def write_cvae_figures(run_dir, model, data, history) -> list[Path]:
    """Write the CVAE's figures (module docstring) into RUN/figures/; return their paths."""
    fig_dir = Path(run_dir) / "figures"
    model = model.eval()
    shape = data.image_shape
    dev = _device(model)
    x, y = data.x_test[:1000], data.y_test[:1000]
    written = []
    if shape is not None:
        idx = _one_per_class(y, model.n_classes)
        written += [
            plots.save_figure(style_transfer_figure(model, x[idx], y[idx], shape),
                              fig_dir / "style_transfer.png"),
            plots.save_figure(class_samples_figure(model, shape),
                              fig_dir / "class_samples.png"),
        ]
    written.append(plots.save_figure(
        plots.reconstructions(x[:10], model.reconstruct(x[:10].to(dev), y[:10].to(dev)).cpu(),
                              shape, title="CVAE: inputs and reconstructions given y"),
        fig_dir / "reconstructions.png"))
    if history:
        written.append(plots.save_figure(plots.elbo_curves(history), fig_dir / "elbo.png"))
    if model.latent_dim == 2:
        z = model.encode(x.to(dev), y.to(dev)).mean.cpu()
        written.append(plots.save_figure(
            plots.latent_scatter(z, y, title="CVAE: test codes q(z|x,y), coloured by y"),
            fig_dir / "latent.png"))
    return written


@torch.no_grad()
def completion_figure(result, *, n: int = 8, draws: int = 3, seed: int = 0) -> Figure:
    """Top halves completed by the CVAE (``draws`` z ~ p(z|top)) and the baseline, and truth.

    ``result`` is a :class:`pgm.models.cvae.CompletionResult`; the red line marks where the
    given top half ends.
    """
    cvae, base, cd = result.cvae.eval(), result.baseline.eval(), result.data
    top, bottom = cd.y_test[:n], cd.x_test[:n]
    cfg = cvae.config
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        comp = cvae.complete(top.to(_device(cvae)), draws).cpu()  # (draws, n, Db)
    finally:
        torch.set_rng_state(gen_state)
    pred = base(top.to(_device(base))).cpu()
    blank = torch.full_like(bottom, 0.5)
    cols = [blank, bottom, pred, *comp]
    rows = torch.stack([torch.cat([top, c], dim=1) for c in cols], dim=1)  # (n, cols, D)
    split = cfg.top_dim // cfg.image_shape[1]
    s = result.summary()
    title = (f"bottom half from the top half; test log p(bottom | top):\n"
             f"CVAE {s['cvae']['mean']:.2f} (K={result.K}), baseline {s['baseline']['mean']:.2f} "
             "nats")
    return _labelled_grid(rows, cfg.image_shape, split_row=split,
                          col_labels=["given", "truth", "baseline"]
                          + [f"CVAE {k + 1}" for k in range(draws)], title=title)
