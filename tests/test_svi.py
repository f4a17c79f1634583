"""fit(): it learns, it saves and loads, it resumes to the same result, it fails loudly."""

import json
from pathlib import Path

import pytest
import torch

import pgm
from pgm import io
from pgm.errors import CheckpointError, DataError, TrainingDivergedError

SMALL = dict(latent_dim=2, hidden=(32,))


@pytest.fixture(scope="module")
def digits():
    return pgm.load_dataset("digits")


def _vae(data, seed=0, **kw):
    torch.manual_seed(seed)
    return pgm.VAE(data_dim=data.data_dim, image_shape=data.image_shape, **{**SMALL, **kw})


def test_a_few_epochs_raise_the_validation_elbo(digits):
    model = _vae(digits)
    before = pgm.inference.svi.evaluate_elbo(model, digits.x_valid)
    history = pgm.fit(model, digits, epochs=6, progress=False)
    assert [r["epoch"] for r in history] == list(range(1, 7))
    assert history[-1]["valid_elbo"] > before + 5
    assert history[-1]["valid_elbo"] > history[0]["valid_elbo"]
    for key in ("train_elbo", "valid_elbo", "seconds", "valid_seconds", "checkpoint_seconds"):
        assert key in history[0]


@pytest.mark.parametrize("objective,particles", [("elbo-analytic", 1), ("iwae", 5), ("elbo", 3)])
def test_objectives_train(digits, objective, particles):
    history = pgm.fit(_vae(digits), digits, epochs=3, objective=objective,
                      num_particles=particles, kl_warmup_epochs=2, lr_schedule="cosine",
                      progress=False)
    assert history[0]["beta"] == 0.5 and history[1]["beta"] == 1.0
    assert history[-1]["valid_elbo"] > history[0]["valid_elbo"]


