r"""``evaluate()``: every estimator of log p(x) on one trained model, with error bars.

log p(x) = ELBO + KL(q(z|x) || p(z|x)): this module measures both sides. On ``n`` datapoints
of a split it draws ``max(ks)`` importance weights per datapoint once, and from them reports
the ELBO and every IWAE_K (Burda et al. 2015) with PSIS k-hat; on the first ``ais_n`` of them
AIS with HMC (Wu et al. 2017); optionally BDMC's upper bound on data simulated from the
model (Grosse et al. 2015), the amortization/approximation gaps (Cremer et al. 2018), and
exact log p(x) where it exists (closed form, enumeration, or quadrature for latent dim <= 2).

Datapoints are processed in batches aligned to their index in the split; each batch's random
stream is seeded from (seed, index of its first datapoint), so results do not depend on how
the work is split up. Under ``torchrun`` each rank takes a contiguous run of whole batches
(:func:`pgm.distributed.shard`) and the per-batch results are gathered in index order on
every rank, so a sharded run returns the per-datapoint values of an unsharded one; an
estimator's ``seconds`` then sums the ranks' time. Everything here is built on
:func:`pgm.inference.adapter.latent_callables` and works for any model that honours the
contract.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from pgm import distributed as dist
from pgm.device import resolve_device
from pgm.errors import DataError
from pgm.inference.adapter import latent_callables
from pgm.inference.bounds import iwae_from_log_weights, log_importance_weights
from pgm.inference.callables import Estimate
from pgm.inference.schedules import linear_schedule, sigmoid_schedule

SCHEDULES = {"linear": linear_schedule, "sigmoid": sigmoid_schedule}
#: Quadrature stops refining when log p(x) moves less than this (nats); the decoders run in
#: float32, whose rounding alone moves a 784-pixel log-likelihood by ~1e-4.
QUADRATURE_TOL = 1e-3

#: Paper protocols a user can name; their settings are written into the results.
PRESETS: dict[str, dict] = {
    "burda2015": {"ks": (1, 10, 100, 1000, 5000), "ais_steps": 0},
    "wu2017": {"ks": (1, 10, 100, 1000), "ais_steps": 10_000, "ais_chains": 16,
               "ais_leapfrog": 10, "ais_schedule": "sigmoid", "bdmc": True},
    "cremer2018": {"ks": (1, 5000), "ais_steps": 1000, "gaps": True},
}


@dataclass
class EvalConfig:
    ks: tuple[int, ...] = (1, 10, 100, 1000, 5000)
    n: int = 1000  # datapoints of the split for the ELBO/IWAE estimators
    split: str = "test"
    batch_size: int = 100  # datapoints per batch (memory: K x batch decoder outputs per chunk)
    prior_proposal: bool = False  # also IWAE with p(z) as the proposal (to show it fails)
    ais_steps: int = 1000  # T intermediate distributions; 0 turns AIS off
    ais_chains: int = 16
    ais_leapfrog: int = 10
    ais_schedule: str = "sigmoid"
    ais_initial: str = "prior"  # p_0 of the annealing path: "prior" or "q"
    ais_n: int = 100  # AIS is run on the first ais_n of the n datapoints
    bdmc: bool = False  # BDMC sandwich on ais_n datapoints simulated from the model
    gaps: bool = False  # amortization / approximation gaps on the first gaps_n datapoints
    gaps_n: int = 100
    gaps_steps: int = 500
    exact: bool = True  # closed form / enumeration / quadrature where the model allows it
    posterior_check: int = 3  # datapoints whose q(z|x) is drawn against a NUTS reference (L=2)
    seed: int = 0
    device: str = "auto"
    preset: str | None = None

    def __post_init__(self):
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ValueError(f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive integers, got {self.ks}")
        if self.ais_schedule not in SCHEDULES:
            raise ValueError(f"unknown ais_schedule {self.ais_schedule!r}; "
                             f"known: {', '.join(SCHEDULES)}")
        if self.split not in ("train", "valid", "test"):
            raise ValueError(f"split must be train, valid or test, got {self.split!r}")
        if min(self.n, self.batch_size) < 1:
            raise ValueError("n and batch_size must be positive")


def with_preset(config: EvalConfig, preset: str | None) -> EvalConfig:
    """``config`` with the preset's settings applied (the preset's name is recorded)."""
    if preset is None:
        return config
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return replace(config, preset=preset, **PRESETS[preset])


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """This rank's batches (lo, hi) of the datapoints [0, n) on the grid of ``batch_size``:
    all of them in one process, a contiguous run of them under torchrun."""
    return dist.shard([(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)])


def _span(batches: list[tuple[int, int]]) -> tuple[int, int]:
    """First and end index of this rank's batches; progress counts from the first."""
    return (batches[0][0], batches[-1][1]) if batches else (0, 0)


