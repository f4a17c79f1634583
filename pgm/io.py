"""Run directories: what a training run leaves on disk and how it comes back.

::

    RUN/
      config.json          model name + config, dataset, split, binarisation, fit settings, versions
      model.safetensors    the best weights (by validation ELBO): what load_run() loads
      checkpoint.pt        everything to resume: last weights, optimizer, scheduler, RNG, counters
      history.csv          one row per epoch: epoch, train_elbo, valid_elbo, beta, lr, seconds, ...
      figures/*.png

The checkpoint is the run's single commit point: it holds the history rows (and the best
weights) too, and history.csv and model.safetensors are views written from it after each
checkpoint and again on resume, so a kill at any instant resumes to the run an uninterrupted
one would have written, history included. Every file is written atomically (a temporary file
in the same folder, then ``os.replace``), so an interrupted run never leaves a half-written
file where a good one was; its temporary files are removed by the next writer, which holds
``RUN/.lock`` (:mod:`pgm.runlock`) while it writes, so two processes never write one run.
Loading never unpickles arbitrary objects: safetensors for weights,
``torch.load(weights_only=True)`` for the checkpoint.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import CheckpointError

RUN_FORMAT = "pgm-run"
RUN_VERSION = 1
CONFIG, WEIGHTS, CHECKPOINT, HISTORY = (
    "config.json", "model.safetensors", "checkpoint.pt", "history.csv")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()

#: A test seam: called with the destination of every atomic write once its temporary file is
#: complete and before it replaces the old file. tests/test_kill_resume.py kills the process
#: there (``os._exit``) at each write in turn, which is every point where a run's files change.
on_write: Callable[[Path], None] | None = None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    if path.is_dir():  # named here, not after the temporary file that would fail to replace it
        raise IsADirectoryError(errno.EISDIR, "a folder is where the file should go", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if on_write is not None:
            on_write(path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    import numpy
    import pyro

    from . import __version__

    return {"pgm": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "pyro": pyro.__version__, "numpy": numpy.__version__}


# ---- weights and checkpoints -----------------------------------------------------------------
def save_weights(model: torch.nn.Module | dict, path: str | Path) -> Path:
    """A model's weights (or a state dict) as safetensors."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    return atomic_write_bytes(path, st_save(state, metadata={"format": RUN_FORMAT}))


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load safetensors weights into ``model`` (on its device); clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    try:
        state = st_load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file "
                              f"(truncated or corrupt?): {e}") from None
    _load_state_dict(model, state, path)


