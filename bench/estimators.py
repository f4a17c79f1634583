"""Seconds and peak memory of pgm's vectorised estimators beside a per-datapoint loop, and the
traced path for any Pyro program beside the plain path for pgm's own models.

IWAE with K=5000 on 1,000 mnist5k test images, and AIS (T=1000, 16 chains, 10 leapfrog) on
100 images, for a 784-400-20 VAE, each beside the same estimator written as a plain Python
loop over datapoints (as pythae does it) in the same process. The loops are timed on a few
datapoints and reported per datapoint; ratios compare seconds per datapoint.

Roofline: each estimator's seconds over the seconds its decoder's matrix products need at the
matmul rate measured just before and just after it (``/ matmul time``; IWAE: one forward pass
per particle, AIS: a forward and an input-gradient pass per chain, pilot chains included, at
every leapfrog step). IWAE runs in a fresh process, whose peak resident
memory (``getrusage``, the whole process: interpreter, torch, data, model) is printed beside
it. On a shared 2-core CPU, one thread (``OMP_NUM_THREADS=1``; two threads' OpenMP spin-waits
collapse under load): IWAE K=5000 on 1,000 images 1.47x, 1.64x and 1.61x in three quiet runs
(1.5-2.1x while the Bernoulli log density took a softplus pass; 2.0-2.4x with
``Bernoulli(logits=h)``'s log density and the encoder run per chunk), the process peaking at
0.47 GB, all of it before the call (3.1 GB with the weights kept as per-chunk pieces); AIS
T=200 on 100 images 1.29x, 1.31x and 1.29x (1.38x with the softplus pass, 1.42-1.44x before the
prior's gradient was taken in closed form), and 1.55x, 1.62x and 1.57x for the same run with
autograd of log p(x, z) and log p(z) at every leapfrog step (the row "autograd every step":
the inner steps' gradient from the likelihood's closed-form score skips the log density's
pass).
What is left beside the products (IWAE, in units of the products' time): the decoder's bias
broadcasts, ReLU and thin first product 0.12, the Bernoulli log density's dot product, |h|,
sigmoid and block products 0.38 (:func:`pgm.likelihoods.bernoulli_log_prob`; 0.5 with
softplus), q(z|x) and p(z) 0.08; for AIS the score's sigmoid, the ReLU and its backward pass.
torch.compile of AIS's value-and-gradient took 136 s to compile and ran 1.3x slower. The row
"compiled kernels" runs IWAE again in a fresh process with ``PGM_COMPILE=1`` (:mod:`pgm.compiled`:
the log density's passes fused into one loop), its compiling done in a warm-up call of the same
chunk shapes and printed apart: 23.9 against 33.2 s eager (0.72x; 1.34x against 1.87x the
products' time at a measured 181 GFLOP/s; AIS 1.34x that run); on a quiet machine 24.9 against
26.3 s (0.95x; 1.42x against 1.61x at 190 GFLOP/s; AIS 1.29x).

The same network measured through :class:`pgm.inference.program.Program` (the callables read
off the model/guide traces, as for a user's own Pyro program) and through the plain
distributions of :func:`pgm.inference.adapter.latent_callables`: IWAE (K=1000) and AIS, run
alternately (A B A B) in this process, with the ratio traced / plain.

    python bench/estimators.py [--n-iwae 1000] [--n-ais 100] [--ais-steps 1000] [--device cpu]
    python bench/estimators.py --traced-only   # just the traced-against-plain table
    python bench/estimators.py --bdmc-only     # just BDMC's reverse pass against its forward
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

import pgm
import pgm.compiled
from pgm.device import resolve_device
from pgm.inference.adapter import latent_callables
from pgm.inference.ais import ais, bdmc_upper
from pgm.inference.bounds import default_chunk_size, iwae_bound
from pgm.inference.program import Program
from pgm.inference.schedules import sigmoid_schedule


class PeakRSS:
    """Peak resident memory above the start, sampled every 5 ms (CPU); CUDA's own counter."""

    def __init__(self, device):
        self.device = device

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.base = self.peak = self._rss()
        self.running = True

        def sample():
            while self.running:
                self.peak = max(self.peak, self._rss())
                time.sleep(0.005)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        else:
            self.running = False
            self.thread.join()
            self.mb = (self.peak - self.base) / 2**20


@torch.no_grad()
def iwae_loop(model, x, K, chunk=500):
    """Reference: one datapoint at a time, K weights in chunks, logsumexp in float64."""
    out = []
    for xi in x:
        xi = xi[None]
        q, log_w = model.encode(xi), []
        for s in range(0, K, chunk):
            z = q.sample((min(chunk, K - s),))
            log_w.append((model.decode(z).log_prob(xi) + model.prior(1).log_prob(z)
                           - q.log_prob(z)).double())
        out.append(torch.logsumexp(torch.cat(log_w), 0) - math.log(K))
    return torch.cat(out)


