r"""Any Pyro model/guide pair as the estimators' callables, read from its traces.

The estimators take a :class:`~pgm.inference.callables.LatentCallables` bundle: log p(x, z),
log p(z), z ~ q(z|x), log q(z|x) and z ~ p(z), over ``(K, B, L)`` particles, datapoints and one
flat latent vector per datapoint. :class:`Program` builds it from a user's Pyro program
``model(x, *args, **kwargs)`` and guide ``guide(x, *args, **kwargs)`` -- plain functions or
methods of an ``nn.Module``/``PyroModule``, with any site names -- by tracing them once:

- **observed sites**: sample sites with ``obs=``; at least one, all inside the data plate.
- **the data plate**: the ``pyro.plate`` of size ``len(x)`` that encloses every observed site
  (pass ``data_plate=NAME`` when several would).
- **latent sites**: the other sample sites. Each must lie inside the data plate (a *local*
  latent): a global latent :math:`\theta` shared by all datapoints couples them, so
  :math:`p(x_i) = \int p(\theta) p(x_i | \theta) d\theta` of one datapoint is a different
  quantity from the per-datapoint terms of :math:`\log p(x_{1:N})`, and the estimators here
  measure neither.
- **continuous latents** of any event shape, several of them, are packed into one vector per
  datapoint: the data-plate and particle dimensions move to the front, the rest is flattened
  and concatenated (in trace order). A constrained site (positive, unit interval, simplex,
  ...) is moved to unconstrained space by :func:`torch.distributions.biject_to` of the
  model's support (the guide's may be narrower; its draws are checked to lie inside), one
  support for all datapoints (a bound that varies with the datapoint is refused):
  :math:`z = T(u)`, and every density of z gains :math:`\log |\det J_T(u)|`,

  .. math::

      \log p(x, u) = \log p(x, T(u)) + \log|\det J_T(u)|, \qquad
      \log q(u | x) = \log q(T(u) | x) + \log|\det J_T(u)|,

  so importance weights are unchanged (the Jacobians cancel) and HMC/AIS move on R^L.
- **discrete latents** are summed out where the model marks them for parallel enumeration
  (``infer={"enumerate": "parallel"}`` or :func:`pyro.infer.config_enumerate`):
  :math:`\log p(x, u) = \log \sum_m p(x, m, u)`, by :class:`~pyro.poutine.enum` and a
  logsumexp over the enumeration dimensions. An enumerated site must sit directly in the data
  plate (not in a plate nested inside it). An unmarked discrete latent is an error: its
  density has no gradient for HMC and no guide density to weight by.

- **the data**: the estimators run the programs with Pyro's validation off (HMC must see a
  non-finite density where a parameter overflows, not an exception), so each new x is first
  checked by one validated run of the model (its latents from the prior, the caller's random
  stream untouched): a value outside an observed site's support or an invalid parameter is a
  :class:`~pgm.errors.DataError` (unless the user turned validation off).
- ``pyro.deterministic`` records are not sites of the density and are ignored.

Particles are vectorised by an outer ``pyro.plate("particles", K)`` left of every plate of the
program, so a program written for one sample per datapoint is evaluated for K at once.

:func:`pgm.inference.adapter.latent_callables` computes the same functions from the
distributions of pgm's own models without tracing (faster); tests/test_program.py proves the
two paths equal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import pyro.distributions.util as dist_util
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to
from torch.distributions.transforms import identity_transform

from pgm.errors import DataError, PgmError

from .callables import LatentCallables

__all__ = ["Program", "ProgramError", "LatentSite"]

PARTICLES = "particles"


class ProgramError(PgmError, ValueError):
    """A model/guide pair the estimators cannot measure; the message says why and what to do."""


_BATCHES = ("pgm runs the model and guide on batches of x, so the plate over the datapoints "
            "must take its size from the x it is given (pyro.plate('data', len(x))); a guide "
            "with a parameter per datapoint of the whole data set (an AutoGuide, a pyro.param "
            "of size N) cannot run on batches: use an amortized guide (an encoder of x)")


def _varying_support(name: str, support) -> ProgramError:
    return ProgramError(
        f"latent site {name!r} has a support that changes with the datapoint or with other "
        f"latents ({support}): pgm moves each latent to R^L by one bijection for all "
        "datapoints; write it on a fixed support (e.g. z = c * u with u ~ Uniform(0, 1), the "
        "log-Jacobian as a pyro.factor)")


def _outside(name: str, support) -> ProgramError:
    return ProgramError(f"the guide draws {name!r} outside the model's support ({support}): "
                        "the guide's support must lie inside the model's")


class LatentSite(NamedTuple):
    """One continuous latent site's place in the packed vector."""

    name: str
    transform: torch.distributions.Transform  # unconstrained u -> the site's support
    event_dim: int  # of the site's distribution (in the constrained space)
    rest: tuple[int, ...]  # unconstrained shape per (particle, datapoint), plate dims kept
    size: int  # prod(rest): the site's share of the packed vector
    support: object  # the model's support of the site (a torch Constraint)
    support_key: tuple  # the same described (:func:`_support_key`): one in every batch
    check_draws: bool  # the guide's support differs from the model's: its draws are checked


