"""The VAE and autoencoder honour the model/guide contract; the lecture's regulariser is the KL."""

import math

import pytest
import torch
from contract import check_sites
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

from pgm import VAE, Autoencoder

CONFIGS = [
    dict(data_dim=64, latent_dim=3, hidden=(32,)),
    dict(data_dim=64, latent_dim=2, hidden=(32, 16), likelihood="gaussian", activation="tanh"),
    dict(data_dim=64, latent_dim=2, hidden=(32,), likelihood="gaussian-learned"),
    dict(data_dim=784, latent_dim=4, arch="conv", image_shape=(28, 28)),
]


pytestmark = pytest.mark.usefixtures("pyro_validation")


@pytest.mark.parametrize("cls", [VAE, Autoencoder])
@pytest.mark.parametrize("config", CONFIGS)
def test_model_guide_sites_and_shapes(cls, config):
    model = cls(**config)
    x = torch.rand(5, config["data_dim"]).bernoulli()
    _, model_tr = check_sites(model, x)
    assert set(model_tr.nodes["data"]["value"].tolist()) == set(range(5))  # the data plate
    assert model.sample(7).shape == (7, config["data_dim"])
    assert model.reconstruct(x).shape == x.shape
    # Pyro's own ELBOs run on the pair with validation on
    assert torch.isfinite(Trace_ELBO().differentiable_loss(model.model, model.guide, x))


def test_vectorized_particles_broadcast():
    model = VAE(data_dim=64, latent_dim=2, hidden=(16,))
    z = torch.randn(11, 5, 2)
    assert model.decode(z).batch_shape == (11, 5)
    assert model.encode(torch.rand(5, 64)).batch_shape == (5,)


def test_lecture_regulariser_is_twice_the_kl_of_trace_meanfield():
    """(1/2) sum(exp(s) - (1 + s) + m^2), s the log-variance, is KL(q || N(0, I))."""
    model = VAE(data_dim=64, latent_dim=3, hidden=(16,))
    x = torch.rand(6, 64).bernoulli()
    m, s = model.encode_params(x)
    lecture = 0.5 * (s.exp() - (1 + s) + m**2).sum(-1)
    kl = kl_divergence(model.encode(x), model.prior(6))
    torch.testing.assert_close(lecture, kl)
    # TraceMeanField_ELBO's loss is -E log p(x|z) + KL; with the guide's noise fixed:
    torch.manual_seed(3)
    loss = TraceMeanField_ELBO().loss(model.model, model.guide, x)
    torch.manual_seed(3)
    z = model.encode(x).rsample()
    log_px_z = model.decode(z).log_prob(x).sum()
    assert loss == pytest.approx((-log_px_z + kl.sum()).item(), rel=1e-5)
    # The lecture's noise exp(s) * e would read s as a log standard deviation, not this:
    assert torch.allclose(model.encode(x).stddev, torch.exp(0.5 * s))


def test_trace_elbo_and_analytic_elbo_agree_in_expectation():
    model = VAE(data_dim=64, latent_dim=2, hidden=(16,))
    x = torch.rand(4, 64).bernoulli()
    n = 4000
    mc = Trace_ELBO(num_particles=n, vectorize_particles=True, max_plate_nesting=1)
    mf = TraceMeanField_ELBO(num_particles=n, vectorize_particles=True, max_plate_nesting=1)
    # per-particle MC ELBOs, for a standard error
    q = model.encode(x)
    z = q.rsample((n,))
    per = (model.decode(z).log_prob(x) + model.prior(4).log_prob(z) - q.log_prob(z)).sum(-1)
    se = per.std().item() / n**0.5
    a, b = -mc.loss(model.model, model.guide, x), -mf.loss(model.model, model.guide, x)
    assert abs(a - b) < 4 * se * 2**0.5 + 1e-6


def test_autoencoder_code_has_no_noise():
    ae = Autoencoder(data_dim=64, latent_dim=2, hidden=(16,))
    x = torch.rand(3, 64)
    z1, z2 = ae.guide(x), ae.guide(x)
    torch.testing.assert_close(z1, z2)
    torch.testing.assert_close(z1, ae.encode_params(x)[0])


