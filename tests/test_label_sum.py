"""A conditional VAE measured as a density of x: log p(x) = logsumexp_y [log p(y) + log p(x|y)].

The known answer: a CVAE with no hidden layers, a 1-D code and a Gaussian head of fixed scale
s is linear-Gaussian given its label, x | y ~ N(b_y, a a^T + s^2 I), so log p(x | y) and
log p(x) = log sum_y p(y) N(x; b_y, a a^T + s^2 I) are closed forms. Its linear encoder can
hold the exact posterior q(z | x, y) = p(z | x, y), and p(y) is made non-uniform so the sum's
weights are tested too.
"""

import math

import pytest
import torch

from pgm.data import Dataset
from pgm.evaluation import EvalConfig, evaluate
from pgm.models import CVAE
from pgm.report import bound_checks, results_dict

C, D, S = 3, 4, 0.5
PROBS = (0.5, 0.3, 0.2)


class SkewedCVAE(CVAE):
    """The CVAE with a non-uniform label prior."""

    def label_prior(self):
        return torch.distributions.Categorical(probs=torch.tensor(PROBS))


def _model(exact_q: bool) -> SkewedCVAE:
    torch.manual_seed(1)
    m = SkewedCVAE(data_dim=D, latent_dim=1, hidden=(), n_classes=C, likelihood="gaussian",
                   likelihood_scale=S)
    with torch.no_grad():
        W = m.decoder[0].weight  # (D, 1 + C): the code's column a, then one per label
        W.copy_(torch.randn(D, 1 + C) * torch.tensor([1.5] + [1.0] * C))
        m.decoder[0].bias.zero_()
        a, b = W[:, 0], W[:, 1:].T  # (D,), (C, D): x | z, y ~ N(a z + b_y, s^2 I)
        M = 1 + a @ a / S**2  # posterior precision of z given (x, y)
        enc = m.encoder[0]  # [x, one-hot y] -> (mean, log-variance) of q(z | x, y)
        enc.weight.zero_()
        enc.bias.zero_()
        enc.weight[0, :D] = a / (S**2 * M)
        enc.weight[0, D:] = -(b @ a) / (S**2 * M)
        enc.bias[1] = -torch.log(M)
        if not exact_q:  # a guide off the posterior: shifted by a posterior sd, too wide
            enc.bias[0] += 1.0 / M.sqrt()
            enc.bias[1] += 1.0
    return m.eval()


def _closed_form(m, x):
    """(log p(x | y) for every label (C, N), log p(x) (N,)), float64."""
    W = m.decoder[0].weight.detach().double()
    a, b = W[:, 0], W[:, 1:].T
    cov = torch.outer(a, a) + S**2 * torch.eye(D, dtype=torch.float64)
    given = torch.stack([torch.distributions.MultivariateNormal(b[c], cov).log_prob(x.double())
                         for c in range(C)])
    return given, torch.logsumexp(given + torch.tensor(PROBS).double().log()[:, None], 0)


def _data(m, n=40):
    torch.manual_seed(2)
    y = torch.distributions.Categorical(probs=torch.tensor(PROBS)).sample((3 * n,))
    with torch.no_grad():
        x = m.decode(m.prior(3 * n, y).sample(), y).sample()
    return Dataset(name="simulated", x_train=x[:n], x_valid=x[n:2 * n], x_test=x[2 * n:],
                   y_train=y[:n], y_valid=y[n:2 * n], y_test=y[2 * n:], image_shape=None,
                   n_classes=C, binarize="none", seed=0)


CFG = dict(ks=(1, 10, 1000), n=40, batch_size=16, ais_steps=100, ais_chains=8, ais_n=40,
           posterior_check=0, device="cpu")


def _paired(est, truth):
    d = est.per_datapoint - truth[: est.n]
    return d.mean().item(), (d.std() / math.sqrt(est.n)).item()


@pytest.fixture(scope="module")
def exact_q():  # every label (the wrong guide's evaluation takes the default margin, 30 nats)
    m = _model(exact_q=True)
    data = _data(m)
    return m, data, evaluate(m, data, EvalConfig(**CFG, label_margin=math.inf))


@pytest.fixture(scope="module")
def wrong_q():
    m = _model(exact_q=False)
    data = _data(m)
    return m, data, evaluate(m, data, EvalConfig(**CFG))


def test_quadrature_sums_the_labels_to_the_closed_form(exact_q):
    m, data, ev = exact_q
    given, log_px = _closed_form(m, data.x_test)
    own = given[data.y_test, torch.arange(len(data.y_test))]
    est = ev.estimators
    assert est["quadrature"].extra["quantity"] == "log p(x)"
    assert est["quadrature_given_y"].extra["quantity"] == "log p(x | y)"
    assert (est["quadrature"].per_datapoint - log_px).abs().max() < 2e-3
    assert (est["quadrature_given_y"].per_datapoint - own).abs().max() < 2e-3
    # the label matters here: log p(x) differs from log p(x | y) (by log p(y | x) - log p(y))
    assert (log_px - own).abs().mean() > 0.1


