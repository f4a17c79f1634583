"""The `pgm` command end to end on the small digits set."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pgm.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "vae"
    code = main(["train", "vae", "--data", "digits", "--epochs", "2", "--hidden", "32",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_train_writes_the_run_directory_and_figures(run_dir):
    assert (run_dir / "model.safetensors").is_file()
    assert json.loads((run_dir / "config.json").read_text())["model_config"]["hidden"] == [32]
    figures = {p.name for p in (run_dir / "figures").iterdir()}
    assert {"reconstructions.png", "samples.png", "elbo.png", "latent.png", "manifold.png",
            "interpolation.png"} <= figures
    assert (run_dir / "ae-baseline" / "model.safetensors").is_file()
    for png in (run_dir / "figures").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_with_saved_settings(run_dir):
    assert main(["train", "vae", "--epochs", "3", "--out", str(run_dir), "--resume",
                 "--no-progress"]) == 0
    assert len((run_dir / "history.csv").read_text().splitlines()) == 1 + 3


def test_sample(run_dir, tmp_path):
    out = tmp_path / "s.png"
    assert main(["sample", str(run_dir), "-n", "12", "--out", str(out)]) == 0
    assert out.is_file() and np.load(out.with_suffix(".npy")).shape == (12, 64)


def test_datasets_lists_the_builtins(capsys):
    assert main(["datasets"]) == 0
    text = capsys.readouterr().out
    assert "mnist5k" in text and "digits" in text


@pytest.mark.parametrize("argv,message", [
    (["train", "vae", "--data", "nosuchset"], "unknown dataset 'nosuchset'"),
    (["train", "gan9"], "unknown model 'gan9'; trainable: vae, vae2, ae"),
    (["sample", "/nonexistent/run"], "not a pgm run directory"),
    (["train", "gmm", "--data", "digits", "--likelihood-scale", "0.05"],
     "--likelihood-scale applies to Gaussian components"),
    (["train", "vae", "--data", "digits", "--objective", "em", "--epochs", "1"],
     "objective 'em' needs a model with closed-form EM steps"),
])
def test_errors_are_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_train_gmm_by_em_with_its_scale_floor(tmp_path):
    out = tmp_path / "gmm"
    assert main(["train", "gmm", "--data", "digits", "--binarize", "none", "--likelihood",
                 "gaussian", "--likelihood-scale", "0.05", "--objective", "em", "--components",
                 "5", "--epochs", "3", "--out", str(out), "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_config"]["min_scale"] == 0.05 and config["fit"]["objective"] == "em"
    assert config["fit"]["min_epochs"] is None  # the mixture's own default (30) applies
    assert len((out / "history.csv").read_text().splitlines()) == 1 + 3


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "pgm.cli", "train", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for option in ("--latent-dim", "--objective", "--resume", "--device", "--binarize"):
        assert option in out