def _load_state_dict(model, state, path) -> None:
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} does not match the model {type(model).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise CheckpointError(f"{path}: {', '.join(bad[:3])} hold NaN or infinite values "
                              "(a diverged or corrupt run); nothing was loaded")
    device = next(iter(own.values())).device if own else torch.device("cpu")
    model.load_state_dict({k: v.to(device) for k, v in state.items()})


def save_checkpoint(state: dict, path: str | Path) -> Path:
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; clear errors for bad or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; nothing to resume")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt/foreign pickles
        raise CheckpointError(f"{path} is not a readable pgm checkpoint "
                              f"(truncated, corrupt or foreign): {type(e).__name__}") from None
    if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{path} is not a pgm checkpoint")
    return state


# ---- history and config ----------------------------------------------------------------------
#: The files and folders of a run: any one of them in a directory means a run is there (a
#: leftover lock file or a killed write's temporary file does not).
RUN_FILES = (CONFIG, WEIGHTS, CHECKPOINT, HISTORY, "eval")
#: The fit settings a resumed run may change; every other recorded setting defines the run.
RESUME_MAY_CHANGE = ("epochs", "device")


def resume_checkpoint(out: Path, device: torch.device) -> dict:
    """The checkpoint of the run in ``out``, after restoring torch's random state from it, so
    the continued run draws what the uninterrupted one would."""
    ckpt = load_checkpoint(out / CHECKPOINT, map_location=device)
    torch.set_rng_state(ckpt["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in ckpt:
        torch.cuda.set_rng_state(ckpt["rng_cuda"].cpu(), device)
    return ckpt


def check_resumable(out: Path) -> bool:
    """True if the run in ``out`` has a checkpoint to resume from; False if it was killed
    before its first (nothing of it but config.json and what is drawn before a checkpoint:
    resuming starts it again); CheckpointError if it has lost its checkpoint but kept weights,
    history or eval/, which resuming would train a new model over."""
    if (out / CHECKPOINT).is_file():
        return True
    found = [name for name in RUN_FILES if name not in (CONFIG, CHECKPOINT)
             and (out / name).exists()]
    if found:
        raise CheckpointError(f"{out} has no {CHECKPOINT} to resume from, but has "
                              f"{', '.join(found)}: resuming would train a new model over "
                              "them; start a new run in another directory")
    return False


def check_same_run(out: Path, config: dict) -> None:
    """Refuse to resume the run in ``out`` as anything else: CheckpointError naming the first
    setting of ``config`` (a :func:`run_config`) that differs from ``out``/config.json -- the
    model, a model or data setting, or a fit setting other than :data:`RESUME_MAY_CHANGE`.
    Settings that config.json does not record (a run of an older pgm) are not compared."""
    saved = read_config(out)
    new = json.loads(json.dumps(config))  # tuples become lists, as in config.json
    if saved.get("model") != new["model"]:
        raise CheckpointError(f"{out} holds a run of model {saved.get('model')}, not "
                              f"{new['model']}; resume it as what it is, or choose another "
                              "output directory")
    for section in ("model_config", "data", "fit"):
        old = saved.get(section)
        if not isinstance(old, dict):
            raise CheckpointError(f"{out / CONFIG} has no {section!r} settings")
        for key, value in new[section].items():
            if section == "fit" and key in RESUME_MAY_CHANGE or key not in old:
                continue
            if old[key] != value:
                raise CheckpointError(
                    f"{out} was trained with different settings: {section}.{key} is "
                    f"{old[key]!r} there, {value!r} here; resume with the same settings (only "
                    f"{' and '.join(RESUME_MAY_CHANGE)} may change)")


def record_resumed_settings(out: Path, config: dict) -> None:
    """Write what a resumed run may change (:data:`RESUME_MAY_CHANGE`: the epochs it now trains
    to, its device) into ``out``/config.json, so the file records what the run was last trained
    with, and a later resume without ``--epochs`` goes on to those epochs, not the first ones."""
    saved = read_config(out)
    new = json.loads(json.dumps(config))
    fit = {**saved["fit"], **{k: new["fit"][k] for k in RESUME_MAY_CHANGE if k in new["fit"]}}
    updated = {**saved, "fit": fit, "device": new.get("device", saved.get("device"))}
    if updated != saved:
        atomic_write_json(out / CONFIG, updated)


def refuse_existing_run(out: Path | None) -> None:
    """A new run never overwrites one: CheckpointError if ``out`` holds any of
    :data:`RUN_FILES`."""
    found = [] if out is None else [name for name in RUN_FILES if (Path(out) / name).exists()]
    if found:
        raise CheckpointError(f"{out} already holds a run ({', '.join(found)}); pass resume=True "
                              "(--resume) to continue it, or choose another output directory")


def run_config(model, data, cfg, device: torch.device, **extra) -> dict:
    """What RUN/config.json holds: the model's name and config, the data, the fit settings,
    versions."""
    from .config import to_dict

    return {"format": RUN_FORMAT, "version": RUN_VERSION, "model": model.name,
            "model_config": to_dict(model.config), "data": data.describe(), "fit": to_dict(cfg),
            **extra, "device": str(device), "versions": versions()}


def write_run_config(out: Path, model, data, cfg, device: torch.device, **extra) -> Path:
    """RUN/config.json (:func:`run_config`)."""
    return atomic_write_json(out / CONFIG, run_config(model, data, cfg, device, **extra))


def write_history(path: str | Path, rows: list[dict]) -> Path:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def read_history(path: str | Path) -> list[dict]:
    """history.csv as a list of dicts with numbers parsed (epoch as int); CheckpointError
    naming the file, line and column of a value that is not a number (a corrupt file)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    parsed = []
    for line, row in enumerate(rows, 2):
        try:
            parsed.append({k: int(v) if k == "epoch" else float(v) for k, v in row.items()})
        except (TypeError, ValueError):
            bad = next((k for k, v in row.items() if not _is_number(v, k == "epoch")), "?")
            raise CheckpointError(f"{path}: line {line}, column {bad!r} is not a number "
                                  f"({row.get(bad)!r:.40}); the file is corrupt (the "
                                  "checkpoint rewrites it on --resume)") from None
    return parsed


def _is_number(value, integer: bool) -> bool:
    try:
        int(value) if integer else float(value)
    except (TypeError, ValueError):
        return False
    return True


def read_config(run_dir: str | Path) -> dict:
    """RUN/config.json, checked (:func:`pgm.schema.check_run_config`): CheckpointError
    naming the file, and the field, if it is missing, truncated or malformed."""
    from .schema import check_run_config, read_json

    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a pgm run directory (no {CONFIG})")
    config = read_json(path)
    if config.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{path} is not a pgm run config (format != {RUN_FORMAT!r})")
    version = config.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: field 'version' should be an integer")
    if version > RUN_VERSION:
        raise CheckpointError(f"{path} was written by a newer pgm (run format "
                              f"{config['version']} > {RUN_VERSION}); upgrade pgm")
    return check_run_config(path, config)


@dataclass
class Run:
    """A loaded run: the rebuilt model (eval mode, best weights) and what the run recorded."""

    path: Path
    model: torch.nn.Module
    config: dict
    history: list[dict] = field(default_factory=list)


def build_model(config: dict) -> torch.nn.Module:
    """The model a run config describes, freshly initialised."""
    from pgm.config import from_dict
    from pgm.models import get_model_class

    cls = get_model_class(config["model"])
    return cls(from_dict(cls.Config, config["model_config"], what=f"{cls.name} config"))


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild the model of the run at ``path`` from its config and load its best weights.

    A run trained on a GPU loads on a CPU (``device="cpu"``, the default).
    """
    path = Path(path)
    config = read_config(path)
    try:
        model = build_model(config).to(device)
    except (TypeError, ValueError, KeyError) as e:  # a model_config field of the wrong type
        why = e.args[0] if isinstance(e, KeyError) and e.args else e  # KeyError quotes it
        raise CheckpointError(f"{path / CONFIG}: {why}") from None
    load_weights(model, path / WEIGHTS)
    model.fitted = True  # a fit() of the loaded model trains on from these weights
    model.eval()
    history = read_history(path / HISTORY) if (path / HISTORY).is_file() else []
    return Run(path=path, model=model, config=config, history=history)