def test_an_iwae_run_keeps_the_weights_of_its_best_validation_iwae(digits, tmp_path):
    history = pgm.fit(_vae(digits), digits, epochs=4, objective="iwae", num_particles=5,
                      patience=None, out=tmp_path / "run", progress=False)
    iwae = [r["valid_iwae_5"] for r in history]
    assert all(b > e for b, e in zip(iwae, (r["valid_elbo"] for r in history)))
    ckpt = io.load_checkpoint(tmp_path / "run" / io.CHECKPOINT)
    assert ckpt["best_elbo"] == max(iwae)  # the score that chose the weights
    header = (tmp_path / "run" / "history.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["epoch", "train_elbo", "valid_elbo", "valid_iwae_5"]
    assert "valid_iwae_5" not in pgm.fit(_vae(digits), digits, epochs=1, progress=False)[0]


def test_dynamic_binarisation_trains(digits):
    data = pgm.load_dataset("digits", binarize="dynamic")
    history = pgm.fit(_vae(data), data, epochs=2, progress=False)
    assert all(torch.isfinite(torch.tensor(r["train_elbo"])) for r in history)


def test_seed_repeats_exactly(digits):
    a = pgm.fit(_vae(digits), digits, epochs=2, progress=False)
    b = pgm.fit(_vae(digits), digits, epochs=2, progress=False)
    assert [r["valid_elbo"] for r in a] == [r["valid_elbo"] for r in b]


def test_run_directory_save_load_identical(digits, tmp_path):
    model = _vae(digits)
    pgm.fit(model, digits, epochs=3, out=tmp_path / "run", progress=False)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "model.safetensors", "checkpoint.pt", "history.csv"} <= files
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == "vae" and config["data"]["name"] == "digits"
    assert config["data"]["binarize"] == "stochastic" and config["fit"]["seed"] == 0
    assert "torch" in config["versions"]
    header = (tmp_path / "run" / "history.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["epoch", "train_elbo", "valid_elbo"] and "seconds" in header
    run = pgm.load_run(tmp_path / "run")
    model.eval()
    x = digits.x_test[:10]
    torch.testing.assert_close(run.model.reconstruct(x), model.reconstruct(x), rtol=0, atol=0)
    assert len(run.history) == 3


def test_resume_equals_uninterrupted(digits, tmp_path):
    full = _vae(digits)
    h_full = pgm.fit(full, digits, epochs=4, patience=None, out=tmp_path / "a", progress=False)
    part = _vae(digits)
    pgm.fit(part, digits, epochs=2, patience=None, out=tmp_path / "b", progress=False)
    resumed = _vae(digits, seed=123)  # weights come from the checkpoint, not from init
    h_res = pgm.fit(resumed, digits, epochs=4, patience=None, out=tmp_path / "b", resume=True,
                    progress=False)
    assert [r["valid_elbo"] for r in h_res] == [r["valid_elbo"] for r in h_full]
    for (k, u), v in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(u, v, rtol=0, atol=0, msg=k)
    assert len(io.read_history(tmp_path / "b" / "history.csv")) == 4


def test_existing_run_is_not_overwritten(digits, tmp_path):
    pgm.fit(_vae(digits), digits, epochs=1, out=tmp_path / "r", progress=False)
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run"):
        pgm.fit(_vae(digits), digits, epochs=1, out=tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before


def test_resume_with_other_settings_is_refused(digits, tmp_path):
    pgm.fit(_vae(digits), digits, epochs=1, out=tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError, match="different settings"):
        pgm.fit(_vae(digits), digits, epochs=2, lr=0.1, out=tmp_path / "r", resume=True,
                progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    model = _vae(digits)
    calls = {"n": 0}

    def poison(module, inputs, output):  # the decoder starts to return NaN in epoch 2
        calls["n"] += 1
        return output * float("nan") if calls["n"] > 14 else output

    model.decoder.register_forward_hook(poison)
    with pytest.raises(TrainingDivergedError, match="epoch 2.*last good checkpoint"):
        pgm.fit(model, digits, epochs=3, out=tmp_path / "r", progress=False)
    ckpt = io.load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert len(pgm.load_run(tmp_path / "r").history) == 1


def test_nan_in_the_first_epoch_claims_no_checkpoint(digits, tmp_path):
    model = _vae(digits)
    model.decoder.register_forward_hook(lambda module, inputs, output: output * float("nan"))
    with pytest.raises(TrainingDivergedError, match="epoch 1, step 1") as err:
        pgm.fit(model, digits, epochs=2, out=tmp_path / "r", progress=False)
    assert "checkpoint" not in str(err.value)


@pytest.mark.parametrize("make_bad,match", [
    (lambda x: torch.where(torch.rand_like(x) < 0.01, float("nan"), x), "NaN or infinite"),
    (lambda x: x[:, :10], r"shape \(N, 64\)"),
    (lambda x: x * 3, r"Bernoulli likelihood needs values in \[0, 1\]"),
])
def test_bad_training_data_is_named(digits, make_bad, match):
    from dataclasses import replace

    bad = replace(digits, x_train=make_bad(digits.x_train))
    with pytest.raises(DataError, match=match):
        pgm.fit(_vae(digits), bad, epochs=1, progress=False)


def test_corrupt_truncated_and_foreign_files(digits, tmp_path):
    run = tmp_path / "r"
    pgm.fit(_vae(digits), digits, epochs=1, out=run, progress=False)
    weights = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        pgm.load_run(run)
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable pgm checkpoint"):
        io.load_checkpoint(run / "checkpoint.pt")
    (run / "config.json").write_text('{"hello": 1}')
    with pytest.raises(CheckpointError, match="not a pgm run config"):
        pgm.load_run(run)
    with pytest.raises(CheckpointError, match="not a pgm run directory"):
        pgm.load_run(tmp_path / "nowhere")


def test_weights_of_another_model_are_refused(digits, tmp_path):
    pgm.fit(_vae(digits), digits, epochs=1, out=tmp_path / "r", progress=False)
    other = pgm.VAE(data_dim=64, latent_dim=5, hidden=(32,))
    with pytest.raises(CheckpointError, match="does not match"):
        io.load_weights(other, tmp_path / "r" / "model.safetensors")


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    io.atomic_write_text(tmp_path / "a.txt", "one")
    io.atomic_write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"
    assert [p.name for p in Path(tmp_path).iterdir()] == ["a.txt"]


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    written = io.atomic_write_text(tmp_path / "a.txt", "x")
    assert written.stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_run_loads_on_cpu(digits, tmp_path):
    model = _vae(digits)
    pgm.fit(model, digits, epochs=2, device="cuda", out=tmp_path / "r", progress=False)
    assert next(model.parameters()).is_cuda
    run = pgm.load_run(tmp_path / "r", device="cpu")
    assert not next(run.model.parameters()).is_cuda
    torch.testing.assert_close(run.model.reconstruct(digits.x_test[:5]),
                               model.cpu().eval().reconstruct(digits.x_test[:5]))


@pytest.mark.parametrize("setting, match", [
    ({"clip_norm": 0}, "clip_norm must be a finite number > 0 or None"),  # zeroed gradients
    ({"clip_norm": -5.0}, "clip_norm must be"),  # flipped gradients: ascent
    ({"kl_warmup_epochs": -2}, "kl_warmup_epochs must be an integer >= 0"),
    ({"patience": 0}, "patience must be an integer >= 1 or None"),  # no epoch trained
    ({"lr_decay": -1.0}, "lr_decay must be"),
    ({"min_epochs": -3}, "min_epochs must be"),
    ({"epochs": 2.5}, "epochs must be an integer"),
    ({"seed": 2**40}, "seed must be below 2"),
])
def test_fit_settings_outside_their_domain_are_refused(digits, setting, match):
    with pytest.raises(ValueError, match=match):
        pgm.fit(_vae(digits), digits, progress=False, **setting)


def test_a_second_fit_trains_on_from_the_fitted_weights(digits):
    """Not from a new initialization (PPCA's re-initialized noise scale was kept before)."""
    from pgm.models.linear_gaussian import LinearGaussian

    ppca = LinearGaussian(data_dim=digits.data_dim, latent_dim=4)
    pgm.fit(ppca, digits, objective="em", epochs=5, progress=False)
    fitted = {k: v.clone() for k, v in ppca.state_dict().items()}
    pgm.fit(ppca, digits, epochs=1, lr=1e-12, progress=False)
    for k, v in ppca.state_dict().items():
        torch.testing.assert_close(v, fitted[k], atol=1e-6, rtol=0, msg=k)


def test_data_of_another_dtype_than_the_weights_is_one_line(digits):
    from pgm.inference.adapter import latent_callables
    from pgm.inference.bounds import iwae_bound

    f = latent_callables(_vae(digits))
    with pytest.raises(DataError, match="dtype torch.float64, the model's weights"):
        iwae_bound(f, digits.x_test[:4].double(), Ks=(2,))
