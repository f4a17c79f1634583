r"""``fit()``: the one training loop for every model/guide pair.

Maximises a bound on :math:`\log p(x)` (``elbo``, ``elbo-analytic``, ``iwae`` or
``iwae-dreg``; see :mod:`pgm.inference.objectives`) with Adam over ``model.parameters()``,
or, with ``objective="em"`` for a model that declares ``closed_form_em`` (the GMM), one
closed-form EM step on the whole training set per epoch in place of the minibatches
(same validation, early stopping, checkpoints and resume); minibatches sliced
from tensors that live on the device, optional KL warm-up (beta rising linearly to 1),
a learning-rate schedule, gradient clipping, a validation ELBO each epoch (and, for the
``iwae``/``iwae-dreg`` objectives, the validation IWAE_K that then decides), early stopping
with best-weights restore, and -- given a run directory -- an atomic checkpoint each epoch
from which ``resume=True`` continues to the same result as an uninterrupted run. The
checkpoint is the one commit point: it holds the history rows and the best weights, and
history.csv and model.safetensors are written from it (after it, and again on resume), so a
kill between any two writes loses nothing. ``resume=True`` first checks that the model, data
and settings are those of config.json (only ``epochs`` and ``device`` may change, and a change
is written into it: :func:`pgm.io.record_resumed_settings`); a run
killed before its first checkpoint starts again from its beginning, and one that lost its
checkpoint but kept its weights or history is refused (:func:`pgm.io.check_resumable`).

Under ``torchrun`` (a process group joined by :func:`pgm.distributed.init`) the same loop is
data parallel over W ranks: each epoch's permutation (shared seed) is padded by wrapping
around to a multiple of W, as DistributedSampler does; each global batch of ``batch_size``
is split into W equal contiguous parts; the loss runs through DistributedDataParallel
(gradients averaged, so a step is one process's step on the union of the parts); each rank
draws its noise from (seed, epoch, rank); the validation set is sharded; the epoch's ELBOs
are summed over ranks; a NaN on any rank stops every rank; only rank 0 writes the run
directory (and holds its lock, :mod:`pgm.runlock`). A run resumes on any number of ranks.

``log`` (opt in) sends the config and every history row to TensorBoard or MLflow
(:mod:`pgm.tracking`), from rank 0 only.

The loop is written out in full below (nanoGPT style): read it to know what happens.
"""

from __future__ import annotations

import copy
import math
import numbers
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from pgm import distributed as dist
from pgm import io, runlock, tracking
from pgm.config import to_dict
from pgm.device import resolve_device
from pgm.domains import SEEDS
from pgm.errors import TrainingDivergedError

from .objectives import fast_path, make_objective, reparam_log_weights

LR_SCHEDULES = ("constant", "cosine", "exponential")


@dataclass
class FitConfig:
    objective: str = "elbo"  # "elbo", "elbo-analytic", "iwae", "iwae-dreg" or "em"
    num_particles: int = 1  # samples per datapoint (K of the IWAE bound)
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"  # "constant", "cosine" (to 0 at the last epoch), "exponential"
    lr_decay: float = 0.98  # per-epoch factor of the exponential schedule
    clip_norm: float | None = 100.0  # max gradient norm; None turns clipping off
    kl_warmup_epochs: int = 0  # beta = min(1, epoch / kl_warmup_epochs)
    patience: int | None = 10  # stop after this many epochs without a better valid bound
    min_epochs: int | None = None  # never stop before this epoch; None: the model's default
    seed: int = 0
    device: str = "auto"
    use_pyro_elbo: bool = False  # force Pyro's Trace_ELBO even where the fast path applies

    def __post_init__(self):
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; "
                             f"known: {', '.join(LR_SCHEDULES)}")
        # (the CLI's 0 for "off" is None here: a clip norm of 0 would zero every gradient, a
        # negative one flip it, a patience of 0 stop a run before its first epoch)
        for name, low, off in (("epochs", 1, False), ("batch_size", 1, False),
                               ("num_particles", 1, False), ("kl_warmup_epochs", 0, False),
                               ("patience", 1, True), ("min_epochs", 0, True),
                               ("seed", 0, False)):
            value = getattr(self, name)
            if off and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
                    or value < low:
                rule = f"an integer >= {low}" + (" or None (off)" if off else "")
                raise ValueError(f"{name} must be {rule}, got {value!r}")
        if self.seed >= SEEDS:
            raise ValueError(f"seed must be below 2^32 (Pyro seeds numpy too), got {self.seed}")
        for name, off in (("lr", False), ("lr_decay", False), ("clip_norm", True)):
            value = getattr(self, name)
            if off and value is None:
                continue
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
                rule = "a finite number > 0" + (" or None (off)" if off else "")
                raise ValueError(f"{name} must be {rule}, got {value!r}")


