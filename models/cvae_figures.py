"""Figures of the conditional VAE, written into RUN/figures/ by :func:`write_cvae_figures`.

- ``style_transfer.png``: one test image per digit (rows), its code decoded as every digit
- ``class_samples.png``: one row of samples x ~ p(x | y) per class
- ``reconstructions.png``, ``elbo.png``, and ``latent.png`` for a 2-D latent

:func:`completion_figure`: the structured-output task, top halves completed by the CVAE
(several draws) and by the deterministic baseline, beside the truth. Composed from
:mod:`pgm.plots`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure

from pgm import plots
from pgm.device import device_of

__all__ = ["class_samples_figure", "completion_figure", "style_transfer_figure",
           "write_cvae_figures"]


def _one_per_class(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Index of the first example of each class present in y, in class order."""
    idx = [int((y == c).nonzero()[0]) for c in range(n_classes) if (y == c).any()]
    return torch.tensor(idx, dtype=torch.long)


@torch.no_grad()
def style_transfer_figure(model, x, y, image_shape) -> Figure:
    """Rows: test images; first column the input, then its code decoded with y = 0..C-1."""
    dev = device_of(model)
    out = model.transfer(x.to(dev), y.to(dev)).cpu()  # (B, C, D)
    rows = torch.cat([x.cpu()[:, None], out], dim=1)
    return plots.labelled_grid(rows, image_shape, blank_after=0,
                          col_labels=["input"] + [str(c) for c in range(model.n_classes)],
                          row_labels=[f"y={int(v)}" for v in y],
                          title="CVAE: the style (code of x, y) decoded as every digit")


@torch.no_grad()
def class_samples_figure(model, image_shape, *, per_class: int = 10) -> Figure:
    """One row per class c: decoder means of z ~ p(z | c), x ~ p(x | z, c)."""
    C = model.n_classes
    y = torch.arange(C, device=device_of(model)).repeat_interleave(per_class)
    xs = model.sample(len(y), y).cpu().reshape(C, per_class, -1)
    return plots.labelled_grid(xs, image_shape, row_labels=[f"y={c}" for c in range(C)],
                          title="CVAE: class-conditional samples p(x|y)")


@torch.no_grad()
def write_cvae_figures(run_dir, model, data, history) -> list[Path]:
    """Write the CVAE's figures (module docstring) into RUN/figures/; return their paths."""
    fig_dir = Path(run_dir) / "figures"
    model = model.eval()
    shape = data.image_shape
    dev = device_of(model)
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

    ``result`` is a :class:`pgm.completion.CompletionResult`; the red line marks where the
    given top half ends.
    """
    cvae, base, cd = result.cvae.eval(), result.baseline.eval(), result.data
    top, bottom = cd.y_test[:n], cd.x_test[:n]
    cfg = cvae.config
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        comp = cvae.complete(top.to(device_of(cvae)), draws).cpu()  # (draws, n, Db)
    finally:
        torch.set_rng_state(gen_state)
    pred = base(top.to(device_of(base))).cpu()
    blank = torch.full_like(bottom, 0.5)
    cols = [blank, bottom, pred, *comp]
    rows = torch.stack([torch.cat([top, c], dim=1) for c in cols], dim=1)  # (n, cols, D)
    split = cfg.top_dim // cfg.image_shape[1]
    s = result.summary()
    title = (f"bottom half from the top half; test log p(bottom | top):\n"
             f"CVAE {s['cvae']['mean']:.2f} (K={result.K}), baseline {s['baseline']['mean']:.2f} "
             "nats")
    return plots.labelled_grid(rows, cfg.image_shape, split_row=split,
                          col_labels=["given", "truth", "baseline"]
                          + [f"CVAE {k + 1}" for k in range(draws)], title=title)
