"""`pgm report`'s comparison: each row says what its numbers are densities of, and rows whose
likelihoods cannot share a column are flagged, never silently tabulated together."""

from pathlib import Path

import pytest

import pgm
from pgm.models import CVAE, GAN, GMM, VAE
from pgm.report import (
    best_log_px,
    comparison,
    comparison_figure,
    paired_differences,
    short_names,
)
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
    assert "Not commensurable" not in md and "⚠" not in md
    assert "different observation models" not in md  # each its own sigma: the same protocol
    assert "grey values, log-density" in md and "| exact: -60.00 ± 0.50 (100)" in md
    assert "<table>" in page
    assert "Nats per test image" in md
    valid = [{**r, "split": "valid"} for r in rows]
    assert "Nats per validation image" in comparison(valid)[0]


def test_sample_quality_columns_give_the_class_ratio_and_the_surely_labelled_share(grey):
    """Each run's class ratio and the share of its samples labelled with p >= 0.9, the test
    set's value in the header when all runs share it; a run from before the share: "–"."""
    def quality(ratio, confident):
        hist = {"counts": [1, 2], "ratio": ratio, "missing": []}
        sure = {} if confident is None else {"confident": confident}
        return {"nearest_neighbour": {"ratio": 1.1},
                "frechet": {"samples_vs_train": 5.0, "test_vs_train": 1.9},
                "classes": {"samples": {**hist, **sure},
                            "test": {**hist, "ratio": 0.79,
                                     **({} if confident is None else {"confident": 0.78})}}}

    rows = [_results("vae", grey, VAE(data_dim=64), 0.1, ais=(-50.0, 100)),
            _results("gan", grey, GAN(data_dim=64, latent_dim=2), 0.1, ais=(-70.0, 100)),
            _results("old", grey, GAN(data_dim=64, latent_dim=2), 0.1, ais=(-71.0, 100))]
    for row, q in zip(rows, (quality(0.07, 0.36), quality(0.47, 0.42), quality(0.5, None))):
        row["sample_quality"] = q
    md, _ = comparison(rows)
    assert "classes: rarest/most common (test: 0.79)" in md
    assert "labelled with p ≥ 0.9 (test: 78%)" in md
    main = md.split("## Every estimator")[0]  # the first table: one row per run
    lines = {line.split("|")[1].strip(): line for line in main.splitlines()
             if line.startswith("|")}
    assert lines["gan"].rstrip().endswith("| 0.47 | 42% |")
    assert lines["vae"].rstrip().endswith("| 0.07 | 36% |")
    assert lines["old"].rstrip().endswith("| 0.50 | – |")


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
    assert md.count("⚠ ais: ") == 2
    # the reasons come after the table, as a note, in both
    for text in (md, page):
        assert text.index("<table>" if text is page else "| run") < text.index(
            "⚠ Not commensurable with the first row (gan)") < text.index("Every estimator")
        assert "vae-bin: binary (stochastic), log-probability" not in text  # reasons, in words
        assert "log-probability (discrete) vs log-density (continuous)" in text
    assert 'class="bad"' not in page  # a calm note, not a red banner


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
    assert "Not commensurable" in out and f"warning: {tmp_path / 'bin'}" in err
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"  # the figure, embedded
    page = (tmp_path / "cmp.html").read_text()
    assert page.count("data:image/png;base64,") == 1
    assert f'<td title="{grey}">grey</td>' in page  # short name, full path on hover
    # a folder (existing, or named with a trailing slash) gets comparison.* inside it
    (tmp_path / "reports").mkdir()
    for folder in (str(tmp_path / "reports"), str(tmp_path / "new") + "/"):
        assert main(["report", grey, "--out", folder]) == 0
        assert {p.name for p in Path(folder).iterdir()} == {
            "comparison.md", "comparison.html", "comparison.png"}
    # a folder where one of the files should go: one line naming it, nothing written
    (tmp_path / "x.md").mkdir()
    capsys.readouterr()
    assert main(["report", grey, "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == \
        f"pgm report: error: {tmp_path / 'x.md'} is a folder; pass another --out"
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.html").exists()


def test_a_conditional_row_is_flagged_beside_unconditional_ones(grey):
    from pgm.models import CVAE

    cvae = CVAE(data_dim=64, n_classes=10)
    rows = [_results("vae", grey, VAE(data_dim=64), 0.1, ais=(-50.0, 100)),
            _results("cvae", grey, cvae, 0.1, ais=(-45.0, 100))]
    assert rows[1]["representation"]["quantity"].startswith("log p(x | y)")
    assert "log p(x | y)" in " ".join(incommensurable(rows)[1])
    assert incommensurable(rows[1:]) == {}  # two conditional rows compare


def test_a_cvae_with_its_label_summed_out_is_ranked_beside_the_others(grey, tmp_path):
    """Evaluated as log p(x) (its label summed out), the CVAE's row is commensurable: a
    paired difference, no flag, and a note that gives its log p(x | y)."""
    import numpy as np

    cvae = CVAE(data_dim=64, n_classes=10)
    vae = _results("vae", grey, VAE(data_dim=64), 0.1, ais=(-50.0, 20))
    row = {**_results("cvae", grey, cvae, 0.1, ais=(-47.0, 20), ais_given_y=(-45.0, 20)),
           **{k: v for k, v in representation(grey, cvae, split="test", explicit_sigma=0.1,
                                              label_sum=True).items()},
           "best": "ais", "best_given_y": "ais_given_y",
           "label_prior": {"source": "model", "probs": [0.1] * 10}}
    row["estimators"]["ais"]["quantity"] = "log p(x)"
    row["estimators"]["ais_given_y"]["quantity"] = "log p(x | y)"
    assert row["representation"]["quantity"] == "log p(x)"
    assert incommensurable([vae, row]) == {}
    dirs = []
    for name, values in (("vae", {"ais": np.full(20, -50.0)}),
                         ("cvae", {"ais": np.full(20, -47.0), "ais_given_y": np.full(20, -45.0)})):
        (tmp_path / name / "eval").mkdir(parents=True)
        np.savez(tmp_path / name / "eval" / "per_datapoint.npz", index=np.arange(20), **values)
        dirs.append(tmp_path / name)
    paired = paired_differences([vae, row], dirs)
    assert paired[1]["mean"] == pytest.approx(3.0) and paired[1]["estimators"] == "ais − ais"
    md, _ = comparison([vae, row], paired=paired)
    assert "⚠" not in md and "+3.00" in md
    assert "cvae: log p(x) with the label summed out" in md and "-45.00 ± 0.50 (20)" in md
    assert "ais_given_y" in md  # its log p(x | y) column


def test_short_names_keep_the_last_components_that_differ():
    assert short_names(["runs/q/vae", "runs/q/vae/ae-baseline", "runs/q/gmm"]) == [
        "vae", "ae-baseline", "gmm"]
    assert short_names(["a/x/run", "b/x/run"]) == ["a/x/run", "b/x/run"]
    assert short_names(["a/one/vae", "b/two/vae"]) == ["one/vae", "two/vae"]


def test_paired_differences_figure_and_page_from_run_directories(tmp_path, grey):
    """Three runs on the same images: paired differences image by image, the figure, and a
    page whose main table is narrow (no estimator columns) with each run's path on hover."""
    import numpy as np

    from pgm import plots

    rng = np.random.default_rng(0)
    base = rng.normal(-50, 10, size=20)  # images differ by tens of nats
    values = {"vae": base, "gmm": base - 3 + rng.normal(0, 0.5, 20), "cvae": base + 5}
    models = {"vae": VAE(data_dim=64), "gmm": GMM(data_dim=64), "cvae": CVAE(data_dim=64,
                                                                             n_classes=10)}
    results, dirs = [], []
    for name, v in values.items():
        run = tmp_path / "runs" / name
        (run / "eval").mkdir(parents=True)
        np.savez(run / "eval" / "per_datapoint.npz", index=np.arange(20), ais=v)
        r = _results(str(run), grey, models[name], 0.1, ais=(float(v.mean()), 20))
        r["estimators"]["ais"]["se"] = float(v.std(ddof=1) / np.sqrt(20))
        results.append(r)
        dirs.append(run)
    paired = paired_differences(results, dirs)
    d = values["gmm"] - values["vae"]
    assert paired[0] is None and "why" in paired[2]  # the reference; log p(x | y)
    assert paired[1]["n"] == 20 and paired[1]["mean"] == pytest.approx(d.mean())
    assert paired[1]["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(20))
    assert paired[1]["se"] < 0.2 * results[1]["estimators"]["ais"]["se"]  # paired is sharper
    figure = plots.save_figure(comparison_figure(results, paired), tmp_path / "log_px.png")
    md, page = comparison(results, paired=paired, figure=figure)
    header = next(line for line in md.splitlines() if line.startswith("| run"))
    assert header == ("| run | observation | log p(x), best (n) | paired − vae |")
    assert f"| gmm | explicit view, s=0.1 | ais: {results[1]['estimators']['ais']['mean']:.2f}" \
        in md and f"{d.mean():+.2f} ± {d.std(ddof=1) / np.sqrt(20):.2f} (20) |" in md
    assert "| cvae | explicit view, s=0.1 | ⚠ ais:" in md and "⚠ not comparable" in md
    assert "Every row: dataset digits, grey values, log-density." in md
    assert f'<td title="{dirs[1]}">gmm</td>' in page and f"gmm: {dirs[1]}" in md
    assert "data:image/png;base64," in page and "![best log p(x)" in md
