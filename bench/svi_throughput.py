"""Seconds per training epoch: pgm's fit() beside a hand-written PyTorch loop and Pyro's SVI.

The same 784-400-20 VAE (Bernoulli decoder, Adam 1e-3, batch 128) on mnist5k, interleaved in
one process: each round runs every method for ``--epochs`` epochs, so drift in the machine's
speed hits all of them alike. Reported: median seconds per epoch of the training pass and
the ratio to the hand-written loop.

    python bench/svi_throughput.py [--rounds 5] [--epochs 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import pyro.optim
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from torch import nn

import pgm
from pgm.device import resolve_device

H, L, BATCH, LR = 400, 20, 128, 1e-3


def make_vae(data, device):
    return pgm.VAE(data_dim=data.data_dim, latent_dim=L, hidden=(H,)).to(device)


def hand_written(data, device, epochs):
    """The reference: the same layers, BCE + analytic KL, a bare Adam loop."""
    enc = nn.Sequential(nn.Linear(784, H), nn.ReLU(), nn.Linear(H, 2 * L)).to(device)
    dec = nn.Sequential(nn.Linear(L, H), nn.ReLU(), nn.Linear(H, 784)).to(device)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=LR)
    x = data.x_train.to(device)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(x), device=device)
        total = torch.zeros((), device=device)
        for i in range(0, len(x), BATCH):
            xb = x[perm[i:i + BATCH]]
            m, s = enc(xb).chunk(2, -1)
            z = m + torch.exp(0.5 * s) * torch.randn_like(m)
            rec = F.binary_cross_entropy_with_logits(dec(z), xb, reduction="sum")
            kl = 0.5 * (s.exp() - 1 - s + m**2).sum()
            loss = (rec + kl) / len(xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        total.item()
        times.append(time.perf_counter() - t0)
    return times


def pgm_fit(data, device, epochs, **kw):
    model = make_vae(data, device)
    history = pgm.fit(model, data, epochs=epochs, batch_size=BATCH, lr=LR, device=str(device),
                      patience=None, clip_norm=None, progress=False, **kw)
    return [r["seconds"] for r in history]


def pyro_svi(data, device, epochs):
    """Pyro's plain SVI with pyro.optim.Adam (per-parameter wrappers, the param store)."""
    pyro.clear_param_store()
    vae = make_vae(data, device)

    def model(x):
        pyro.module("vae", vae)
        return vae.model(x)

    svi = SVI(model, vae.guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    x = data.x_train.to(device)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(x), device=device)
        for i in range(0, len(x), BATCH):
            svi.step(x[perm[i:i + BATCH]])
        times.append(time.perf_counter() - t0)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3, help="epochs per method per round")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = resolve_device(args.device)
    data = pgm.load_dataset("mnist5k")
    methods = {
        "hand-written torch loop": lambda: hand_written(data, device, args.epochs),
        "pgm fit (elbo)": lambda: pgm_fit(data, device, args.epochs),
        "pgm fit (Trace_ELBO module)": lambda: pgm_fit(data, device, args.epochs,
                                                       use_pyro_elbo=True),
        "pyro SVI + pyro.optim.Adam": lambda: pyro_svi(data, device, args.epochs),
    }
    times = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, run in methods.items():
            times[name] += run()[1:]  # drop each round's first epoch (warm-up)
    ref = statistics.median(times["hand-written torch loop"])
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{len(data.x_train)} images/epoch, batch {BATCH}, 784-{H}-{L}")
    print(f"{'method':32s} {'s/epoch':>9s} {'ratio':>7s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:32s} {med:9.4f} {med / ref:7.2f}x")


if __name__ == "__main__":
    main()
