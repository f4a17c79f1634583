"""The figures a VAE's (or any continuous-latent model's) training run writes into
RUN/figures/, composed from :mod:`pgm.plots`.

- ``reconstructions.png``: test inputs above their reconstructions
- ``samples.png``: decoder means of z ~ p(z)
- ``elbo.png``: train/valid ELBO per epoch
- ``latent.png`` and ``manifold.png`` (2-D latent only): test codes coloured by label, and
  the decoded grid of standard-normal quantiles
- ``interpolation.png`` (when an autoencoder baseline is given): the path between two test
  images through code space, VAE above autoencoder
- ``latent_sampler.png`` (``latent_sampler=True``, images): decoded samples from z ~ N(0, I)
  beside z ~ a Gaussian mixture fitted to the training codes
"""

from __future__ import annotations

from pathlib import Path

import torch

from pgm import plots


@torch.no_grad()
def interpolation_row(model, x0: torch.Tensor, x1: torch.Tensor, steps: int = 10):
    """Decoder means along the straight line between the codes (encoder means) of x0 and x1."""
    z = model.encode(torch.stack([x0, x1])).mean
    return model.decode(plots.linear_path(z[0], z[1], steps)).mean


@torch.no_grad()
def write_training_figures(run_dir: str | Path, model, data, history: list[dict], *,
                           baseline=None, latent_sampler: bool = False,
                           n: int = 64) -> list[Path]:
    """Write the figures listed in the module docstring; return their paths."""
    fig_dir = Path(run_dir) / "figures"
    model = model.eval()
    device = next(model.parameters()).device
    x = data.x_test[:max(n, 1000)].to(device)
    y = data.y_test[:max(n, 1000)] if data.y_test is not None else None
    shape = data.image_shape
    name = type(model).__name__
    written = []
    if plots.drawable(x.shape[-1], shape):  # images or 2-D points; other data: curves only
        written += [
            plots.save_figure(plots.reconstructions(x[:10], model.reconstruct(x[:10]), shape,
                                                    title=f"{name}: inputs and reconstructions"),
                              fig_dir / "reconstructions.png"),
            plots.save_figure(plots.samples(model.sample(n), shape, x_data=data.x_train,
                                            title=f"{name}: samples from p(x)"),
                              fig_dir / "samples.png")]
    written.append(plots.save_figure(plots.elbo_curves(history), fig_dir / "elbo.png"))
    if model.latent_dim == 2:
        z = model.encode(x).mean
        written.append(plots.save_figure(
            plots.latent_scatter(z, y, title=f"{name}: test codes (encoder means)"),
            fig_dir / "latent.png"))
        if shape is not None:
            written.append(plots.save_figure(
                plots.manifold(lambda c: model.decode(c.to(device)).mean, shape,
                               title=f"{name}: decoded latent manifold"),
                fig_dir / "manifold.png"))
    if latent_sampler and shape is not None:
        from pgm.models.gmm_figures import latent_sampler_figure

        written.append(plots.save_figure(latent_sampler_figure(model, data),
                                         fig_dir / "latent_sampler.png"))
    if baseline is not None and shape is not None:
        baseline = baseline.eval()
        i, j = _far_apart(x[:100])
        rows = {name: interpolation_row(model, x[i], x[j]),
                type(baseline).__name__: interpolation_row(baseline, x[i], x[j])}
        written.append(plots.save_figure(
            plots.interpolations(rows, shape, title="interpolation through code space"),
            fig_dir / "interpolation.png"))
    return written


def _far_apart(x: torch.Tensor) -> tuple[int, int]:
    """Indices of the two images furthest apart in pixel space (the most telling path)."""
    d = torch.cdist(x, x)
    flat = int(d.argmax())
    return flat // len(x), flat % len(x)
