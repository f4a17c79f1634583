"""Every bad input stopped at the border (issue 15, items 4 and 5): options outside their
domain, broken config.json, history.csv and results.json, paths that cannot be written, data
the model cannot score given to the estimators, and a second evaluation over a kept one.
Each CLI case asserts exit 2, one line on stderr, no traceback, and every file as it was;
each API case the library's error class. Evaluations are published whole (pgm.publish)."""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from run_files import hashes, one_line

import pgm
from pgm import io, publish, runlock
from pgm.cli import main
from pgm.config import from_dict
from pgm.errors import CheckpointError, DataError, PgmError
from pgm.inference.adapter import latent_callables
from pgm.inference.ais import ais
from pgm.inference.bounds import iwae_bound
from pgm.inference.schedules import sigmoid_schedule
from pgm.models.vae import VAE

QUIET = ["--no-progress", "--no-ae-baseline"]
VAE_ARGS = ["--data", "digits", "--hidden", "16", "--latent-dim", "2", *QUIET]
EVAL_ARGS = ["--k", "1,10", "--ais-steps", "3", "--ais-n", "2", "--ais-chains", "2",
             "--ais-pilot-chains", "1", "--ais-leapfrog", "2", "--no-exact",
             "--posterior-check", "0", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny VAE on digits, trained one epoch and evaluated once with --n past the split."""
    out = tmp_path_factory.mktemp("border") / "vae"
    assert main(["train", "vae", "--epochs", "1", "--out", str(out), *VAE_ARGS]) == 0
    assert main(["evaluate", str(out), "--n", "100000", *EVAL_ARGS]) == 0
    return out


def _refused(argv, folder: Path, capsys, command: str) -> str:
    """Run ``argv``: exit 2, one line naming the command, no file under ``folder`` changed."""
    capsys.readouterr()
    before = hashes(folder)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (a type, a choice) exit from the parser
        code = e.code
    assert code == 2
    line = one_line(capsys)
    assert line.startswith(f"pgm {command}: error: "), line
    assert hashes(folder) == before
    return line


# ---- options outside their domain --------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["--kl-warmup", "-1"], "--kl-warmup must be >= 0"),
    (["--clip-norm", "-5"], "--clip-norm must be >= 0 (0 turns clipping off), got -5"),
    (["--patience", "-1"], "--patience must be >= 0"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--lr", "nan"], "--lr must be > 0"),
    (["--lr=-1e-3"], "--lr must be > 0"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--latent-dim", "0"], "--latent-dim must be >= 1"),
    (["--particles", "0"], "--particles must be >= 1"),
    (["--min-epochs", "-1"], "--min-epochs must be >= 0"),
    (["--likelihood-scale", "-1"], "--likelihood-scale must be > 0"),
    (["--likelihood-scale", "inf"], "--likelihood-scale must be > 0"),
    (["--hidden", "0"], "argument --hidden: expected positive integers"),
    (["--epochs", "three"], "argument --epochs: invalid int value"),
    (["--objective", "mle"], "argument --objective: invalid choice"),
])
def test_train_options_outside_their_domain(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    line = _refused(["train", "vae", "--out", str(out), *VAE_ARGS, *argv], tmp_path, capsys,
                    "train")
    assert message in line
    assert not out.exists()


def test_gmm_components_outside_their_domain(tmp_path, capsys):
    line = _refused(["train", "gmm", "--components", "0", "--out", str(tmp_path / "g"),
                     "--data", "digits", "--no-progress"], tmp_path, capsys, "train")
    assert "--components must be >= 1" in line


@pytest.mark.parametrize("argv,message", [
    (["--ais-steps", "-1"], "--ais-steps must be >= 0 (0 turns AIS off)"),
    (["--n", "0"], "--n must be >= 1"),
    (["--ais-chains", "0"], "--ais-chains must be >= 1"),
    (["--ais-pilot-chains", "0"], "--ais-pilot-chains must be >= 1"),
    (["--ais-leapfrog", "0"], "--ais-leapfrog must be >= 1"),
    (["--ais-n", "-3"], "--ais-n must be >= 1"),
    (["--gaps-n", "0"], "--gaps-n must be >= 1"),
    (["--posterior-check", "-1"], "--posterior-check must be >= 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--k", "0,10"], "argument --k: expected positive integers"),
    (["--overwrite", "--n", "-5"], "--n must be >= 1"),
])
def test_evaluate_options_outside_their_domain(run, capsys, argv, message):
    line = _refused(["evaluate", str(run), *argv], run.parent, capsys, "evaluate")
    assert message in line


def test_sample_count_outside_its_domain(run, capsys):
    assert "-n must be >= 1" in _refused(["sample", str(run), "-n", "-1"], run.parent, capsys,
                                         "sample")


def test_n_past_the_split_is_the_split_and_recorded(run):
    results = json.loads((run / "eval" / "results.json").read_text())
    n_test = io.read_config(run)["data"]["n_test"]
    assert results["n"] == n_test == results["estimators"]["elbo"]["n"] < 100000


def test_a_label_far_beyond_the_classes(tmp_path, capsys):
    y = np.arange(60) % 10
    y[3] = 10**8
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((60, 16)), y=y)
    line = _refused(["train", "cvae", "--data", str(tmp_path / "d.npz"), "--out",
                     str(tmp_path / "c"), "--no-progress"], tmp_path, capsys, "train")
    assert "class id 100000000, more classes than the 60 datapoints" in line


@pytest.mark.parametrize("row", [5, 59])  # a training image, and one of the test split
def test_a_finite_value_that_would_overflow(tmp_path, capsys, row):
    x = np.random.default_rng(0).random((60, 16))
    x[row, 3] = 1e30
    np.savez(tmp_path / "d.npz", x=x)
    line = _refused(["train", "vae", "--data", str(tmp_path / "d.npz"), "--out",
                     str(tmp_path / "v"), "--no-progress"], tmp_path, capsys, "train")
    assert f"1 values beyond ±1e+15 (row {row}: 1e+30)" in line


# ---- evaluations are kept, published whole -----------------------------------------------
def test_a_kept_evaluation_is_not_replaced_without_overwrite(run, capsys):
    line = _refused(["evaluate", str(run), *EVAL_ARGS], run.parent, capsys, "evaluate")
    assert "already holds an evaluation; pass --overwrite" in line


def test_overwrite_replaces_the_evaluation_in_one_step(run, tmp_path, capsys):
    copy = tmp_path / "vae"
    shutil.copytree(run, copy)
    old = json.loads((copy / "eval" / "results.json").read_text())
    assert main(["evaluate", str(copy), "--overwrite", "--n", "30", *EVAL_ARGS]) == 0
    new = json.loads((copy / "eval" / "results.json").read_text())
    assert (old["n"], new["n"]) == (io.read_config(run)["data"]["n_test"], 30)
    with np.load(copy / "eval" / "per_datapoint.npz") as npz:
        assert len(npz["elbo"]) == 30  # the results and the values of one evaluation
    assert not [p for p in copy.iterdir() if p.name.startswith(".eval.")]


def test_a_write_killed_midway_leaves_the_old_evaluation(run, tmp_path, monkeypatch):
    """A failure at any write of a new evaluation leaves eval/ bit for bit as it was; the
    staging folder goes (here by the exception; after a kill, by the next lock)."""
    copy = tmp_path / "vae"
    shutil.copytree(run, copy)
    before = hashes(copy)
    results = json.loads((copy / "eval" / "results.json").read_text())
    ev = pgm.evaluate(pgm.load_run(copy).model, pgm.load_dataset("digits"),
                      pgm.EvalConfig(ks=(1,), n=5, ais_steps=0, exact=False,
                                     posterior_check=0))
    for k in range(1, 20):
        calls = []

        def fail(path, k=k, calls=calls):
            calls.append(path)
            if len(calls) == k:
                raise KeyboardInterrupt  # as a Ctrl-C would
        monkeypatch.setattr(io, "on_write", fail)
        with pytest.raises(KeyboardInterrupt):
            pgm.write_evaluation(copy, ev, dataset="digits", overwrite=True)
        assert hashes(copy) == before
        assert not [p for p in copy.iterdir() if p.name.startswith(".eval.")]
        if calls[-1] == copy / "eval":  # the last: the publish itself
            break
    else:
        pytest.fail("the publish step was never reached")
    monkeypatch.setattr(io, "on_write", None)
    assert results["n"] != 5


def test_the_next_writer_clears_what_a_kill_left(run, tmp_path):
    copy = tmp_path / "vae"
    shutil.copytree(run, copy)
    staged = publish.staging(copy)
    (staged / "results.json").write_text("{")  # a kill while the new one was written
    aside = copy / ".eval.abcd1234.old"  # a kill between the two renames of the fallback
    os.rename(copy / "eval", aside)
    with runlock.hold(copy, "test"):
        pass
    assert not staged.exists() and not aside.exists()
    assert json.loads((copy / "eval" / "results.json").read_text())["estimators"]


def test_report_takes_the_evaluation_named(run, tmp_path, capsys):
    kept = tmp_path / "kept-eval"
    shutil.copytree(run / "eval", kept)
    out = tmp_path / "cmp"
    assert main(["report", str(run), str(kept), "--out", str(out)]) == 0
    assert "| paired" in out.with_suffix(".md").read_text()


# ---- broken files, named with their field ------------------------------------------------
def _broken(run: Path, tmp_path: Path, name: str, edit) -> Path:
    copy = tmp_path / "vae"
    shutil.copytree(run, copy)
    path = copy / name
    text = path.read_text()
    path.write_text(edit(text) if callable(edit) else edit)
    return copy


def _json_edit(change):
    def edit(text):
        obj = json.loads(text)
        change(obj)
        return json.dumps(obj)
    return edit


@pytest.mark.parametrize("name,edit,message", [
    ("config.json", lambda t: t[: len(t) // 2], "config.json is not valid JSON"),
    ("config.json", "[1, 2]", "config.json should hold a JSON object"),
    ("config.json", _json_edit(lambda c: c["model_config"].update(latent_dim="two")),
     "config.json: vae config field 'latent_dim' should be int, got 'two'"),
    ("config.json", _json_edit(lambda c: c["model_config"].update(hidden=[16, "x"])),
     "field 'hidden' should be"),
    ("config.json", _json_edit(lambda c: c["model_config"].pop("data_dim")),
     "config.json: vae config lacks field(s) data_dim"),
    ("config.json", _json_edit(lambda c: c.pop("model_config")),
     "config.json: field 'model_config' is missing"),
    ("config.json", _json_edit(lambda c: c["data"].update(seed="zero")),
     "config.json: field 'data.seed' should be an integer, got 'zero'"),
    ("config.json", _json_edit(lambda c: c["data"].pop("name")),
     "config.json: field 'data.name' is missing"),
    ("config.json", _json_edit(lambda c: c.update(model=3)),
     "config.json: field 'model' should be a string"),
    ("config.json", _json_edit(lambda c: c.update(version="1")),
     "config.json: field 'version' should be an integer"),
    ("history.csv", lambda t: t.replace("\n1,", "\nx1,", 1),
     "history.csv: line 2, column 'epoch' is not a number"),
])
def test_broken_run_files_are_named(run, tmp_path, capsys, name, edit, message):
    copy = _broken(run, tmp_path, name, edit)
    line = _refused(["evaluate", str(copy), "--overwrite", *EVAL_ARGS], tmp_path, capsys,
                    "evaluate")
    assert message in line


@pytest.mark.parametrize("command", ["evaluate", "sample"])  # --resume rewrites them
def test_weights_with_nan_are_named_before_any_estimator_runs(run, tmp_path, capsys, command):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "vae"
    shutil.copytree(run, copy)
    state = load_file(copy / "model.safetensors")
    state["decoder.0.weight"][0, 0] = float("nan")
    save_file(state, copy / "model.safetensors")
    argv = {"evaluate": ["evaluate", str(copy), "--overwrite", *EVAL_ARGS],
            "sample": ["sample", str(copy), "-n", "4"]}[command]
    line = _refused(argv, tmp_path, capsys, argv[0])
    assert "model.safetensors: decoder.0.weight hold NaN or infinite values" in line


@pytest.mark.parametrize("edit,message", [
    (lambda t: t[: len(t) // 3], "results.json is not valid JSON (truncated or corrupt?)"),
    (_json_edit(lambda r: r.pop("estimators")), "results.json: field 'estimators' is missing"),
    (_json_edit(lambda r: r["estimators"]["elbo"].pop("mean")),
     "field 'estimators.elbo.mean' is missing"),
    (_json_edit(lambda r: r["estimators"]["elbo"].update(n="20")),
     "field 'estimators.elbo.n' should be an integer"),
    (_json_edit(lambda r: r.update(best="nope")), "field 'best' names 'nope'"),
    (_json_edit(lambda r: r.update(estimators=[])), "field 'estimators' should be an object"),
])
def test_broken_results_are_named(run, tmp_path, capsys, edit, message):
    copy = _broken(run, tmp_path, "eval/results.json", edit)
    line = _refused(["report", str(copy), "--out", str(tmp_path / "cmp")], tmp_path, capsys,
                    "report")
    assert message in line


def test_report_of_a_run_never_evaluated(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "has no eval/results.json" in _refused(
        ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "c")], tmp_path, capsys,
        "report")


# ---- paths that cannot be written ----------------------------------------------------------
def test_out_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    line = _refused(["train", "vae", "--out", str(tmp_path / "file" / "run"), *VAE_ARGS],
                    tmp_path, capsys, "train")
    assert str(tmp_path / "file") in line


def test_out_being_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    line = _refused(["train", "vae", "--out", str(tmp_path / "file"), *VAE_ARGS], tmp_path,
                    capsys, "train")
    assert str(tmp_path / "file") in line


def _read_only(monkeypatch):
    """A read-only filesystem, also for root (who may write anywhere)."""
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "mkdir", refuse)


def test_out_in_a_read_only_folder(tmp_path, capsys, monkeypatch):
    _read_only(monkeypatch)
    line = _refused(["train", "vae", "--out", str(tmp_path / "ro" / "run"), *VAE_ARGS],
                    tmp_path, capsys, "train")
    assert "Permission denied" in line and str(tmp_path / "ro" / "run") in line


def test_report_out_in_a_read_only_folder(run, tmp_path, capsys, monkeypatch):
    _read_only(monkeypatch)
    line = _refused(["report", str(run), "--out", str(tmp_path / "ro" / "cmp")], run.parent,
                    capsys, "report")
    assert "Permission denied" in line and str(tmp_path / "ro") in line


# ---- the Python API ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VAE(VAE.Config(data_dim=64, latent_dim=2, hidden=(8,))).eval()


@pytest.mark.parametrize("x,message", [
    (torch.rand(3, 63).round(), "must have shape (N, 64)"),
    (torch.full((3, 64), 2.0), "Bernoulli"),
    (torch.full((3, 64), float("nan")), "NaN"),
])
@pytest.mark.parametrize("estimator", ["iwae", "ais"])
def test_estimators_check_x_against_the_model(model, x, message, estimator):
    f = latent_callables(model)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        if estimator == "iwae":
            iwae_bound(f, x, Ks=(1, 5))
        else:
            ais(f, x, schedule=sigmoid_schedule(3), num_chains=2, initial="q")


def test_estimators_still_score_good_data(model):
    x = torch.rand(3, 64).round()
    est = iwae_bound(latent_callables(model), x, Ks=(1, 5))
    assert all(math.isfinite(e.mean) and e.mean < 0 for e in est.values())


@pytest.mark.parametrize("n", [-1, 1.5, "3"])
def test_sample_a_bad_count(model, n):
    with pytest.raises(ValueError, match="n must be"):
        model.sample(n)


def test_a_layer_of_no_units():
    with pytest.raises(ValueError, match="layer sizes must be positive: 64 -> 0 -> 4"):
        VAE(VAE.Config(data_dim=64, latent_dim=2, hidden=(0,)))


def test_a_config_of_the_wrong_type():
    with pytest.raises(ValueError, match="field 'latent_dim' should be int"):
        from_dict(VAE.Config, {"data_dim": 4, "latent_dim": "2"})
    with pytest.raises(CheckpointError, match="no config.json"):
        pgm.load_run("/nonexistent/run")
    assert issubclass(DataError, PgmError)


def test_a_gan_whose_losses_explode_stops_with_one_line(tmp_path, capsys):
    # at lr 1e6 the losses stay finite but reach 1e19 within an epoch: stopped, not "finished"
    out = tmp_path / "gan"
    capsys.readouterr()
    assert main(["train", "gan", "--data", "gauss1d", "--epochs", "3", "--lr", "1e6",
                 "--out", str(out), "--no-progress"]) == 2
    line = one_line(capsys)
    assert "exploded in epoch 1" in line and "smaller --lr" in line, line