def test_isotropic_normal_is_normal_to_event_one():
    """The Gaussian head's fast distribution has the log density, gradient, entropy, shapes
    and moments of ``Normal(loc, s).to_event(1)``, also expanded and inside a Pyro plate."""
    import pyro
    import pyro.distributions as dist

    from pgm.likelihoods import IsotropicNormal, make_likelihood

    torch.manual_seed(0)
    loc = torch.randn(3, 4, 7, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 4, 7, dtype=torch.float64)
    fast, ref = IsotropicNormal(loc, 0.3), dist.Normal(loc, 0.3).to_event(1)
    assert (fast.batch_shape, fast.event_shape) == (ref.batch_shape, ref.event_shape)
    torch.testing.assert_close(fast.log_prob(x), ref.log_prob(x))
    g_fast, = torch.autograd.grad(fast.log_prob(x).sum(), loc)
    g_ref, = torch.autograd.grad(ref.log_prob(x).sum(), loc)
    torch.testing.assert_close(g_fast, g_ref)
    torch.testing.assert_close(fast.entropy(), ref.entropy())
    torch.testing.assert_close(fast.variance, ref.variance)
    assert fast.expand((2, 3, 4)).log_prob(x).shape == (2, 3, 4)
    draws = IsotropicNormal(torch.zeros(7), 0.3).sample((20_000,))
    assert abs(draws.std().item() - 0.3) < 0.01 and abs(draws.mean().item()) < 0.01
    assert isinstance(make_likelihood("gaussian", scale=0.3)(loc), IsotropicNormal)
    with pytest.raises(ValueError, match="scale"):
        IsotropicNormal(loc, 0.0)

    def model(x):
        with pyro.plate("data", 4):
            pyro.sample("x", IsotropicNormal(torch.zeros(4, 7, dtype=x.dtype), 0.5), obs=x)

    tr = pyro.poutine.trace(model).get_trace(x[0])
    torch.testing.assert_close(tr.log_prob_sum(),
                               dist.Normal(0.0, 0.5).log_prob(x[0]).sum())


def test_likelihood_scores_are_the_gradients_of_their_log_densities():
    """``score(x)`` of the Bernoulli and fixed-scale Gaussian heads: their parameter tensor and
    the gradient of the summed log density in it, x broadcast either way, with no graph."""
    from pgm.likelihoods import BernoulliLogits, IsotropicNormal

    torch.manual_seed(0)
    h = torch.randn(3, 4, 7, dtype=torch.float64, requires_grad=True)
    for make in (BernoulliLogits, lambda h: IsotropicNormal(h, 0.3)):
        for x in (torch.rand(4, 7, dtype=torch.float64).round(),
                  torch.rand(2, 3, 4, 7, dtype=torch.float64)):
            d = make(h)
            param, score = d.score(x)
            assert param is (d.base_dist.logits if hasattr(d, "base_dist") else d.loc)
            assert score.shape == h.shape and not score.requires_grad
            (ref,) = torch.autograd.grad(d.log_prob(x).sum(), param)
            torch.testing.assert_close(score, ref)
    # data of another dtype than the parameters: the same gradient, not an error (the Bernoulli
    # score writes x - sigma(h) into sigma(h)'s buffer, in the parameters' dtype)
    h32 = h.detach().float().requires_grad_(True)
    for make in (BernoulliLogits, lambda h: IsotropicNormal(h, 0.3)):
        x = torch.rand(4, 7, dtype=torch.float64).round()
        d = make(h32)
        _, score = d.score(x)
        (ref,) = torch.autograd.grad(d.log_prob(x.float()).sum(), h32)
        torch.testing.assert_close(score.float(), ref, rtol=1e-5, atol=1e-5)


