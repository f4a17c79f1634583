"""The mixture model: recovery of known parameters, exact log p(x) vs scikit-learn and a brute
sum, TraceEnum_ELBO = -log p(x), the lecture's sampler, k-means++ init, the latent sampler."""

import dataclasses
import itertools
import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from scipy.optimize import linear_sum_assignment
from scipy.stats import chi2
from sklearn.mixture import GaussianMixture

from pgm import VAE, fit
from pgm.data import Dataset
from pgm.models import GMM, get_model_class
from pgm.models.gmm import fit_latent_gmm
from pgm.models.gmm_figures import latent_sampler_figure, write_gmm_figures

WEIGHTS = torch.tensor([0.5, 0.3, 0.2])
MEANS = torch.tensor([[-6.0, 0.0], [6.0, 0.0], [0.0, 7.0]])
SCALES = torch.tensor([[0.5, 1.0], [1.0, 0.5], [0.7, 0.7]])


pytestmark = pytest.mark.usefixtures("pyro_validation")


def _mixture_data(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.multinomial(WEIGHTS, n, replacement=True, generator=g)
    return MEANS[m] + SCALES[m] * torch.randn(n, 2, generator=g)


def _dataset(x_train, x_valid=None, image_shape=None) -> Dataset:
    empty = x_train[:0]
    x_valid = empty if x_valid is None else x_valid
    return Dataset(name="synthetic", x_train=x_train, x_valid=x_valid, x_test=empty,
                   y_train=None, y_valid=None, y_test=None, image_shape=image_shape,
                   n_classes=None, binarize="none", seed=0)


def _random_gmm(likelihood="gaussian", M=4, D=3, seed=0) -> GMM:
    torch.manual_seed(seed)
    gmm = GMM(data_dim=D, components=M, likelihood=likelihood)
    w = torch.rand(M) + 0.2
    if likelihood == "gaussian":
        gmm.set_parameters(w / w.sum(), torch.randn(M, D), 0.3 + torch.rand(M, D))
    else:
        gmm.set_parameters(w / w.sum(), 0.05 + 0.9 * torch.rand(M, D))
    return gmm


def test_registry_and_flags():
    assert get_model_class("gmm") is GMM
    assert GMM.latent == "discrete" and GMM.plain_distributions and not GMM.conditional
    with pytest.raises(ValueError, match="likelihood"):
        GMM(data_dim=2, likelihood="poisson")


def test_fit_recovers_weights_means_and_scales_up_to_permutation():
    """SGD through fit() (TraceEnum_ELBO, exact -log p(x)) from a deliberately poor start."""
    n = 3000
    x = _mixture_data(n)
    gmm = GMM(data_dim=2, components=3, likelihood="gaussian")
    gmm.set_parameters(torch.full((3,), 1 / 3), MEANS.flip(0) + 1.0, 2 * SCALES.flip(0))
    gmm.initialize = lambda x, y=None: None  # keep the poor start: test the optimiser
    fit(gmm, _dataset(x), epochs=40, lr=0.05, batch_size=256, progress=False)
    mu, sd, w = gmm.means.detach(), gmm.scales.detach(), gmm.weights.detach()
    cost = torch.cdist(mu, MEANS).numpy()
    rows, cols = linear_sum_assignment(cost)
    perm = torch.as_tensor(cols)[np.argsort(rows)]  # fitted component k <-> true perm[k]
    n_k = n * WEIGHTS[perm]
    se_w = (WEIGHTS[perm] * (1 - WEIGHTS[perm]) / n).sqrt()
    assert (w - WEIGHTS[perm]).abs().max() < 4 * se_w.max() + 0.005
    se_mu = SCALES[perm] / n_k.sqrt()[:, None]
    assert ((mu - MEANS[perm]).abs() < 4 * se_mu + 0.02).all(), (mu, MEANS[perm])
    se_sd = SCALES[perm] / (2 * n_k).sqrt()[:, None]
    assert ((sd - SCALES[perm]).abs() < 4 * se_sd + 0.02).all(), (sd, SCALES[perm])


def test_em_recovers_the_same_maximum_from_kmeans_init():
    x = _mixture_data(2000, seed=1)
    gmm = GMM(data_dim=2, components=3, likelihood="gaussian")
    gmm.initialize(x)
    trace = gmm.em(x, steps=50)
    assert all(b >= a - 1e-9 for a, b in zip(trace, trace[1:]))  # EM never decreases log p
    sk = GaussianMixture(3, covariance_type="diag", random_state=0, tol=1e-8).fit(x.numpy())
    assert gmm.exact_log_marginal(x).mean().item() == pytest.approx(
        sk.score_samples(x.numpy()).mean(), abs=1e-3)


@pytest.mark.parametrize("M,D", [(3, 2), (5, 7)])
def test_exact_log_likelihood_matches_sklearn(M, D):
    gmm = _random_gmm("gaussian", M, D)
    sk = GaussianMixture(M, covariance_type="diag")
    var = gmm.scales.detach().double().pow(2).numpy()
    sk.weights_ = gmm.weights.detach().double().numpy()
    sk.means_ = gmm.means.detach().double().numpy()
    sk.covariances_ = var
    sk.precisions_cholesky_ = 1 / np.sqrt(var)
    x = 2 * torch.randn(50, D)
    got = gmm.exact_log_marginal(x).detach()
    assert got.dtype == torch.float64 and got.shape == (50,)
    np.testing.assert_allclose(got.numpy(), sk.score_samples(x.numpy()), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_traceenum_loss_is_minus_exact_log_likelihood_value_and_gradient(likelihood):
    gmm = _random_gmm(likelihood, M=4, D=6)
    x = torch.randn(20, 6) if likelihood == "gaussian" else torch.rand(20, 6).bernoulli()
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(gmm.model, gmm.guide, x)
    grads = torch.autograd.grad(loss, list(gmm.parameters()))
    assert not gmm.exact_log_marginal(x).requires_grad  # a measurement, detached
    exact = -torch.logsumexp(gmm.joint_log_prob(x), -1).sum()
    expected = torch.autograd.grad(exact, list(gmm.parameters()))
    assert loss.item() == pytest.approx(exact.item(), rel=1e-5)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e.to(g.dtype), rtol=1e-4, atol=1e-4)


def test_bernoulli_enumeration_equals_brute_force_sum():
    M, D = 3, 4
    gmm = _random_gmm("bernoulli", M, D, seed=3)
    w, p = gmm.weights.detach().double(), gmm.means.detach().double()
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)))  # all 16 binary images
    brute = []
    for x in xs.double():
        total = 0.0
        for m in range(M):
            lik = 1.0
            for d in range(D):
                lik *= p[m, d].item() if x[d] == 1 else 1 - p[m, d].item()
            total += w[m].item() * lik
        brute.append(math.log(total))
    brute = torch.tensor(brute, dtype=torch.float64)
    # float32 parameters: the weights are rounded differently on the two paths
    torch.testing.assert_close(gmm.exact_log_marginal(xs).detach(), brute, rtol=0, atol=1e-6)
    assert torch.logsumexp(brute, 0).item() == pytest.approx(0.0, abs=1e-6)  # sums to 1
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(gmm.model, gmm.guide, xs)
    assert loss == pytest.approx(-brute.sum().item(), rel=1e-6)


