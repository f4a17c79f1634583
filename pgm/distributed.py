r"""torch.distributed for pgm: one process per device, launched by ``torchrun``.

``torchrun`` starts ``WORLD_SIZE`` processes and tells each its ``RANK`` (global),
``LOCAL_RANK`` (on its machine) and where rank 0 listens (``MASTER_ADDR``/``MASTER_PORT``).
:func:`init` joins that process group -- nccl on CUDA, gloo on the CPU -- and pins CUDA
rank r of a machine to ``cuda:LOCAL_RANK``. Without a launcher every helper here is the
identity of one process: rank 0 of a world of size 1, and no process group.

Training (:func:`pgm.fit`) is data parallel: every rank holds the whole model, takes
``batch_size / W`` of each global batch of ``batch_size``, and
:class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients, which makes a
step the step of one process on the union of the ranks' batches. Evaluation
(:func:`pgm.evaluation.evaluate`) gives each rank a contiguous run of whole batches and gathers the
per-datapoint results in index order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from pgm.device import resolve_device

T = TypeVar("T")


def launched() -> bool:
    """True in a process started by torchrun (or any launcher) with ``WORLD_SIZE`` > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True when a process group of more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints."""
    return rank() == 0


def init(device: str = "auto") -> torch.device:
    """Join torchrun's process group if launched by it; return this rank's device.

    Backend nccl when ``device`` resolves to CUDA (rank r of a machine on ``cuda:LOCAL_RANK``),
    gloo on the CPU. A no-op (``resolve_device(device)``) outside a launcher."""
    dev = resolve_device(device)
    if not launched() or dist.is_initialized():
        return dev
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        if dev.index is not None:
            raise ValueError(f"under torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda "
                             f"or auto, not {device!r}")
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local} but torch sees {torch.cuda.device_count()} "
                               "GPUs; start at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


def close() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (a no-op in one process)."""
    if active():
        dist.barrier()


def shard(items: Sequence[T] | torch.Tensor) -> Sequence[T] | torch.Tensor:
    """This rank's contiguous part of ``items``: ``items[n r // W : n (r+1) // W]``.

    Parts differ in length by at most one and, concatenated in rank order, give ``items``."""
    r, w, n = rank(), world_size(), len(items)
    return items[n * r // w:n * (r + 1) // w]


def all_gather(items: list) -> list:
    """Every rank's ``items`` (picklable), concatenated in rank order, on every rank."""
    if not active():
        return items
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Elementwise sum of ``values`` over the ranks (a new tensor; ``values`` if alone)."""
    if not active():
        return values
    total = values.clone()
    dist.all_reduce(total)
    return total


def first_failed_rank(ok: torch.Tensor) -> int | None:
    """The lowest rank whose ``ok`` (a bool scalar) is False, or None if all are ok. A
    collective: every rank calls it and gets the same answer, so all can stop together."""
    if not active():
        return None if bool(ok) else 0
    w = world_size()
    flag = torch.where(ok, w, rank()).to(torch.int64).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    failed = int(flag.item())
    return None if failed == w else failed


class _Objective(torch.nn.Module):
    """``forward(x, y, beta) -> loss``: the objective as a module that holds the model, so
    DistributedDataParallel sees the parameters the loss uses and all-reduces their gradients."""

    def __init__(self, model: torch.nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, x, y, beta):
        return self.loss_fn(x, y, beta)


def data_parallel(model: torch.nn.Module, loss_fn):
    """``loss_fn(x, y, beta)`` wrapped in DistributedDataParallel: the same value on each
    rank's batch; ``backward()`` leaves in ``model``'s parameters the gradient averaged over
    the ranks. Constructing it broadcasts rank 0's parameters and buffers to every rank."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(_Objective(model, loss_fn))
