"""evaluate(): every estimator through the Pyro contract, checked against known answers."""

import json

import pytest
import torch

import pgm
from pgm.data import Dataset
from pgm.errors import DataError
from pgm.evaluation import EvalConfig, evaluate, with_preset
from pgm.models import LinearGaussian
from pgm.report import write_evaluation


def _dataset(x: torch.Tensor) -> Dataset:
    n = len(x)
    a, b = int(0.8 * n), int(0.9 * n)
    return Dataset(name="simulated", x_train=x[:a], x_valid=x[a:b], x_test=x[b:], y_train=None,
                   y_valid=None, y_test=None, image_shape=None, n_classes=None,
                   binarize="none", seed=0)


@pytest.fixture(scope="module")
def linear_gaussian():
    """A linear-Gaussian model fitted by SVI to data simulated from a random one."""
    torch.manual_seed(0)
    truth = LinearGaussian(data_dim=6, latent_dim=2, sigma=0.5)
    with torch.no_grad():
        truth.decoder.weight.mul_(2.0)
    x = truth.sample(3000, mean=False)
    data = _dataset(x)
    model = LinearGaussian(data_dim=6, latent_dim=2, sigma=0.5)
    pgm.fit(model, data, epochs=15, lr=1e-2, patience=None, progress=False)
    return model, data


def _check_le(lo, hi, slack=0.0):
    """lo <= hi per datapoint on average, within 3.5 SE of the paired difference."""
    m = min(lo.n, hi.n)
    d = lo.per_datapoint[:m] - hi.per_datapoint[:m]
    assert d.mean() <= 3.5 * d.std() / m**0.5 + slack, (d.mean(), d.std() / m**0.5)


def test_bounds_sit_in_order_around_the_exact_value(linear_gaussian, tmp_path):
    model, data = linear_gaussian
    cfg = EvalConfig(ks=(1, 10, 100, 1000, 5000), n=100, ais_steps=300, ais_n=30,
                     ais_chains=8, bdmc=True, posterior_check=1, device="cpu")
    ev = evaluate(model, data, cfg)
    est = ev.estimators
    assert {"elbo", "iwae_1", "iwae_10", "iwae_5000", "exact", "ais", "bdmc_upper"} <= set(est)
    assert est["exact"].extra["method"] == "closed form"
    torch.testing.assert_close(est["exact"].per_datapoint,
                               model.exact_log_marginal(data.x_test[:100]).cpu())
    _check_le(est["elbo"], est["iwae_10"])
    _check_le(est["iwae_10"], est["iwae_1000"])
    _check_le(est["iwae_1000"], est["exact"])
    # the accuracy: IWAE_5000 and AIS within 0.1 nat per datapoint of exact
    diff = (est["iwae_5000"].per_datapoint - est["exact"].per_datapoint).abs().mean()
    assert diff < 0.1
    m = est["ais"].n
    assert (est["ais"].per_datapoint - est["exact"].per_datapoint[:m]).mean().abs() < 0.1
    # BDMC: on simulated data, upper >= lower within the sandwich's SE
    _check_le(est["bdmc_lower"], est["bdmc_upper"])
    assert est["elbo"].extra["khat_mean"] < 0.5  # q is a good proposal for most datapoints
    assert est["elbo"].extra["khat_frac_above_0_7"] < 0.1
    # the report and its interface
    results = write_evaluation(tmp_path, ev, dataset=data.name, device="cpu")
    on_disk = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["schema"] == "pgm-eval" and on_disk["n"] == 100
    for name in ("elbo", "iwae_10", "ais", "exact", "bdmc_upper"):
        assert {"mean", "se", "n", "seconds"} <= set(on_disk["estimators"][name])
    assert all(c["ok"] for c in on_disk["checks"]), on_disk["checks"]
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "data:image/png;base64," in html and "iwae_5000" in html
    assert (tmp_path / "eval" / "figures" / "bounds_vs_k.png").is_file()
    # the one NUTS reference posterior drawn against q(z|x) (the only evaluate call here with it)
    assert est["nuts_reference"].n == 1 and est["nuts_reference"].extra["rhat_max"] < 1.05
    assert (tmp_path / "eval" / "figures" / "posterior_check.png").is_file()