def test_decode_prior_encode_shapes_and_fast_log_prob_equals_the_head():
    gmm = _random_gmm("gaussian", M=4, D=3)
    x = torch.randn(5, 3)
    assert gmm.prior(5).batch_shape == (5,)
    z = torch.randint(0, 4, (7, 5))
    px = gmm.decode(z)
    assert px.batch_shape == (7, 5) and px.event_shape == (3,)
    torch.testing.assert_close(px.log_prob(x), px.base.log_prob(x))  # matmul path == head
    enum = gmm.decode(torch.arange(4)[:, None])  # the enumerated shape (M, 1)
    assert enum.log_prob(x).shape == (4, 5)
    torch.testing.assert_close(enum.log_prob(x), enum.base.log_prob(x))
    torch.testing.assert_close(enum.expand((4, 5)).log_prob(x), enum.log_prob(x))
    assert px.mean.shape == (7, 5, 3) and px.sample().shape == (7, 5, 3)
    r = gmm.responsibilities(x)
    torch.testing.assert_close(r.sum(-1), torch.ones(5))
    bayes = torch.softmax(gmm.weights.log() + enum.log_prob(x).T, -1)  # p(m) p(x|m) / p(x)
    torch.testing.assert_close(r, bayes, rtol=1e-4, atol=1e-6)
    q = gmm.encode(x)
    assert q.batch_shape == (5,)
    torch.testing.assert_close(q.probs, r)


