"""Milliseconds per GAN training step and per generator value-and-gradient: pgm's MLP GAN
beside the same networks built from torch's standard modules, in one process.

The reference is the default mnist5k MLP GAN (five-layer G, spectrally normalised D and coarse
D) with what pgm used before: ``nn.Upsample`` (bilinear) for G's half-resolution output,
``F.avg_pool2d`` for the coarse D's input, ``nn.Dropout`` in D, Adam's per-parameter loop and
two passes of D per D step (real, then fake). pgm's: the fixed image maps as two small matrix
products (:class:`pgm.models.gan._Separable`), dropout masks from uniform draws on a CPU,
torch's fused Adam and one pass of D over real and fake rows. Both start from the same
weights; rounds alternate (A B A B), so drift in the machine's speed hits both alike. Also
timed: G's value and gradient on 800 latents, the generator work of one AIS step of
``pgm evaluate`` on a GAN (only the upsampling differs there).

    python bench/gan_step.py [--rounds 5] [--steps 40] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import pgm
from pgm.device import resolve_device
from pgm.inference.adversarial import (
    GANFitConfig,
    discriminator_step,
    gan_settings_for,
    generator_step,
    make_optimizers,
)
from pgm.models.gan import GAN, GANConfig, _Dropout, _Pooled, _Separable


class _Upsample(nn.Module):
    def __init__(self, shape, f):
        super().__init__()
        self.shape, self.f = shape, f

    def forward(self, x):
        x = x.reshape(-1, 1, *self.shape)
        return F.interpolate(x, scale_factor=self.f, mode="bilinear",
                             align_corners=False).flatten(1)


class _AvgPooled(nn.Module):
    def __init__(self, shape, net):
        super().__init__()
        self.shape, self.net = shape, net

    def forward(self, x):
        return self.net(F.avg_pool2d(x.reshape(-1, 1, *self.shape), 2).flatten(1))


def reference(gan: GAN) -> GAN:
    """A copy of ``gan`` with torch's standard modules in place of pgm's."""
    ref = copy.deepcopy(gan)
    for module in list(ref.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, _Dropout):
                setattr(module, name, nn.Dropout(child.p))
            elif isinstance(child, _Separable) and child.rows.shape[0] > child.shape[0]:
                f = child.rows.shape[0] // child.shape[0]
                setattr(module, name, _Upsample(child.shape, f))
            elif isinstance(child, _Pooled):
                setattr(module, name, _AvgPooled(child.pool.shape, child.net))
    return ref


def reference_d_step(gan, opt_d, x_real, label_smoothing):
    """The D step as it was: D on the real batch, then on the fakes."""
    with torch.no_grad():
        x_fake = gan.generate(gan.sample_z(len(x_real)))
    logit_real, logit_fake = gan.discriminate(x_real), gan.discriminate(x_fake)
    t = 1.0 - label_smoothing
    value = (t * F.softplus(-logit_real) + (1 - t) * F.softplus(logit_real)).mean() \
        + F.softplus(logit_fake).mean()
    opt_d.zero_grad(set_to_none=True)
    value.backward()
    opt_d.step()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    data = pgm.load_dataset("mnist5k")
    settings = gan_settings_for(data)
    fields = set(GANConfig.__dataclass_fields__)
    torch.manual_seed(0)
    gan = GAN(GANConfig(data_dim=data.data_dim,
                        **{k: v for k, v in settings.items() if k in fields})).to(device)
    ref = reference(gan).to(device)
    cfg = GANFitConfig(**{k: v for k, v in settings.items()
                          if k in GANFitConfig.__dataclass_fields__})
    x = data.x_train.to(device)
    betas = (cfg.beta1, cfg.beta2)
    players = {
        "pgm": (gan, *make_optimizers(gan, cfg), discriminator_step),
        "torch modules": (ref, torch.optim.Adam(ref.generator.parameters(), cfg.lr, betas),
                          torch.optim.Adam(ref.discriminator.parameters(), cfg.lr_d, betas),
                          reference_d_step),
    }

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_steps(name, n):
        model, opt_g, opt_d, d_step = players[name]
        model.train()
        for _ in range(n):
            xb = x[torch.randint(0, len(x), (cfg.batch_size,), device=device)]
            d_step(model, opt_d, xb, label_smoothing=cfg.label_smoothing)
            generator_step(model, opt_g, cfg.batch_size)
            model.update_ema()
        sync()

    z = torch.randn(800, gan.latent_dim, device=device)

    def g_value_and_grad(name, n):
        model = players[name][0].eval()
        for _ in range(n):
            zz = z.detach().requires_grad_(True)
            torch.autograd.grad(model.generate(zz).square().sum(), zz)
        sync()

    times = {(kind, name): [] for kind in ("step", "g") for name in players}
    for name in players:  # warm-up
        train_steps(name, 5)
        g_value_and_grad(name, 2)
    for _ in range(a.rounds):
        for kind, fn, n in (("step", train_steps, a.steps), ("g", g_value_and_grad, 10)):
            for name in players:
                t0 = time.perf_counter()
                fn(name, n)
                times[kind, name].append((time.perf_counter() - t0) / n * 1e3)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"mnist5k MLP GAN (G {settings['hidden']}, D {settings['d_hidden']}, coarse D "
          f"{settings.get('d_coarse')}), batch {cfg.batch_size}, {a.rounds} alternated rounds")
    print(f"{'':34s} {'pgm ms':>8s} {'torch modules ms':>17s} {'pgm / torch':>12s}")
    for kind, label in (("step", "training step (D step + G step)"),
                        ("g", "G value and gradient, 800 z")):
        m = {name: statistics.median(times[kind, name]) for name in players}
        print(f"{label:34s} {m['pgm']:8.2f} {m['torch modules']:17.2f} "
              f"{m['pgm'] / m['torch modules']:12.2f}")


if __name__ == "__main__":
    main()