STREAMS = {"iwae": 0, "iwae_prior": 1, "ais": 2, "bdmc": 3, "bdmc_rev": 4, "bdmc_sim": 5,
           "gaps": 6}


def _seed_batch(seed: int, start: int, stream: str) -> torch.Generator:
    """Seed torch's RNG (the callables sample from it) from (seed, first index, stream) and
    return a generator seeded alike for the kernels' own draws: a datapoint's random numbers
    depend on its index, not on which batch or process handles it."""
    s = ((seed * 1_000_003 + start) * len(STREAMS) + STREAMS[stream]) * 2
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s + 1)


def concat_estimates(parts: list[Estimate], extra: dict | None = None) -> Estimate:
    """One Estimate from batches: per-datapoint values concatenated, seconds summed; scalar
    extras are n-weighted means (``*_min``/``*_max``: min/max; flags: all; settings: first)."""
    per = torch.cat([p.per_datapoint for p in parts])
    seconds = sum(p.seconds for p in parts)
    merged: dict = {}
    for key, value in parts[0].extra.items():
        values = [p.extra.get(key) for p in parts]
        if isinstance(value, bool):
            merged[key] = all(values)  # e.g. converged: only if every batch converged
        elif isinstance(value, str) or value is None:
            merged[key] = value
        elif key.endswith("_min") or key.startswith("min_"):
            merged[key] = min(values)
        elif key.endswith("_max") or key.startswith("max_"):
            merged[key] = max(values)
        elif key in ("divergences",):
            merged[key] = sum(values)
        elif isinstance(value, int):
            merged[key] = value
        elif isinstance(value, float):
            merged[key] = sum(v * p.n for v, p in zip(values, parts)) / sum(p.n for p in parts)
        elif isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[-1] == parts[0].n:
            merged[key] = torch.cat(values, dim=-1)
    merged.update(extra or {})
    return Estimate.of(per, seconds=seconds, extra=merged)


@dataclass
class Evaluation:
    """What :func:`evaluate` returns: one Estimate per named estimator, and the settings."""

    estimators: dict[str, Estimate]
    config: EvalConfig
    index: torch.Tensor  # (n,) indices of the evaluated datapoints within the split
    figures_data: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {name: est.summary() for name, est in self.estimators.items()}


def best_log_px_name(names) -> str | None:
    """The tightest log p(x) estimate among estimator ``names``: exact, else AIS, else the
    largest-K IWAE bound; None if there is none."""
    for name in ("exact", "ais"):
        if name in names:
            return name
    ks = [n for n in names if n.startswith("iwae_") and n[5:].isdigit()]
    return max(ks, key=lambda n: int(n[5:])) if ks else None


