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


def test_sample_never_writes_over_the_runs_own_files(run_dir, tmp_path, capsys):
    weights = (run_dir / "model.safetensors").read_bytes()
    assert main(["sample", str(run_dir), "-n", "4", "--out",
                 str(run_dir / "model.safetensors")]) == 2
    assert "lies in the run's own files" in capsys.readouterr().err
    assert (run_dir / "model.safetensors").read_bytes() == weights
    # --out x.npy: the figure beside it as x.png, not written over by the array
    assert main(["sample", str(run_dir), "-n", "4", "--out", str(tmp_path / "x.npy")]) == 0
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
    assert np.load(tmp_path / "x.npy").shape == (4, 64)


def test_tabular_data_of_any_width_from_a_file_used_anywhere(tmp_path, monkeypatch, capsys):
    """(N, 5) points from a user's .npy, named by a relative path: the VAE trains (no point
    figures for 5 coordinates), samples as an array, and its run finds the file again from
    another directory; PPCA takes one column."""
    rng = np.random.default_rng(0)
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "feat5.npy", rng.normal(size=(60, 5)).astype(np.float32))
    np.save(tmp_path / "d" / "one.npy", rng.normal(size=(60, 1)).astype(np.float32))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "vae", "--data", "d/feat5.npy", "--epochs", "1", "--out", "runs/v",
                 "--no-progress"]) == 0
    config = json.loads((tmp_path / "runs" / "v" / "config.json").read_text())
    assert config["data"]["name"] == str(tmp_path / "d" / "feat5.npy")
    assert main(["sample", "runs/v", "-n", "3", "--out", "s.png"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (3, 5) and not (tmp_path / "s.png").exists()
    monkeypatch.chdir(tmp_path / "runs")
    assert main(["evaluate", "v", "--n", "4", "--k", "1,10", "--ais-steps", "0",
                 "--posterior-check", "0", "--no-progress"]) == 0
    assert main(["train", "ppca", "--data", str(tmp_path / "d" / "one.npy"), "--epochs", "1",
                 "--out", "p", "--no-progress"]) == 0
    # the file replaced by other data: the run is not measured on them
    np.save(tmp_path / "d" / "feat5.npy", rng.normal(size=(90, 5)).astype(np.float32))
    assert main(["evaluate", "v", "--n", "4", "--k", "1", "--ais-steps", "0", "--overwrite",
                 "--posterior-check", "0", "--no-progress"]) == 2
    assert "is not the data the run was trained on" in capsys.readouterr().err


def test_a_resume_with_nothing_to_train_says_so(tmp_path, capsys):
    out = str(tmp_path / "v")
    argv = ["train", "vae", "--data", "digits", "--epochs", "1", "--hidden", "8",
            "--no-ae-baseline", "--no-progress", "--out", out]
    assert main(argv) == 0 and main([*argv, "--resume"]) == 0
    assert "nothing to train: the run has 1 epoch; --epochs 11 would train on" in \
        capsys.readouterr().out


def test_a_resume_with_more_epochs_is_recorded_and_a_plain_resume_goes_on_to_them(tmp_path,
                                                                                 capsys):
    """--epochs on resume lands in config.json: a run of 1 epoch resumed with --epochs 3 and
    interrupted before epoch 3 is committed goes on to 3 when resumed without --epochs (not
    back to its first 1 with "nothing to train"); the VAE and a GAN alike."""
    from pgm import io as run_io

    for model, extra in (("vae", ["--hidden", "8", "--no-ae-baseline"]),
                         ("gan", [])):
        out = tmp_path / model
        argv = ["train", model, "--data", "digits", "--no-progress", "--out", str(out), *extra]
        assert main([*argv, "--epochs", "1"]) == 0
        checkpoints = []

        def interrupt(path, checkpoints=checkpoints):  # Ctrl-C as epoch 3's checkpoint begins
            if path.name == run_io.CHECKPOINT:
                checkpoints.append(path)
                if len(checkpoints) == 2:
                    raise KeyboardInterrupt

        run_io.on_write = interrupt
        try:
            assert main([*argv, "--epochs", "3", "--resume"]) == 130
        finally:
            run_io.on_write = None
        assert run_io.read_config(out)["fit"]["epochs"] == 3
        assert main([*argv, "--resume"]) == 0
        assert [r["epoch"] for r in run_io.read_history(out / run_io.HISTORY)] == [1, 2, 3]
    capsys.readouterr()


def test_an_interrupted_train_says_what_it_left(tmp_path, capsys):
    """Ctrl-C before config.json: nothing was saved; before the first checkpoint: --resume
    starts the run again (and does); after one: the checkpoint is kept."""
    from pgm import io as run_io

    out = tmp_path / "v"
    argv = ["train", "vae", "--data", "digits", "--hidden", "8", "--no-ae-baseline",
            "--no-progress", "--epochs", "2", "--out", str(out)]
    for name, n, said in ((run_io.CONFIG, 1, "nothing was saved"),
                          (run_io.CHECKPOINT, 1, "no epoch had finished, so there is no "
                           "checkpoint (--resume starts the run again)"),
                          (run_io.CHECKPOINT, 2, "the last checkpoint is kept (continue with "
                           "--resume)")):
        seen = []

        def interrupt(path, name=name, n=n, seen=seen):
            if path.name == name:
                seen.append(path)
                if len(seen) == n:
                    raise KeyboardInterrupt

        run_io.on_write = interrupt
        try:
            assert main([*argv, *(["--resume"] if (out / run_io.CONFIG).is_file() else [])]) \
                == 130
        finally:
            run_io.on_write = None
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"interrupted; {said}"
    assert main([*argv, "--resume"]) == 0
    assert [r["epoch"] for r in run_io.read_history(out / run_io.HISTORY)] == [1, 2]
    capsys.readouterr()


def test_evaluate_says_which_asked_estimators_do_not_apply(tmp_path, capsys):
    out = str(tmp_path / "g")
    assert main(["train", "gmm", "--data", "digits", "--components", "3", "--epochs", "1",
                 "--no-progress", "--out", out]) == 0
    assert main(["evaluate", out, "--n", "5", "--k", "1", "--bdmc", "--gaps",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "note: --bdmc does not apply to this gmm run" in err
    assert "note: --gaps does not apply to this gmm run" in err


def test_evaluate_labels_a_cvaes_rows_of_log_p_x_given_y(tmp_path, capsys):
    out = str(tmp_path / "c")
    assert main(["train", "cvae", "--data", "digits", "--epochs", "1", "--hidden", "16",
                 "--no-progress", "--out", out]) == 0
    assert main(["evaluate", out, "--n", "4", "--k", "1", "--ais-steps", "0", "--gaps",
                 "--gaps-n", "2", "--posterior-check", "0", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    gap = next(line for line in lines if line.startswith("gap_inference"))
    assert gap.endswith("(of log p(x | y))")
    assert not next(line for line in lines if line.startswith("iwae_1 ")).endswith(")")


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
    (["train", "gan", "--data", "digits", "--latent-dim", "3", "--batch-size", "8"],
     "--batch-size, --latent-dim would be ignored"),
    (["train", "vae", "--data", "digits", "--seed", "99999999999999999999"],
     "--seed must be an integer in [0, 2^32)"),
    (["train", "vae", "--data", "digits", "--device", "foo"], "unknown device 'foo'"),
    (["train", "vae", "--data", "digits", "--likelihood-scale", "0.5"],
     "--likelihood-scale applies to a Gaussian likelihood; this one is Bernoulli"),
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


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM ends a process on Windows")
def test_sigterm_ends_training_as_ctrl_c_does(tmp_path):
    """`kill` (a scheduler's preemption) mid-run: one line, exit 143, the lock released, and
    --resume goes on from the last checkpoint."""
    import signal
    import time

    from pgm import io
    from pgm.runlock import LOCK

    out = tmp_path / "v"
    argv = [sys.executable, "-m", "pgm.cli", "train", "vae", "--data", "digits", "--hidden",
            "8", "--no-ae-baseline", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen([*argv, "--epochs", "100000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / io.HISTORY).is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == \
        "terminated; the last checkpoint is kept (continue with --resume)"
    assert not (out / LOCK).exists()
    done = len(io.read_history(out / io.HISTORY))
    assert done >= 1
    assert subprocess.run([*argv, "--resume", "--epochs", str(done + 1)],
                          capture_output=True).returncode == 0
    assert len(io.read_history(out / io.HISTORY)) == done + 1
