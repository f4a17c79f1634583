"""Experiment tracking (pgm.tracking): what `pgm train --log` and `fit(log=...)` send to
TensorBoard and MLflow, read back with those packages' own readers; resume continues the same
logging run with each epoch once; without the extras nothing is imported."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pgm
from pgm import io, plots, tracking
from pgm.cli import main
from pgm.config import from_dict
from pgm.inference.adversarial import train_gan


@pytest.fixture(autouse=True)
def _no_user_tracking(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)


def _tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    return acc


def _tb_scalars(run, key):
    return [(e.step, e.value) for e in _tensorboard(run).Scalars(key)]


def _mlflow(run):
    from mlflow.tracking import MlflowClient

    state = json.loads((run / tracking.STATE).read_text())
    return MlflowClient(tracking_uri=state["tracking_uri"]), state["run_id"]


def _mlflow_scalars(run, key):
    client, run_id = _mlflow(run)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


SCALARS = {"tensorboard": _tb_scalars, "mlflow": _mlflow_scalars}


def _history(run, key):
    return [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in io.read_history(
        run / io.HISTORY)]


def _train(run, *extra):
    return main(["train", "vae", "--data", "digits", "--hidden", "16", "--no-ae-baseline",
                 "--no-progress", "--out", str(run), *extra])


def _resume(run, epochs):
    """What `pgm train --resume` without --log does, less the figures: continue the run and
    the tracking it started."""
    saved = io.read_config(run)
    d = saved["data"]
    data = pgm.load_dataset(d["name"], binarize=d["binarize"], seed=d["seed"])
    cfg = from_dict(pgm.FitConfig, {**saved["fit"], "epochs": epochs})
    with tracking.open_logger(None, run, resume=True) as log:
        pgm.fit(io.build_model(saved), data, cfg, out=run, resume=True, progress=False, log=log)


@pytest.mark.parametrize("backend", ["tensorboard", "mlflow"])
def test_train_logs_config_epochs_and_figures_and_resume_logs_each_epoch_once(tmp_path,
                                                                               backend):
    run = tmp_path / "vae"
    assert _train(run, "--epochs", "2", "--log", backend) == 0
    scalars = SCALARS[backend]
    for key in ("train_elbo", "valid_elbo", "beta", "lr", "seconds"):
        assert scalars(run, key) == _history(run, key), key
    figures = {p.stem for p in (run / "figures").glob("*.png")}
    assert {"samples", "elbo"} <= figures
    if backend == "tensorboard":
        acc = _tensorboard(run)
        assert {f"figures/{f}" for f in figures} == set(acc.Tags()["images"])
        text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
        assert '"name": "digits"' in text and '"latent_dim": 2' in text
    else:
        client, run_id = _mlflow(run)
        logged = client.get_run(run_id)
        assert logged.info.status == "FINISHED" and logged.info.run_name == "vae"
        assert logged.data.params["data.name"] == "digits"
        assert logged.data.params["fit.lr"] == "0.001"
        assert logged.data.params["model_config.hidden"] == "[16]"
        assert {f.path for f in client.list_artifacts(run_id, "figures")} == {
            f"figures/{f}.png" for f in figures}
        copy = client.download_artifacts(run_id, "config.json", str(tmp_path))
        assert json.loads(Path(copy).read_text()) == json.loads((run / io.CONFIG).read_text())

    # The run dies after epoch 3 was logged but before its checkpoint: the epoch-2 checkpoint
    # and history are what it leaves. Resuming repeats epoch 3, logged once.
    kept = tmp_path / "epoch2"
    kept.mkdir()
    for name in (io.CHECKPOINT, io.HISTORY):
        shutil.copy(run / name, kept / name)
    _resume(run, epochs=3)
    first = scalars(run, "valid_elbo")
    for name in (io.CHECKPOINT, io.HISTORY):
        shutil.copy(kept / name, run / name)
    _resume(run, epochs=3)
    assert scalars(run, "valid_elbo") == first == _history(run, "valid_elbo")
    assert [step for step, _ in first] == [1, 2, 3]
    if backend == "mlflow":  # the same MLflow run, continued
        client, run_id = _mlflow(run)
        assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
        assert client.get_run(run_id).info.status == "FINISHED"


def test_gan_training_logs_its_history(tmp_path):
    data = pgm.load_dataset("gauss1d")
    run = tmp_path / "gan"
    _, history = train_gan(data, run, epochs=2, progress=False, log="tensorboard")
    for key in ("d_real", "d_fake", "g_loss", "d_valid", "lr_d"):
        assert _tb_scalars(run, key) == [(r["epoch"], pytest.approx(r[key], rel=1e-6))
                                         for r in history], key
    assert "save_seconds" not in _tensorboard(run).Tags()["scalars"]  # measured after logging


def test_fit_logs_to_the_tracking_uri_given(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(tracking_uri=uri)  # the user's store, with its experiment
    client.create_experiment("pgm", artifact_location=(tmp_path / "artifacts").as_uri())
    data = pgm.load_dataset("digits", binarize="stochastic")
    run = tmp_path / "vae"
    with tracking.open_logger("mlflow", run, tracking_uri=uri) as log:
        history = pgm.fit(pgm.VAE(data_dim=64, latent_dim=2, hidden=(16,)), data, epochs=2,
                          out=run, progress=False, log=log)
        log.log_figure(plots.save_figure(plots.elbo_curves(history), run / "curves.png"), 2)
    assert not (run / "mlflow.db").exists()
    run_id = json.loads((run / tracking.STATE).read_text())["run_id"]
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "valid_elbo")) \
        == [(r["epoch"], pytest.approx(r["valid_elbo"])) for r in history]
    assert [f.path for f in client.list_artifacts(run_id, "figures")] == ["figures/curves.png"]
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("argv,message", [
    (["--log", "mlflow"], "logging to mlflow needs mlflow-skinny and sqlalchemy: pip install "
                          "'pgm[mlflow]'"),
    (["--log", "tensorboard"], "logging to tensorboard needs tensorboard: pip install "
                               "'pgm[tensorboard]'"),
    (["--tracking-uri", "sqlite:///x.db"], "a tracking URI is for --log mlflow"),
])
def test_a_missing_extra_or_a_stray_uri_is_one_line(argv, message, tmp_path, monkeypatch,
                                                    capsys):
    for module in ("mlflow", "mlflow.tracking", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    assert _train(tmp_path / "run", "--epochs", "1", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # stopped before training


def test_other_ranks_and_no_tracking_log_nothing(tmp_path, monkeypatch):
    assert tracking.open_logger(None, tmp_path) is None
    assert tracking.open_logger("none", tmp_path, resume=True) is None
    monkeypatch.setattr(pgm.distributed, "is_main", lambda: False)
    assert tracking.open_logger("tensorboard", tmp_path) is None
    with tracking.opened(tracking.Logger()) as log:
        assert log is None


def test_without_log_nothing_is_imported():
    code = ("import sys, pgm, pgm.cli, pgm.inference.adversarial; from pgm import tracking; "
            "assert tracking.open_logger(None, 'run') is None; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard')"
            " or m.startswith('torch.utils.tensorboard')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