def ais_loop(model, x, T, chains, leapfrog, step=0.05):
    """Reference: AIS with HMC from the prior, one datapoint at a time, fixed step size."""
    betas = sigmoid_schedule(T)
    out = []
    for xi in x:
        xi = xi[None]

        def log_lik(z, xi=xi):
            return model.decode(z).log_prob(xi)

        def energy_grad(z, beta, log_lik=log_lik):
            z = z.detach().requires_grad_()
            u = -(model.prior(1).log_prob(z) + beta * log_lik(z))
            return u.detach(), torch.autograd.grad(u.sum(), z)[0]

        z = model.prior(1).sample((chains,))  # (C, 1, L)
        log_w = torch.zeros(chains, 1, dtype=torch.float64)
        for t in range(1, T + 1):
            b0, b1 = float(betas[t - 1]), float(betas[t])
            with torch.no_grad():
                log_w += (b1 - b0) * log_lik(z).double()
            u0, g = energy_grad(z, b1)
            p = torch.randn_like(z)
            h0 = u0 + 0.5 * (p * p).sum(-1)
            zn, pn = z, p - 0.5 * step * g
            for i in range(leapfrog):
                zn = zn + step * pn
                u1, g = energy_grad(zn, b1)
                if i < leapfrog - 1:
                    pn = pn - step * g
            pn = pn - 0.5 * step * g
            h1 = u1 + 0.5 * (pn * pn).sum(-1)
            accept = (torch.rand_like(h0).log() < (h0 - h1)).unsqueeze(-1)
            z = torch.where(accept, zn.detach(), z)
        out.append(torch.logsumexp(log_w, 0) - math.log(chains))
    return torch.cat(out)


def traced_vs_plain(model, x, n_iwae: int, n_ais: int, ais_steps: int, repeats: int = 3):
    """Seconds of IWAE and AIS through the traced and the plain callables, alternated."""
    plain = latent_callables(model)
    traced = Program(model.model, model.guide, x[:2]).callables()
    jobs = {
        "IWAE K=1000": lambda f: iwae_bound(f, x[:n_iwae], Ks=(1000,))[1000].mean,
        f"AIS T={ais_steps}, 16 chains": lambda f: ais(
            f, x[:n_ais], schedule=sigmoid_schedule(ais_steps), num_chains=16,
            num_leapfrog=10).mean,
    }
    print(f"\n{'estimator (same network)':30s} {'plain s':>9s} {'traced s':>9s} {'ratio':>6s} "
          f"{'|mean diff|':>11s}")
    for name, job in jobs.items():
        times = {"plain": [], "traced": []}
        means = {}
        for _ in range(repeats):
            for label, f in (("plain", plain), ("traced", traced)):
                torch.manual_seed(3)
                t0 = time.perf_counter()
                means[label] = job(f)
                times[label].append(time.perf_counter() - t0)
        a, b = min(times["plain"]), min(times["traced"])
        print(f"{name:30s} {a:9.2f} {b:9.2f} {b / a:6.2f} "
              f"{abs(means['plain'] - means['traced']):11.2e}")


def matmul_rate(device, rows: int = 8192, repeats: int = 20) -> float:
    """FLOP/s of this device on the decoder's largest product, (rows, 400) @ (400, 784)."""
    a = torch.randn(rows, 400, device=device)
    w = torch.randn(400, 784, device=device)
    for _ in range(3):
        a @ w
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ w
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * rows * 400 * 784 * repeats / (time.perf_counter() - t0)


def with_rate(device, job):
    """``job()`` and the matmul rate averaged over a measurement just before and just after it
    (on a shared machine the rate drifts by tens of percent within minutes)."""
    before = matmul_rate(device, repeats=20)
    out = job()
    return out, (before + matmul_rate(device, repeats=20)) / 2


