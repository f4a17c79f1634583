"""Probabilistic PCA with a learned noise scale: the default fit (`pgm train ppca`) against
Tipping & Bishop's closed-form maximum-likelihood solution, computed here with numpy."""

import json
import math

import numpy as np
import pytest
import torch

import pgm
from pgm import fit, load_dataset, load_run
from pgm.cli import main
from pgm.data import Dataset
from pgm.models import LinearGaussian, get_model_class
from pgm.models.linear_gaussian import linear_gaussian_log_marginal, ppca_ml
from pgm.report import bound_checks


def _numpy_ml(x: np.ndarray, L: int):
    """W_ML = U_L (Lambda_L - s2 I)^(1/2), s2 = mean of the discarded eigenvalues of the
    training covariance (divided by N), b = the mean (Tipping & Bishop 1999, eqs. 7-8)."""
    b = x.mean(0)
    lam, U = np.linalg.eigh(np.cov(x - b, rowvar=False, bias=True))
    lam, U = lam[::-1], U[:, ::-1]
    s2 = lam[L:].mean()
    return U[:, :L] * np.sqrt(lam[:L] - s2), b, math.sqrt(s2)


def _held_out(x: np.ndarray, W, b, s) -> float:
    """Mean log N(x; b, W W^T + s^2 I) by scipy, nats per datapoint."""
    from scipy.stats import multivariate_normal

    cov = W @ W.T + s**2 * np.eye(len(b))
    return float(multivariate_normal(b, cov).logpdf(x).mean())


def test_ppca_ml_is_the_closed_form():
    data = load_dataset("digits", binarize="none")
    x = data.x_train.double().numpy()
    W, b, s = ppca_ml(data.x_train, 10)
    Wn, bn, sn = _numpy_ml(x, 10)
    assert s == pytest.approx(sn, rel=1e-9)
    np.testing.assert_allclose((W @ W.T).numpy(), Wn @ Wn.T, atol=1e-9)  # W up to signs
    xt = data.x_test.double().numpy()
    assert linear_gaussian_log_marginal(data.x_test, W, b, s).mean().item() == pytest.approx(
        _held_out(xt, Wn, bn, sn), abs=1e-8)