def _scheduler(opt: torch.optim.Optimizer, cfg: FitConfig):
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.lr_schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Shuffling and dynamic binarisation depend on (seed, epoch) only, so resume repeats them."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


@torch.no_grad()
def evaluate_elbo(model, x: torch.Tensor, y: torch.Tensor | None = None,
                  batch_size: int = 1000, num_particles: int = 1) -> float:
    """Mean single-sample ELBO per datapoint (nats), beta = 1, in eval mode; with
    ``num_particles`` K > 1 the IWAE_K bound (a model on the fast path only)."""
    if len(x) == 0:
        return math.nan
    was_training = model.training
    model.eval()
    elbo = None if fast_path(model) else make_objective(model, "elbo")
    if elbo is not None and num_particles > 1:
        raise ValueError("an IWAE bound needs plain reparameterized distributions")
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        yb = None if y is None else y[i:i + batch_size]
        if elbo is None:
            log_w = reparam_log_weights(model, xb, yb, num_particles)
            total += (torch.logsumexp(log_w, 0) - math.log(num_particles)).sum()
        else:
            with torch.enable_grad():  # TraceEnum_ELBO refuses to build a loss without grad
                total -= elbo(xb, yb, 1.0).detach() * len(xb)
    model.train(was_training)
    return total.item() / len(x)


def _write_views(out: Path, history: list[dict], best_state: dict | None) -> None:
    """history.csv and (given ``best_state``) model.safetensors: views of the checkpoint,
    written after it and again on resume, never read back by training."""
    io.write_history(out / io.HISTORY, history)
    if best_state is not None:
        io.save_weights(best_state, out / io.WEIGHTS)


def fit(model, data, config: FitConfig | None = None, *, out: str | Path | None = None,
        resume: bool = False, progress: bool | None = None, log=None,
        **overrides) -> list[dict]:
    """Train ``model`` on ``data`` (a :class:`pgm.data.Dataset`); return the history rows.

    ``fit(model, data, epochs=5, lr=3e-4)`` overrides fields of :class:`FitConfig`. With
    ``out`` the run directory gets config, weights, checkpoint, history each epoch;
    ``resume=True`` continues the run found there. The model ends on its best weights.
    ``log`` sends the config and each epoch's history row to experiment tracking:
    "tensorboard" or "mlflow" (opened for this call, in ``out``), or a logger from
    :func:`pgm.tracking.open_logger` that the caller closes (to log figures after).
    While it writes ``out`` it holds the run's lock (:mod:`pgm.runlock`): RunLockedError if
    another process is writing there.
    """
    cfg = replace(config or FitConfig(), **overrides) if overrides else (config or FitConfig())
    with runlock.hold(out, "pgm.fit"), tracking.opened(log, out, resume=resume) as logger:
        return _fit(model, data, cfg, out=out, resume=resume, progress=progress, log=logger)


