"""Figures of the mixture model, written into RUN/figures/ by :func:`write_gmm_figures`.

- ``components.png``: the component means as images, sorted by weight, weights underneath
  (for 2-D data: the data with each component's 2-sigma ellipse)
- ``samples.png``: the lecture's sampler, m ~ p(m) then x ~ p(x | m)
- ``responsibilities.png``: test images and the components with the largest p(m | x)
- ``elbo.png``: train/valid log-likelihood per epoch (exact for the mixture)

:func:`latent_sampler_figure`: a VAE's decoded samples with codes from N(0, I) beside codes
from a Gaussian mixture fitted to its training codes. Composed from :mod:`pgm.plots`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

from pgm import plots
from pgm.device import device_of
from pgm.errors import DataError

__all__ = ["gmm_components_figure", "latent_sampler_figure", "responsibilities_figure",
           "write_gmm_figures"]


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
    return plots.labelled_grid(grid.reshape(nrows, ncols, -1), image_shape,
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
    r = model.responsibilities(x.to(device_of(model))).cpu()  # (n, M)
    top = min(top, r.shape[1])
    val, idx = r.topk(top, dim=1)
    means = model.means.detach().cpu()
    rows = torch.stack([torch.cat([x[i:i + 1].cpu(), means[idx[i]]]) for i in range(len(x))])
    caps = [[""] + [f"{v:.2f}" for v in val[i].tolist()] for i in range(len(x))]
    return plots.labelled_grid(rows, image_shape, captions=caps, blank_after=0,
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
    device = device_of(vae)
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        gmm = fit_latent_gmm(vae, data.x_train, min(gmm_components, len(data.x_train)))
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
        imgs = plots.upscale_min(np.clip(xs.numpy().reshape(-1, *data.image_shape), 0, 1))
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