def _sample_sites(tr):
    """The trace's sample sites, without plates' subsample sites and ``pyro.deterministic``
    records (a Delta at a computed value: no density, no data)."""
    return [(name, site) for name, site in tr.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)
            and not site["infer"].get("_deterministic")]


def _plates(site) -> list:
    return [f for f in site["cond_indep_stack"] if f.vectorized]


def _nesting(*traces) -> int:
    """The deepest plate dim of the traces' sample sites, as a positive count."""
    dims = [-f.dim for tr in traces for _, s in _sample_sites(tr) for f in _plates(s)]
    return max(dims, default=0)


def _base(fn):
    while isinstance(fn, dist.Independent | dist.MaskedDistribution):
        fn = fn.base_dist
    return fn


def _is_identity(t) -> bool:
    while isinstance(t, torch.distributions.transforms.IndependentTransform):
        t = t.base_transform
    return t is identity_transform


def _same(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors are views of the same values (e.g. two slices x[lo:hi] of x)."""
    return a is b or (a.shape == b.shape and a.stride() == b.stride() and a.device == b.device
                      and a.data_ptr() == b.data_ptr())


def _fn_name(fn) -> str:
    return type(_base(fn)).__name__


def _support_key(c):
    """A hashable description of the support ``c``, or None where its parameters vary over
    its tensor's elements (a bound per datapoint or per draw of another latent)."""
    key = [type(c).__name__]
    for name, v in sorted(vars(c).items()):
        if isinstance(v, Tensor):
            flat = v.detach().reshape(-1)
            if flat.numel() and not bool((flat == flat[0]).all()):
                return None
            key.append((name, flat[0].item() if flat.numel() else None))
        elif isinstance(v, torch.distributions.constraints.Constraint):
            sub = _support_key(v)
            if sub is None:
                return None
            key.append((name, sub))
        elif isinstance(v, int | float | bool | str):
            key.append((name, v))
    return tuple(key)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0].rstrip(":") if str(e).strip() else type(e).__name__