def iwae_in_fresh_process(model, n: int, device, K: int = 5000, compiled: bool = False) -> dict:
    """Seconds, mean and peak memory of IWAE with K particles on the first n test images, run in
    a child process that loads ``model``'s weights (:func:`iwae_child`); ``compiled``: with
    :mod:`pgm.compiled`'s kernels."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "vae.pt"
        torch.save(model.state_dict(), weights)
        out = subprocess.run(
            [sys.executable, __file__, "--iwae-child", str(weights), "--n-iwae", str(n),
             "--device", str(device), "--iwae-k", str(K)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PGM_COMPILE": "1" if compiled else "0"})
    return json.loads(out.stdout.splitlines()[-1])


def iwae_child(weights: str, n: int, K: int, device) -> None:
    """Print ``{"seconds", "mean", "peak_mb", "before_mb", "warmup"}`` of IWAE on the first n test
    images: the process's peak resident memory (``ru_maxrss``) after the call and before it; on
    a GPU the peak of allocated device memory (``before_mb``: the memory allocated before the
    call). A warm-up call first (``warmup``: its seconds), with a full chunk of particles and one
    of the last chunk's size, which with compiled kernels compiles them for the run's chunk
    shapes, so ``seconds`` times the kernels, not the compiler."""
    data = pgm.load_dataset("mnist5k", test_fraction=0.2)
    model = pgm.VAE(data_dim=784, latent_dim=20, hidden=(400,))
    model.load_state_dict(torch.load(weights))
    model.to(device).eval()
    x = data.x_test[:n].to(device)
    f = latent_callables(model)
    chunk = default_chunk_size(x)
    t0 = time.perf_counter()
    iwae_bound(f, x, Ks=(chunk + K % chunk,))
    warmup = time.perf_counter() - t0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        before = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(1)
    res = iwae_bound(f, x, Ks=(K,))[K]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    print(json.dumps({"seconds": res.seconds, "mean": res.mean, "peak_mb": peak,
                      "before_mb": before, "warmup": warmup, "compiled": pgm.compiled.enabled()}))


def decoder_flops(L: int = 20, H: int = 400, D: int = 784) -> int:
    """Multiply-adds x 2 of one decoder pass per row (the encoder runs once per datapoint)."""
    return 2 * (L * H + H * D)


def bdmc_directions(model, n: int, steps: int, repeats: int = 2):
    """Seconds of BDMC's forward pass (AIS with pilot chains) and its reverse pass (the forward
    run's step sizes, as pgm evaluate runs it) on n datapoints simulated from the model,
    alternated."""
    torch.manual_seed(4)
    with torch.no_grad():
        z = model.prior(n).sample()
        x = model.decode(z).sample()
    f = latent_callables(model)
    schedule = sigmoid_schedule(steps)
    times = {"forward": [], "reverse": []}
    for _ in range(repeats):
        fwd = ais(f, x, schedule=schedule, num_chains=16)
        times["forward"].append(fwd.seconds)
        rev = bdmc_upper(f, x, z, schedule=schedule, num_chains=16, adapt="none",
                         step_size=fwd.extra["step_sizes"])
        times["reverse"].append(rev.seconds)
    a, b = min(times["forward"]), min(times["reverse"])
    print(f"\nBDMC T={steps}, 16 chains, {n} simulated datapoints: forward {a:.2f} s (16 + 4 "
          f"pilot chains), reverse {b:.2f} s; reverse / forward = {b / a:.2f}; sandwich "
          f"{(rev.per_datapoint - fwd.per_datapoint).mean().item():.3f} nats")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-iwae", type=int, default=1000)
    p.add_argument("--n-ais", type=int, default=100)
    p.add_argument("--ais-steps", type=int, default=1000)
    p.add_argument("--loop-n", type=int, default=5, help="datapoints for the loop references")
    p.add_argument("--device", default="cpu")
    p.add_argument("--traced-only", action="store_true",
                   help="only the traced-against-plain comparison (IWAE on 100, AIS T=200 on 20)")
    p.add_argument("--bdmc-only", action="store_true",
                   help="only BDMC's reverse pass against its forward pass (T=200 on 20)")
    p.add_argument("--iwae-child", metavar="WEIGHTS", help=argparse.SUPPRESS)
    p.add_argument("--iwae-k", type=int, default=5000, help=argparse.SUPPRESS)
    args = p.parse_args()
    device = resolve_device(args.device)
    if args.iwae_child:
        iwae_child(args.iwae_child, args.n_iwae, args.iwae_k, device)
        return
    data = pgm.load_dataset("mnist5k", test_fraction=0.2)  # 1,000 test images
    torch.manual_seed(0)
    model = pgm.VAE(data_dim=784, latent_dim=20, hidden=(400,))
    pgm.fit(model, data, epochs=3, device=str(device), progress=False)
    model.eval()
    x = data.x_test.to(device)
    f = latent_callables(model)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          "VAE 784-400-20 trained 3 epochs")
    if args.traced_only:
        traced_vs_plain(model, x, 100, 20, 200)
        return
    if args.bdmc_only:
        bdmc_directions(model, 20, 200)
        return
    rows = []
    rates = {}

    child, rates[0] = with_rate(device, lambda: iwae_in_fresh_process(model, args.n_iwae, device))
    rows.append(("IWAE K=5000, pgm (vectorised)", args.n_iwae, child["seconds"],
                 child["peak_mb"] - child["before_mb"], child["mean"]))
    with PeakRSS(device) as mem:
        t0 = time.perf_counter()
        ref = iwae_loop(model, x[:args.loop_n], 5000)
        t = time.perf_counter() - t0
    rows.append(("IWAE K=5000, per-datapoint loop", args.loop_n, t, mem.mb, ref.mean().item()))
    fused, rates[5] = with_rate(device, lambda: iwae_in_fresh_process(
        model, args.n_iwae, device, compiled=True))

    torch.manual_seed(2)
    with PeakRSS(device) as mem:
        res, rates[2] = with_rate(device, lambda: ais(
            f, x[:args.n_ais], schedule=sigmoid_schedule(args.ais_steps), num_chains=16,
            num_leapfrog=10))
    rows.append((f"AIS T={args.ais_steps}, pgm (vectorised)", args.n_ais, res.seconds, mem.mb,
                 res.mean))
    loop_n = max(1, args.loop_n // 5)
    with PeakRSS(device) as mem:
        t0 = time.perf_counter()
        ref = ais_loop(model, x[:loop_n], args.ais_steps, 16, 10)
        t = time.perf_counter() - t0
    rows.append((f"AIS T={args.ais_steps}, per-datapoint loop", loop_n, t, mem.mb,
                 ref.mean().item()))
    # the same AIS with autograd of log p(x, z) and log p(z) at every leapfrog step, as
    # before the closed-form scores served the inner steps (same seed: the same draws)
    torch.manual_seed(2)
    with PeakRSS(device) as mem:
        res, rates[4] = with_rate(device, lambda: ais(
            f._replace(grad_log_joint=None, grad_log_prior=None), x[:args.n_ais],
            schedule=sigmoid_schedule(args.ais_steps), num_chains=16, num_leapfrog=10))
    rows.append((f"AIS T={args.ais_steps}, autograd every step", args.n_ais, res.seconds,
                 mem.mb, res.mean))
    rows.append(("IWAE K=5000, compiled kernels" + ("" if fused["compiled"] else " (failed)"),
                 args.n_iwae, fused["seconds"], fused["peak_mb"] - fused["before_mb"],
                 fused["mean"]))

    # Roofline: the seconds the decoder's matrix products need at the measured matmul rate.
    # IWAE: one forward pass per draw; AIS: T * leapfrog value-and-gradient passes per chain
    # (16 + 4 pilot), each a forward and an input-gradient pass (2x the forward).
    ideal = {**{i: args.n_iwae * 5000 * decoder_flops() / rates[i] for i in (0, 5)},
             **{i: args.n_ais * 20 * args.ais_steps * 10 * 2 * decoder_flops() / rates[i]
                for i in (2, 4)}}
    print(f"matmul rate {rates[0] / 1e9:.1f} and {rates[5] / 1e9:.1f} GFLOP/s around IWAE eager "
          f"and compiled, {rates[2] / 1e9:.1f} and "
          f"{rates[4] / 1e9:.1f} around the AIS runs ((8192, 400) @ (400, 784), float32)")
    print(f"{'estimator':38s} {'n':>5s} {'seconds':>9s} {'s/datapoint':>12s} "
          f"{'peak MB':>8s} {'mean (nats)':>12s} {'/ matmul time':>13s}")
    for i, (name, n, t, mb, mean) in enumerate(rows):
        roof = f"{t / ideal[i]:13.2f}" if i in ideal else ""
        print(f"{name:38s} {n:5d} {t:9.2f} {t / n:12.4f} {mb:8.0f} {mean:12.2f}{roof}")
    print(f"IWAE K=5000 on {args.n_iwae} images in a fresh process: peak resident memory "
          f"{child['peak_mb']:.0f} MB ({child['before_mb']:.0f} MB before the call); compiled "
          f"kernels (PGM_COMPILE=1): compiled / eager {rows[5][2] / rows[0][2]:.2f}, their "
          f"warm-up call (compiling them) {fused['warmup']:.1f} s against "
          f"{child['warmup']:.1f} s eager")
    for i in (0, 2):
        speedup = (rows[i + 1][2] / rows[i + 1][1]) / (rows[i][2] / rows[i][1])
        print(f"{rows[i][0].split(',')[0]}: per-datapoint loop / pgm = {speedup:.1f}x")
    traced_vs_plain(model, x, min(args.n_iwae, 100), min(args.n_ais, 20), 200)
    bdmc_directions(model, min(args.n_ais, 20), 200)


if __name__ == "__main__":
    main()
