"""`pgm report`'s comparison: each row says what its numbers are densities of, and rows whose
likelihoods cannot share a column are flagged, never silently tabulated together."""

import pytest

import pgm
from pgm.models import GAN, GMM, VAE
from pgm.report import best_log_px, comparison
from pgm.representation import fingerprint, incommensurable, representation


@pytest.fixture(scope="module")
def grey():
    return pgm.load_dataset("digits", binarize="none")


@pytest.fixture(scope="module")
def binary():
    return pgm.load_dataset("digits", binarize="stochastic")


def _results(run, data, model, sigma=None, **estimators):
    est = {k: {"mean": v[0], "se": 0.5, "n": v[1], "seconds": 1.0}
           for k, v in estimators.items()}
    return {"run": run, "dataset": data.name, "estimators": est,
            **representation(data, model, split="test", explicit_sigma=sigma)}


def test_representation_names_the_units(grey, binary):
    vae = VAE(data_dim=64, likelihood="bernoulli")
    rb = representation(binary, vae, split="test")["representation"]
    assert rb["density"].startswith("log-probability") and rb["binarize"] == "stochastic"
    rg = representation(grey, vae, split="test")["representation"]
    assert rg["density"].startswith("not normalised")  # Bernoulli on grey values
    gan = representation(grey, GAN(data_dim=64, latent_dim=2), split="test", explicit_sigma=0.1)
    assert gan["representation"]["density"].startswith("log-density")
    assert "s=0.1" in gan["representation"]["observation"]
    gmm = GMM(data_dim=64, likelihood="gaussian")
    assert "per component" in representation(grey, gmm, split="test")["representation"][
        "observation"]
    assert fingerprint(grey.x_test) == fingerprint(grey.x_test.clone())
    assert fingerprint(grey.x_test) != fingerprint(binary.x_test)


def test_commensurable_rows_are_not_flagged(grey):
    rows = [_results("vae", grey, VAE(data_dim=64), 0.1, ais=(-50.0, 100)),
            _results("gmm", grey, GMM(data_dim=64), 0.2, exact=(-60.0, 100)),
            _results("gan", grey, GAN(data_dim=64, latent_dim=2), 0.1, ais=(-70.0, 100))]
    assert incommensurable(rows) == {}
    md, page = comparison(rows)
    assert "NOT COMMENSURABLE" not in md and "⚠" not in md
    assert "different observation models" not in md  # each its own sigma: the same protocol
    assert "grey values, log-density" in md and "| exact: -60.00 ± 0.50 (100)" in md
    assert "<table>" in page


def test_binarised_rows_other_images_and_old_results_are_flagged(grey, binary):
    rows = [_results("gan", grey, GAN(data_dim=64, latent_dim=2), 0.1, ais=(-70.0, 100)),
            _results("vae-bin", binary, VAE(data_dim=64), ais=(-30.0, 100)),
            {"run": "old", "dataset": "digits", "estimators": {"elbo": {
                "mean": -1.0, "se": 0.1, "n": 10, "seconds": 1.0}}}]
    other = pgm.load_dataset("digits", binarize="none", seed=3)  # another split
    rows.append(_results("vae-seed3", other, VAE(data_dim=64), 0.1, ais=(-50.0, 100)))
    bad = incommensurable(rows)
    assert set(bad) == {1, 2, 3}
    assert "log-probability" in bad[1][0] and "other test images" in " ".join(bad[1])
    assert "cannot verify" in bad[2][0]
    assert "other test images" in bad[3][0]
    md, page = comparison(rows)
    assert "NOT COMMENSURABLE" in md and md.count("⚠ ais: ") == 2 and "NOT COMMENSURABLE" in page


def test_best_estimate_and_unequal_test_sets_are_noted(grey):
    # AIS 3 nats above IWAE_100, beyond two SEs of the difference (0.5 each): AIS is best
    a = _results("a", grey, VAE(data_dim=64), 0.1, iwae_10=(-52.0, 500), iwae_100=(-51.0, 500),
                 ais=(-48.0, 100))
    b = _results("b", grey, GMM(data_dim=64), 0.2, exact=(-60.0, 500))
    assert best_log_px(a)[0] == "ais" and best_log_px(b)[0] == "exact"
    # the rule weighs standard errors: a higher AIS mean on 100 images that is within two SEs
    # of IWAE_100 on 500 does not win over the more precise bound; a clearly higher one does
    def est(mean, se, n):
        return {"mean": mean, "se": se, "n": n, "bound": "lower", "data": "test"}

    close = {"version": 2, "estimators": {"iwae_100": est(-51.0, 0.1, 500),
                                          "ais": est(-50.9, 0.3, 100)}}
    far = {"version": 2, "estimators": {"iwae_100": est(-51.0, 0.1, 500),
                                        "ais": est(-49.0, 0.3, 100)}}
    assert best_log_px(close)[0] == "iwae_100" and best_log_px(far)[0] == "ais"
    md, _ = comparison([a, b])
    assert "column log p(x): rows average over different numbers of test images" in md
    c = _results("c", grey, VAE(data_dim=64, likelihood="gaussian-learned"), None,
                 ais=(-10.0, 500))
    assert "different observation models" in comparison([b, c])[0]


def test_cli_explicit_view_and_report_flag(tmp_path, capsys, binary):
    import json

    from pgm.cli import main

    grey = str(tmp_path / "grey")
    assert main(["train", "vae", "--data", "digits", "--epochs", "1", "--hidden", "16",
                 "--latent-dim", "3", "--binarize", "none", "--likelihood", "gaussian",
                 "--no-progress", "--no-ae-baseline", "--out", grey]) == 0  # latent 3: no NUTS
    assert main(["evaluate", grey, "--explicit-view", "--n", "20", "--k", "1,30", "--ais-n", "4",
                 "--ais-steps", "5", "--ais-chains", "2", "--no-exact", "--no-progress"]) == 0
    results = json.loads((tmp_path / "grey/eval/results.json").read_text())
    assert results["representation"]["observation"].startswith("explicit view")
    assert results["explicit_sigma"] == results["explicit_sigma_choice"]["sigma"]
    other = tmp_path / "bin/eval/results.json"  # a binarised run's results, written by hand
    other.parent.mkdir(parents=True)
    other.write_text(json.dumps(_results(str(tmp_path / "bin"), binary, VAE(data_dim=64),
                                         elbo=(-30.0, 20))))
    capsys.readouterr()
    assert main(["report", grey, str(tmp_path / "bin"), "--out", str(tmp_path / "cmp")]) == 0
    out, err = capsys.readouterr()
    assert "NOT COMMENSURABLE" in out and f"warning: {tmp_path / 'bin'}" in err


def test_a_conditional_row_is_flagged_beside_unconditional_ones(grey):
    from pgm.models import CVAE

    cvae = CVAE(data_dim=64, n_classes=10)
    rows = [_results("vae", grey, VAE(data_dim=64), 0.1, ais=(-50.0, 100)),
            _results("cvae", grey, cvae, 0.1, ais=(-45.0, 100))]
    assert rows[1]["representation"]["quantity"].startswith("log p(x | y)")
    assert "log p(x | y)" in " ".join(incommensurable(rows)[1])
    assert incommensurable(rows[1:]) == {}  # two conditional rows compare
