r"""Adaptive grid quadrature of log p(x) for a 1-D or 2-D latent: accurate to a tolerance.

.. math::

    \log p(x) = \log \int p(x, z)\, dz
    \approx \log \sum_k \sum_i w_i\, p(x, z_{k,i}), \qquad z \in \mathbb{R}^L,\ L \le 2,

the trapezoid rule on an :math:`n^L` grid (weights :math:`w_i`: the cell volume, halved for
each coordinate on the border) over each of a few disjoint boxes k that hold a datapoint's
posterior mass, with n doubled until the value moves by less than ``tol`` nats. This is *not*
exact: it is a numerical approximation to a tolerance. Its error is usually far below ``tol``
(the trapezoid rule converges geometrically on a smooth integrand that vanishes at the box's
border), but a mode the coarse search misses, or mass outside every box, goes unseen; see
:func:`quadrature_log_marginal` for the algorithm and its limits. It only evaluates
``log_joint(x, z)`` (no gradients), so it serves any model with a latent of one or two
dimensions, e.g. a VAE decoder with a 2-D code; the tests check it against the
linear-Gaussian closed form (:mod:`pgm.models.linear_gaussian`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .bounds import PAIRS_PER_CHUNK, check_data
from .callables import Estimate

__all__ = ["quadrature_log_marginal"]

# A box is a rectangle in a rotated frame: z = rot @ u with u in [lo, hi] (rot orthonormal, so
# the Jacobian is 1), owned by one datapoint; a datapoint may own several (separated modes).
# Every call to ``log_joint`` evaluates one z per (point, datapoint) pair for the whole batch
# (a conditional model binds its labels to the batch, so datapoints cannot be left out): each
# datapoint's points are packed, and the batch pays for the datapoint with the most.

_QUADRATURE_PAIRS_PER_CHUNK = PAIRS_PER_CHUNK // 16  # small calls keep an MLP decoder's
# activations in cache: about twice the throughput of PAIRS_PER_CHUNK pairs on a CPU
_POINTS_PER_BLOCK = 8192  # grid points per box materialised at once
_ANGLES = 18  # rotations tried for a box's frame (L = 2): 5 degree steps over [0, 90)
_PRUNE_NATS = 20.0  # refine only cells with a corner within this many nats of the maximum:
# the rest of a box fitted to the threshold region holds < exp(-20) * area / posterior volume,
# about 1e-7 of p(x) for a Gaussian posterior
_DROP_FRACTION = 1e-2  # drop a box whose estimated share of p(x) is below this * tol
_RESOLVED = 1.5  # a grid resolves a box once its spacing is <= this * the box's scale (the
# trapezoid rule's relative error on a Gaussian of sd s at spacing 1.5 s is ~exp(-8.8))
_EXPANSIONS = 4  # most widenings of a box whose mass touches its border


def _log_joint_values(
    log_joint: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    z: Tensor,
    dtype: torch.dtype,
    chunk_size: int,
) -> Tensor:
    """``log_joint(x, z)`` for z ``(M, B, L)`` in chunks of points, without gradients.

    Returns ``(M, B)`` float64 with NaN replaced by -inf."""
    M, B = z.shape[:2]
    out = torch.empty(M, B, dtype=torch.float64, device=z.device)
    with torch.no_grad():
        for start in range(0, M, chunk_size):
            zc = z[start : start + chunk_size].to(dtype)
            values = log_joint(x, zc)
            if values.shape != zc.shape[:2]:
                raise ValueError(
                    f"log_joint must return shape {tuple(zc.shape[:2])}, got {tuple(values.shape)}"
                )
            out[start : start + chunk_size] = values
    return torch.nan_to_num(out, nan=-math.inf, posinf=math.inf, neginf=-math.inf)


def _segment_max(values: Tensor, owner: Tensor, B: int) -> Tensor:
    """Max of ``values`` ``(K,)`` per owner -> ``(B,)`` (-inf where an owner has none)."""
    out = torch.full((B,), -math.inf, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, owner, values, reduce="amax")


def _segment_logsumexp(values: Tensor, owner: Tensor, B: int) -> Tensor:
    """logsumexp of ``values`` ``(K,)`` per owner -> ``(B,)``."""
    top = _segment_max(values, owner, B)
    safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.zeros_like(top).index_add(0, owner, torch.exp(values - safe[owner]))
    return torch.log(total) + safe


def _group_rank(owner: Tensor) -> Tensor:
    """Position of each entry among the entries with the same (sorted) owner."""
    rank = torch.arange(owner.numel(), device=owner.device)
    start = torch.ones_like(owner, dtype=torch.bool)
    start[1:] = owner[1:] != owner[:-1]
    return rank - torch.cummax(torch.where(start, rank, torch.zeros_like(rank)), 0)[0]


class _Boxes:
    """Boxes ``z = rot @ u``, ``u in [lo, hi]`` (float64), sorted by ``owner``.

    ``scale`` ``(K, L)``: the posterior's length scale along each axis, known after the
    tightening (inf before); a grid resolves the box once its spacing is below about it.
    ``seed`` ``(K,)``: a small box put around a sharp coarse peak, never widened."""

    def __init__(self, owner, rot, lo, hi, scale, seed):
        order = torch.sort(owner, stable=True).indices
        self.owner, self.rot, self.lo, self.hi = owner[order], rot[order], lo[order], hi[order]
        self.scale, self.seed = scale[order], seed[order]

    def __len__(self) -> int:
        return self.owner.numel()

    def select(self, keep: Tensor) -> _Boxes:
        return _Boxes(*(t[keep] for t in self.fields()))

    def fields(self) -> tuple[Tensor, ...]:
        return self.owner, self.rot, self.lo, self.hi, self.scale, self.seed

    def points(self, unit: Tensor) -> Tensor:
        """z ``(K, M, L)`` at ``unit`` ``(M, L)`` in [0, 1]^L of each box."""
        u = self.lo[:, None, :] + (self.hi - self.lo)[:, None, :] * unit  # (K, M, L)
        return torch.einsum("kij,kmj->kmi", self.rot, u)

    def log_volume(self) -> Tensor:
        return torch.log(self.hi - self.lo).sum(-1)  # (K,)

    def resolved(self, n: int) -> Tensor:
        """Whether an n-interval grid resolves each box, ``(K,)``."""
        return ((self.hi - self.lo) / n <= _RESOLVED * self.scale).all(-1)

    def evaluate(
        self, log_joint, x, unit: Tensor, dtype, chunk_size, live: Tensor | None = None
    ) -> tuple[Tensor, int]:
        """log p(x, z) at ``unit`` ``(M, L)`` of every box -> ``(K, M)`` float64, -inf where
        ``live`` ``(K, M)`` is False (not evaluated); and the log_joint evaluations per
        datapoint (each datapoint's points packed, padded to the batch's largest count)."""
        B, K, M, L = x.shape[0], len(self), unit.shape[0], unit.shape[1]
        device = unit.device
        out = torch.full((K, M), -math.inf, dtype=torch.float64, device=device)
        if live is None:
            live = torch.ones(K, M, dtype=torch.bool, device=device)
        k, j = torch.nonzero(live, as_tuple=True)  # sorted by k, hence by owner
        if k.numel() == 0:
            return out, 0
        owner = self.owner[k]
        slot = _group_rank(owner)  # the datapoint's points, packed
        S = int(slot.max().item()) + 1
        for start in range(0, S, _POINTS_PER_BLOCK):
            sel = torch.nonzero((slot >= start) & (slot < start + _POINTS_PER_BLOCK)).flatten()
            ks, js, os, ss = k[sel], j[sel], owner[sel], slot[sel] - start
            u = self.lo[ks] + (self.hi - self.lo)[ks] * unit[js]  # (P, L)
            grid = torch.zeros(
                min(_POINTS_PER_BLOCK, S - start), B, L, device=device, dtype=torch.float64
            )  # padding: z = 0
            grid[ss, os] = torch.einsum("pij,pj->pi", self.rot[ks], u)
            values = _log_joint_values(log_joint, x, grid, dtype, chunk_size)  # (S', B)
            out[ks, js] = values[ss, os]
        return out, S


def _unit_midpoints(n: int, L: int, device) -> Tensor:
    """The n^L midpoint-rule nodes of [0, 1]^L, ``(n^L, L)``, row-major over the axes."""
    axis = (torch.arange(n, dtype=torch.float64, device=device) + 0.5) / n
    return torch.cartesian_prod(*([axis] * L)).reshape(-1, L)


def _grid_index(n: int, L: int, device) -> Tensor:
    """Integer coordinates ``(n^L, L)`` of an n^L grid, row-major over the axes."""
    axis = torch.arange(n, device=device)
    return torch.cartesian_prod(*([axis] * L)).reshape(-1, L)


def _pool(L: int):
    return torch.nn.functional.max_pool1d if L == 1 else torch.nn.functional.max_pool2d


def _components(mask: Tensor) -> Tensor:
    """Labels (>= 1; 0 outside) of the 3^L-connected components of ``mask`` ``(B, n, ..)``."""
    pool = _pool(mask.dim() - 1)
    numel = mask[0].numel()
    labels = torch.arange(1, numel + 1, dtype=torch.float64, device=mask.device)
    labels = labels.reshape(mask.shape[1:]).expand_as(mask) * mask
    for _ in range(numel):
        grown = pool(labels.unsqueeze(1), 3, stride=1, padding=1).squeeze(1) * mask
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels.long()


def _new_boxes(owner: Tensor, lo: Tensor, hi: Tensor, seed: bool) -> _Boxes:
    K, L = lo.shape
    rot = torch.eye(L, dtype=lo.dtype, device=lo.device).expand(K, L, L)
    scale = torch.full_like(lo, math.inf)
    return _Boxes(owner, rot, lo, hi, scale, torch.full_like(owner, seed, dtype=torch.bool))


def _sharp_peaks(
    grid: Tensor,
    top: Tensor,
    threshold: float,
    h: float,
    radius: float,
    boxes: _Boxes,
    m: int,
    max_boxes: int,
) -> _Boxes:
    """Seed boxes (2 coarse cells wide) around the coarse local maxima within ``threshold`` of
    the top whose curvature says they are narrower than half the spacing of the finer grid
    their component's box gets: such a mode could fall between that grid's points."""
    B, L = grid.shape[0], grid.dim() - 1
    pool = _pool(L)
    peak = grid >= pool(grid.unsqueeze(1), 3, stride=1, padding=1).squeeze(1)
    peak &= grid > (top - threshold).view((B,) + (1,) * L)
    sd = torch.full_like(grid, math.inf)
    for a in range(1, L + 1):  # curvature along each axis from second differences
        before = torch.roll(grid, 1, a)
        after = torch.roll(grid, -1, a)
        first = [slice(None)] * (L + 1)
        last = [slice(None)] * (L + 1)
        first[a], last[a] = 0, -1
        before[tuple(first)] = after[tuple(first)]  # one-sided at the border
        after[tuple(last)] = before[tuple(last)]
        second = 2 * grid - before - after
        sd = torch.minimum(sd, h / torch.sqrt(second.clamp_min(1e-300)))
    b, *cell = torch.nonzero(peak & torch.isfinite(grid), as_tuple=True)
    if b.numel() == 0:
        return boxes
    centre = -radius + h * (torch.stack(cell, -1).double() + 0.5)  # (P, L), boxes axis-aligned
    inside = (boxes.owner[None, :] == b[:, None]) & (
        (centre[:, None, :] >= boxes.lo[None]) & (centre[:, None, :] <= boxes.hi[None])
    ).all(-1)  # (P, K)
    spacing = ((boxes.hi - boxes.lo) / m).amax(-1)  # the finer grid's spacing, per box
    box_spacing = torch.where(inside, spacing[None, :], torch.zeros_like(spacing)[None, :])
    sharp = sd[(b, *cell)] < 0.5 * box_spacing.amax(1)
    b, centre, value = b[sharp], centre[sharp], grid[(b, *cell)][sharp]
    # Highest peaks first; at most max_boxes boxes per datapoint in all.
    order = torch.argsort(value, descending=True)
    b, centre = b[order], centre[order]
    order = torch.sort(b, stable=True).indices
    b, centre = b[order], centre[order]
    room = max_boxes - torch.bincount(boxes.owner, minlength=B)
    keep = _group_rank(b) < room[b]
    if not bool(keep.any()):
        return boxes
    seeds = _new_boxes(b[keep], centre[keep] - h, centre[keep] + h, seed=True)
    return _Boxes(*(torch.cat([s, t]) for s, t in zip(boxes.fields(), seeds.fields())))


def _locate(
    log_joint,
    x,
    L: int,
    radius: float,
    n0: int,
    threshold: float,
    m: int,
    max_boxes: int,
    dtype,
    chunk,
) -> tuple[_Boxes, Tensor]:
    """Coarse midpoint grid over [-radius, radius]^L shared by the batch; one axis-aligned box
    per connected component of the cells within ``threshold`` nats of the datapoint's maximum
    (dilated by one cell), plus seed boxes around sharp peaks. Returns the boxes and the
    coarse maxima ``(B,)``."""
    B, device = x.shape[0], x.device
    h = 2 * radius / n0
    unit = _unit_midpoints(n0, L, device)
    z = (-radius + 2 * radius * unit).unsqueeze(1).expand(-1, B, -1)  # (M, B, L)
    values = _log_joint_values(log_joint, x, z, dtype, chunk).T  # (B, M)
    top = values.max(1).values  # (B,)
    mask = (values > (top - threshold)[:, None]) | (values == top[:, None])
    mask |= ~torch.isfinite(top)[:, None]  # nothing finite: keep the whole grid
    shape = (B,) + (n0,) * L
    mask = _pool(L)(mask.reshape(shape).double().unsqueeze(1), 3, stride=1, padding=1)
    labels = _components(mask.squeeze(1) > 0).reshape(B, -1)  # dilated by one cell

    # One box per component; datapoints with too many get one box around all of them.
    b_idx, m_idx = torch.nonzero(labels, as_tuple=True)
    comp = labels[b_idx, m_idx]
    stride = labels.shape[1] + 1
    counts = torch.bincount(torch.unique(b_idx * stride + comp) // stride, minlength=B)
    comp = torch.where(counts[b_idx] > max_boxes, torch.ones_like(comp), comp)
    keys, inverse = torch.unique(b_idx * stride + comp, return_inverse=True)
    K = keys.numel()
    cells = _grid_index(n0, L, device)[m_idx]  # (P, L)
    spread = inverse[:, None].expand(-1, L)
    lo_cell = torch.full((K, L), n0, device=device).scatter_reduce(0, spread, cells, "amin")
    hi_cell = torch.full((K, L), -1, device=device).scatter_reduce(0, spread, cells, "amax")
    lo, hi = -radius + h * lo_cell.double(), -radius + h * (hi_cell.double() + 1)
    boxes = _new_boxes(keys // stride, lo, hi, seed=False)
    boxes = _merge_overlapping(boxes)
    boxes = _sharp_peaks(values.reshape(shape), top, threshold, h, radius, boxes, m, max_boxes)
    return boxes, top


def _tighten(
    log_joint,
    x,
    boxes: _Boxes,
    top: Tensor,
    threshold: float,
    m: int,
    tol: float,
    dtype,
    chunk,
) -> tuple[_Boxes, Tensor, bool, int]:
    """Midpoint grid of m^L points on each box; a box (not a seed) whose points within
    ``threshold`` nats of the datapoint's maximum touch its border is widened on that side and
    evaluated again. Boxes with a negligible share of p(x) are dropped; the others shrink to
    the smallest rectangle (over rotations, for L = 2) holding those points plus one cell
    diagonal, and a datapoint's intersecting boxes are merged. Returns the boxes, the maxima,
    whether every box held its mass and the log_joint evaluations per datapoint."""
    B, L, device = x.shape[0], boxes.lo.shape[1], x.device
    unit = _unit_midpoints(m, L, device)  # (M, L)
    index = _grid_index(m, L, device)  # (M, L)
    contained, evaluations, redo = False, 0, None
    for attempt in range(_EXPANSIONS + 1):
        if redo is None:
            values, count = boxes.evaluate(log_joint, x, unit, dtype, chunk)  # (K, M)
        else:  # only the widened boxes
            live = redo[:, None].expand(-1, unit.shape[0])
            again, count = boxes.evaluate(log_joint, x, unit, dtype, chunk, live)
            values = torch.where(live, again, values)
        evaluations += count
        top = torch.maximum(top, _segment_max(values.max(1).values, boxes.owner, B))
        above = values > (top[boxes.owner] - threshold)[:, None]  # (K, M)
        low = torch.stack([(above & (index[:, a] == 0)).any(1) for a in range(L)], 1)
        high = torch.stack([(above & (index[:, a] == m - 1)).any(1) for a in range(L)], 1)
        low &= ~boxes.seed[:, None]
        high &= ~boxes.seed[:, None]
        redo = (low | high).any(1)
        contained = not bool(redo.any())
        if contained or attempt == _EXPANSIONS:
            break
        width = boxes.hi - boxes.lo
        owner, rot, lo, hi, scale, seed = boxes.fields()
        boxes = _Boxes(owner, rot, lo - width * low, hi + width * high, scale, seed)

    # Drop boxes with a negligible share (midpoint estimate on this grid); keep >= 1 each.
    log_mass = torch.logsumexp(values, 1) + boxes.log_volume() - L * math.log(m)  # (K,)
    total = _segment_logsumexp(log_mass, boxes.owner, B)
    best = log_mass >= _segment_max(log_mass, boxes.owner, B)[boxes.owner]
    share = log_mass - total[boxes.owner]
    keep = best | ((share >= math.log(_DROP_FRACTION * tol)) & above.any(1))
    boxes, values, above = boxes.select(keep), values[keep], above[keep]

    # Shrink: smallest rectangle holding the points above the threshold, plus a cell diagonal.
    z = boxes.points(unit)  # (K, M, L)
    margin = torch.linalg.vector_norm((boxes.hi - boxes.lo) / m, dim=-1)[:, None, None]
    if L == 1:
        frames = torch.ones(1, 1, 1, dtype=torch.float64, device=device)
    else:
        theta = torch.arange(_ANGLES, dtype=torch.float64, device=device) * (
            0.5 * math.pi / _ANGLES
        )
        c, s = torch.cos(theta), torch.sin(theta)
        frames = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (A,L,L)
    proj = torch.einsum("kmi,aij->kamj", z, frames)  # u = rot^T z: (K, A, M, L)
    inside = above[:, None, :, None]
    lo = torch.where(inside, proj, math.inf).amin(2)  # (K, A, L)
    hi = torch.where(inside, proj, -math.inf).amax(2)
    choice = torch.log(hi - lo + 2 * margin).sum(-1).argmin(1)  # (K,)
    k = torch.arange(len(boxes), device=device)
    lo, hi, margin = lo[k, choice], hi[k, choice], margin[:, 0]
    # Length scale: a Gaussian's threshold region spans 2 sqrt(2 threshold) sd.
    scale = (hi - lo).clamp_min(margin) / (2 * math.sqrt(2 * threshold))
    rot, lo, hi = frames[choice], lo - margin, hi + margin
    empty = ~above.any(1)  # nothing finite (log_joint is -inf throughout): keep the box as is
    if bool(empty.any()):
        rot = torch.where(empty[:, None, None], boxes.rot, rot)
        lo = torch.where(empty[:, None], boxes.lo, lo)
        hi = torch.where(empty[:, None], boxes.hi, hi)
        scale = torch.where(empty[:, None], math.inf, scale)
    boxes = _Boxes(boxes.owner, rot, lo, hi, scale, boxes.seed)
    return _merge_overlapping(boxes), top, contained, evaluations


def _corners(rot: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """The 2^L corners ``(2^L, L)`` of one box, in z."""
    L = lo.shape[0]
    pick = _grid_index(2, L, lo.device).double()  # (2^L, L)
    return (lo + (hi - lo) * pick) @ rot.T


def _overlap(a: tuple[Tensor, Tensor, Tensor], b: tuple[Tensor, Tensor, Tensor]) -> bool:
    """Whether two boxes (rot, lo, hi) intersect: separating-axis test over both frames."""
    ca, cb = _corners(*a), _corners(*b)
    for rot in (a[0], b[0]):
        pa, pb = ca @ rot, cb @ rot  # coordinates along the frame's axes
        apart = (pa.max(0).values < pb.min(0).values) | (pb.max(0).values < pa.min(0).values)
        if bool(apart.any()):
            return False
    return True


def _merge_overlapping(boxes: _Boxes) -> _Boxes:
    """Replace a datapoint's intersecting boxes by one box holding them (the smallest over
    their frames and the axes); its scale is the smallest of theirs, along every axis."""
    owner = boxes.owner
    multi = torch.nonzero(torch.bincount(owner) > 1).flatten().tolist()
    if not multi:
        return boxes
    keep = torch.ones(len(boxes), dtype=torch.bool, device=owner.device)
    _, rot, lo, hi, scale, seed = (t.clone() for t in boxes.fields())
    eye = torch.eye(rot.shape[-1], dtype=rot.dtype, device=rot.device)
    for b in multi:
        idx = torch.nonzero(owner == b).flatten().tolist()
        pairs = [(i, j) for i in idx for j in idx if i < j]
        while pairs:
            i, j = pairs.pop(0)
            if not (keep[i] and keep[j]):
                continue
            if not _overlap((rot[i], lo[i], hi[i]), (rot[j], lo[j], hi[j])):
                continue
            corners = torch.cat([_corners(rot[i], lo[i], hi[i]), _corners(rot[j], lo[j], hi[j])])
            best = None
            for frame in (rot[i], rot[j], eye):
                u = corners @ frame
                a, c = u.min(0).values, u.max(0).values
                area = torch.log(c - a).sum().item()
                if best is None or area < best[0]:
                    best = (area, frame.clone(), a, c)
            _, rot[i], lo[i], hi[i] = best
            scale[i] = torch.minimum(scale[i].min(), scale[j].min())
            seed[i] = seed[i] & seed[j]
            keep[j] = False
            pairs = [(i, k) for k in idx if k != i and keep[k]] + pairs  # i grew: test again
    return _Boxes(owner[keep], rot[keep], lo[keep], hi[keep], scale[keep], seed[keep])


def _trapezoid_level(n: int, L: int, device, new_only: bool) -> tuple[Tensor, Tensor]:
    """Indices i (nodes ``i / n``, i = 0..n per axis) of the trapezoid rule on [0, 1]^L and
    their log weights; with ``new_only`` just the nodes not in level n / 2 (an odd index)."""
    index = _grid_index(n + 1, L, device)  # (M, L)
    if new_only:
        index = index[(index % 2 == 1).any(1)]
    edge = (index == 0) | (index == n)
    log_w = (edge.double() * math.log(0.5)).sum(1)
    return index, log_w


def _live_nodes(grid: Tensor, floor: Tensor, n: int) -> Tensor:
    """Which new nodes of level ``n`` to evaluate, ``(K, M)``, from the level-n/2 values
    ``grid`` ``(K, n/2 + 1, ...)``: those of a cell with a corner at or above ``floor``
    ``(K,)``. The other cells keep their coarser trapezoid value."""
    K, L = grid.shape[0], grid.dim() - 1
    corner_max = _pool(L)(grid.unsqueeze(1), 2, stride=1).squeeze(1)  # (K, n/2, ...): per cell
    cell_live = (corner_max >= floor.view((K,) + (1,) * L)).reshape(K, -1)
    index, _ = _trapezoid_level(n, L, grid.device, new_only=True)  # (M, L)
    half = n // 2
    live = torch.zeros(K, index.shape[0], dtype=torch.bool, device=grid.device)
    # A node with an odd index lies inside one cell along that axis; an even one on the border
    # of two cells (either counts).
    for offsets in _grid_index(2, L, index.device):
        cell = torch.div(index - 1 + offsets, 2, rounding_mode="floor")
        valid = ((cell >= 0) & (cell < half)).all(1)
        flat = torch.zeros(index.shape[0], dtype=torch.long, device=grid.device)
        for a in range(L):
            flat = flat * half + cell[:, a].clamp(0, half - 1)
        live |= cell_live[:, flat] & valid
    return live


def quadrature_log_marginal(
    log_joint: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    *,
    latent_dim: int,
    tol: float = 1e-5,
    num_points: int | None = None,
    max_points: int | None = None,
    radius: float = 6.0,
    coarse_points: int | None = None,
    threshold: float = 30.0,
    max_boxes: int = 4,
    chunk_size: int | None = None,
) -> Estimate:
    r"""Grid quadrature of :math:`\log p(x) = \log \int p(x, z)\, dz` for L in {1, 2}.

    Derivative-free and batched over datapoints: ``log_joint`` is only evaluated.

    1. **Locate.** Evaluate log p(x, z) at the midpoints of a ``coarse_points``^L grid over
       :math:`[-R, R]^L` (R = ``radius``), shared by the batch. Per datapoint, the cells within
       ``threshold`` nats of its maximum, dilated by one cell, split into connected components
       (separated posterior modes); each gets an axis-aligned bounding box. A coarse local
       maximum whose curvature says it is too narrow for the next step's grid on its box gets
       a small seed box of its own.
    2. **Tighten.** Evaluate a finer midpoint grid (32^2 points, or 256 for L = 1) on every
       box. A box (not a seed) whose points within ``threshold`` nats of the maximum touch its
       border is widened on that side and evaluated again, up to 4 times, so mass reaching
       out of :math:`[-R, R]^L` from a located mode is followed. Boxes with an estimated share
       of p(x) below ``tol / 100`` are dropped; every other box becomes the smallest rectangle,
       over rotations in 5 degree steps for L = 2, holding those points plus one grid-cell
       diagonal, and a datapoint's intersecting boxes are merged. The region's extent gives
       each box a length scale (that of a Gaussian with the same threshold region).
    3. **Integrate.** The trapezoid rule on an n^L grid over every box (the rotation's Jacobian
       is 1), summed over a datapoint's boxes, from n = ``num_points`` doubling; each level
       evaluates only its new nodes, and from n = 32 (1024 for L = 1) only in cells with a
       corner within 20 nats of the maximum. A datapoint has converged once n >= 64 (256 for
       L = 1; coarser levels can agree by chance), the value changed by less than ``tol`` in
       the last doubling, and the spacing is at most 1.5 length scales in all its boxes (a
       merged box may hold a mode much narrower than itself). A converged datapoint keeps its
       value and is no longer refined, nor is a box whose own change is negligible; the
       doubling stops when all have converged or n would exceed ``max_points``. The error of
       the value returned is usually far below its last change: the trapezoid rule converges
       geometrically for smooth integrands that vanish at the box's border, and still fast
       with the kinks of a ReLU decoder.

    Limits. A mode is found only if a coarse grid point near it comes within ``threshold``
    nats of the datapoint's highest coarse value. With the defaults (spacing 0.1875 for L = 2,
    so a mode's nearest grid point is at most 0.133 away) a Gaussian mode of sd 0.02 is found
    whenever its peak is within ~8 nats of the highest peak, one of sd 0.05 within ~26 nats;
    a narrower mode, or one outside :math:`[-R, R]^L` and not joined to a located mode within
    the threshold, can be missed. The mass neglected outside the boxes is at most about
    ``exp(-threshold)`` times the peak density times the area searched. A mode much narrower
    than the box it shares with a broad one (within the broad one's threshold region) forces
    a fine grid over that whole box, and may reach ``max_points`` (it then warns). The batch
    costs as much as its hardest datapoint: every call to ``log_joint`` evaluates all B
    datapoints, so the others are padded. The convergence test compares successive levels;
    a feature that both miss (narrower than the spacing and not found as a peak) goes unseen.

    Args:
        log_joint: ``log_joint(x, z)`` ``(K, B)`` for z ``(K, B, L)``; z is passed in x's dtype
            (float32 callables are fine: sums are accumulated in float64).
        x: ``(B, ...)`` datapoints.
        latent_dim: L, 1 or 2.
        tol: convergence threshold on the change of log p(x) between doublings, in nats.
        num_points: initial intervals per dimension and box (default 64 for L = 1, 16 for
            L = 2).
        max_points: cap on intervals per dimension and box (default 16384 for L = 1, 512 for
            L = 2).
        radius: half-width R of the coarse search box (the prior's bulk: 6 for N(0, I)).
        coarse_points: coarse grid points per dimension (default 2048 for L = 1, 64 for L = 2).
        threshold: nats below the maximum that still count as mass when choosing the boxes.
        max_boxes: most boxes per datapoint; more components get one box around all.
        chunk_size: grid points per call to ``log_joint`` (default: about
            ``PAIRS_PER_CHUNK / 16`` (point, datapoint) pairs).

    Returns:
        :class:`Estimate` with float64 ``per_datapoint``; ``extra`` holds ``change`` ``(B,)``
        (each datapoint's last change), ``max_change`` (= ``change_max``), ``converged``,
        ``converged_frac``, ``num_points`` (the finest intervals per dimension and box),
        ``num_points_per_datapoint`` ``(B,)`` (where each datapoint stopped),
        ``num_boxes`` ``(B,)``, ``boxes_max``, ``contained`` (no box's mass still touched its
        border after the widenings), ``evaluations`` (log_joint evaluations per datapoint,
        padding included), ``radius``, ``threshold``, ``tol`` and ``latent_dim``. Warns
        (RuntimeWarning) if not converged.
    """
    start = time.perf_counter()
    B = check_data(x)
    if latent_dim not in (1, 2):
        raise ValueError(f"quadrature needs latent_dim 1 or 2, got {latent_dim!r}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    L = latent_dim
    n = num_points if num_points is not None else (64 if L == 1 else 16)
    n_max = max_points if max_points is not None else (16384 if L == 1 else 512)
    if n < 2 or n_max < n:
        raise ValueError(f"need 2 <= num_points <= max_points, got {n} and {n_max}")
    n0 = coarse_points if coarse_points is not None else (2048 if L == 1 else 64)
    if n0 < 2 or not radius > 0 or not threshold > 0 or max_boxes < 1:
        raise ValueError(
            "need coarse_points >= 2, radius > 0, threshold > 0 and max_boxes >= 1, got "
            f"{n0}, {radius}, {threshold} and {max_boxes}"
        )
    if chunk_size is None:
        chunk_size = max(1, _QUADRATURE_PAIRS_PER_CHUNK // B)
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    device = x.device
    m = 256 if L == 1 else 32  # points per dimension of the tightening grid
    prune_from = 1024 if L == 1 else 32
    # Coarser levels are not yet in the rule's asymptotic regime: two of them can agree to
    # within tol by chance while both are off by more.
    accept_from = min(n_max, 256 if L == 1 else 64)

    boxes, top = _locate(log_joint, x, L, radius, n0, threshold, m, max_boxes, dtype, chunk_size)
    boxes, top, contained, evaluations = _tighten(
        log_joint, x, boxes, top, threshold, m, tol, dtype, chunk_size
    )
    evaluations += n0**L
    K = len(boxes)

    # Nested trapezoid rule: log S_k = log sum_i w_i p(x, z_i) over box k's nodes so far, at
    # level n_k (a box stops refining once its datapoint has converged, or once its own share
    # of the change is negligible); the level's values are kept as a grid (K, n + 1, ...) to
    # choose the cells to refine.
    index, log_w = _trapezoid_level(n, L, device, new_only=False)
    values, count = boxes.evaluate(log_joint, x, index.double() / n, dtype, chunk_size)
    evaluations += count
    top = torch.maximum(top, _segment_max(values.max(1).values, boxes.owner, B))
    log_sum = torch.logsumexp(values + log_w, 1)
    grid = values.reshape((K,) + (n + 1,) * L).float()  # float32 is plenty to choose cells
    box_n = torch.full((K,), float(n), dtype=torch.float64, device=device)
    active = torch.ones(K, dtype=torch.bool, device=device)
    num_boxes = torch.bincount(boxes.owner, minlength=B)

    def box_integrals() -> Tensor:  # (K,) log of each box's current trapezoid value
        return log_sum + boxes.log_volume() - L * torch.log(box_n)

    integral = box_integrals()
    value = _segment_logsumexp(integral, boxes.owner, B)
    change = torch.full_like(value, math.inf)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stopped_at = torch.zeros(B, dtype=torch.long, device=device)
    while 2 * n <= n_max:
        index, log_w = _trapezoid_level(2 * n, L, device, new_only=True)
        live = active[:, None].expand(-1, index.shape[0])
        if n >= prune_from:
            floor = (top[boxes.owner] - min(threshold, _PRUNE_NATS)).float()
            unresolved_box = ~boxes.resolved(n)  # a mode may hide between this level's nodes
            live = (_live_nodes(grid, floor, 2 * n) | unresolved_box[:, None]) & live
        n *= 2
        values, count = boxes.evaluate(log_joint, x, index.double() / n, dtype, chunk_size, live)
        evaluations += count
        top = torch.maximum(top, _segment_max(values.max(1).values, boxes.owner, B))
        log_sum = torch.logaddexp(log_sum, torch.logsumexp(values + log_w, 1))
        box_n = torch.where(active, float(n), box_n)
        finer = torch.full((K,) + (n + 1,) * L, -math.inf, device=device)
        finer[(slice(None),) + (slice(None, None, 2),) * L] = grid
        finer[(slice(None),) + tuple(index.T)] = values.float()
        grid = finer
        new_integral = box_integrals()
        new_value = _segment_logsumexp(new_integral, boxes.owner, B)
        step = (new_value - value).abs()
        step = torch.where(torch.isnan(step), torch.full_like(step, math.inf), step)
        change = torch.where(done, change, step)
        # Each box's own change, as a fraction of its datapoint's p(x).
        ref = new_value[boxes.owner]
        box_change = (torch.exp(new_integral - ref) - torch.exp(integral - ref)).abs()
        integral, value = new_integral, new_value
        # Converged: a small change, on a grid that resolves every box of the datapoint.
        resolved = boxes.resolved(n)
        unresolved = torch.zeros(B, device=device).index_add(0, boxes.owner, (~resolved).float())
        newly = ~done & (change < tol) & (unresolved == 0) & (n >= accept_from)
        stopped_at = torch.where(newly, n, stopped_at)
        done |= newly
        if bool(done.all()):
            break
        # Stop refining converged datapoints, and boxes whose share of the change is negligible.
        several = num_boxes[boxes.owner] > 1
        negligible = (box_change < 0.1 * tol / num_boxes[boxes.owner]) & resolved & several
        negligible &= n >= accept_from
        active &= ~done[boxes.owner] & ~negligible
    stopped_at = torch.where(done, stopped_at, n)
    max_change = change.max().item()
    converged = bool(done.all())
    if not converged:
        coarse = int(((change < tol) & ~done).sum().item())
        warnings.warn(
            f"quadrature did not converge: last change {max_change:.3g} nats (tol {tol:g}) "
            f"with {n} points per dimension"
            + (f"; {coarse} datapoint(s) not yet resolved by the grid" if coarse else ""),
            RuntimeWarning,
            stacklevel=2,
        )
    return Estimate.of(
        value,
        seconds=time.perf_counter() - start,
        bound="numerical",
        extra={
            "latent_dim": L,
            "tol": tol,
            "num_points": n,
            "num_points_per_datapoint": stopped_at.cpu(),
            "max_change": max_change,
            "change_max": max_change,
            "converged": converged,
            "converged_frac": done.double().mean().item(),
            "change": change.cpu(),
            "num_boxes": num_boxes.cpu(),
            "boxes_max": int(num_boxes.max().item()),
            "contained": contained,
            "evaluations": evaluations,
            "radius": radius,
            "threshold": threshold,
        },
    )