def test_per_datapoint_values_do_not_depend_on_batching(linear_gaussian):
    model, data = linear_gaussian
    a = evaluate(model, data, EvalConfig(ks=(1, 100), n=40, batch_size=10, ais_steps=20,
                                         ais_n=20, exact=False, posterior_check=0, device="cpu"))
    b = evaluate(model, data, EvalConfig(ks=(1, 100), n=20, batch_size=10, ais_steps=20,
                                         ais_n=20, exact=False, posterior_check=0, device="cpu"))
    for name in ("iwae_100", "ais"):
        torch.testing.assert_close(a.estimators[name].per_datapoint[:20],
                                   b.estimators[name].per_datapoint)


def test_prior_proposal_is_worse(linear_gaussian):
    model, data = linear_gaussian
    ev = evaluate(model, data, EvalConfig(ks=(1, 100), n=50, ais_steps=0, exact=False,
                                          prior_proposal=True, posterior_check=0, device="cpu"))
    _check_le(ev.estimators["iwae_prior_100"], ev.estimators["iwae_100"])


def test_quadrature_agrees_with_ais_on_a_2d_vae():
    data = pgm.load_dataset("digits")
    torch.manual_seed(0)
    model = pgm.VAE(data_dim=64, latent_dim=2, hidden=(64,))
    pgm.fit(model, data, epochs=8, progress=False)
    ev = evaluate(model, data, EvalConfig(ks=(1, 1000), n=12, ais_steps=400, ais_n=12,
                                          ais_initial="q", posterior_check=0, device="cpu"))
    est = ev.estimators
    assert est["quadrature"].extra["method"] == "quadrature"
    assert est["quadrature"].bound == "numerical" and "exact" not in est
    d = est["ais"].per_datapoint - est["quadrature"].per_datapoint
    assert d.abs().mean() < 0.15, d
    _check_le(est["elbo"], est["quadrature"])
    _check_le(est["iwae_1000"], est["quadrature"], slack=0.02)


def test_presets_are_recorded():
    cfg = with_preset(EvalConfig(), "wu2017")
    assert cfg.preset == "wu2017" and cfg.ais_steps == 10_000 and cfg.bdmc
    with pytest.raises(ValueError, match="unknown preset"):
        with_preset(EvalConfig(), "nope")


def test_every_estimator_passes_the_label_of_a_cvae():
    """With the labels permuted, every estimator of log p(x | y) changes (y goes in), and
    none of log p(x), the label summed out, does."""
    from dataclasses import replace

    from pgm.models import CVAE

    data = pgm.load_dataset("digits")
    torch.manual_seed(0)
    model = CVAE(data_dim=64, latent_dim=2, hidden=(32,), n_classes=10)
    pgm.fit(model, data, epochs=3, progress=False)
    cfg = EvalConfig(ks=(1, 100), n=6, ais_steps=30, ais_n=6, bdmc=True, gaps=True, gaps_n=6,
                     gaps_steps=30, posterior_check=0, device="cpu")
    a = evaluate(model, data, cfg).estimators
    shuffled = replace(data, y_test=(data.y_test + 1) % 10)
    b = evaluate(model, shuffled, cfg).estimators
    for name in ("elbo_given_y", "iwae_100_given_y", "ais_given_y", "quadrature_given_y",
                 "bdmc_upper", "elbo_qstar"):
        assert not torch.allclose(a[name].per_datapoint, b[name].per_datapoint), name
    for name in ("elbo", "iwae_100", "ais", "quadrature"):
        assert torch.equal(a[name].per_datapoint, b[name].per_datapoint), name
    # the true label explains the images better than a wrong one
    assert a["quadrature_given_y"].mean > b["quadrature_given_y"].mean


def test_comparison_table_has_a_column_per_estimator_and_sample_quality():
    from pgm.report import comparison

    est = {"mean": -1.0, "se": 0.1, "n": 10, "seconds": 0.1}
    a = {"run": "a", "dataset": "d", "estimators": {"elbo": est, "ais": est}}
    b = {"run": "b", "dataset": "d", "estimators": {"exact": est},
         "sample_quality": {"nearest_neighbour": {"ratio": 1.25},
                            "frechet": {"samples_vs_train": 3.0, "test_vs_train": 1.0}}}
    md, page = comparison([a, b])
    main, every = (line for line in md.splitlines() if line.startswith("| run"))
    assert "Not commensurable" in md  # results without a representation record are flagged
    for col in ("NN ratio", "Fréchet (test: 1.00)"):
        assert col in main
    for col in ("elbo (n=10)", "ais (n=10)", "exact (n=10)"):
        assert col in every
    assert "1.25" in md and "| ⚠ 3.00 |" in md and "<table>" in page