def test_sampling_frequencies_match_the_weights():
    gmm = _random_gmm("gaussian", M=5, D=2, seed=4)
    n = 20000
    x, m = gmm.sample(n, mean=False, return_components=True)
    assert x.shape == (n, 2) and m.shape == (n,)
    counts = torch.bincount(m, minlength=5).double()
    expected = n * gmm.weights.detach().double()
    stat = ((counts - expected) ** 2 / expected).sum().item()  # Pearson chi-square, 4 dof
    assert stat < chi2.ppf(0.999, df=4), (counts, expected)
    for k in range(5):  # x | m is component m: its mean within 5 standard errors
        xk = x[m == k]
        se = gmm.scales[k].detach() / math.sqrt(len(xk))
        assert ((xk.mean(0) - gmm.means[k].detach()).abs() < 5 * se).all()
    means = gmm.sample(10, mean=True)
    assert all((row == gmm.means.detach()).all(-1).any() for row in means)


def test_initialize_is_reproducible_and_keeps_bernoulli_means_inside():
    x = torch.rand(300, 16).bernoulli()
    a, b = GMM(data_dim=16, components=8), GMM(data_dim=16, components=8)
    torch.manual_seed(5)
    a.initialize(x)
    torch.manual_seed(5)
    b.initialize(x)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    p = a.means.detach()
    assert (p >= 0.01 - 1e-6).all() and (p <= 0.99 + 1e-6).all()
    assert (a.weights > 0).all() and torch.isfinite(a.exact_log_marginal(x)).all()
    with pytest.raises(Exception, match="at least 8 datapoints"):
        a.initialize(x[:5])


def test_bernoulli_fit_raises_the_exact_log_likelihood():
    torch.manual_seed(0)
    protos = torch.eye(4).repeat_interleave(4, dim=1)  # 4 prototypes, 4 pixels on in each
    x = protos[torch.randint(0, 4, (400,))]
    x = torch.where(torch.rand_like(x) < 0.1, 1 - x, x)  # 10% flipped pixels
    gmm = GMM(data_dim=16, components=4)
    history = fit(gmm, _dataset(x), epochs=15, lr=0.05, batch_size=100, progress=False)
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]
    exact = gmm.exact_log_marginal(x).mean().item()
    assert exact == pytest.approx(history[-1]["train_elbo"], abs=0.5)  # loss is -log p(x)
    # the prototypes are found: each one is close to some component mean
    assert torch.cdist(protos, gmm.means.detach()).min(1).values.max() < 1.0


def test_fit_reports_the_exact_validation_log_likelihood():
    x = _mixture_data(600)
    gmm = GMM(data_dim=2, components=3, likelihood="gaussian")
    history = fit(gmm, _dataset(x[:500], x[500:]), epochs=2, lr=0.05, progress=False)
    assert history[-1]["valid_elbo"] == pytest.approx(
        gmm.exact_log_marginal(x[500:]).mean().item(), rel=1e-5)


