"""Experiment tracking, opt in: a run's config, per-epoch metrics and figures sent to
TensorBoard or MLflow.

A logger has four methods, called by the training loops (:func:`pgm.fit`,
:func:`pgm.inference.adversarial.fit_gan`) where they record history, and by ``pgm train``
for the figures:

- ``log_params(config)``: the run's config.json, once, when a run starts;
- ``log_metrics(metrics, step)``: one history row (step = epoch, 1-based);
- ``log_figure(path, step)``: a PNG the run wrote;
- ``close(status)``: ``FINISHED``, ``FAILED`` or ``KILLED``; a logger is also a context manager
  that closes with the status its block ended with.

Backends (each an optional extra, imported only when asked for):

- ``tensorboard`` (``pip install 'pgm[tensorboard]'``): event files in ``RUN/tensorboard``
  written by ``torch.utils.tensorboard.SummaryWriter``; metrics as scalars, the config as
  text, figures as images.
- ``mlflow`` (``pip install 'pgm[mlflow]'``: ``mlflow-skinny`` with SQLAlchemy for its SQLite
  store): a run in experiment ``pgm`` (or ``$MLFLOW_EXPERIMENT_NAME``) at the tracking URI
  given, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///RUN/mlflow.db`` with artifacts in
  ``RUN/mlflow-artifacts``; the config flattened into params (``fit.lr``, ...) and as the
  artifact config.json, figures as artifacts under ``figures/``. (MLflow 3 refuses its old
  file store by default; SQLite is its default store.)

``RUN/tracking.json`` records where a run logs (and its MLflow run id), so a resumed run
continues the same logging run: the steps are epochs, and the loops log an epoch before its
checkpoint is written, so an epoch repeated after a crash is logged once: TensorBoard's
``purge_step`` hides the earlier attempt's values from that epoch on; MLflow keeps the first
value of a step and skips it when repeated (the values agree: a resumed run reproduces the
uninterrupted one; only the timings differ). The config is logged when a run starts, not
again on resume. Nothing is created until the first call, so a logger made for a run that
then refuses to start (an existing run directory) leaves no trace.

What is logged per epoch is the history row less its epoch and the time of the writes that
follow the logging: ``train_elbo``, ``valid_elbo``, ``beta``, ``lr``, ``seconds``,
``valid_seconds`` for models trained by SVI; ``d_loss``, ``d_real``, ``d_fake``,
``d_accuracy``, ``g_loss``, ``d_valid``, ``d_gen``, ``lr``, ``lr_d``, ``seconds`` for a GAN.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from pgm import distributed, io
from pgm.errors import MissingExtraError, PgmError

BACKENDS = ("tensorboard", "mlflow")
STATE = "tracking.json"  # RUN/tracking.json: backend, where it logs, the MLflow run id


class Logger:
    """The logger interface; the backends below implement it."""

    backend = "none"

    def log_params(self, config: dict) -> None:
        raise NotImplementedError

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_figure(self, path: str | Path, step: int) -> None:
        raise NotImplementedError

    def close(self, status: str = "FINISHED") -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        self.close("FINISHED" if kind is None else
                   "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")


def _require(backend: str):
    """Import a backend's package, or say in one line which extra to install."""
    try:
        if backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            return SummaryWriter
        from mlflow.tracking import MlflowClient
        return MlflowClient
    except ImportError:
        package = "tensorboard" if backend == "tensorboard" else "mlflow-skinny and sqlalchemy"
        raise MissingExtraError(f"logging to {backend} needs {package}: pip install "
                                f"'pgm[{backend}]'") from None