def test_bdmc_on_a_gans_view_and_the_data_checked_against_the_gan():
    """A sigmoid GAN's explicit view is a density on all of R^D: BDMC's data, simulated from it
    with Gaussian noise, leave [0, 1] and are scored (they were refused as the GAN's data);
    the data measured are still checked against the GAN itself, with a one-line DataError."""
    torch.manual_seed(0)
    data = _dataset(torch.rand(200, 12))
    gan = pgm.GAN(data_dim=12, latent_dim=2, hidden=(8,))
    cfg = dict(ks=(1,), n=4, ais_steps=5, ais_n=4, ais_chains=2, posterior_check=0,
               device="cpu")
    ev = evaluate(gan, data, EvalConfig(bdmc=True, **cfg))
    lower, upper = ev.estimators["bdmc_lower"], ev.estimators["bdmc_upper"]
    assert lower.extra["initial"] == "laplace" and lower.extra["mass"] == "given"
    assert torch.isfinite(upper.per_datapoint).all() and upper.data == "simulated"
    bad = _dataset(torch.cat([torch.rand(180, 12), 1 + torch.rand(20, 12)]))  # the test split
    with pytest.raises(DataError, match=r"ranges over .* sigmoid generator outputs \[0, 1\]"):
        evaluate(gan, bad, EvalConfig(**cfg))


def test_a_point_mass_guide_gets_no_elbo_or_iwae_but_ais_and_exact(tmp_path):
    """The autoencoder's Delta guide has no density: "log q" = 0 would make its "ELBO"
    log p(x, m(x)), which can exceed log p(x). evaluate() reports only AIS and exact for it,
    and AIS agrees with the quadrature on the same datapoints."""
    torch.manual_seed(0)
    x = (torch.rand(400, 12) < 0.3).float()
    data = _dataset(x)
    ae = pgm.Autoencoder(data_dim=12, latent_dim=2, hidden=(16,))
    pgm.fit(ae, data, epochs=3, patience=None, progress=False)
    ev = evaluate(ae, data, EvalConfig(ks=(1, 10), n=10, ais_steps=200, ais_n=10,
                                       ais_chains=8, posterior_check=0, bdmc=True,
                                       device="cpu"))
    assert not any(k.startswith(("elbo", "iwae")) for k in ev.estimators)
    assert {"ais", "quadrature"} <= set(ev.estimators)
    _check_le(ev.estimators["ais"], ev.estimators["quadrature"], slack=0.05)
    gap = (ev.estimators["quadrature"].per_datapoint - ev.estimators["ais"].per_datapoint).abs()
    assert gap.mean() < 0.2
    # "auto" started AIS from the Laplace proposal (no guide density; its fit counted in the
    # time), with its covariances as HMC's mass matrices; asking for q says why not
    assert ev.estimators["ais"].extra["initial"] == "laplace"
    assert ev.estimators["ais"].extra["mass"] == "given"
    assert 0 < ev.estimators["ais"].extra["proposal_seconds"] < ev.estimators["ais"].seconds
    # BDMC from the same Laplace proposals closes its sandwich. (On 10 simulated images its
    # sides sit within ~0.01 of each other, inside the spread of the exact posterior draws the
    # reverse pass starts from: over 12 seeds of this setting against quadrature, forward
    # +0.0014 +- 0.0010 and reverse +0.0003 +- 0.0009 nats.)
    lower, upper = ev.estimators["bdmc_lower"], ev.estimators["bdmc_upper"]
    assert lower.extra["initial"] == "laplace"
    assert lower.extra["mass"] == upper.extra["mass"] == "given"
    assert abs(upper.extra["sandwich_mean"]) < 0.05
    with pytest.raises(ValueError, match="point mass"):
        evaluate(ae, data, EvalConfig(ks=(1,), n=2, ais_steps=2, ais_n=2, ais_initial="q",
                                      posterior_check=0, exact=False, device="cpu"))
    with pytest.raises(ValueError, match="ais_initial"):
        EvalConfig(ais_initial="posterior")
