r"""``evaluate()``: every estimator of log p(x) on one model, with error bars.

log p(x) = ELBO + KL(q(z|x) || p(z|x)): this module measures both sides. On ``n`` datapoints
it draws ``max(ks)`` importance weights per datapoint once, and from them reports the ELBO and
every IWAE_K (Burda et al. 2015) with PSIS k-hat; on the first ``ais_n`` of them AIS with HMC
(Wu et al. 2017); optionally BDMC's upper bound on data simulated from the model (Grosse et
al. 2015), the amortization/approximation gaps (Cremer et al. 2018), exact log p(x) where the
model has one (closed form, enumeration), and quadrature for a latent of dimension <= 2.

What is measured (:class:`Subject`) is either one of pgm's models -- ``evaluate(model, data)``,
which also chooses an explicit Gaussian view and its sigma where asked or where the model has
no density of its own, measures sample quality, and records what the numbers are densities of
-- or any Pyro program -- ``evaluate(model, guide, x, *args)``, read from its traces by
:class:`pgm.inference.program.Program`. The estimators see only the callables either way.

Datapoints are processed in batches aligned to their index; :func:`map_batches` runs each
batch in its own random stream, seeded from (seed, index of its first datapoint, estimator)
inside :func:`torch.random.fork_rng`, so results do not depend on how the work is split up and
leave the caller's RNG alone. Under ``torchrun`` each rank takes a contiguous run of whole
batches (:func:`pgm.distributed.shard`) and the per-batch results are gathered in index order
on every rank, so a sharded run returns the per-datapoint values of an unsharded one; an
estimator's ``seconds`` then sums the ranks' time.

**A conditional model** (the CVAE, whose model says p(z | y) p(x | z, y) and whose
``label_prior()`` says p(y)) is measured as a density of x like the others, by summing the
label out: each estimator runs on (datapoint, label y') pairs stacked as the rows of one batch,
label-major (:class:`LabelSum`, so the estimators stay functions of the callables), and

.. math::

    \log p(x) = \log \sum_{y'} p(y')\, p(x | y')
               = \operatorname{logsumexp}_{y'} [\log p(y') + \log p(x | y')].

What each combination is: quadrature (to its tolerance ``tol`` per label) gives log p(x) to
``tol`` (logsumexp moves by at most the largest change of its terms); AIS's per-label value
is the log of an unbiased estimate :math:`\hat p(x|y')`, so :math:`\sum_{y'} p(y')\,
\hat p(x|y')` is an unbiased estimate of p(x) and its log a stochastic lower bound (Jensen);
IWAE_K combines the weights draw by draw, :math:`\log w_k = \operatorname{logsumexp}_{y'}
[\log p(y') + \log w_k(y')]` with :math:`z_k(y') \sim q(z|x, y')`: each is one unbiased
importance weight of p(x) (a proposal stratified over the labels), so IWAE_K, its blocks and
PSIS k-hat apply to them unchanged and IWAE_K is a lower bound in expectation that rises with
K; the ELBO is :math:`\operatorname{logsumexp}_{y'} [\log p(y') + \mathrm{ELBO}(x|y')]`,
the ELBO of the guide :math:`q(y|x)\,q(z|x,y)` with the best label posterior
:math:`q(y|x) \propto p(y)\, e^{\mathrm{ELBO}(x|y)}`: below log p(x) by
:math:`\mathrm{KL}(q(y,z|x) \| p(y,z|x))` (with the ELBO's Monte-Carlo mean in each term, a
lower bound in expectation: logsumexp is convex, so it is at most the mean over draws of
:math:`\log \sum_{y'} p(y') w(y')`, itself below log p(x) in expectation). Deterministic
lower bounds per label (the exact ELBOs) give a lower bound of log p(x) because logsumexp
increases in each term. The per-label values at each datapoint's own label are log p(x | y),
reported beside them as ``<estimator>_given_y`` (``quantity`` ``"log p(x | y)"``) at no
extra cost; BDMC, the gaps and the NUTS check stay conditional (BDMC's reverse chains need an
exact posterior sample for every label; they get one for the simulated label only) and say
so.

Cost: IWAE runs every label, C times the conditional evaluation's work. Quadrature and AIS,
the expensive ones, run only the labels that matter: those whose IWAE_K estimate of
log p(y') + log p(x | y') (K the largest asked) lies within ``EvalConfig.label_margin`` nats
(30) of the datapoint's best label's, and always its own label; a label left out counts as
p(x | y') = 0. For AIS this keeps a stochastic lower bound whatever the choice (a sum of
fewer non-negative unbiased terms, chosen from IWAE's draws, which are independent of AIS's,
has an expectation at most p(x)). For quadrature the value is log p(x) to its tolerance if the
labels left out hold a share of p(x) below ~(C - 1) e^-30, which holds unless IWAE
underestimates a label's log p(x | y') by more than the margin (it is a lower bound: it
misses by the gap log p(x|y') - IWAE_K, nats on the quickstart's CVAE); the share IWAE puts on
them is recorded (``dropped_share_max``), beside ``labels``, the labels evaluated per
datapoint. On the quickstart's CVAE the labels' second best lies a median 200 nats below the
best, and 54 of its 500 (image, label) pairs are within 30 nats: quadrature on every pair took
over 20x longer than on the images' own labels (a batch of quadrature costs as much as its
hardest row). ``label_margin=inf`` runs every label;
``EvalConfig.label_sum=False`` keeps the conditional evaluation alone.

The best estimate of log p(x) (:func:`best_log_px_name`) follows a stated rule: an exact value
if there is one, else a numerical one (quadrature), else among the lower bounds on the
evaluated data the most precise (smallest standard error of its mean) of those whose paired
difference to the highest one, on the datapoints they share, is within two standard errors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch

from pgm import distributed as dist
from pgm.device import resolve_device
from pgm.errors import DataError
from pgm.inference.adapter import latent_callables
from pgm.inference.bounds import (
    check_data,
    iwae_from_log_weights,
    log_importance_weights,
    log_mean_exp,
)
from pgm.inference.callables import Estimate, LatentCallables
from pgm.inference.program import Program, ProgramError
from pgm.inference.schedules import linear_schedule, sigmoid_schedule

SCHEDULES = {"linear": linear_schedule, "sigmoid": sigmoid_schedule}
AIS_STARTS = ("auto", "prior", "q", "laplace")
#: Quadrature stops refining when log p(x) moves less than this (nats); the decoders run in
#: float32, whose rounding alone moves a 784-pixel log-likelihood by ~1e-4.
QUADRATURE_TOL = 1e-3

#: Paper protocols a user can name; their settings are written into the results.
PRESETS: dict[str, dict] = {
    "burda2015": {"ks": (1, 10, 100, 1000, 5000), "ais_steps": 0},
    "wu2017": {"ks": (1, 10, 100, 1000), "ais_steps": 10_000, "ais_chains": 16,
               "ais_leapfrog": 10, "ais_schedule": "sigmoid", "ais_initial": "prior",
               "bdmc": True},
    "cremer2018": {"ks": (1, 5000), "ais_steps": 1000, "ais_initial": "prior", "gaps": True},
}


@dataclass
class EvalConfig:
    ks: tuple[int, ...] = (1, 10, 100, 1000, 5000)
    n: int = 1000  # datapoints of the split for the ELBO/IWAE estimators
    split: str = "test"
    batch_size: int = 100  # datapoints per batch (memory: K x batch decoder outputs per chunk)
    prior_proposal: bool = False  # also IWAE with p(z) as the proposal (to show it fails)
    ais_steps: int = 500  # T intermediate distributions; 0 turns AIS off (bench/accuracy.py)
    ais_chains: int = 16
    ais_pilot_chains: int = 4  # extra chains per datapoint that tune the step sizes (ais())
    ais_leapfrog: int = 10
    ais_schedule: str = "sigmoid"
    # p_0 of the annealing path: "prior", "q", "laplace" (pgm.inference.laplace), or "auto":
    # q(z|x) where the guide is an inference network with a density (more accurate per second
    # than the prior: bench/accuracy.py), else the Laplace proposal (bench/ais_settings.py)
    ais_initial: str = "auto"
    ais_n: int = 100  # AIS is run on the first ais_n of the n datapoints
    bdmc: bool = False  # BDMC sandwich on ais_n datapoints simulated from the model (one that
    # can simulate them: continuous latents, and for a Pyro program one observed site)
    gaps: bool = False  # amortization / approximation gaps on the first gaps_n datapoints
    gaps_n: int = 100
    gaps_steps: int = 500
    exact: bool = True  # closed form / enumeration / quadrature where the model allows it
    posterior_check: int = 3  # datapoints whose q(z|x) is drawn against a NUTS reference (L=2)
    explicit_view: bool = False  # measure N(mean(z), s^2 I), s chosen on validation data
    # a conditional model with a label prior: log p(x) with the label summed out (and
    # log p(x | y) beside it); False: log p(x | y) alone, C times cheaper
    label_sum: bool = True
    # ... quadrature and AIS then skip the labels whose IWAE estimate of log p(y) + log p(x|y)
    # is more than this many nats below the datapoint's best label (inf: every label)
    label_margin: float = 30.0
    sample_quality: bool = False  # Parzen window, nearest neighbours, Frechet distance
    seed: int = 0
    device: str = "auto"
    preset: str | None = None

    def __post_init__(self):
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ValueError(f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")
        if isinstance(self.ks, int | str) or not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be a sequence of positive integers (K of each IWAE "
                             f"bound, e.g. (1, 10, 100)), got {self.ks!r}")
        if self.ais_schedule not in SCHEDULES:
            raise ValueError(f"unknown ais_schedule {self.ais_schedule!r}; "
                             f"known: {', '.join(SCHEDULES)}")
        if self.ais_initial not in AIS_STARTS:
            raise ValueError(f"ais_initial must be one of {', '.join(AIS_STARTS)}, "
                             f"got {self.ais_initial!r}")
        if self.split not in ("train", "valid", "test"):
            raise ValueError(f"split must be train, valid or test, got {self.split!r}")
        if min(self.n, self.batch_size) < 1:
            raise ValueError("n and batch_size must be positive")
        for name in ("ais_chains", "ais_pilot_chains", "ais_leapfrog", "ais_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.ais_steps < 0:
            raise ValueError(f"ais_steps must be >= 0 (0 turns AIS off), got {self.ais_steps}")


def with_preset(config: EvalConfig, preset: str | None) -> EvalConfig:
    """``config`` with the preset's settings applied (the preset's name is recorded)."""
    if preset is None:
        return config
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return replace(config, preset=preset, **PRESETS[preset])


# ---- batches, each in its own random stream ---------------------------------------------------

STREAMS = {"iwae": 0, "iwae_prior": 1, "ais": 2, "bdmc": 3, "bdmc_rev": 4, "bdmc_sim": 5,
           "gaps": 6}

Progress = Callable[[str, int, int], None]


def _seed_batch(seed: int, start: int, stream: str) -> torch.Generator:
    """Seed torch's RNG (the callables sample from it) from (seed, first index, stream) and
    return a generator seeded alike for the kernels' own draws: a datapoint's random numbers
    depend on its index, not on which batch or process handles it."""
    s = ((seed * 1_000_003 + start) * len(STREAMS) + STREAMS[stream]) * 2
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s + 1)


def map_batches(fn: Callable, n: int, batch_size: int, *, seed: int, stream: str,
                progress: Progress | None = None, stage: str | None = None,
                device: torch.device | None = None) -> list:
    """``fn(lo, hi, generator, tick)`` on this rank's batches of the datapoints [0, n), each in
    the random stream of (seed, lo, stream) inside :func:`torch.random.fork_rng`; the results
    of every rank, in index order. ``tick(done, total)`` reports progress within a batch."""
    grid = [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
    mine = dist.shard(grid)
    start, end = (mine[0][0], mine[-1][1]) if mine else (0, 0)
    report = progress or (lambda stage, done, total: None)
    devices = [device] if device is not None and device.type == "cuda" else []
    out = []
    for lo, hi in mine:
        def tick(done, total, lo=lo, hi=hi):
            report(stage or stream, (lo - start) * total + done * (hi - lo), (end - start) * total)

        with torch.random.fork_rng(devices=devices):
            out.append(fn(lo, hi, _seed_batch(seed, lo, stream), tick))
        tick(1, 1)
    return dist.all_gather(out)


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
    return Estimate.of(per, seconds=seconds, extra=merged, bound=parts[0].bound,
                       data=parts[0].data)


# ---- what is measured -------------------------------------------------------------------------

#: What an estimate of a label-summed evaluation is of (``Estimate.extra["quantity"]``).
MARGINAL, GIVEN_Y = "log p(x)", "log p(x | y)"
GIVEN_SUFFIX = "_given_y"


@dataclass
class LabelSum:
    """Sum a conditional model's label out (module docstring): the callables of (datapoint,
    label) rows, and the per-label values put together again.

    A batch of datapoints [lo, hi) becomes rows of (datapoint, label) pairs, label-major
    (every datapoint with label 0, then label 1, ...); ``bind_rows(labels)`` gives the
    callables of rows with those labels. IWAE takes every pair (:meth:`all_rows`); quadrature
    and AIS only the pairs :meth:`rows` keeps: once IWAE has put ``scores`` (log p(y) +
    IWAE_K(x | y), ``(C, n)``) in, the labels within ``margin`` nats of a datapoint's best
    one, and always its own label. ``log_py`` ``(C,)`` is log p(y) (float64, CPU); ``y``
    ``(n,)`` the datapoints' own labels (for log p(x | y))."""

    log_py: torch.Tensor
    bind_rows: Callable[[torch.Tensor], LatentCallables]
    y: torch.Tensor
    source: str = "model"
    margin: float = math.inf
    scores: torch.Tensor | None = None

    @property
    def C(self) -> int:
        return len(self.log_py)

    def all_rows(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels, datapoint offsets) of every pair of [lo, hi), label-major."""
        b = hi - lo
        return (torch.arange(self.C).repeat_interleave(b), torch.arange(b).repeat(self.C))

    def rows(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels, datapoint offsets) of the pairs of [lo, hi) that quadrature and AIS take."""
        if self.scores is None or not math.isfinite(self.margin):
            return self.all_rows(lo, hi)
        s = self.scores[:, lo:hi]
        keep = s >= s.max(0).values - self.margin  # (C, b)
        keep[self.y[lo:hi], torch.arange(hi - lo)] = True
        c, i = keep.nonzero(as_tuple=True)  # row-major over (C, b): label-major
        return c, i

    def bind(self, x: torch.Tensor, c: torch.Tensor, i: torch.Tensor):
        """The callables of rows (c, i) and their datapoints: x (b, ...) -> (R, ...)."""
        return self.bind_rows(c.to(x.device)), x[i.to(x.device)]

    def matrix(self, values: torch.Tensor, c, i, b: int) -> torch.Tensor:
        """Per-row values (..., R) -> (..., C, b) float64 on the CPU, -inf where no row."""
        v = values.detach().to("cpu", torch.float64)
        out = v.new_full((*v.shape[:-1], self.C, b), -math.inf)
        out[..., c, i] = v
        return out

    def total(self, m: torch.Tensor) -> torch.Tensor:
        """logsumexp_y [log p(y) + m(y)]: (..., C, b) -> (..., b)."""
        return torch.logsumexp(m + self.log_py[:, None], dim=-2)

    def given(self, m: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """The values at each datapoint's own label: (..., C, b) -> (..., b)."""
        return m[..., self.y[lo:hi], torch.arange(hi - lo)]

    def record(self) -> dict:
        """What results.json says about the sum (top-level ``label_prior``)."""
        return {"source": self.source, "probs": self.log_py.exp().tolist(),
                "log_px": "logsumexp_y [log p(y) + log p(x | y)] over the labels",
                "margin": self.margin if math.isfinite(self.margin) else None}


def _tag(est: Estimate, quantity: str, **extra) -> Estimate:
    est.extra.update(quantity=quantity, **extra)
    return est


def _scalar_extras(est: Estimate) -> dict:
    """An estimate's extras without its per-row tensors (they do not survive a label sum)."""
    return {k: v for k, v in est.extra.items() if not isinstance(v, torch.Tensor)}


def _sum_labels(est: Estimate, labels: LabelSum, lo: int, hi: int, c, i
                ) -> tuple[Estimate, Estimate]:
    """(log p(x), log p(x | y)) estimates of datapoints [lo, hi) from an estimate over their
    rows (c, i), by :meth:`LabelSum.total` and :meth:`LabelSum.given`; ``labels`` records
    how many labels per datapoint were evaluated, and ``dropped_share_max`` the largest share
    of p(x) that IWAE put on the labels left out."""
    m = labels.matrix(est.per_datapoint, c, i, hi - lo)
    total = labels.total(m)
    kept = {**_scalar_extras(est), "labels": len(c) / (hi - lo)}
    if labels.scores is not None and len(c) < labels.C * (hi - lo):
        s = labels.scores[:, lo:hi]
        out = torch.ones_like(s, dtype=torch.bool)
        out[c, i] = False
        share = torch.logsumexp(s.masked_fill(~out, -math.inf), 0) - torch.logsumexp(s, 0)
        kept["dropped_share_max"] = share.exp().max().item()
    else:
        kept["dropped_share_max"] = 0.0
    return (Estimate.of(total, seconds=est.seconds, extra={**kept, "quantity": MARGINAL},
                        bound=est.bound, data=est.data),
            Estimate.of(labels.given(m, lo, hi), seconds=0.0,
                        extra={**kept, "quantity": GIVEN_Y}, bound=est.bound, data=est.data))


@dataclass
class Subject:
    """What :func:`evaluate` measures, and what the estimators may do with it.

    ``bind(lo, hi)`` gives the callables of datapoints [lo, hi) (labels bound);
    ``guide_density``: the guide has a density (ELBO, IWAE, gaps apply); ``amortized_guide``:
    it is an inference network, near p(z|x) (AIS's ``auto`` start); ``latent_dim``: length
    of the continuous latent vector (0: nothing for HMC to move); ``exact(lo, hi)``: exact
    log p(x) of those datapoints, or None, by ``exact_method``; ``simulate(n)``: n pairs
    (x, z) from the model and the callables of the simulated batch ``bind_sim(lo, hi)``, or
    None where the model cannot simulate."""

    x: torch.Tensor
    bind: Callable[[int, int], LatentCallables]
    latent_dim: int
    guide_density: bool
    amortized_guide: bool = True
    exact: Callable[[int, int], torch.Tensor] | None = None
    exact_method: str | None = None
    simulate: Callable[[int], tuple] | None = None
    discrete_data: bool | None = None  # a Pyro program's observed sites are all discrete
    labels: LabelSum | None = None  # a conditional model's label, summed out (module docstring)


class Rows(NamedTuple):
    """A program's arguments after x, positional and keyword, with the per-datapoint ones
    marked once, by their length against the full data (``Rows.of``): a tensor that only
    happens to be as long as a batch is never sliced."""

    args: tuple
    kwargs: dict
    per_datapoint: frozenset  # positions (int) and names (str) of the per-datapoint tensors

    @classmethod
    def of(cls, args, kwargs, n: int) -> Rows:
        """Tensors with first dimension ``n`` (the number of datapoints) are per datapoint."""
        def rows(a):
            return isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == n
        per = {i for i, a in enumerate(args) if rows(a)} | {k for k, a in kwargs.items()
                                                            if rows(a)}
        return cls(tuple(args), dict(kwargs), frozenset(per))

    def slice(self, lo: int, hi: int) -> Rows:
        """The arguments of datapoints [lo, hi)."""
        return Rows(tuple(a[lo:hi] if i in self.per_datapoint else a
                          for i, a in enumerate(self.args)),
                    {k: a[lo:hi] if k in self.per_datapoint else a
                     for k, a in self.kwargs.items()}, self.per_datapoint)

    def to(self, device) -> Rows:
        def move(a):
            return a.to(device) if isinstance(a, torch.Tensor) else a
        return Rows(tuple(move(a) for a in self.args),
                    {k: move(a) for k, a in self.kwargs.items()}, self.per_datapoint)


def model_subject(model, x: torch.Tensor, y: torch.Tensor | None, *,
                  label_sum: bool = True, label_margin: float = math.inf) -> Subject:
    """One of pgm's models (the contract of :mod:`pgm.protocol`), by its plain distributions;
    with ``label_sum``, a conditional model that declares ``label_prior()`` also has its label
    summed out (:class:`LabelSum`)."""
    def labels(lo, hi):
        return None if y is None else y[lo:hi]

    summed = None
    py = model.label_prior() if label_sum and y is not None else None
    if py is not None:
        log_py = torch.log_softmax(py.logits.detach().to("cpu", torch.float64), -1)
        summed = LabelSum(log_py, lambda labels: latent_callables(model, labels),
                          y.long().cpu(), margin=label_margin)

    def bind(lo, hi):
        return latent_callables(model, labels(lo, hi))

    exact = None
    if model.exact_method is not None:
        def exact(lo, hi):
            return model.exact_log_marginal(x[lo:hi]).detach().double().cpu()

    def simulate(n):
        y_sim = None if y is None else y[:n]
        with torch.no_grad():
            z = model.prior(n, y_sim).sample()
            x_sim = model.decode(z, y_sim).sample()
        return x_sim, z, lambda lo, hi: latent_callables(model, None if y_sim is None
                                                         else y_sim[lo:hi])

    continuous = model.latent == "continuous"
    return Subject(x, bind, model.latent_dim if continuous else 0,
                   guide_density=continuous and model.guide_density,
                   amortized_guide=model.amortized_guide, exact=exact,
                   exact_method=model.exact_method, simulate=simulate if continuous else None,
                   labels=summed)


def _probe(model, guide, x: torch.Tensor, rows: Rows, data_plate: str | None) -> Program:
    """The program read from a trace on the first two datapoints; where a second plate of
    that size (a plate over two features, say) makes the data plate ambiguous, the plate
    whose size follows the batch's, from a second trace on three."""
    def read(m, plate):
        r = rows.slice(0, m)
        return Program(model, guide, x[:m], *r.args, data_plate=plate, **r.kwargs)

    try:
        return read(min(len(x), 2), data_plate)
    except ProgramError as e:
        if data_plate is not None or not hasattr(e, "candidates") or len(x) < 3:
            raise
        try:
            return read(3, None)
        except ProgramError as again:
            plates = e.candidates & getattr(again, "candidates", set())
            if len(plates) != 1:
                raise e from None
            return read(min(len(x), 2), plates.pop())


def program_subject(model, guide, x: torch.Tensor, args=(), kwargs=None,
                    data_plate: str | None = None, rows: Rows | None = None) -> Subject:
    """Any Pyro model/guide pair ``model(x, *args, **kwargs)``, read from its traces.
    ``rows``: the arguments with their per-datapoint ones marked (by default those of
    length ``len(x)``)."""
    rows = rows or Rows.of(args, dict(kwargs or {}), len(x))
    program = _probe(model, guide, x, rows, data_plate)

    def bind(lo, hi):
        r = rows.slice(lo, hi)
        return program.callables(*r.args, x_like=x[lo:hi], **r.kwargs)

    exact = None
    if program.latent_dim == 0:  # every latent enumerated: log p(x, .) is log p(x)
        def exact(lo, hi):
            f = bind(lo, hi)
            with torch.no_grad():
                empty = torch.zeros(1, hi - lo, 0, device=x.device)
                return f.log_joint(x[lo:hi], empty)[0].double().cpu()

    def simulate(m):
        r = rows.slice(0, m)
        x_sim, z = program.simulate(*r.args, x_like=x[:m], **r.kwargs)

        def bind_sim(lo, hi):
            s = r.slice(lo, hi)
            return program.callables(*s.args, x_like=x_sim[lo:hi], **s.kwargs)
        return x_sim, z, bind_sim

    # BDMC simulates x from the model: one observed site must hold all of it
    can_simulate = program.latent_dim > 0 and len(program.observed) == 1
    return Subject(x, bind, program.latent_dim, guide_density=not program.point_guide
                   and program.latent_dim > 0, exact=exact,
                   exact_method="enumeration" if exact else None,
                   simulate=simulate if can_simulate else None,
                   discrete_data=program.discrete_data)


# ---- the result ---------------------------------------------------------------------------------

@dataclass
class Evaluation:
    """What :func:`evaluate` returns: one Estimate per named estimator, the settings, and
    ``extra``: top-level facts of the results (explicit view and its sigma, representation,
    sample quality)."""

    estimators: dict[str, Estimate]
    config: EvalConfig
    index: torch.Tensor  # (n,) indices of the evaluated datapoints within the split
    figures_data: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    device: str = ""  # where the estimators ran

    def summary(self) -> dict:
        return {name: est.summary() for name, est in self.estimators.items()}

    def best(self, quantity: str = MARGINAL) -> str | None:
        """Name of the best estimate of log p(x) (:func:`best_log_px_name`), or of
        ``quantity`` (log p(x | y) of a conditional model)."""
        return best_log_px_name({k: {**e.summary(), "per_datapoint": e.per_datapoint}
                                 for k, e in self.estimators.items()}, quantity=quantity)


def _paired(a: dict, b: dict) -> tuple[float, float] | None:
    """Mean and SE of the paired difference a - b from summaries with ``per_datapoint``."""
    pa, pb = a.get("per_datapoint"), b.get("per_datapoint")
    if pa is None or pb is None:
        return None
    m = min(len(pa), len(pb))
    d = (torch.as_tensor(pa[:m]) - torch.as_tensor(pb[:m])).double()
    return d.mean().item(), (d.std() / math.sqrt(m)).item() if m > 1 else math.nan


def best_log_px_name(estimators: dict, quantity: str = MARGINAL) -> str | None:
    """The best estimate of log p(x) among ``estimators`` (name -> summary dict, which may
    carry ``per_datapoint``), by the rule in the module docstring; None if there is none.
    Only estimates of ``quantity`` take part (an estimate without ``quantity`` is of
    log p(x)): ``"log p(x | y)"`` picks among a conditional model's log p(x | y).

    Without per-datapoint values the paired test falls back to the two means' own SEs."""
    on_test = {k: s for k, s in estimators.items() if s.get("data", "test") == "test"
               and s.get("quantity", MARGINAL) == quantity}
    for kind in ("exact", "numerical"):
        for name, s in on_test.items():
            if s.get("bound") == kind:
                return name
    lower = {k: s for k, s in on_test.items() if s.get("bound") == "lower"
             and s.get("proposal", "q") == "q" and math.isfinite(s["mean"])}
    if not lower:
        return None

    def diff(a, b):
        paired = _paired(lower[a], lower[b])
        if paired is not None:
            return paired
        sa, sb = lower[a]["se"], lower[b]["se"]
        return lower[a]["mean"] - lower[b]["mean"], math.hypot(sa, sb)

    top = max(lower, key=lambda k: (min(0.0, *[diff(k, o)[0] for o in lower]), lower[k]["n"]))
    tied = []
    for name in lower:
        d, se = diff(top, name)
        if name == top or d <= 2 * (se if math.isfinite(se) else 0.0):
            tied.append(name)
    return min(tied, key=lambda k: (lower[k]["se"] if math.isfinite(lower[k]["se"])
                                    else math.inf, -lower[k]["n"]))


# ---- the pipeline -------------------------------------------------------------------------------

def evaluate(model, guide=None, x=None, *args, config: EvalConfig | None = None,
             data=None, data_plate: str | None = None, progress: Progress | None = None,
             cache_dir=None, **kwargs) -> Evaluation:
    """Every estimator of log p(x) that applies, on one model.

    - ``evaluate(model, data, config)``: one of pgm's models on ``data``'s split
      (:class:`pgm.data.Dataset`); also the explicit view (``config.explicit_view``, always
      for a model without a density of its own, the GAN), sample quality and the
      representation record.
    - ``evaluate(model, guide, x, *args, config=..., **kwargs)``: any Pyro program pair
      ``model(x, *args, **kwargs)``/``guide(x, *args, **kwargs)``; per-datapoint ``args``
      (tensors of length ``len(x)``, e.g. labels) are sliced with x.

    ``progress(stage, done, total)`` is called as work advances (the CLI draws bars from it);
    ``cache_dir`` keeps the sample-quality feature classifier between runs. Save the result
    with :func:`pgm.report.write_evaluation`.
    """
    if data is None and hasattr(guide, "x_test"):  # evaluate(model, data[, config])
        data, guide = guide, None
        if config is None and isinstance(x, EvalConfig):
            config, x = x, None
    cfg = config or EvalConfig()
    device = resolve_device(cfg.device)
    if data is not None:
        if guide is not None or x is not None:
            raise TypeError("evaluate(model, data) takes no guide or x")
        subject, extra, more = _pgm_model(model, data, cfg, device, cache_dir)
    else:
        if guide is None or x is None:
            raise TypeError("evaluate(model, guide, x, ...) needs the guide and the data x; "
                            "for one of pgm's models call evaluate(model, data)")
        check_data(x)
        if isinstance(model, torch.nn.Module):
            model.to(device)
        x_all = x
        rows = Rows.of(args, kwargs, len(x_all))  # per-datapoint: as long as all of x
        x = x[:cfg.n].to(device)
        rows = rows.slice(0, len(x)).to(device)
        subject, more = program_subject(model, guide, x, data_plate=data_plate, rows=rows), {}
        extra = _program_representation(x_all, subject.discrete_data)
    ev = measure(subject, cfg, progress=progress, device=device)
    ev.estimators.update(more)
    coverage = (extra.get("sample_quality") or {}).get("classes")
    if coverage is not None:  # RUN/eval/figures/class_histogram.png
        from pgm.mode_coverage import class_histogram_figure

        ev.figures_data["class_histogram"] = class_histogram_figure(coverage)
    ev.extra.update(extra)
    ev.device = str(device)
    return ev


def _program_representation(x: torch.Tensor, discrete: bool) -> dict:
    """What a Pyro program's numbers are densities of (:mod:`pgm.representation`): asked of
    its observed sites' supports, with the given data fingerprinted, so that ``pgm report``
    can set it beside a pgm model evaluated on the same images."""
    from pgm.representation import fingerprint

    binary = bool(((x == 0) | (x == 1)).all())
    density = "log-probability (discrete)" if discrete else "log-density (continuous)"
    return {"representation": {"binarize": "as given", "quantity": "log p(x)",
                               "values": "binary {0,1}" if binary else "as given",
                               "density": density, "observation": "a Pyro program"},
            "test_images": {"dataset": "given", "split": "given", "n_split": len(x),
                            "sha256": fingerprint(x)}}


def _pgm_model(model, data, cfg: EvalConfig, device, cache_dir) -> tuple[Subject, dict, dict]:
    """The Subject of one of pgm's models on ``data``'s split, through its explicit view where
    asked or where it has no density of its own; the facts the results record about it; and
    the sample-based estimates (Parzen), which need the model itself, not its callables."""
    from pgm.representation import representation

    x_all = getattr(data, f"x_{cfg.split}")
    y_all = getattr(data, f"y_{cfg.split}")
    n = min(cfg.n, len(x_all))
    if n == 0:
        raise DataError(f"the {cfg.split} split of {data.name} is empty")
    base = model.to(device).eval()
    extra, more, sigma = {}, {}, None
    if cfg.explicit_view or not base.has_density:
        from pgm.models.explicit import fit_sigma

        choice = fit_sigma(base, data.x_valid, n=20, ais_steps=50, ais_chains=4,
                           pilot_chains=cfg.ais_pilot_chains, num_leapfrog=cfg.ais_leapfrog,
                           seed=cfg.seed,
                           y_valid=data.y_valid)
        sigma = choice.sigma
        model = base.explicit_view(sigma).to(device).eval()
        extra.update(explicit_sigma=sigma, explicit_sigma_choice=choice._asdict())
    x = x_all[:n].to(device)
    y = y_all[:n].to(device) if (y_all is not None and model.conditional) else None
    model.check_data(x, f"{cfg.split} data")
    if model is not base:
        # the view is a density on all of R^D (the data its BDMC simulates, with noise, leave
        # [0, 1]); the data measured are checked against the model itself as well
        base.check_data(x, f"{cfg.split} data")
    if model.plain_distributions:
        subject = model_subject(model, x, y, label_sum=cfg.label_sum,
                                label_margin=cfg.label_margin)
    else:  # the model is its Pyro programs
        subject = program_subject(model.model, model.guide, x, () if y is None else (y,))
    if (cfg.sample_quality or not base.has_density) and dist.is_main():  # rank 0 writes
        from pgm.inference.parzen import parzen_log_likelihood
        from pgm.sample_quality import sample_quality

        more["parzen"] = parzen_log_likelihood(base, data, split=cfg.split, n=cfg.n,
                                               seed=cfg.seed)
        extra["sample_quality"] = sample_quality(base, data, run_dir=cache_dir, seed=cfg.seed)
    extra.update(representation(data, base, split=cfg.split, explicit_sigma=sigma,
                                label_sum=subject.labels is not None))
    if subject.labels is not None:
        extra["label_prior"] = subject.labels.record()
    return subject, extra, more


def measure(subject: Subject, cfg: EvalConfig, *, progress: Progress | None = None,
            device: torch.device | None = None) -> Evaluation:
    """Run the estimators chosen by ``cfg`` that apply to ``subject``."""
    x, n = subject.x, len(subject.x)
    run = dict(batch_size=cfg.batch_size, seed=cfg.seed, progress=progress, device=device)
    estimators: dict[str, Estimate] = {}

    # ---- ELBO and IWAE_K from one set of max(ks) weights per datapoint --------------------
    if subject.guide_density:
        estimators.update(_iwae(subject, cfg, run))

    # ---- exact log p(x), or quadrature for a latent of dimension <= 2 ------------------------
    if cfg.exact:
        estimators.update(_exact(subject, cfg, run))

    # ---- AIS on the first ais_n datapoints ---------------------------------------------------
    n_ais = min(cfg.ais_n, n)
    hmc = cfg.ais_steps > 0 and subject.latent_dim > 0
    if hmc and n_ais > 0:
        initial = _initial(subject, cfg)
        if subject.labels is None:
            estimators["ais"], *_ = _ais(subject.bind, x[:n_ais], cfg, run, "ais",
                                         initial=initial)
        else:
            estimators["ais"], estimators["ais" + GIVEN_SUFFIX] = _ais_labels(
                subject.labels, x[:n_ais], cfg, run, initial=initial)

    # ---- BDMC on simulated data --------------------------------------------------------------
    if cfg.bdmc and hmc and subject.simulate is not None:
        estimators["bdmc_lower"], estimators["bdmc_upper"] = _bdmc(subject, n_ais, cfg, run)

    # ---- gaps ------------------------------------------------------------------------------
    if cfg.gaps and subject.guide_density and subject.latent_dim > 0:
        estimators.update(_gaps(estimators, subject, cfg, run))

    figures = {}
    if cfg.posterior_check > 0 and subject.latent_dim == 2:
        figures["posterior_check"], estimators["nuts_reference"] = _posterior_check(
            subject, cfg, progress)
    if subject.labels is not None:  # what the rest measured: the datapoints' own labels
        for est in estimators.values():
            est.extra.setdefault("quantity", GIVEN_Y)
    return Evaluation(estimators=estimators, config=cfg, index=torch.arange(n),
                      figures_data=figures)


def _iwae(subject: Subject, cfg: EvalConfig, run: dict) -> dict[str, Estimate]:
    from pgm.inference.diagnostics import MIN_PSIS_SAMPLES, psis_khat

    ks = sorted(set(cfg.ks))
    x, labels = subject.x, subject.labels

    def weights(proposal):
        def one(lo, hi, gen, tick):
            t0 = time.perf_counter()
            if labels is None:
                log_w = log_importance_weights(subject.bind(lo, hi), x[lo:hi], ks[-1],
                                               proposal=proposal)  # (K, B)
                sets = {"": log_w}
            else:  # every label's weights, (K, C, b); combined draw by draw (module docstring)
                c, i = labels.all_rows(lo, hi)
                f, xr = labels.bind(x[lo:hi], c, i)
                log_w = labels.matrix(log_importance_weights(f, xr, ks[-1], proposal=proposal),
                                      c, i, hi - lo)
                sets = {"": labels.total(log_w), GIVEN_SUFFIX: labels.given(log_w, lo, hi)}
            seconds = time.perf_counter() - t0
            out = {}
            for suffix, lw in sets.items():
                row = iwae_from_log_weights(lw, ks, seconds=seconds if not suffix else 0.0)
                # fewer than MIN_PSIS_SAMPLES draws are too few to fit a Pareto tail
                khat = psis_khat(lw) if proposal == "q" and ks[-1] >= MIN_PSIS_SAMPLES else None
                out[suffix] = (row, khat)
            if labels is not None:  # the ELBO with the best q(y|x): logsumexp of the ELBOs
                out["elbo"] = Estimate.of(labels.total(log_w.mean(0)), seconds=0.0,
                                          extra={"K": 1, "draws": ks[-1]}, bound="lower")
                out["scores"] = log_mean_exp(log_w, 0) + labels.log_py[:, None]  # (C, b)
            return out

        stream = "iwae" if proposal == "q" else "iwae_prior"
        return map_batches(one, len(x), stream=stream, **run)

    def collect(rows, suffix, proposal):
        part = {}
        for k in ks:
            name = f"iwae_{k}" if proposal == "q" else f"iwae_prior_{k}"
            part[name + suffix] = concat_estimates([r[suffix][0][k] for r in rows],
                                                   extra={"proposal": proposal})
        khat = [r[suffix][1] for r in rows if r[suffix][1] is not None]
        if khat:
            k = torch.cat(khat)
            for est in part.values():
                est.extra.update(khat_max=k.max().item(), khat_mean=k.mean().item(),
                                 khat_frac_above_0_7=(k > 0.7).double().mean().item())
        return part, (torch.cat(khat) if khat else None)

    out: dict[str, Estimate] = {}
    rows = weights("q")
    for suffix in rows[0] if labels is not None else ("",):
        if suffix in ("elbo", "scores"):
            continue
        part, khat = collect(rows, suffix, "q")
        if "iwae_1" + suffix in part and (labels is None or suffix):
            part = {"elbo" + suffix: part["iwae_1" + suffix], **part}
            if khat is not None:
                part["elbo" + suffix].extra["khat"] = khat
        out.update(part)
    if labels is not None:
        labels.scores = torch.cat([r["scores"] for r in rows], dim=1)  # (C, n): which
        # labels quadrature and AIS take
        elbo = concat_estimates([r["elbo"] for r in rows], extra={"proposal": "q"})
        out = {"elbo": elbo, **out}
        for name, est in out.items():
            _tag(est, GIVEN_Y if name.endswith(GIVEN_SUFFIX) else MARGINAL)
    if cfg.prior_proposal:
        rows = weights("prior")
        for suffix in ("", GIVEN_SUFFIX) if labels is not None else ("",):
            part, _ = collect(rows, suffix, "prior")
            for name, est in part.items():
                out[name] = est if labels is None else _tag(
                    est, GIVEN_Y if suffix else MARGINAL)
    return out


def _exact(subject: Subject, cfg: EvalConfig, run: dict) -> dict[str, Estimate]:
    from pgm.inference.quadrature import quadrature_log_marginal

    x = subject.x
    if subject.exact is not None:
        t0 = time.perf_counter()
        parts = map_batches(lambda lo, hi, gen, tick: subject.exact(lo, hi), len(x),
                            stream="iwae", stage="exact", **run)
        return {"exact": Estimate.of(torch.cat(parts), seconds=time.perf_counter() - t0,
                                     extra={"method": subject.exact_method}, bound="exact")}
    if not 0 < subject.latent_dim <= 2:
        return {}
    labels = subject.labels
    if labels is None:
        parts = map_batches(lambda lo, hi, gen, tick: quadrature_log_marginal(
            subject.bind(lo, hi).log_joint, x[lo:hi], latent_dim=subject.latent_dim,
            tol=QUADRATURE_TOL), len(x), stream="iwae", stage="quadrature", **run)
        return {"quadrature": concat_estimates(parts, extra={"method": "quadrature"})}

    def one(lo, hi, gen, tick):  # the labels' rows at once: one grid search
        c, i = labels.rows(lo, hi)
        f, xr = labels.bind(x[lo:hi], c, i)
        return _sum_labels(quadrature_log_marginal(f.log_joint, xr, latent_dim=subject.latent_dim,
                                                   tol=QUADRATURE_TOL), labels, lo, hi, c, i)

    parts = map_batches(one, len(x), stream="iwae", stage="quadrature", **run)
    return {name: concat_estimates([p[i] for p in parts], extra={"method": "quadrature"})
            for i, name in enumerate(("quadrature", "quadrature" + GIVEN_SUFFIX))}


def _initial(subject: Subject, cfg: EvalConfig) -> str:
    """The start of AIS's path (``auto``: the guide where it is an inference network with a
    density, else the Laplace proposal)."""
    if cfg.ais_initial == "auto":
        return "q" if subject.guide_density and subject.amortized_guide else "laplace"
    if cfg.ais_initial == "q" and not subject.guide_density:
        raise ValueError("ais_initial='q' needs a guide with a density; this model's guide is a "
                         "point mass: use ais_initial='laplace' or 'prior' (or 'auto')")
    return cfg.ais_initial


def _proposal(f: LatentCallables, x: torch.Tensor, initial: str):
    """``(callables, initial, seconds, mass)`` for AIS on ``x``: for ``"laplace"``, ``f`` with
    :func:`~pgm.inference.laplace.laplace_proposal` fitted to ``x`` as q(z|x), AIS's
    ``initial`` ``"q"``, the fit's seconds and its heaviest Gaussians' covariances as AIS's
    mass matrices (``inverse_mass_sqrt``, :meth:`~pgm.inference.laplace.Laplace.
    inverse_mass_sqrt`); else ``f`` and ``initial`` unchanged, identity mass (None)."""
    if initial != "laplace":
        return f, initial, 0.0, None
    from pgm.inference.laplace import AIS_DEFENSIVE, fit_laplace, laplace_proposal

    t0 = time.perf_counter()
    q = fit_laplace(f, x)
    f = laplace_proposal(f, x, defensive=AIS_DEFENSIVE, fitted=q)
    return f, "q", time.perf_counter() - t0, q.inverse_mass_sqrt()


def _start(bind, x: torch.Tensor, initial: str):
    """``bind(lo, hi)`` with :func:`_proposal` applied to each batch, kept, so that BDMC's
    reverse pass starts from its forward pass's p_0 and runs with its mass matrices; AIS's
    ``initial``; a batch's fitting time ``seconds(lo, hi)``; its mass matrices
    ``mass(lo, hi)`` (None: identity)."""
    if initial != "laplace":
        return bind, initial, lambda lo, hi: 0.0, lambda lo, hi: None
    fitted: dict = {}

    def fit(lo, hi):  # (callables, initial, seconds, mass) of a batch, fitted once
        if (lo, hi) not in fitted:
            fitted[(lo, hi)] = _proposal(bind(lo, hi), x[lo:hi], initial)
        return fitted[(lo, hi)]

    return (lambda lo, hi: fit(lo, hi)[0], "q", lambda lo, hi: fit(lo, hi)[2],
            lambda lo, hi: fit(lo, hi)[3])


def _ais(bind, x, cfg: EvalConfig, run: dict, stage: str, stream: str = "ais", *,
         initial: str) -> tuple[Estimate, Callable, Callable]:
    """AIS on ``x``, the callables it ran on (``bind(lo, hi)``, with the proposal) and their
    mass matrices (``mass(lo, hi)``)."""
    from pgm.inference.ais import ais

    schedule = SCHEDULES[cfg.ais_schedule](cfg.ais_steps)
    bind, p0, fit_seconds, mass = _start(bind, x, initial)

    def one(lo, hi, gen, tick):
        est = ais(bind(lo, hi), x[lo:hi], schedule=schedule, num_chains=cfg.ais_chains,
                  pilot_chains=cfg.ais_pilot_chains, num_leapfrog=cfg.ais_leapfrog,
                  initial=p0, generator=gen, progress=tick, inverse_mass_sqrt=mass(lo, hi))
        est.extra.pop("z_final", None)
        fit = fit_seconds(lo, hi)  # the proposal's fit counts in AIS's time
        est.extra.update(initial=initial, proposal_seconds=fit)
        return replace(est, seconds=est.seconds + fit)

    parts = map_batches(one, len(x), stream=stream, stage=stage, **run)
    return concat_estimates(parts, extra={
        "schedule": cfg.ais_schedule,
        "proposal_seconds": sum(p.extra["proposal_seconds"] for p in parts)}), bind, mass


def _ais_labels(labels: LabelSum, x, cfg: EvalConfig, run: dict, *,
                initial: str) -> tuple[Estimate, Estimate]:
    """AIS on every label's rows: (log p(x), log p(x | y)). Each label's value is the log of
    an unbiased estimate of p(x | y'), so their p(y')-weighted sum is an unbiased estimate of
    p(x). ``se_chains`` of log p(x) is its delta-method standard error across chains:
    sqrt(sum_y r_y^2 se_y^2) with r_y = p(y) p_hat(x|y) / p_hat(x) and se_y each label's."""
    from pgm.inference.ais import ais

    schedule = SCHEDULES[cfg.ais_schedule](cfg.ais_steps)

    def one(lo, hi, gen, tick):
        c, i = labels.rows(lo, hi)
        f, xr = labels.bind(x[lo:hi], c, i)
        f, p0, fit, mass = _proposal(f, xr, initial)  # a proposal per (datapoint, label)
        est = ais(f, xr, schedule=schedule, num_chains=cfg.ais_chains,
                  pilot_chains=cfg.ais_pilot_chains, num_leapfrog=cfg.ais_leapfrog,
                  initial=p0, generator=gen, progress=tick, inverse_mass_sqrt=mass)
        est.extra.update(initial=initial, proposal_seconds=fit)
        est = replace(est, seconds=est.seconds + fit)
        total, given = _sum_labels(est, labels, lo, hi, c, i)
        if est.extra.get("se_chains") is not None:
            se = labels.matrix(est.extra["se_chains"], c, i, hi - lo).nan_to_num(neginf=0.0)
            m = labels.matrix(est.per_datapoint, c, i, hi - lo)
            r = torch.softmax(m + labels.log_py[:, None], 0)  # (C, b): each label's share
            total.extra["se_chains"] = ((r * se) ** 2).sum(0).sqrt()
            given.extra["se_chains"] = labels.given(se, lo, hi)
            for e in (total, given):
                e.extra["se_chains_mean"] = e.extra["se_chains"].mean().item()
        return total, given

    parts = map_batches(one, len(x), stream="ais", stage="ais", **run)
    return tuple(concat_estimates([p[i] for p in parts], extra={"schedule": cfg.ais_schedule})
                 for i in range(2))


def _bdmc(subject: Subject, n: int, cfg: EvalConfig, run: dict) -> tuple[Estimate, Estimate]:
    """Forward AIS and reverse AIS on (x, z) simulated from the model: z is an exact
    posterior sample of its x, so the reverse chain gives a stochastic upper bound."""
    from pgm.inference.ais import bdmc_upper

    with torch.random.fork_rng(devices=[]):
        _seed_batch(cfg.seed, 0, "bdmc_sim")
        x, z, bind = subject.simulate(n)
    initial = _initial(subject, cfg)
    lower, bind, mass = _ais(bind, x, cfg, run, "bdmc forward", stream="bdmc",
                             initial=initial)
    lower = replace(lower, data="simulated")
    schedule = SCHEDULES[cfg.ais_schedule](cfg.ais_steps)
    initial = "q" if initial == "laplace" else initial  # bind's q(z|x) is the proposal

    # The reverse pass takes the forward run's pilot-tuned step sizes for the same x: tuned
    # from the prior with independent draws, never from the exact samples it starts at.
    step_sizes = lower.extra.pop("step_sizes")

    def one(lo, hi, gen, tick):
        return bdmc_upper(bind(lo, hi), x[lo:hi], z[lo:hi], schedule=schedule,
                          num_chains=cfg.ais_chains, num_leapfrog=cfg.ais_leapfrog,
                          initial=initial, step_size=step_sizes[:, lo:hi],
                          adapt="none", generator=gen, progress=tick,
                          inverse_mass_sqrt=mass(lo, hi))

    parts = map_batches(one, n, stream="bdmc_rev", stage="bdmc reverse", **run)
    upper = concat_estimates(parts, extra={"schedule": cfg.ais_schedule})
    gap = upper.per_datapoint - lower.per_datapoint
    upper.extra.update(sandwich_mean=gap.mean().item(),
                       sandwich_se=(gap.std() / math.sqrt(len(gap))).item()
                       if len(gap) > 1 else math.nan)
    return lower, replace(upper, data="simulated")


def _gaps(estimators, subject: Subject, cfg: EvalConfig, run: dict) -> dict[str, Estimate]:
    from pgm.inference.gaps import amortization_gaps

    quantity = GIVEN_Y if subject.labels is not None else MARGINAL  # gaps are of q(z|x, y)
    name = Evaluation(estimators, cfg, torch.arange(0)).best(quantity)
    best = estimators[name]
    m = min(cfg.gaps_n, best.n)
    x = subject.x

    def one(lo, hi, gen, tick):
        return amortization_gaps(subject.bind(lo, hi), x[lo:hi],
                                 best.per_datapoint[lo:hi].to(x.device), steps=cfg.gaps_steps)

    parts: dict[str, list[Estimate]] = {}
    for res in map_batches(one, m, stream="gaps", stage="gaps", **run):
        for key, est in res.items():
            parts.setdefault(key, []).append(est)
    return {(k if k.startswith("elbo") else "gap_" + k.removesuffix("_gap")): concat_estimates(
        v, extra={"log_px_from": name}) for k, v in parts.items()}


def _posterior_check(subject: Subject, cfg: EvalConfig, progress: Progress | None):
    """NUTS reference posteriors for the first few datapoints, drawn against q(z|x); the
    returned Estimate holds the NUTS diagnostics (its per-datapoint value: R-hat)."""
    from pgm.inference.diagnostics import posterior_figure, reference_posterior

    x = subject.x
    m = min(cfg.posterior_check, len(x))
    t0 = time.perf_counter()

    def one(i, _, gen, tick):
        f = subject.bind(i, i + 1)
        ref = reference_posterior(f, x[i:i + 1], seed=cfg.seed + i)
        q = f.sample_q(x[i:i + 1], len(ref.samples))[:, 0].cpu()
        return q, ref.samples.cpu(), ref.summary["rhat_max"], ref.summary["ess_bulk_min"]

    rows = map_batches(one, m, 1, seed=cfg.seed, stream="gaps", stage="nuts reference",
                       progress=progress)
    q_samples, nuts, rhat, ess = (list(c) for c in zip(*rows))
    fig = posterior_figure(q_samples, nuts, "q(z|x) (orange) against the NUTS posterior "
                           "p(z|x) (blue)", panel_titles=[f"test datapoint {i}" for i in range(m)])
    est = Estimate.of(torch.tensor(rhat, dtype=torch.float64), seconds=time.perf_counter() - t0,
                      extra={"rhat_max": max(rhat), "ess_bulk_min": min(ess)})
    return fig, est