def test_with_the_exact_posterior_every_bound_is_tight(exact_q):
    """q(z|x,y) = p(z|x,y): each weight is p(x|y), so the ELBO with the best q(y|x)
    (logsumexp of the per-label ELBOs) and every IWAE_K equal log p(x)."""
    m, data, ev = exact_q
    given, log_px = _closed_form(m, data.x_test)
    own = given[data.y_test, torch.arange(len(data.y_test))]
    for name in ("elbo", "iwae_1", "iwae_1000"):
        assert (ev.estimators[name].per_datapoint - log_px).abs().max() < 1e-3, name
        assert (ev.estimators[name + "_given_y"].per_datapoint - own).abs().max() < 1e-3, name
    assert (ev.estimators["ais"].per_datapoint - log_px).abs().max() < 1e-3


def test_with_a_wrong_guide_bounds_sit_below_within_their_standard_errors(wrong_q):
    m, data, ev = wrong_q
    given, log_px = _closed_form(m, data.x_test)
    own = given[data.y_test, torch.arange(len(data.y_test))]
    est = ev.estimators
    assert est["quadrature"].extra["labels"] < C  # some labels were > 30 nats below the best
    assert (est["quadrature"].per_datapoint - log_px).abs().max() < 2e-3
    for suffix, truth in (("", log_px), ("_given_y", own)):
        elbo, _ = _paired(est["elbo" + suffix], truth)
        assert elbo < -0.1  # a guide this far off leaves a gap
        for name in ("iwae_10", "iwae_1000", "ais"):
            d, se = _paired(est[name + suffix], truth)
            assert d <= 3.5 * se + 1e-3, (name + suffix, d, se)  # a lower bound
            assert d > elbo  # and tighter than the ELBO
        for name in ("iwae_1000", "ais"):  # close: within SEs, or a few hundredths of a nat
            d, se = _paired(est[name + suffix], truth)
            assert abs(d) <= max(3.5 * se, 0.03), (name + suffix, d, se)
    # the combined ELBO is below the combined IWAE_1 draw by draw (logsumexp is convex)
    assert (est["elbo"].per_datapoint <= est["iwae_1"].per_datapoint + 1e-9).all()
    assert est["ais"].extra["se_chains"].shape == (40,)


def test_results_say_which_quantity_each_row_is(wrong_q):
    m, data, ev = wrong_q
    assert ev.best() in ("quadrature",) and ev.best("log p(x | y)") == "quadrature_given_y"
    assert ev.extra["representation"]["quantity"] == "log p(x)"
    assert ev.extra["label_prior"]["probs"] == pytest.approx(PROBS)
    results = results_dict(ev, run="r", dataset="simulated", device="cpu")
    assert results["best"] == "quadrature" and results["best_given_y"] == "quadrature_given_y"
    for name, s in results["estimators"].items():
        assert s["quantity"] == ("log p(x | y)" if name.endswith("_given_y") else "log p(x)")
    checks = bound_checks(ev.estimators)
    assert all(c["ok"] for c in checks)
    for c in checks:  # log p(x) bounds are checked against log p(x), never log p(x | y)
        assert c["lower"].endswith("_given_y") == c["upper"].endswith("_given_y")


def test_without_the_label_sum_the_evaluation_is_conditional_only(exact_q):
    m, data, _ = exact_q
    ev = evaluate(m, data, EvalConfig(**{**CFG, "ks": (1, 10), "ais_steps": 0},
                                      label_sum=False))
    assert not any(k.endswith("_given_y") for k in ev.estimators)
    assert ev.extra["representation"]["quantity"].startswith("log p(x | y)")
    given, _ = _closed_form(m, data.x_test)
    own = given[data.y_test, torch.arange(len(data.y_test))]
    assert (ev.estimators["quadrature"].per_datapoint - own).abs().max() < 2e-3


def test_quadrature_and_ais_may_skip_labels_far_below_the_best(exact_q):
    """A margin that leaves labels out: quadrature and AIS sum fewer non-negative terms, so
    they sit below the full sum, record how many labels they took and the share IWAE gave
    the others; the datapoints' own labels are always taken, so log p(x | y) is unchanged."""
    m, data, full = exact_q
    ev = evaluate(m, data, EvalConfig(**CFG, label_margin=2.0))
    q, qf = ev.estimators["quadrature"], full.estimators["quadrature"]
    assert q.extra["labels"] < C and 0 < q.extra["dropped_share_max"] < 1
    assert (q.per_datapoint <= qf.per_datapoint + 1e-9).all()
    assert (q.per_datapoint < qf.per_datapoint - 1e-3).any()
    assert torch.equal(ev.estimators["quadrature_given_y"].per_datapoint,
                       full.estimators["quadrature_given_y"].per_datapoint)
    assert full.estimators["quadrature"].extra["labels"] == C
    assert ev.estimators["ais"].extra["labels"] < C
    assert ev.extra["label_prior"]["margin"] == 2.0


def test_ais_from_a_laplace_proposal_sums_the_labels_too(wrong_q):
    m, data, _ = wrong_q
    ev = evaluate(m, data, EvalConfig(**{**CFG, "ks": (1, 10)}, ais_initial="laplace"))
    given, log_px = _closed_form(m, data.x_test)
    own = given[data.y_test, torch.arange(len(data.y_test))]
    for name, truth in (("ais", log_px), ("ais_given_y", own)):
        est = ev.estimators[name]
        d, se = _paired(est, truth)
        assert est.extra["initial"] == "laplace" and abs(d) <= max(3.5 * se, 0.03), (name, d)