def test_bernoulli_log_prob_through_products_of_sigmoids_is_exact():
    """The Bernoulli head's log density, written as (x - 1/2) h - |h|/2 plus logs of products of
    sigma(|h|) over blocks of at most 120 pixels, equals sum_d x_d h_d - softplus(h_d) in float64
    for widths on either side of the block size and logits up to 200 in magnitude (no product
    underflows); in float32 within the rounding of its summed terms; one or many rows per
    datapoint (the two batched dot products), x broadcast either way."""
    import torch.nn.functional as F

    from pgm.likelihoods import bernoulli_log_prob

    torch.manual_seed(0)
    for D in (1, 7, 119, 120, 121, 241, 784):
        for lead, scale in (((), 30), ((1,), 30), ((2,), 0.05), ((5,), 30), ((5,), 0.05)):
            # 0.05: factors near 1/2, whose product over 784 pixels would underflow float32
            h = torch.randn(*lead, 3, D, dtype=torch.float64) * scale
            h[..., 0, :] = 200.0 * torch.sign(h[..., 0, :])  # a whole row saturated
            for x in ((torch.rand(3, D) < 0.5).double(), torch.rand(3, D, dtype=torch.float64),
                      torch.rand(2, *lead, 3, D, dtype=torch.float64)):
                # softplus in log1p form without F.softplus's threshold (it drops e^-h for h > 20)
                ref = (h * x).sum(-1) - (h.clamp(min=0) + torch.log1p(torch.exp(-h.abs()))).sum(-1)
                out = bernoulli_log_prob(h, x)
                assert out.shape == ref.shape
                torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)
                out32 = bernoulli_log_prob(h.float(), x.float()).double()
                tol = 4 * 2.0**-24 * (h.abs().sum(-1) + D)  # a few ulp of the summed terms
                assert ((out32 - ref).abs() <= tol).all()
                old32 = (h.float() * x.float()).sum(-1) - F.softplus(h.float()).sum(-1)
                assert ((old32.double() - ref).abs() <= tol).all()


def test_bernoulli_logits_is_bernoulli_to_event_one():
    """The Bernoulli head's fast log density has the value, gradient and Hessian of
    ``Bernoulli(logits=h).to_event(1)``, on binary and grey x broadcast either way, and the
    same distribution otherwise (shapes, mean, draws, expand, a Pyro plate)."""
    import pyro
    import pyro.distributions as dist

    from pgm.likelihoods import BernoulliLogits, make_likelihood

    torch.manual_seed(0)
    h = torch.randn(3, 4, 7, dtype=torch.float64, requires_grad=True)
    for x in (torch.rand(4, 7, dtype=torch.float64).round(), torch.rand(4, 7, dtype=torch.float64),
              torch.rand(2, 3, 4, 7, dtype=torch.float64)):
        fast, ref = BernoulliLogits(h), dist.Bernoulli(logits=h, validate_args=False).to_event(1)
        torch.testing.assert_close(fast.log_prob(x), ref.log_prob(x))
        g_fast, = torch.autograd.grad(fast.log_prob(x).sum(), h, create_graph=True)
        g_ref, = torch.autograd.grad(ref.log_prob(x).sum(), h, create_graph=True)
        torch.testing.assert_close(g_fast, g_ref)
        torch.testing.assert_close(torch.autograd.grad(g_fast.sum(), h)[0],
                                   torch.autograd.grad(g_ref.sum(), h)[0])
    assert torch.autograd.gradcheck(lambda h, x: BernoulliLogits(h).log_prob(x),
                                    (h, torch.rand(4, 7, dtype=torch.float64, requires_grad=True)))
    assert (fast.batch_shape, fast.event_shape) == (ref.batch_shape, ref.event_shape)
    torch.testing.assert_close(fast.mean, ref.mean)
    assert fast.expand((2, 3, 4)).log_prob(x).shape == (2, 3, 4)
    assert isinstance(make_likelihood("bernoulli")(h), BernoulliLogits)
    draws = BernoulliLogits(torch.zeros(7)).sample((20_000,))
    assert abs(draws.mean().item() - 0.5) < 0.01

    def model(x):
        with pyro.plate("data", 4):
            pyro.sample("x", BernoulliLogits(torch.zeros(4, 7, dtype=x.dtype)), obs=x)

    tr = pyro.poutine.trace(model).get_trace(x[0, 0])
    torch.testing.assert_close(tr.log_prob_sum(), torch.tensor(28 * -math.log(2.0),
                                                               dtype=torch.float64))
