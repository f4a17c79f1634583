r"""The one place pgm calls ArviZ: PSIS k-hat, posterior draws as ArviZ data, R-hat and ESS.

ArviZ's own functions do the work in each major version; this file only adapts the calls.

**ArviZ 0.x** (tested: 0.23.4, Python < 3.12): ``arviz.psislw(log_w, reff)`` takes the log
importance weights with samples on the last axis and returns ``(smoothed log weights, k-hat)``;
``arviz.from_dict(posterior={...})`` returns an ``InferenceData``; ``arviz.rhat`` and
``arviz.ess(method="bulk" | "tail")`` take it.

**ArviZ 1.x** (tested: 1.3 with arviz-stats 1.3 and arviz-base 1.3, Python >= 3.12) dropped
``psislw``, ``from_pyro`` and ``InferenceData``. ``arviz_base.from_dict({"posterior": {...}})``
returns an ``xarray.DataTree`` (``.posterior["z"]`` reads the same as on an InferenceData);
``arviz_stats.rhat`` / ``arviz_stats.ess`` take it. PSIS is
``arviz_stats.base.array_stats.psislw(ary, r_eff)``, which follows the LOO convention: ``ary``
is a log-likelihood and the weights are ``exp(-ary)``, so it is given ``-log_w``.

**Where the versions differ** (both fit the generalized Pareto tail with the same
weakly-informative prior of Vehtari et al. 2024):

- Tail size, for K draws and relative efficiency r: 0.x takes
  :math:`\lceil \min(K/5, 3\sqrt{K/r}) \rceil` of the largest weights, 1.x takes
  :math:`\lfloor K/5 \rfloor` if :math:`K r \le 225`, else :math:`\lfloor 3\sqrt{K/r} \rfloor`:
  the same or one fewer. Where the counts agree (K/5 a whole number, K <= 225) the k-hats
  agree to rounding; where 1.x's tail is one point shorter they differ by that point's noise
  (200 rows of Gaussian-proposal weights: mean difference 0.001, largest per row 0.04 at
  K = 4000 and 0.08 at K = 1000). ``tests/test_arviz_compat.py`` pins 0.x's values.
- Fewest draws: 0.x needs 5 tail points (K >= 21); 1.x raises below 5 and returns NaN with 5,
  because its fit needs the tail's first quartile above its minimum, i.e. >= 6 points, so
  K >= 30 (:data:`MIN_PSIS_SAMPLES`, used for both versions).
- A failed fit (tied tail weights): 0.x returns inf, 1.x NaN or a ValueError ("All tail
  values are the same"); here both read inf.
- Tail ESS: 1.x's differs from 0.x's by about 1% on the same draws; R-hat and bulk ESS agree
  to rounding.
"""

from __future__ import annotations

import functools
import importlib.metadata
import warnings
from typing import Any

import numpy as np

__all__ = ["MIN_PSIS_SAMPLES", "arviz_major", "convergence", "posterior_data", "psis_khat_rows"]

#: Fewest draws per row for a Pareto fit in both ArviZ versions (1.x's tail of floor(K/5) >= 6).
MIN_PSIS_SAMPLES = 30


@functools.cache
def arviz_major() -> int:
    """The installed ArviZ's major version (0 or 1), read from its metadata without importing."""
    return int(importlib.metadata.version("arviz").split(".")[0])


@functools.cache
def _arviz0():
    """ArviZ 0.x, its import-time FutureWarning (about the coming 1.0 API) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def psis_khat_rows(log_w: np.ndarray, reff: float = 1.0) -> np.ndarray:
    """Pareto k-hat of each row of ``log_w`` ``(rows, K)`` log importance weights, ``(rows,)``.

    ``K >= MIN_PSIS_SAMPLES``; inf where the Pareto fit failed (e.g. a tail of tied weights).
    """
    log_w = np.asarray(log_w, dtype=np.float64)
    if log_w.ndim != 2 or log_w.shape[1] < MIN_PSIS_SAMPLES:
        raise ValueError(f"log_w must be (rows, K) with K >= {MIN_PSIS_SAMPLES}, got {log_w.shape}")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if arviz_major() == 0:
            _, khat = _arviz0().psislw(log_w, reff=float(reff))
            khat = np.asarray(khat, dtype=np.float64).reshape(-1)
        else:
            from arviz_stats.base import array_stats

            khat = np.empty(len(log_w))
            for i, row in enumerate(log_w):  # one row at a time: one failed fit raises
                try:
                    khat[i] = array_stats.psislw(-row, r_eff=float(reff))[1]
                except ValueError:  # "All tail values are the same"
                    khat[i] = np.inf
    return np.where(np.isnan(khat), np.inf, khat)


def posterior_data(z: np.ndarray) -> Any:
    """ArviZ data with posterior variable ``"z"``, draws ``(chains, draws, dims)``.

    An ``arviz.InferenceData`` (0.x) or ``xarray.DataTree`` (1.x); ``.posterior["z"]`` is the
    ``(chain, draw, z_dim_0)`` DataArray in both.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 3:
        raise ValueError(f"z must be (chains, draws, dims), got {z.shape}")
    if arviz_major() == 0:
        return _arviz0().from_dict(posterior={"z": z})
    from arviz_base import from_dict

    return from_dict({"posterior": {"z": z}})


def convergence(data: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank-normalised split R-hat, bulk ESS and tail ESS of ``"z"`` in :func:`posterior_data`'s
    result, each ``(dims,)``."""
    if arviz_major() == 0:
        az = _arviz0()
        rhat, ess = az.rhat, az.ess
    else:
        from arviz_stats import ess, rhat

    return (np.asarray(rhat(data)["z"].values, dtype=np.float64),
            np.asarray(ess(data, method="bulk")["z"].values, dtype=np.float64),
            np.asarray(ess(data, method="tail")["z"].values, dtype=np.float64))