class TensorBoardLogger(Logger):
    """Event files in ``log_dir``, one SummaryWriter; scalars flushed every epoch."""

    backend = "tensorboard"

    def __init__(self, log_dir: str | Path, *, resume: bool = False,
                 state_file: str | Path | None = None):
        self._writer_class = _require("tensorboard")
        self.log_dir, self.resume, self.state_file = Path(log_dir), resume, state_file
        self._writer = None

    def _writer_at(self, purge_step: int | None = None):
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.log_dir), purge_step=purge_step)
            if self.state_file is not None:
                io.atomic_write_json(self.state_file, {"backend": "tensorboard",
                                                       "log_dir": str(self.log_dir)})
        return self._writer

    def log_params(self, config: dict) -> None:
        text = "\n".join("    " + line for line in json.dumps(config, indent=2).splitlines())
        self._writer_at().add_text("config", text)  # indented: a code block in markdown

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        # resumed: the first step logged now hides what an earlier attempt logged from it on
        w = self._writer_at(purge_step=step if self.resume else None)
        for key, value in metrics.items():
            w.add_scalar(key, value, step)
        w.flush()

    def log_figure(self, path: str | Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        path = Path(path)
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
        self._writer_at().add_image(f"figures/{path.stem}", image, step, dataformats="HWC")

    def close(self, status: str = "FINISHED") -> None:
        if self._writer is not None:
            self._writer.close()


def _flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """``{"fit": {"lr": 0.001}}`` -> ``{"fit.lr": "0.001"}``; long values shortened (the whole
    config is logged as an artifact too)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[f"{prefix}{key}"] = text if len(text) <= 500 else text[:497] + "..."
    return flat


class MLflowLogger(Logger):
    """One MLflow run, created at the first call (or continued: ``run_id``)."""

    backend = "mlflow"

    def __init__(self, tracking_uri: str | None = None, *, run_id: str | None = None,
                 run_name: str | None = None, artifact_location: str | None = None,
                 state_file: str | Path | None = None):
        self._client_class, self.client = _require("mlflow"), None
        self.tracking_uri = tracking_uri
        self.run_id, self.run_name = run_id, run_name
        self.artifact_location, self.state_file = artifact_location, state_file
        self._last_step = None  # resumed: the last step the run has; later ones are logged

    def _run(self) -> str:
        if self.client is None:  # creating the client creates the store (a SQLite file)
            self.client = self._client_class(tracking_uri=self.tracking_uri)
        if self.run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "pgm")
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
                name, artifact_location=self.artifact_location)
            self.run_id = self.client.create_run(exp_id, run_name=self.run_name).info.run_id
            self._last_step = 0
            if self.state_file is not None:
                io.atomic_write_json(self.state_file, {
                    "backend": "mlflow", "tracking_uri": self.tracking_uri,
                    "run_id": self.run_id, "experiment": name})
        elif self._last_step is None:
            self.client.update_run(self.run_id, status="RUNNING")
            self._last_step = -1  # read at the first metrics
        return self.run_id

    def log_params(self, config: dict) -> None:
        from mlflow.entities import Param

        run = self._run()
        params = [Param(k, v) for k, v in _flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run, params=params[i:i + 100])
        self.client.log_dict(run, config, "config.json")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        run = self._run()
        if self._last_step == -1:
            history = self.client.get_metric_history(run, next(iter(metrics)))
            self._last_step = max((m.step for m in history), default=0)
        if step <= self._last_step:  # logged before a crash, repeated by the resumed run
            return
        now = int(time.time() * 1000)
        self.client.log_batch(run, metrics=[Metric(k, float(v), now, step)
                                            for k, v in metrics.items()])
        self._last_step = step

    def log_figure(self, path: str | Path, step: int) -> None:
        self.client.log_artifact(self._run(), str(path), artifact_path="figures")

    def close(self, status: str = "FINISHED") -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)


def open_logger(backend: str | None, out: str | Path | None = None, *,
                tracking_uri: str | None = None, resume: bool = False) -> Logger | None:
    """A logger for the run in ``out``, or None (no tracking, or a rank other than 0).

    ``backend``: "tensorboard", "mlflow", "none", or None: on ``resume``, the backend the run
    logged to before (``RUN/tracking.json``), else none. ``tracking_uri``: mlflow only (a
    server or a database URI); default ``$MLFLOW_TRACKING_URI``, else
    ``sqlite:///RUN/mlflow.db``. A resumed run continues the logging run it started (unless
    given another tracking URI: then a new MLflow run there, from the resumed epoch on).
    """
    if backend not in (None, "none", *BACKENDS):
        raise PgmError(f"unknown tracking backend {backend!r}; known: {', '.join(BACKENDS)}")
    if tracking_uri is not None and backend != "mlflow":
        raise PgmError("a tracking URI is for --log mlflow (TensorBoard writes RUN/tensorboard)")
    out = Path(out) if out is not None else None
    state_file = out / STATE if out is not None else None
    state = json.loads(state_file.read_text()) if resume and state_file is not None \
        and state_file.is_file() else {}
    if backend is None:
        backend = state.get("backend", "none")
    if backend == "none" or not distributed.is_main():
        return None
    if backend == "tensorboard":
        if out is None:
            raise PgmError("logging to tensorboard needs a run directory (out=...)")
        return TensorBoardLogger(out / "tensorboard", resume=resume, state_file=state_file)
    # resumed: the run it started, unless a tracking URI elsewhere is given now
    continued = state.get("backend") == "mlflow" and tracking_uri in (None, state["tracking_uri"])
    uri = state["tracking_uri"] if continued else (tracking_uri
                                                   or os.environ.get("MLFLOW_TRACKING_URI"))
    artifacts = None
    if uri is None:
        if out is None:
            raise PgmError("logging to mlflow needs a run directory (out=...) or a tracking URI")
        uri = f"sqlite:///{out.resolve() / 'mlflow.db'}"  # MLflow creates the folders
        artifacts = (out.resolve() / "mlflow-artifacts").as_uri()
    return MLflowLogger(uri, run_id=state["run_id"] if continued else None,
                        run_name=out.name if out is not None else None,
                        artifact_location=artifacts, state_file=state_file)


@contextmanager
def opened(log, out: str | Path | None = None, *, resume: bool = False):
    """``fit(log=...)`` as a logger for a ``with`` block: None or "none" gives None; a backend
    name a new logger (:func:`open_logger`), closed when the block ends (``FAILED`` on an
    error); a logger itself, left open for its owner to close. Ranks other than 0 get None."""
    if log is None or not distributed.is_main():
        yield None
    elif isinstance(log, str):
        logger = open_logger(log, out, resume=resume)
        if logger is None:
            yield None
        else:
            with logger:
                yield logger
    else:
        yield log