def evaluate(model, data, config: EvalConfig | None = None, *,
             progress: Callable[[str, int, int], None] | None = None) -> Evaluation:
    """Run the estimators chosen by ``config`` on ``model`` over ``data``'s split.

    ``progress(stage, done, total)`` is called as work advances (the CLI draws bars from it).
    """
    from pgm.inference.diagnostics import MIN_PSIS_SAMPLES, psis_khat

    cfg = config or EvalConfig()
    device = resolve_device(cfg.device)
    model = model.to(device).eval()
    x_all = getattr(data, f"x_{cfg.split}")
    y_all = getattr(data, f"y_{cfg.split}")
    n = min(cfg.n, len(x_all))
    if n == 0:
        raise DataError(f"the {cfg.split} split of {data.name} is empty")
    x_all = x_all[:n].to(device)
    y_all = y_all[:n].to(device) if (y_all is not None and model.conditional) else None
    model.check_data(x_all, f"{cfg.split} data")
    report = progress or (lambda stage, done, total: None)
    out: dict[str, list[Estimate]] = {}
    khat = []

    def bind(lo, hi):
        return latent_callables(model, None if y_all is None else y_all[lo:hi])

    # ---- ELBO and IWAE_K from one set of max(ks) weights per datapoint --------------------
    ks = sorted(set(cfg.ks))
    # an enumerated model's guide has no latent site to sample; a point-mass guide no density
    if not model.enumerated and not model.point_guide:
        rows, batches = [], _batches(n, cfg.batch_size)
        start, end = _span(batches)
        for lo, hi in batches:
            _seed_batch(cfg.seed, lo, "iwae")
            t0 = time.perf_counter()
            log_w = log_importance_weights(bind(lo, hi), x_all[lo:hi], ks[-1])  # (K, B)
            row = {f"iwae_{k}": est for k, est in iwae_from_log_weights(
                log_w, ks, seconds=time.perf_counter() - t0).items()}
            # fewer than MIN_PSIS_SAMPLES draws are too few to fit a Pareto tail
            khat_batch = psis_khat(log_w) if ks[-1] >= MIN_PSIS_SAMPLES else None
            if cfg.prior_proposal:
                _seed_batch(cfg.seed, lo, "iwae_prior")
                t0 = time.perf_counter()
                log_w = log_importance_weights(bind(lo, hi), x_all[lo:hi], ks[-1],
                                               proposal="prior")
                row.update({f"iwae_prior_{k}": est for k, est in iwae_from_log_weights(
                    log_w, ks, seconds=time.perf_counter() - t0).items()})
            rows.append((row, khat_batch))
            report("iwae", hi - start, end - start)
        for row, khat_batch in dist.all_gather(rows):
            for name, est in row.items():
                out.setdefault(name, []).append(est)
            if khat_batch is not None:
                khat.append(khat_batch)
    estimators = {name: concat_estimates(parts) for name, parts in out.items()}
    if "iwae_1" in estimators:
        estimators = {"elbo": estimators["iwae_1"], **estimators}
    if khat:
        k = torch.cat(khat)
        for name in estimators:
            if name.startswith(("elbo", "iwae_")) and not name.startswith("iwae_prior"):
                estimators[name].extra.update(khat_max=k.max().item(), khat_mean=k.mean().item(),
                                              khat_frac_above_0_7=(k > 0.7).double().mean().item())
        estimators["elbo"].extra["khat"] = k

    # ---- exact log p(x) ---------------------------------------------------------------------
    if cfg.exact:
        exact = _exact(model, x_all, y_all, cfg, bind, report)
        if exact is not None:
            estimators["exact"] = exact

    # ---- AIS on the first ais_n datapoints ---------------------------------------------------
    n_ais = min(cfg.ais_n, n)
    if cfg.ais_steps > 0 and n_ais > 0 and model.reparameterized:
        estimators["ais"] = _ais(model, x_all[:n_ais], cfg, bind, report, "ais")

    # ---- BDMC on simulated data --------------------------------------------------------------
    if cfg.bdmc and cfg.ais_steps > 0 and model.reparameterized:
        lower, upper = _bdmc(model, y_all, n_ais, cfg, report)
        estimators["bdmc_lower"], estimators["bdmc_upper"] = lower, upper

    # ---- gaps ------------------------------------------------------------------------------
    if cfg.gaps and model.reparameterized and not model.point_guide:
        estimators.update(_gaps(estimators, x_all, cfg, bind, report))

    figures = {}
    if cfg.posterior_check > 0 and model.latent_dim == 2 and not model.enumerated:
        figures["posterior_check"], estimators["nuts_reference"] = _posterior_check(
            x_all, cfg, bind, report)
    return Evaluation(estimators=estimators, config=cfg, index=torch.arange(n),
                      figures_data=figures)


def _posterior_check(x, cfg, bind, report):
    """NUTS reference posteriors for the first few datapoints, drawn against q(z|x); the
    returned Estimate holds the NUTS diagnostics (its per-datapoint value: R-hat)."""
    from pgm.inference.diagnostics import posterior_figure, reference_posterior

    m = min(cfg.posterior_check, len(x))
    rows, t0 = [], time.perf_counter()
    mine = _batches(m, 1)
    for i, _ in mine:
        f = bind(i, i + 1)
        ref = reference_posterior(f, x[i:i + 1], seed=cfg.seed + i)
        _seed_batch(cfg.seed, i, "gaps")
        rows.append((f.sample_q(x[i:i + 1], len(ref.samples))[:, 0].cpu(), ref.samples.cpu(),
                     ref.summary["rhat_max"], ref.summary["ess_bulk_min"]))
        report("nuts reference", len(rows), len(mine))
    q_samples, nuts, rhat, ess = (list(c) for c in zip(*dist.all_gather(rows)))
    fig = posterior_figure(q_samples, nuts, "q(z|x) (orange) against the NUTS posterior "
                           "p(z|x) (blue)", panel_titles=[f"test datapoint {i}" for i in range(m)])
    est = Estimate.of(torch.tensor(rhat, dtype=torch.float64), seconds=time.perf_counter() - t0,
                      extra={"rhat_max": max(rhat), "ess_bulk_min": min(ess)})
    return fig, est


