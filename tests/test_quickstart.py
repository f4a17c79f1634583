"""`pgm quickstart` end to end at its small size on the digits set."""

import json

import pytest

from pgm.cli import main
from pgm.quickstart import finished, models, plan


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    assert main(["quickstart", "--size", "small", "--data", "digits", "--out", str(out),
                 "--no-progress"]) == 0
    return out


def test_every_model_is_trained_evaluated_and_in_one_report(quickstart):
    payload = json.loads((quickstart / "comparison.json").read_text())
    labels = [r["label"] for r in payload["runs"]]
    assert labels == ["VAE", "autoencoder", "Gaussian mixture", "conditional VAE", "GAN"]
    by_label = {r["label"]: r["estimators"] for r in payload["runs"]}
    # the same estimators on the same test images through the same observation model
    assert {r["test_images"]["sha256"] for r in payload["runs"]} == {
        payload["runs"][0]["test_images"]["sha256"]}
    assert all(r["representation"]["observation"].startswith("explicit view")
               for r in payload["runs"])
    assert {"elbo", "iwae_10", "ais"} <= set(by_label["VAE"])
    assert "ais" in by_label["autoencoder"]
    assert not any(k.startswith(("elbo", "iwae")) for k in by_label["autoencoder"])
    assert by_label["Gaussian mixture"]["exact"]["method"] == "enumeration"
    assert {"elbo", "ais", "parzen"} <= set(by_label["GAN"])
    assert "quadrature" in by_label["conditional VAE"]  # quadrature of a 2-D code's view
    assert len({r["n"] for r in payload["runs"]}) == 1
    assert all("sample_quality" in r for r in payload["runs"])
    assert (quickstart / "samples.png").read_bytes()[:4] == b"\x89PNG"
    html = (quickstart / "report.html").read_text()
    assert html.count("<img") >= 7 and "pgm train vae" in html
    assert (quickstart / "log_px.png").read_bytes()[:4] == b"\x89PNG"
    md = (quickstart / "report.md").read_text()
    assert "| ais (n=10) | exact (n=10) |" in md
    # the CVAE is measured as log p(x), its label summed out: ranked, not flagged; its
    # log p(x | y) in the note and its own columns
    cvae = next(r for r in payload["runs"] if r["label"] == "conditional VAE")
    assert cvae["representation"]["quantity"] == "log p(x)"
    assert {"quadrature", "quadrature_given_y"} <= set(cvae["estimators"])
    row = next(line for line in md.splitlines() if line.startswith("| conditional VAE"))
    assert "⚠" not in row and "not comparable" not in md
    assert "conditional VAE: log p(x) with the label summed out" in md
    assert "| autoencoder | explicit view" in md and "| paired − VAE |" in md
    assert all(f"## {label}" in md for label in labels)


def test_a_second_run_skips_finished_steps(quickstart, capsys):
    assert main(["quickstart", "--size", "small", "--data", "digits", "--out", str(quickstart),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == len(plan(quickstart, size="small"))


def test_an_interrupted_training_step_resumes_once_it_has_begun(tmp_path):
    steps = plan(tmp_path, size="small", data="digits")
    train_vae = steps[0]
    assert train_vae.argv_now()[-1] != "--resume"
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / ".lock").write_bytes(b"")  # a kill's leftovers are no run
    assert train_vae.argv_now()[-1] != "--resume"
    (tmp_path / "vae" / "config.json").write_bytes(b"")  # killed before its first checkpoint
    assert train_vae.argv_now()[-1] == "--resume"
    assert steps[-1].argv_now() == [*steps[-1].argv, "--overwrite"]  # replaces a half-run one
    assert finished(tmp_path) == set()


def test_the_plan_uses_one_evaluation_for_every_model(tmp_path):
    """Every model gets the same estimators; only AIS's length and trajectories follow where
    it starts (q(z|x) for the VAEs, the prior for the autoencoder's point mass and the GAN)."""
    steps = plan(tmp_path)
    evaluations = [s.argv[2:] for s in steps if s.argv[0] == "evaluate"]
    assert len(evaluations) == len(models(tmp_path))

    def without_ais_length(argv):
        argv = list(argv)
        for flag in ("--ais-steps", "--ais-leapfrog"):
            i = argv.index(flag)
            del argv[i:i + 2]
        return tuple(argv)

    assert len({without_ais_length(e) for e in evaluations}) == 1
    lengths = {m.long_ais: (e[e.index("--ais-steps") + 1], e[e.index("--ais-leapfrog") + 1])
               for m, e in zip(models(tmp_path), evaluations)}
    assert lengths == {False: ("200", "3"), True: ("300", "10")}
    assert [m.label for m in models(tmp_path) if m.long_ais] == ["GAN"]
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        plan(tmp_path, size="huge")
