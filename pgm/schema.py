"""The files pgm reads back, checked when they are read: RUN/config.json and an evaluation's
results.json. A file that a crash truncated, a hand edit broke or another tool wrote stops
with one line naming the file and the field (``runs/x/config.json: field 'data.seed' should
be an integer, got 'zero'``), not with a KeyError or a JSON decoder's message from deep
inside the code that used it.

Only what pgm relies on is checked; other fields are free (results.json is an interface
that scripts may extend). A model's own settings (``model_config``) are checked field by
field against its config dataclass by :func:`pgm.config.from_dict`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pgm.errors import CheckpointError

_KINDS = {"an object": dict, "a string": str, "an integer": int, "a number": (int, float),
          "a list": list}


def read_json(path: str | Path) -> dict:
    """The JSON object in ``path``; CheckpointError naming the file if it is missing,
    unreadable, truncated or not an object."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON (truncated or corrupt?): "
                              f"{getattr(e, 'msg', e)} at position "
                              f"{getattr(e, 'pos', getattr(e, 'start', '?'))}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} should hold a JSON object, not {type(obj).__name__}")
    return obj


def _need(path: Path, obj: dict, field: str, kind: str, *, optional: bool = False,
          prefix: str = ""):
    """``obj[field]``, checked to be of ``kind`` (a key of _KINDS; None allowed if
    ``optional``)."""
    name = f"'{prefix}{field}'"
    if field not in obj:
        if optional:
            return None
        raise CheckpointError(f"{path}: field {name} is missing")
    value = obj[field]
    if value is None and optional:
        return None
    want = _KINDS[kind]
    if isinstance(value, bool) or not isinstance(value, want):
        raise CheckpointError(f"{path}: field {name} should be {kind}, got {value!r:.60}")
    return value


def check_run_config(path: Path, config: dict) -> dict:
    """``config`` (read from ``path``, a run's config.json), once the sections and fields
    that loading, resuming and evaluating a run read are there with the right types."""
    _need(path, config, "model", "a string")
    for section in ("model_config", "data", "fit"):
        _need(path, config, section, "an object")
    data = config["data"]
    _need(path, data, "name", "a string", prefix="data.")
    _need(path, data, "binarize", "a string", optional=True, prefix="data.")
    _need(path, data, "seed", "an integer", prefix="data.")
    for key in ("valid_fraction", "test_fraction"):
        _need(path, data, key, "a number", prefix="data.")
    _need(path, data, "image_shape", "a list", optional=True, prefix="data.")
    fit = config["fit"]
    _need(path, fit, "seed", "an integer", optional=True, prefix="fit.")
    _need(path, fit, "epochs", "an integer", optional=True, prefix="fit.")
    _need(path, fit, "lr", "a number", optional=True, prefix="fit.")
    return config


def read_results(path: str | Path) -> dict:
    """An evaluation's results.json, once every estimator in it has a numeric ``mean``,
    ``se`` and ``n`` (what reports and comparisons read); CheckpointError naming the file
    and field otherwise."""
    path = Path(path)
    results = read_json(path)
    estimators = _need(path, results, "estimators", "an object")
    for name, s in estimators.items():
        if not isinstance(s, dict):
            raise CheckpointError(f"{path}: field 'estimators.{name}' should be an object")
        for key, kind in (("mean", "a number"), ("se", "a number"), ("n", "an integer")):
            value = _need(path, s, key, kind, optional=key == "se",
                          prefix=f"estimators.{name}.")
            if key == "n" and value < 0:
                raise CheckpointError(f"{path}: field 'estimators.{name}.n' is negative")
    best = _need(path, results, "best", "a string", optional=True)
    if best is not None and best not in estimators:
        raise CheckpointError(f"{path}: field 'best' names {best!r}, which is not under "
                              "'estimators'")
    _need(path, results, "representation", "an object", optional=True)
    quality = _need(path, results, "sample_quality", "an object", optional=True)
    classes = _need(path, quality, "classes", "an object", optional=True,
                    prefix="sample_quality.") if quality else None
    for part in ("samples", "test") if classes else ():
        hist = _need(path, classes, part, "an object", optional=part == "test",
                     prefix="sample_quality.classes.")
        if hist is not None:
            _need(path, hist, "ratio", "a number", prefix=f"sample_quality.classes.{part}.")
            _need(path, hist, "counts", "a list", prefix=f"sample_quality.classes.{part}.")
    return results

