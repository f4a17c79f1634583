r"""What a GAN's training run records beside its weights, for its figures: the 1-D snapshots
(D(x), the generator's density and the map z -> x on a grid, the material of Goodfellow et
al.'s Fig. 1) in RUN/snapshots.json, and every step's statistics in RUN/steps.csv.

:func:`pgm.inference.adversarial.fit_gan` writes them; :mod:`pgm.models.gan_figures` reads
them; both draw the same fixed noise (:func:`noise_generator`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from pgm import io

SNAPSHOTS, STEPS = "snapshots.json", "steps.csv"
STEP_KEYS = ("d_loss", "d_real", "d_fake", "d_accuracy", "g_loss")
FIXED_Z, SNAPSHOT_Z = 1, 2  # streams of the figures' fixed noise


def noise_generator(seed: int, stream: int) -> torch.Generator:
    """The fixed noise of a run's figures and snapshots: stream FIXED_Z or SNAPSHOT_Z."""
    return torch.Generator().manual_seed(seed * 100_003 + 50_000 + stream)


def snapshot_grid(gan, x_train: torch.Tensor, seed: int = 0, points: int = 400) -> torch.Tensor:
    """The x grid of 1-D snapshots: the data's range and G's initial range, padded by 25%."""
    with torch.no_grad():
        g = gan.generate(gan.sample_z(2000, noise_generator(seed, SNAPSHOT_Z))).cpu()
    lo = min(x_train.min().item(), g.min().item())
    hi = max(x_train.max().item(), g.max().item())
    pad = 0.25 * max(hi - lo, 1e-3)
    return torch.linspace(lo - pad, hi + pad, points, dtype=torch.float64)


@torch.no_grad()
def snapshot_1d(gan, x_grid: torch.Tensor, epoch: int, seed: int = 0, n: int = 5000,
                lines: int = 25) -> dict:
    """D(x) on ``x_grid``, a KDE of the generator's density there, and G on a z grid.

    The generator's density uses the same ``n`` fixed noise draws at every snapshot and a
    Gaussian KDE with Silverman's bandwidth (robust spread); the z grid is ``lines``
    equally spaced quantiles of p(z). Everything is returned as float64 CPU tensors.
    """
    from pgm.inference.parzen import parzen_log_density

    was_training = gan.training
    gan.eval()
    dev = gan.device
    d = torch.sigmoid(gan.discriminate(x_grid.float().to(dev)[:, None])).double().cpu()
    s = gan.generate(gan.sample_z(n, noise_generator(seed, SNAPSHOT_Z))).double().cpu()
    q = torch.quantile(s[:, 0], torch.tensor([0.25, 0.75], dtype=torch.float64))
    spread = min(s.std().item(), (q[1] - q[0]).item() / 1.349) or s.std().item()
    h = max(0.9 * spread * n ** -0.2, 1e-3 * (x_grid[-1] - x_grid[0]).item())
    pg = parzen_log_density(s, x_grid[:, None], h).exp()
    u = (torch.arange(lines, dtype=torch.float64) + 0.5) / lines  # quantiles of p(z) in (0, 1)
    z = 2 * u - 1 if gan.config.z_dist == "uniform" else torch.special.ndtri(u)
    gz = gan.generate(z.float().to(dev)[:, None]).double().cpu()[:, 0]
    gan.train(was_training)
    return {"epoch": int(epoch), "d": d, "pg": pg, "z": z, "gz": gz, "bandwidth": h}


def save_snapshots(path: Path, x_grid: torch.Tensor, snapshots: list[dict]) -> None:
    def plain(v):
        return v.tolist() if isinstance(v, torch.Tensor) else v

    io.atomic_write_json(path, {"x_grid": x_grid.tolist(),
                                "snapshots": [{k: plain(v) for k, v in s.items()}
                                              for s in snapshots]})


def load_snapshots(path: Path) -> tuple[torch.Tensor, list[dict]] | None:
    """(x_grid, snapshots) from RUN/snapshots.json, or None when absent."""
    import json

    if not Path(path).is_file():
        return None
    obj = json.loads(Path(path).read_text())
    snaps = [{k: torch.tensor(v, dtype=torch.float64) if isinstance(v, list) else v
              for k, v in s.items()} for s in obj["snapshots"]]
    return torch.tensor(obj["x_grid"], dtype=torch.float64), snaps


def write_steps(path: Path, rows: list[list[float]]) -> None:
    lines = [",".join(("epoch", "step") + STEP_KEYS)]
    lines += [",".join(repr(v) if isinstance(v, float) else str(v) for v in r) for r in rows]
    io.atomic_write_text(path, "\n".join(lines) + "\n")


def read_steps(path: Path, last_epoch: int) -> list[list]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [[int(r[0]), int(r[1]), *map(float, r[2:])] for r in rows if int(r[0]) <= last_epoch]