def _exact(model, x, y, cfg, bind, report) -> Estimate | None:
    from pgm.inference.exact import quadrature_log_marginal

    batches = _batches(len(x), cfg.batch_size)
    if hasattr(model, "exact_log_marginal"):
        t0 = time.perf_counter()
        per = torch.cat(dist.all_gather([model.exact_log_marginal(x[lo:hi]).double().cpu()
                                         for lo, hi in batches]))
        method = "enumeration" if model.enumerated else "closed form"
        return Estimate.of(per, seconds=time.perf_counter() - t0, extra={"method": method})
    if model.latent_dim > 2:
        return None
    parts, (start, end) = [], _span(batches)
    for lo, hi in batches:
        parts.append(quadrature_log_marginal(bind(lo, hi).log_joint, x[lo:hi],
                                             latent_dim=model.latent_dim, tol=QUADRATURE_TOL))
        report("exact", hi - start, end - start)
    return concat_estimates(dist.all_gather(parts), extra={"method": "quadrature"})


def _ais(model, x, cfg, bind, report, stage, stream="ais") -> Estimate:
    from pgm.inference.ais import ais

    schedule = SCHEDULES[cfg.ais_schedule](cfg.ais_steps)
    parts, batches = [], _batches(len(x), cfg.batch_size)
    start, end = _span(batches)
    for lo, hi in batches:
        gen = _seed_batch(cfg.seed, lo, stream)
        f = bind(lo, hi)
        est = ais(f, x[lo:hi], schedule=schedule, num_chains=cfg.ais_chains,
                  num_leapfrog=cfg.ais_leapfrog, initial=cfg.ais_initial, generator=gen,
                  progress=lambda done, total, lo=lo, hi=hi: report(
                      stage, (lo - start) * total + done * (hi - lo), (end - start) * total))
        est.extra.pop("z_final", None)
        parts.append(est)
    return concat_estimates(dist.all_gather(parts), extra={"schedule": cfg.ais_schedule})


def _bdmc(model, y, n, cfg, report) -> tuple[Estimate, Estimate]:
    """Forward AIS and reverse AIS on (x, z) simulated from the model: z is an exact
    posterior sample of its x, so the reverse chain gives a stochastic upper bound."""
    from pgm.inference.ais import bdmc_upper

    _seed_batch(cfg.seed, 0, "bdmc_sim")
    y_sim = None if y is None else y[:n]
    with torch.no_grad():
        z = model.prior(n, y_sim).sample()
        x = model.decode(z, y_sim).sample()
    def bind_sim(lo, hi):
        return latent_callables(model, None if y_sim is None else y_sim[lo:hi])

    lower = _ais(model, x, cfg, bind_sim, report, "bdmc forward", stream="bdmc")
    schedule = SCHEDULES[cfg.ais_schedule](cfg.ais_steps)
    parts, batches = [], _batches(n, cfg.batch_size)
    start, end = _span(batches)
    for lo, hi in batches:
        gen = _seed_batch(cfg.seed, lo, "bdmc_rev")
        parts.append(bdmc_upper(bind_sim(lo, hi), x[lo:hi], z[lo:hi], schedule=schedule,
                                num_chains=cfg.ais_chains, num_leapfrog=cfg.ais_leapfrog,
                                initial=cfg.ais_initial, generator=gen))
        report("bdmc reverse", hi - start, end - start)
    upper = concat_estimates(dist.all_gather(parts),
                             extra={"schedule": cfg.ais_schedule, "data": "simulated"})
    lower.extra["data"] = "simulated"
    gap = (upper.per_datapoint - lower.per_datapoint)
    upper.extra.update(sandwich_mean=gap.mean().item(),
                       sandwich_se=(gap.std() / math.sqrt(max(len(gap), 1))).item()
                       if len(gap) > 1 else math.nan)
    return lower, upper


def _gaps(estimators, x, cfg, bind, report) -> dict[str, Estimate]:
    from pgm.inference.gaps import amortization_gaps

    name = best_log_px_name(estimators)
    best = estimators[name]
    m = min(cfg.gaps_n, len(best.per_datapoint))
    rows, batches = [], _batches(m, cfg.batch_size)
    start, end = _span(batches)
    for lo, hi in batches:
        _seed_batch(cfg.seed, lo, "gaps")
        rows.append(amortization_gaps(bind(lo, hi), x[lo:hi],
                                      best.per_datapoint[lo:hi].to(x.device), steps=cfg.gaps_steps))
        report("gaps", hi - start, end - start)
    parts: dict[str, list[Estimate]] = {}
    for res in dist.all_gather(rows):
        for key, est in res.items():
            parts.setdefault(key, []).append(est)
    return {(k if k.startswith("elbo") else "gap_" + k.removesuffix("_gap")): concat_estimates(
        v, extra={"log_px_from": name}) for k, v in parts.items()}