def test_pgm_train_ppca_reaches_the_ml_held_out_likelihood(tmp_path):
    """Default settings (closed-form EM, 200 steps): within 0.05 nats per test image of the
    closed-form optimum's held-out log-likelihood, by the model's exact marginal."""
    out = tmp_path / "ppca"
    assert main(["train", "ppca", "--data", "digits", "--binarize", "none", "--latent-dim",
                 "10", "--out", str(out), "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_config"]["sigma"] is None and config["fit"]["objective"] == "em"
    run = load_run(out)
    data = load_dataset("digits", binarize="none")
    Wn, bn, sn = _numpy_ml(data.x_train.double().numpy(), 10)
    ref = _held_out(data.x_test.double().numpy(), Wn, bn, sn)
    got = run.model.exact_log_marginal(data.x_test).mean().item()
    assert abs(got - ref) < 0.05, (got, ref)
    assert float(run.model.sigma) == pytest.approx(sn, rel=1e-3)
    assert get_model_class("linear-gaussian") is get_model_class("ppca") is LinearGaussian
    # the guide EM leaves is the exact posterior: ELBO = IWAE = exact up to float32 rounding,
    # which the report's bound checks allow for
    ev = pgm.evaluate(run.model, data, config=pgm.EvalConfig(ks=(1, 10), n=50, ais_steps=0,
                                                              posterior_check=0))
    assert ev.estimators["elbo"].mean == pytest.approx(ev.estimators["exact"].mean, abs=1e-4)
    assert all(c["ok"] for c in bound_checks(ev.estimators))


def test_em_sets_the_guide_to_the_exact_posterior_at_the_optimum():
    """At the ML solution with W's columns orthogonal, the posterior covariance
    s^2 (s^2 I + W^T W)^-1 is diagonal: the guide EM sets is exact, so every single-sample
    ELBO term equals log p(x) (zero variance) and the ML point is a fixed point of EM."""
    torch.manual_seed(0)
    x = torch.randn(500, 6) @ torch.randn(6, 6) + 1.0
    model = LinearGaussian(data_dim=6, latent_dim=2).double()
    model.initialize(x)
    for _ in range(300):
        model.em_step(x)
    W, b, s = ppca_ml(x, 2)
    torch.testing.assert_close(model.decoder.weight @ model.decoder.weight.T, W @ W.T,
                               rtol=1e-6, atol=1e-8)
    assert float(model.sigma) == pytest.approx(s, rel=1e-8)
    xd = x.double()
    with torch.no_grad():
        q = model.encode(xd)
        z = q.sample((3,))
        log_w = model.decode(z).log_prob(xd) + model.prior(len(x)).log_prob(z) - q.log_prob(z)
    torch.testing.assert_close(log_w, model.exact_log_marginal(xd).expand(3, -1),
                               rtol=0, atol=1e-8)


def test_a_given_sigma_stays_fixed_and_a_learned_one_is_trained_by_the_elbo():
    """One strong direction plus isotropic noise 0.1: the ELBO's gradients take a learned
    sigma from its start (the data's spread, about 1.3) towards the ML value (about 0.1)."""
    torch.manual_seed(1)
    x = torch.randn(400, 1) * torch.tensor([[3.0, -2.0, 1.0, 0.0, 1.0]]) + 0.1 * torch.randn(400, 5)
    data = Dataset(name="toy", x_train=x[:300], x_valid=x[300:], x_test=x[300:], y_train=None,
                   y_valid=None, y_test=None, image_shape=None, n_classes=None,
                   binarize="none", seed=0)
    fixed = LinearGaussian(data_dim=5, latent_dim=1, sigma=0.5)
    fit(fixed, data, epochs=2, lr=1e-2, progress=False)
    assert float(fixed.sigma) == pytest.approx(0.5) and "log_sigma" not in fixed.state_dict()
    learned = LinearGaussian(data_dim=5, latent_dim=1)
    fit(learned, data, epochs=40, batch_size=32, lr=1e-2, progress=False)
    _, _, s_ml = ppca_ml(x[:300], 1)
    start = float(x[:300].var(0).mean().sqrt())
    assert start > 1.2 and s_ml < 0.11
    # 400 Adam steps cover most of the way (gradient training is slow here; EM is the default)
    assert math.log(start / float(learned.sigma)) > 0.8 * math.log(start / s_ml)


def test_bound_checks_allow_float32_rounding_and_nothing_more():
    """A lower bound equal to the exact value, computed in float32 against a float64 exact
    value, sits ~1e-6 above it with a tiny SE (PPCA after EM): that passes; 0.01 does not."""
    from pgm.inference.callables import Estimate

    exact = 100 + torch.randn(50, dtype=torch.float64)

    def est(v, bound):
        return Estimate.of(v, seconds=0.0, bound=bound)

    for above, ok in ((1e-6, True), (1e-2, False)):
        noise = 1e-9 * torch.randn(50, dtype=torch.float64)
        checks = bound_checks({"elbo": est(exact + above + noise, "lower"),
                               "exact": est(exact, "exact")})
        assert [c["ok"] for c in checks] == [ok]


def test_a_bound_check_on_one_datapoint_is_undetermined_not_violated():
    """One shared datapoint has no standard error: a lower estimate above the exact value
    there is not judged a violation (``ok`` None, said in words in the reports); one at or
    below it is ok."""
    from pgm.inference.callables import Estimate
    from pgm.report import _checks_md, check_mark

    exact = torch.tensor([-100.0], dtype=torch.float64)
    for above, ok in ((0.7, None), (-0.7, True)):
        checks = bound_checks({"iwae_10": Estimate.of(exact + above, seconds=0.0, bound="lower"),
                               "exact": Estimate.of(exact, seconds=0.0, bound="exact")})
        assert [c["ok"] for c in checks] == [ok]
    assert check_mark(checks[0]) == "ok"
    assert "no standard error" in check_mark({"ok": None})
    assert check_mark({"ok": False}) == "VIOLATED"
    line = _checks_md([{"lower": "iwae_10", "upper": "exact", "n": 1, "diff_mean": 0.7,
                        "diff_se": math.nan, "ok": None}])
    assert "0.700 ± – nats" in line and "no standard error" in line and "VIOLATED" not in line