def _fit(model, data, cfg: FitConfig, *, out, resume, progress, log) -> list[dict]:
    from pgm.data import binarize_dynamic

    device = resolve_device(cfg.device)
    out = Path(out) if out is not None else None
    world, rank = dist.world_size(), dist.rank()
    writes = out is not None and rank == 0
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} does not split evenly over {world} ranks; "
                         f"use a multiple of {world}")
    conditional = getattr(model, "conditional", False)

    x_train, x_valid = data.x_train.to(device), data.x_valid.to(device)
    y_train = data.y_train.to(device) if conditional else None
    y_valid = data.y_valid.to(device) if conditional else None
    model.check_data(x_train, "training data")
    if len(x_valid):
        model.check_data(x_valid, "validation data")
    model.to(device).train()

    em = cfg.objective == "em"
    if em and not getattr(model, "closed_form_em", False):
        raise ValueError(f"objective 'em' needs a model with closed-form EM steps; "
                         f"{type(model).__name__} has none")
    if em and world > 1:
        raise ValueError("objective 'em' runs in one process; start it without torchrun")
    loss_fn = None if em else make_objective(model, cfg.objective, cfg.num_particles,
                                             use_pyro=cfg.use_pyro_elbo)
    min_epochs = getattr(model, "default_min_epochs", 0) if cfg.min_epochs is None \
        else cfg.min_epochs
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = _scheduler(opt, cfg)
    history: list[dict] = []
    best_elbo, bad_epochs, start_epoch = -math.inf, 0, 0
    best_state = copy.deepcopy(model.state_dict())

    if out is not None and resume:  # before any file is touched
        io.check_same_run(out, config := io.run_config(model, data, cfg, device))
    if out is not None and resume and io.check_resumable(out):
        if writes:
            io.record_resumed_settings(out, config)
        ckpt = io.resume_checkpoint(out, device)
        io._load_state_dict(model, ckpt["model"], out / io.CHECKPOINT)
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, best_elbo, bad_epochs = ckpt["epoch"], ckpt["best_elbo"], ckpt["bad_epochs"]
        if "history" in ckpt:
            history = list(ckpt["history"])
            best_state = copy.deepcopy(ckpt["best_model"] or model.state_dict())
        else:  # an older pgm kept neither in its checkpoint: the views are the record
            history = io.read_history(out / io.HISTORY)[:start_epoch]
            io.load_weights(best_model := copy.deepcopy(model), out / io.WEIGHTS)
            best_state = copy.deepcopy(best_model.state_dict())
        if writes:  # a kill may have come between the checkpoint and its views
            _write_views(out, history, best_state)
    else:  # a new run, or one resumed that was killed before its first checkpoint
        if not resume:
            io.refuse_existing_run(out)
            dist.barrier()  # every rank has looked before rank 0 writes config.json
        pyro.set_rng_seed(cfg.seed)
        if not getattr(model, "fitted", False):  # a second fit() trains on, not from scratch
            model.initialize(x_train, y_train)
        config = io.run_config(model, data, cfg, device)
        if writes:
            io.atomic_write_json(out / io.CONFIG, config)
        if log is not None:
            log.log_params(config)

    n, has_valid = len(x_train), len(x_valid) > 0
    if world > 1:  # after init/resume: DDP broadcasts rank 0's weights
        loss_fn = dist.data_parallel(model, loss_fn)
        x_valid = dist.shard(x_valid)
        y_valid = None if y_valid is None else dist.shard(y_valid)
    # the weights kept and early stopping follow the bound the run trains: the validation
    # IWAE_K of an importance-weighted objective (the single-sample ELBO, which it does not
    # optimise, kept an IWAE-DReG run's epoch 69 of 100: README, "Training objectives")
    select_k = cfg.num_particles if cfg.objective in ("iwae", "iwae-dreg") else 1
    select = "valid_elbo" if select_k == 1 else f"valid_iwae_{select_k}"

    def valid_bound(k: int) -> float:
        """The mean validation bound with k particles, over every rank's shard."""
        value = evaluate_elbo(model, x_valid, y_valid, num_particles=k)
        if world == 1:
            return value
        local = torch.tensor([value * len(x_valid) if len(x_valid) else 0.0, len(x_valid)],
                             dtype=torch.float64, device=device)
        total, count = dist.all_sum(local).tolist()
        return total / count if count else math.nan

    if cfg.patience is not None and bad_epochs >= cfg.patience and start_epoch >= min_epochs:
        # resumed a run that had stopped
        start_epoch = cfg.epochs
    bar = tqdm(range(start_epoch, cfg.epochs), initial=start_epoch, total=cfg.epochs,
               desc=f"fit {model.name}", unit="epoch",
               disable=rank > 0 or (None if progress is None else not progress))
    for epoch in bar:
        beta = min(1.0, (epoch + 1) / cfg.kl_warmup_epochs) if cfg.kl_warmup_epochs else 1.0
        lr = opt.param_groups[0]["lr"]
        t0 = time.perf_counter()
        gen = _epoch_generator(cfg.seed, epoch)
        perm = torch.randperm(n, generator=gen).to(device)
        xe = binarize_dynamic(data.x_train, gen).to(device) if data.binarize == "dynamic" \
            else x_train
        if world > 1:
            perm = perm.repeat(world)[:-(-n // world) * world]  # wrap around to a multiple of W
            torch.manual_seed((cfg.seed * 100_003 + epoch) * 1_009 + rank)
        total = torch.zeros((), device=device)
        for step, i in enumerate(range(0, 0 if em else len(perm), cfg.batch_size)):
            idx = perm[i:i + cfg.batch_size]
            if world > 1:
                idx = dist.shard(idx)
            cause = None
            try:
                loss = loss_fn(xe[idx], None if y_train is None else y_train[idx], beta)
            except ValueError as e:  # a distribution refused NaN parameters
                if "invalid values" not in str(e):
                    raise
                loss, cause = torch.tensor(math.nan), e
            # one sync per step (under DDP an all-reduce): stop before NaN reaches weights
            failed = dist.first_failed_rank(torch.isfinite(loss))
            if failed is not None:
                kept = out is not None and (out / io.CHECKPOINT).is_file()
                where = f"; the last good checkpoint is kept in {out}" if kept else ""
                what = f"{loss.item()}" if world == 1 else f"non-finite on rank {failed} of {world}"
                raise TrainingDivergedError(
                    f"the training loss became {what} in epoch {epoch + 1}, step "
                    f"{step + 1}{where}. Try a smaller --lr, gradient clipping, KL warm-up, "
                    "or check the data") from cause
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            total += loss.detach() * len(idx)
        if em:  # log p(x_train) before the step, computed by its E-step
            train_elbo = model.em_step(xe)
        else:
            train_elbo = -dist.all_sum(total).item() / len(perm)  # .item() synchronises
        seconds = time.perf_counter() - t0
        if not em:  # EM has no learning rate
            sched.step()

        t1 = time.perf_counter()
        valid_elbo = valid_bound(1)
        valid = {"valid_elbo": valid_elbo}
        if select_k > 1:
            valid[select] = valid_bound(select_k)
        valid_seconds = time.perf_counter() - t1
        score = valid[select] if has_valid else train_elbo
        if score > best_elbo:
            best_elbo, bad_epochs = score, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
        stop = cfg.patience is not None and bad_epochs >= cfg.patience and epoch + 1 >= min_epochs

        t2 = time.perf_counter()
        row = {"epoch": epoch + 1, "train_elbo": train_elbo, **valid,
               "beta": beta, "lr": lr, "seconds": seconds, "valid_seconds": valid_seconds,
               "checkpoint_seconds": 0.0}
        if log is not None:  # before the checkpoint: a resumed run repeats an unsaved epoch
            log.log_metrics({k: v for k, v in row.items()
                             if k not in ("epoch", "checkpoint_seconds")}, epoch + 1)
        if writes:  # the checkpoint commits the epoch, history row and best weights included
            state = {"format": io.RUN_FORMAT, "epoch": epoch + 1, "model": model.state_dict(),
                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "rng_cpu": torch.get_rng_state(), "best_elbo": best_elbo,
                     "bad_epochs": bad_epochs, "fit_config": to_dict(cfg),
                     "history": [*history, row],
                     "best_model": None if bad_epochs == 0 else best_state}  # None: "model"
            if device.type == "cuda":
                state["rng_cuda"] = torch.cuda.get_rng_state(device)
            io.save_checkpoint(state, out / io.CHECKPOINT)
            # known only now: the next checkpoint records it (a resume from this one shows 0)
            row["checkpoint_seconds"] = time.perf_counter() - t2
            _write_views(out, [*history, row], best_state if bad_epochs == 0 else None)
        history.append(row)
        bar.set_postfix(train=f"{train_elbo:.2f}", valid=f"{valid_elbo:.2f}")
        if stop:
            break
    dist.barrier()  # every rank returns once rank 0 has written the run directory
    model.load_state_dict(best_state)
    model.fitted = True
    return history