class Program:
    r"""A Pyro model/guide pair, read from one trace of each on a batch ``x``.

    ``Program(model, guide, x, *args, **kwargs)``: ``x`` is a batch of datapoints (its first
    dimension indexes them) and ``args``/``kwargs`` are what the programs take after x (e.g.
    labels). Attributes: ``latents`` (the packed continuous sites), ``latent_dim`` (length of
    the packed vector), ``enumerated`` and ``observed`` site names, ``data_plate``,
    ``point_guide`` (the guide is a point mass: no density, so no ELBO or IWAE bound).
    :meth:`callables` gives the estimators' functions for a batch.
    """

    def __init__(self, model: Callable, guide: Callable, x: Tensor, *args,
                 data_plate: str | None = None, **kwargs):
        if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] < 1:
            raise ProgramError("x must be a tensor whose first dimension indexes datapoints")
        self.model, self.guide = model, guide
        B = x.shape[0]
        # a probe: it leaves the caller's random stream as it was
        try:
            with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []), \
                    poutine.block():
                guide_tr = poutine.trace(guide).get_trace(x, *args, **kwargs)
                model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(
                    x, *args, **kwargs)
        except ValueError as e:
            if "Shape mismatch inside plate" not in str(e):
                raise
            raise ProgramError(
                f"tracing the program on a batch of {B} datapoints failed ({_first_line(e)}): "
                + _BATCHES) from None
        self.nesting = _nesting(model_tr, guide_tr)
        self.particle_dim = -(self.nesting + 1)
        model_sites = _sample_sites(model_tr)
        observed = [(n, s) for n, s in model_sites if s["is_observed"]]
        if not observed:
            raise ProgramError("the model has no observed site: score the data with "
                               "pyro.sample(name, distribution, obs=x)")
        self.observed = tuple(n for n, _ in observed)
        #: every observed site has a discrete support: log p(x) is a log-probability
        self.discrete_data = all(s["fn"].support.is_discrete for _, s in observed)
        self.data_plate, self.data_dim = self._find_data_plate(observed, B, data_plate)
        guide_names = {n for n, s in _sample_sites(guide_tr) if not s["is_observed"]}
        latents, enumerated = [], []
        for name, site in model_sites:
            if site["is_observed"]:
                continue
            plates = {f.name for f in _plates(site)}
            if self.data_plate not in plates:
                raise ProgramError(
                    f"latent site {name!r} lies outside the data plate {self.data_plate!r}: it "
                    "is a global latent, shared by all datapoints, so log p(x) of one "
                    "datapoint is not defined by this program (the datapoints are coupled "
                    "through it). Per-datapoint log p(x) needs local latents: move the site "
                    "into the data plate, or make it a parameter (pyro.param) and fit it")
            if site["fn"].support.is_discrete:
                how = site["infer"].get("enumerate")
                if how != "parallel":
                    raise ProgramError(
                        f"latent site {name!r} is discrete and not marked for enumeration: "
                        "mark it with infer={'enumerate': 'parallel'} (or wrap the model in "
                        "pyro.infer.config_enumerate) so that pgm sums it out")
                if plates != {self.data_plate}:
                    raise ProgramError(
                        f"enumerated site {name!r} sits in plates {sorted(plates)}: pgm "
                        f"enumerates discrete latents directly in the data plate only")
                if name in guide_names:
                    raise ProgramError(f"enumerated site {name!r} must not appear in the guide")
                enumerated.append(name)
                continue
            if name not in guide_names:
                raise ProgramError(f"the guide has no site {name!r}: it must sample every "
                                   "continuous latent of the model")
            if not any(f.size == B and f.dim == self.data_dim
                       for f in _plates(guide_tr.nodes[name])):
                raise ProgramError(
                    f"the guide samples {name!r} outside a plate over the datapoints: wrap it "
                    f"in pyro.plate(..., len(x)) at dim {self.data_dim}, as the model's "
                    f"{self.data_plate!r}")
            latents.append(name)
        extra = guide_names - set(latents)
        if extra:
            raise ProgramError(f"the guide samples {sorted(extra)}, which the model does not")
        self.enumerated = tuple(enumerated)
        self.point_guide = any(_fn_name(guide_tr.nodes[n]["fn"]) == "Delta" for n in latents)
        # Shapes under the particle plate (K = 1) give each site's place in the packed vector,
        # and the probe's model trace (at the guide's draws) each site's support
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            tr = self._trace(guide, 1, x, args, kwargs)
        self.latents = tuple(self._site(name, model_tr.nodes[name]["fn"], tr.nodes[name])
                             for name in latents)
        self.latent_dim = sum(s.size for s in self.latents)
        self._x_rest = tuple(x.shape[1:])

    # ---- reading the probe ------------------------------------------------------------------
    @staticmethod
    def _find_data_plate(observed, B: int, name: str | None) -> tuple[str, int]:
        common = None
        for _, site in observed:
            frames = {(f.name, f.dim) for f in _plates(site) if f.size == B}
            common = frames if common is None else common & frames
        if name is not None:
            match = [f for f in common if f[0] == name]
            if not match:
                raise ProgramError(f"no plate named {name!r} of size {B} encloses every "
                                   "observed site")
            return match[0]
        if not common:
            enclosing = None  # the plates of any size around every observed site
            for _, site in observed:
                frames = {(f.name, f.size) for f in _plates(site)}
                enclosing = frames if enclosing is None else enclosing & frames
            if enclosing:
                raise ProgramError(
                    f"the observed sites lie in plate "
                    f"{' and '.join(f'{n!r} of size {k}' for n, k in sorted(enclosing))}, not "
                    f"in one of size {B}, the datapoints of the batch x the program was run on: "
                    + _BATCHES)
            raise ProgramError(
                f"no plate of size {B} (the datapoints of the batch x it was run on) encloses "
                f"every observed site: wrap the program's sites in `with pyro.plate('data', "
                "len(x)):` so that each datapoint gets its own log p(x)")
        if len(common) > 1:
            e = ProgramError(f"several plates of size {B} enclose the observed sites "
                             f"({', '.join(sorted(n for n, _ in common))}): name the data "
                             "plate with data_plate=...")
            e.candidates = {n for n, _ in common}
            raise e
        return next(iter(common))

    def _site(self, name: str, fn, guide_site) -> LatentSite:
        """The site's place in the packed vector (from the guide's draw under the particle
        plate), with the model's distribution ``fn`` of it: its support is the model's (the
        guide's may be narrower: IWAE stays a bound, but AIS and quadrature must integrate over
        all of it)."""
        value = guide_site["value"]
        key = _support_key(fn.support)
        if key is None:
            raise _varying_support(name, fn.support)
        check = _support_key(guide_site["fn"].support) != key
        if check and not bool(fn.support.check(value).all()):
            raise _outside(name, fn.support)
        t = biject_to(fn.support)
        u = t.inv(value)
        nb = value.dim() - fn.event_dim
        rest = tuple(self._front(u, nb).shape[2:])
        return LatentSite(name, t, fn.event_dim, rest, math.prod(rest), fn.support, key, check)

    def _check_draws(self, tr) -> None:
        """The guide's draws lie in the model's supports (where the guide's support differs)."""
        for s in self.latents:
            if s.check_draws and not bool(s.support.check(tr.nodes[s.name]["value"]).all()):
                raise _outside(s.name, s.support)

    def _check_data(self, x: Tensor, args, kwargs) -> None:
        """One validated run of the model on ``x`` (its latents drawn from the prior, the
        caller's random stream untouched): the observed values must lie in their sites'
        supports and the distributions' parameters be valid, as Pyro's validation checks them
        (the estimators run unvalidated: HMC must see a non-finite density, not an error),
        unless the user turned Pyro's validation off (``pyro.enable_validation(False)``); and
        each latent site must keep the support it had in the probe."""
        devices = [x.device] if x.is_cuda else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            try:
                tr = self._trace(self.model, 1, x, args, kwargs,
                                 validate=dist_util.is_validation_enabled())
                for n in self.observed:
                    tr.nodes[n]["fn"].log_prob(tr.nodes[n]["value"])
            except ValueError as e:
                raise DataError(f"the model rejects this batch of x ({len(x)} datapoints): "
                                f"{_first_line(e)}") from None
        for s in self.latents:
            support = tr.nodes[s.name]["fn"].support
            if _support_key(support) != s.support_key:
                raise _varying_support(s.name, support)

    def _front(self, t: Tensor, nb: int) -> Tensor:
        """``t`` with its particle and data dims moved to the front; ``nb`` = its batch rank."""
        if nb < -self.particle_dim:
            raise ProgramError(f"a site of batch rank {nb} is not broadcast over the plates")
        return t.movedim((nb + self.particle_dim, nb + self.data_dim), (0, 1))

    # ---- running the programs ---------------------------------------------------------------
    def _trace(self, fn, K: int, x, args, kwargs, *, values=None, enum=False, uncondition=False,
               validate=False):
        def vectorised(*a, **kw):
            with pyro.plate(PARTICLES, K, dim=self.particle_dim):
                return fn(*a, **kw)

        f = vectorised
        if values is not None:
            f = poutine.condition(f, data=values)
        if enum:
            f = poutine.enum(f, first_available_dim=self.particle_dim - 1)
        if uncondition:
            f = poutine.uncondition(f)
        # HMC may propose points where a parameter overflows; the kernel rejects a non-finite
        # density as a divergence, so distributions must return it rather than raise
        with pyro.validation_enabled(validate):
            return poutine.trace(f).get_trace(x, *args, **kwargs)

    def _pack(self, tr) -> Tensor:
        parts = []
        for s in self.latents:
            site = tr.nodes[s.name]
            u = s.transform.inv(site["value"])
            front = self._front(u, site["value"].dim() - s.event_dim)
            parts.append(front.reshape(*front.shape[:2], s.size))
        return torch.cat(parts, -1) if parts else None

    def _unpack(self, z: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Site values ``{name: T(u)}`` of packed ``z`` (K, B, L) and the summed log|det J|."""
        K, B = z.shape[:2]
        if z.shape[-1] != self.latent_dim:
            raise ProgramError(f"z has {z.shape[-1]} latent dimensions, the program "
                               f"{self.latent_dim}")
        values, ladj, start = {}, z.new_zeros(K, B), 0
        for s in self.latents:
            u = z[..., start:start + s.size].reshape(K, B, *s.rest)
            start += s.size
            nb = 2 + len(s.rest) - s.transform.domain.event_dim
            u = u.movedim((0, 1), (nb + self.particle_dim, nb + self.data_dim))
            value = s.transform(u)
            values[s.name] = value
            if not _is_identity(s.transform):
                j = s.transform.log_abs_det_jacobian(u, value)
                ladj = ladj + self._reduce(j, K, B)
        return values, ladj

    def _reduce(self, lp: Tensor, K: int, B: int, enum_dims: int = 0) -> Tensor:
        """Sum a log-density over every dim but (enumeration dims..., particle, datapoint):
        ``lp`` holds ``enum_dims`` enumeration dims left of the plates' dims."""
        rank = enum_dims - self.particle_dim
        lp = lp.reshape((1,) * (rank - lp.dim()) + tuple(lp.shape))
        lead = lp.shape[:enum_dims]
        lp = lp.movedim((enum_dims, rank + self.data_dim), (rank - 2, rank - 1))
        return lp.reshape(*lead, -1, *lp.shape[-2:]).sum(-3).expand(*lead, K, B)

    def _log_density(self, tr, names, K: int, B: int) -> Tensor:
        """Sum of the sites' log-densities, (K, B); enumerated sites summed out."""
        enum_dims = len(self.enumerated) if any(n in self.enumerated for n in names) else 0
        total = 0.0
        for n in names:  # as Trace.compute_log_prob, without its NaN warnings (HMC rejects)
            site = tr.nodes[n]
            lp = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"])
            total = total + self._reduce(lp, K, B, enum_dims)
        if enum_dims:
            total = torch.logsumexp(total.reshape(-1, K, B), 0)
        return total

    def callables(self, *args, x_like: Tensor | None = None, **kwargs) -> LatentCallables:
        """The estimators' functions for one batch, with the programs' ``args``/``kwargs``
        (those of that batch: labels sliced to it) bound. ``x_like``: a batch of data of the
        right shape for drawing from the prior (its observed values are never read); by
        default zeros."""
        model, guide = self.model, self.guide
        joint_names = (*[s.name for s in self.latents], *self.enumerated, *self.observed)
        prior_names = (*[s.name for s in self.latents], *self.enumerated)
        enum = bool(self.enumerated)

        last: dict = {}  # the last model trace: AIS and HMC ask log p(z) and log p(x, z)
        # at the same z one after the other, and one trace of the model serves both
        checked: dict = {}  # the last x validated (:meth:`_check_data`)

        def model_trace(x, z):
            """The model traced at packed ``z`` (with data ``x``; None: any data will do)."""
            hit = last.get("z") is z and last["version"] == z._version
            if hit and (x is None or _same(last["x"], x)):
                return last["trace"], last["ladj"]
            K, B = z.shape[:2]
            values, ladj = self._unpack(z)
            if x is not None and not (checked.get("x") is not None and _same(checked["x"], x)
                                      and checked["version"] == x._version):
                self._check_data(x, args, kwargs)
                checked.update(x=x, version=x._version)
            x = self._x(B, z, x_like) if x is None else x
            tr = self._trace(model, K, x, args, kwargs, values=values, enum=enum)
            last.update(z=z, version=z._version, x=x, trace=tr, ladj=ladj)
            return tr, ladj

        def log_joint(x, z):
            tr, ladj = model_trace(x, z)
            return self._log_density(tr, joint_names, *z.shape[:2]) + ladj

        def log_prior(z):
            tr, ladj = model_trace(None, z)
            return self._log_density(tr, prior_names, *z.shape[:2]) + ladj

        def sample_q(x, K):
            with torch.no_grad():
                tr = self._trace(guide, K, x, args, kwargs)
                self._check_draws(tr)
                return self._packed_or_empty(tr, K, x)

        def log_q(z, x):
            K, B = z.shape[:2]
            if not self.latents:
                return z.new_zeros(K, B)
            values, ladj = self._unpack(z)
            tr = self._trace(guide, K, x, args, kwargs, values=values)
            return self._log_density(tr, [s.name for s in self.latents], K, B) + ladj

        def sample_prior(B, K):
            x = self._x(B, None, x_like)
            with torch.no_grad():
                tr = self._trace(model, K, x, args, kwargs)
                return self._packed_or_empty(tr, K, x)

        return LatentCallables(log_joint, log_prior, sample_q, log_q, sample_prior)

    def _packed_or_empty(self, tr, K: int, x: Tensor) -> Tensor:
        z = self._pack(tr)
        if z is None:
            return torch.zeros(K, x.shape[0], 0, device=x.device)
        return z

    def _x(self, B: int, like: Tensor | None, x_like: Tensor | None) -> Tensor:
        if x_like is not None and x_like.shape[0] == B:
            return x_like
        device = like.device if like is not None else (
            x_like.device if x_like is not None else None)
        return torch.zeros(B, *self._x_rest, device=device)

    # ---- simulation ---------------------------------------------------------------------------
    def simulate(self, *args, x_like: Tensor, **kwargs) -> tuple[Tensor, Tensor]:
        """(x, z) drawn from the model: x shaped like ``x_like`` and the packed latents
        ``(B, L)``, an exact sample of p(z | x) for that x (what BDMC needs). Needs a single
        observed site holding x."""
        if len(self.observed) != 1:
            raise ProgramError(f"simulating data needs one observed site, the model has "
                               f"{len(self.observed)} ({', '.join(self.observed)})")
        with torch.no_grad():
            tr = self._trace(self.model, 1, x_like, args, kwargs, uncondition=True)
        site = tr.nodes[self.observed[0]]
        x = site["value"]
        x = x.select(x.dim() - site["fn"].event_dim + self.particle_dim, 0)
        if x.shape != x_like.shape:
            raise ProgramError(f"the observed site {self.observed[0]!r} holds a value of shape "
                               f"{tuple(x.shape)}, not x's {tuple(x_like.shape)}: pgm simulates "
                               "data only for a program that observes x as it is given")
        return x, self._packed_or_empty(tr, 1, x_like)[0]