def test_latent_sampler_and_figures(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(120, 64).bernoulli()
    vae = VAE(data_dim=64, latent_dim=2, hidden=(16,))
    gmm = fit_latent_gmm(vae, x, components=3, steps=20)
    assert gmm.data_dim == 2 and gmm.components == 3
    codes = vae.encode(x).mean.detach()
    assert gmm.exact_log_marginal(codes).mean() > vae.prior(120).log_prob(codes).mean()
    data = dataclasses.replace(_dataset(x, x[:20], image_shape=(8, 8)), x_test=x[:20])
    fig = latent_sampler_figure(vae, data, gmm_components=3, n=16)
    assert len(fig.axes) == 3
    gmm = GMM(data_dim=64, components=6)
    gmm.initialize(x)
    paths = write_gmm_figures(tmp_path, gmm, data, [{"epoch": 1, "train_elbo": -40.0,
                                                     "valid_elbo": -41.0}])
    assert {p.name for p in paths} == {"components.png", "samples.png", "responsibilities.png",
                                       "elbo.png"}
    assert all(p.stat().st_size > 0 for p in paths)


def test_em_and_svi_share_one_floor_and_em_reaches_it():
    """A pixel constant within a component has zero variance: EM stops at min_scale, the
    floor gradient training's parameterisation sigma = min_scale + softplus(r) approaches."""
    x = _mixture_data(600, seed=2)
    x = torch.cat([x, torch.zeros(600, 1)], 1)  # a third coordinate, always 0
    gmm = GMM(data_dim=3, components=3, likelihood="gaussian", min_scale=0.01)
    gmm.initialize(x)
    trace = gmm.em(x, steps=30)
    assert all(b >= a - 1e-9 for a, b in zip(trace, trace[1:]))
    sd = gmm.scales.detach()
    torch.testing.assert_close(sd[:, 2], torch.full((3,), 0.01), rtol=1e-5, atol=0)
    assert (sd >= 0.01).all()
    with torch.no_grad():
        gmm.raw_scale.fill_(-50.0)  # the most gradient training could push it
    assert (gmm.scales >= 0.01).all()


def test_set_parameters_refuses_what_it_would_change():
    gmm = GMM(data_dim=2, components=2, likelihood="gaussian", min_scale=0.1)
    w, mu = torch.tensor([0.4, 0.6]), torch.zeros(2, 2)
    with pytest.raises(ValueError, match="1 scales below min_scale=0.1"):
        gmm.set_parameters(w, mu, torch.tensor([[0.5, 0.05], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="sum to 1"):
        gmm.set_parameters(torch.tensor([0.4, 0.4]), mu, torch.ones(2, 2))
    with pytest.raises(ValueError, match="positive"):
        gmm.set_parameters(torch.tensor([1.0, 0.0]), mu, torch.ones(2, 2))
    scales = torch.tensor([[0.1, 0.3], [2.0, 0.1]])  # on the floor and above: kept
    gmm.set_parameters(w, mu + 1, scales)
    torch.testing.assert_close(gmm.scales.detach(), scales, rtol=1e-5, atol=0)
    torch.testing.assert_close(gmm.weights.detach(), w)
    bern = GMM(data_dim=2, components=2, min_prob=0.01)
    with pytest.raises(ValueError, match=r"1 Bernoulli means outside \[min_prob"):
        bern.set_parameters(w, torch.tensor([[0.5, 1.0], [0.2, 0.3]]))
    p = torch.tensor([[0.01, 0.99], [0.2, 0.3]])
    bern.set_parameters(w, p)
    torch.testing.assert_close(bern.means.detach(), p, rtol=0, atol=1e-6)


def test_fit_with_objective_em_takes_one_em_step_per_epoch():
    x = _mixture_data(800, seed=3)
    data = _dataset(x[:600], x[600:])
    by_hand = GMM(data_dim=2, components=3, likelihood="gaussian")
    pyro.set_rng_seed(0)  # fit() seeds k-means the same way
    by_hand.initialize(x[:600])
    trace = [by_hand.em_step(x[:600]) for _ in range(5)]
    gmm = GMM(data_dim=2, components=3, likelihood="gaussian")
    history = fit(gmm, data, objective="em", epochs=5, patience=None, progress=False)
    assert [r["train_elbo"] for r in history] == pytest.approx(trace, abs=1e-9)
    assert [r["valid_elbo"] for r in history][-1] == pytest.approx(
        gmm.exact_log_marginal(x[600:]).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="objective 'em' needs a model with closed-form EM"):
        fit(VAE(data_dim=2, latent_dim=1, hidden=(4,), likelihood="gaussian"), data,
            objective="em", epochs=1, progress=False)


@pytest.mark.parametrize("min_epochs,expected", [(None, 6), (0, 2), (4, 4)])
def test_early_stopping_waits_for_min_epochs(min_epochs, expected):
    """With lr 1e-30 the weights never move, so every epoch after the first is 'no better':
    patience 1 stops at epoch 2 unless min_epochs (the mixture's default: 30) holds it."""
    x = _mixture_data(300, seed=4)
    gmm = GMM(data_dim=2, components=3, likelihood="gaussian")
    history = fit(gmm, _dataset(x[:200], x[200:]), epochs=6, lr=1e-30, patience=1,
                  min_epochs=min_epochs, progress=False)
    assert len(history) == expected


def test_em_run_resumes_to_the_unbroken_result(tmp_path):
    x = _mixture_data(500, seed=5)
    data = _dataset(x[:400], x[400:])
    whole = GMM(data_dim=2, components=3, likelihood="gaussian")
    fit(whole, data, objective="em", epochs=4, patience=None, out=tmp_path / "a", progress=False)
    broken = GMM(data_dim=2, components=3, likelihood="gaussian")
    fit(broken, data, objective="em", epochs=2, patience=None, out=tmp_path / "b",
        progress=False)
    resumed = GMM(data_dim=2, components=3, likelihood="gaussian")
    fit(resumed, data, objective="em", epochs=4, patience=None, out=tmp_path / "b",
        resume=True, progress=False)
    for p, q in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
