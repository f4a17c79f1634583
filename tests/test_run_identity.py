"""A run knows what it is: `pgm train --resume` with another model kind or another recorded
setting, and a new `pgm train` into a directory that holds any run file, stop with one line
(exit 2, no traceback) and leave every file as it was; `--resume` continues to the run's own
number of epochs, and a leftover lock file does not make a run."""

import shutil
from pathlib import Path

import pytest
from run_files import hashes, one_line

import pgm
from pgm import io, runlock
from pgm.cli import _parser, main
from pgm.inference.adversarial import train_gan
from pgm.run_identity import NOT_RECORDED, RECORDED

QUIET = ["--no-progress", "--no-ae-baseline"]
VAE = ["--data", "digits", "--hidden", "16", "--latent-dim", "2", *QUIET]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("identity") / "vae"
    assert main(["train", "vae", "--epochs", "2", "--out", str(out), *VAE]) == 0
    (out / "eval").mkdir()
    (out / "eval" / "results.json").write_text("{}\n")  # as if evaluated
    return out


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("identity") / "gan"
    train_gan(pgm.load_dataset("gauss1d"), out, epochs=1, batch_size=500, snapshot_every=0,
              progress=False)
    return out


def _refused(argv: list[str], run: Path, capsys) -> str:
    """Run ``argv``; assert exit 2, one line, no file changed; return the line."""
    before = hashes(run)
    assert main(argv) == 2
    line = one_line(capsys)
    assert line.startswith("pgm train: error: ")
    assert hashes(run) == before
    assert not (run / runlock.LOCK).exists()
    return line


@pytest.mark.parametrize("argv,message", [
    (["gmm"], "holds a run of model vae, not gmm; resume it with `pgm train vae --out"),
    (["ae"], "holds a run of model vae, not ae"),
    (["vae", "--lr", "0.5"], "--lr 0.001, not 0.5"),
    (["vae", "--latent-dim", "3"], "--latent-dim 2, not 3"),
    (["vae", "--hidden", "32,16"], "--hidden 16, not 32,16"),
    (["vae", "--activation", "tanh"], "--activation relu, not tanh"),
    (["vae", "--arch", "conv"], "--arch mlp, not conv"),
    (["vae", "--likelihood", "gaussian"], "--likelihood bernoulli, not gaussian"),
    (["vae", "--likelihood-scale", "0.5"], "--likelihood-scale 0.1, not 0.5"),
    (["vae", "--data", "pinwheel"], "--data digits, not pinwheel"),
    (["vae", "--binarize", "threshold"], "--binarize stochastic, not threshold"),
    (["vae", "--seed", "1"], "--seed 0, not 1"),
    (["vae", "--objective", "iwae"], "--objective elbo, not iwae"),
    (["vae", "--particles", "5"], "--particles 1, not 5"),
    (["vae", "--batch-size", "64"], "--batch-size 128, not 64"),
    (["vae", "--lr-schedule", "cosine"], "--lr-schedule constant, not cosine"),
    (["vae", "--clip-norm", "0"], "--clip-norm 100.0, not none"),
    (["vae", "--kl-warmup", "2"], "--kl-warmup 0, not 2"),
    (["vae", "--patience", "0"], "--patience 10, not none"),
    (["vae", "--min-epochs", "3"], "--min-epochs none, not 3"),
])
def test_resume_refuses_another_model_or_setting(vae_run, argv, message, capsys):
    line = _refused(["train", *argv, "--resume", "--out", str(vae_run), *QUIET], vae_run, capsys)
    assert message in line and str(vae_run) in line
    if argv[0] == "vae":
        assert "only --epochs and --device may change" in line


@pytest.mark.parametrize("argv,message", [
    (["vae"], "holds a run of model gan, not vae"),
    (["gan", "--lr", "0.1"], "--lr 0.0005, not 0.1"),
    (["gan", "--data", "digits"], "--data gauss1d, not digits"),
])
def test_resume_refuses_a_gan_as_another_run(gan_run, argv, message, capsys):
    line = _refused(["train", *argv, "--resume", "--out", str(gan_run), "--no-progress"],
                    gan_run, capsys)
    assert message in line


@pytest.mark.parametrize("kept", [
    ("config.json",),
    ("model.safetensors", "history.csv", "eval", "figures"),  # a finished run, no checkpoint
    ("history.csv",),
    ("checkpoint.pt",),
    ("eval",),
])
def test_any_run_file_without_resume_is_a_run(vae_run, kept, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    for path in run.iterdir():
        if path.name not in kept:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    line = _refused(["train", "vae", "--epochs", "1", "--out", str(run), *VAE], run, capsys)
    assert "already holds a run" in line and kept[0] in line


def test_a_gan_run_without_its_checkpoint_is_a_run(gan_run, tmp_path, capsys):
    run = tmp_path / "gan"
    shutil.copytree(gan_run, run)
    (run / io.CHECKPOINT).unlink()
    line = _refused(["train", "gan", "--data", "gauss1d", "--epochs", "1", "--out", str(run),
                     "--no-progress"], run, capsys)
    assert "already holds a run (config.json, model.safetensors, history.csv)" in line


def test_resume_of_a_run_that_lost_its_checkpoint_is_refused(vae_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    (run / io.CHECKPOINT).unlink()  # resuming would train a new model over its weights
    line = _refused(["train", "vae", "--resume", "--out", str(run), *QUIET], run, capsys)
    assert "no checkpoint.pt to resume from, but has model.safetensors, history.csv, eval" in line


def test_resume_where_no_run_is_refused_and_makes_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for run in (empty, tmp_path / "missing"):
        assert main(["train", "vae", "--resume", "--out", str(run), *QUIET]) == 2
        assert "is not a pgm run directory (no config.json)" in one_line(capsys)
    assert list(empty.iterdir()) == [] and not (tmp_path / "missing").exists()


def test_a_leftover_lock_is_no_run_and_resume_keeps_the_run_s_epochs(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / runlock.LOCK).write_text("12345 pgm train\n")  # a killed holder's
    writes = []

    def interrupt(path):  # Ctrl-C once epoch 1 is committed, before its history.csv
        writes.append(path.name)
        if path.name == io.HISTORY:
            raise KeyboardInterrupt

    io.on_write = interrupt
    try:
        assert main(["train", "vae", "--epochs", "3", "--out", str(run), *VAE]) == 130
    finally:
        io.on_write = None
    assert writes == [io.CONFIG, io.CHECKPOINT, io.HISTORY] and not (run / io.HISTORY).exists()
    # the same command line with --resume (as pgm quickstart does): its options agree
    assert main(["train", "vae", "--out", str(run), "--resume", "--lr", "1e-3", "--clip-norm",
                 "100", *VAE]) == 0
    assert [r["epoch"] for r in io.read_history(run / io.HISTORY)] == [1, 2, 3]  # not 30
    assert io.read_config(run)["fit"]["epochs"] == 3
    capsys.readouterr()


def test_every_train_option_is_checked_on_resume_or_named_as_free():
    options = set(vars(_parser().parse_args(["train", "vae"])))
    assert options == set(RECORDED) | set(NOT_RECORDED)
