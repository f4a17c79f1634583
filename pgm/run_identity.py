"""A run knows what it is: `pgm train --resume` checks its command line against the run's
config.json before it touches a file, and refuses a mismatch with one line naming it.

The model kind must be the run's, and every option given on the command line must agree with
what config.json records for it (compared as a new run with that command line would record
it, so ``--clip-norm 0`` matches a recorded ``null``); options left out take the run's values,
and ``--epochs`` left out is the run's own number of epochs.
Only ``--epochs`` and ``--device`` may change on resume: every other setting, training
settings such as ``--lr`` included, is part of what makes a resumed run the run an
uninterrupted one would have been, so a different value is refused rather than applied (to
train on with other settings, start a new run). An option that config.json does not record
for the model (as on a new run, ``--components`` means nothing to a VAE) is not compared.
"""

from __future__ import annotations

import os
from pathlib import Path

from pgm.errors import CheckpointError

#: pgm train's options (argparse names) that config.json records: section, then the keys it
#: may be recorded under (the first that the run's section has is compared)
RECORDED = {
    "data": ("data", "name"),
    "binarize": ("data", "binarize"),
    "seed": ("fit", "seed"),
    "latent_dim": ("model_config", "latent_dim"),
    "hidden": ("model_config", "hidden"),
    "activation": ("model_config", "activation"),
    "arch": ("model_config", "arch"),
    "likelihood": ("model_config", "likelihood"),
    "likelihood_scale": ("model_config", "likelihood_scale", "min_scale", "sigma"),
    "components": ("model_config", "components"),
    "prior": ("model_config", "prior"),
    "objective": ("fit", "objective"),
    "particles": ("fit", "num_particles"),
    "batch_size": ("fit", "batch_size"),
    "lr": ("fit", "lr"),
    "lr_schedule": ("fit", "lr_schedule"),
    "clip_norm": ("fit", "clip_norm"),
    "kl_warmup": ("fit", "kl_warmup_epochs"),
    "patience": ("fit", "patience"),
    "min_epochs": ("fit", "min_epochs"),
}
#: the options of RECORDED that `pgm train gan` uses (it ignores the others)
GAN_OPTIONS = ("data", "binarize", "seed", "lr", "arch")
#: pgm train's options that are not settings of the run, or may change on resume
NOT_RECORDED = ("command", "model", "out", "resume", "epochs", "device", "no_ae_baseline",
                "no_progress", "log", "tracking_uri")


def check_model(out: Path, saved: dict, name: str) -> None:
    """CheckpointError if the run in ``out`` (config.json ``saved``) is not a ``name`` run."""
    if saved.get("model") != name:
        raise CheckpointError(
            f"{out} holds a run of model {saved.get('model')}, not {name}; resume it with "
            f"`pgm train {saved.get('model')} --out {out} --resume`, or choose another --out")


def check_options(out: Path, saved: dict, args: dict, given: set[str]) -> None:
    """CheckpointError naming the first option in ``given`` (of the command line ``args``,
    by argparse name) whose value differs from what the run's config.json ``saved`` records
    for it; options that config.json does not record for this model are not compared."""
    for option, (section, *keys) in RECORDED.items():
        recorded = saved.get(section) or {}
        key = next((k for k in keys if k in recorded), None)
        if option not in given or key is None:
            continue
        old, new = recorded[key], _as_recorded(option, args[option], saved.get("model"))
        if old != new and not (option == "data" and _same_file(old, new)):
            flag = "--" + option.replace("_", "-")
            raise CheckpointError(
                f"{out} was trained with {flag} {_show(old)}, not {_show(new)}; a resumed "
                f"run keeps its settings (only --epochs and --device may change): leave out "
                f"{flag}, or start a new run in another --out")


def _as_recorded(option: str, value, model: str | None):
    """An option's value as config.json records it (as ``pgm train`` turns it into a
    setting)."""
    if option in ("clip_norm", "patience"):
        return value or None  # 0 turns it off
    if option == "arch" and model == "gan":
        return {"conv": "dcgan"}.get(value, value)  # --arch conv builds the DCGAN
    if option == "likelihood" and model == "gmm" and value == "gaussian-learned":
        return "gaussian"  # a mixture's Gaussian components have their own scales
    return list(value) if isinstance(value, tuple) else value


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, TypeError):
        return False


def _show(value) -> str:
    """A recorded value as it is written on the command line: [400, 200] as 400,200."""
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)
