"""The adapter's trace-based callables equal the contract's plain distributions."""

import pyro
import pytest
import torch

from pgm import VAE, Autoencoder
from pgm.inference.adapter import latent_callables


@pytest.fixture(autouse=True)
def validation():
    pyro.enable_validation(True)
    yield
    pyro.enable_validation(False)


@pytest.mark.parametrize("traces", [True, False])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian-learned"])
def test_callables_match_plain_distributions(likelihood, traces):
    torch.manual_seed(0)
    model = VAE(data_dim=20, latent_dim=3, hidden=(8,), likelihood=likelihood)
    x = torch.rand(4, 20).bernoulli()
    f = latent_callables(model, traces=traces)
    z = f.sample_q(x, 6)
    assert z.shape == (6, 4, 3) and not z.requires_grad
    q, prior = model.encode(x), model.prior(4)
    torch.testing.assert_close(f.log_q(z, x), q.log_prob(z))
    torch.testing.assert_close(f.log_prior(z), prior.log_prob(z))
    torch.testing.assert_close(f.log_joint(x, z), prior.log_prob(z) + model.decode(z).log_prob(x))
    zp = f.sample_prior(4, 500)
    assert zp.shape == (500, 4, 3)
    assert abs(zp.mean().item()) < 4 * (1 / (500 * 12)) ** 0.5 and abs(zp.std().item() - 1) < 0.1


def test_gradients_flow_through_log_joint():
    model = VAE(data_dim=20, latent_dim=2, hidden=(8,))
    x = torch.rand(3, 20).bernoulli()
    z = torch.randn(5, 3, 2, requires_grad=True)
    (g,) = torch.autograd.grad(latent_callables(model).log_joint(x, z).sum(), z)
    assert g.shape == z.shape and torch.isfinite(g).all()


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian-learned"])
def test_grad_log_joint_is_the_gradient_of_log_joint(likelihood):
    """The gradient route HMC's inner leapfrog steps take (from the likelihood's closed-form
    score where it has one, autograd otherwise) equals autograd of log_joint, also with a
    label bound (the conditional VAE); traced callables leave it to autograd."""
    from pgm import CVAE

    torch.manual_seed(0)
    x = torch.rand(4, 20).bernoulli()
    for model, y in ((VAE(data_dim=20, latent_dim=3, hidden=(8,), likelihood=likelihood), None),
                     (CVAE(data_dim=20, n_classes=3, latent_dim=3, hidden=(8,), prior="learned",
                           likelihood=likelihood), torch.tensor([0, 2, 1, 1]))):
        f = latent_callables(model, y)
        z = f.sample_prior(4, 6)
        zg = z.clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(f.log_joint(x, zg).sum(), zg)
        g = f.grad_log_joint(x, z)
        assert g.shape == z.shape and not g.requires_grad and not z.requires_grad
        torch.testing.assert_close(g, ref)
        (ref,) = torch.autograd.grad(f.log_prior(zg).sum(), zg)
        g = f.grad_log_prior(z)
        assert g.shape == z.shape and not g.requires_grad
        torch.testing.assert_close(g, ref)
    traced = latent_callables(model, y, traces=True)
    assert traced.grad_log_joint is None and traced.grad_log_prior is None


def test_gradients_fall_back_to_autograd_for_a_prior_without_a_closed_form():
    """A prior that pgm.inference.scores has no closed form for (a Laplace here): both
    gradients come from autograd and still equal those of log_prior and log_joint."""
    import pyro.distributions as dist

    class LaplacePrior(VAE):
        def prior(self, n, y=None):
            return dist.Laplace(torch.zeros(n, self.latent_dim), 1.0).to_event(1)

    torch.manual_seed(0)
    model = LaplacePrior(data_dim=20, latent_dim=3, hidden=(8,))
    f = latent_callables(model)
    x = torch.rand(4, 20).bernoulli()
    z = f.sample_prior(4, 6).requires_grad_(True)
    for grad, value in ((f.grad_log_prior(z.detach()), f.log_prior(z)),
                        (f.grad_log_joint(x, z.detach()), f.log_joint(x, z))):
        torch.testing.assert_close(grad, torch.autograd.grad(value.sum(), z)[0])


@pytest.mark.parametrize("traces", [True, False])
def test_delta_guide_log_q(traces):
    model = Autoencoder(data_dim=20, latent_dim=2, hidden=(8,))
    x = torch.rand(3, 20)
    f = latent_callables(model, traces=traces)
    z = f.sample_q(x, 4)
    torch.testing.assert_close(z[0], model.encode_params(x)[0].detach())
    assert (f.log_q(z, x) == 0).all()


def test_traced_and_plain_samples_agree_for_the_same_seed():
    model = VAE(data_dim=20, latent_dim=3, hidden=(8,))
    x = torch.rand(4, 20).bernoulli()
    torch.manual_seed(5)
    a = latent_callables(model, traces=True).sample_q(x, 7)
    torch.manual_seed(5)
    b = latent_callables(model, traces=False).sample_q(x, 7)
    torch.testing.assert_close(a, b)


def test_log_q_encodes_x_once_and_follows_new_x_and_new_parameters():
    """AIS from q calls log_q with the same x at every leapfrog step; the encoder runs once
    for it, and again when x is another tensor, x is changed in place, or a parameter moves."""
    torch.manual_seed(0)
    model = VAE(data_dim=20, latent_dim=3, hidden=(8,))
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    f = latent_callables(model)
    x = torch.rand(4, 20).bernoulli()
    z = torch.randn(5, 4, 3)
    first = f.log_q(z, x)
    torch.testing.assert_close(f.log_q(z, x), first)
    assert len(calls) == 1
    x2 = x.clone()
    torch.testing.assert_close(f.log_q(z, x2), first)
    assert len(calls) == 2
    x2[0] = 1 - x2[0]
    torch.testing.assert_close(f.log_q(z, x2), model.encode(x2).log_prob(z))
    with torch.no_grad():
        next(model.encoder.parameters()).add_(0.5)
    torch.testing.assert_close(f.log_q(z, x), model.encode(x).log_prob(z))
    assert not torch.allclose(f.log_q(z, x), first)
    # gradients in z (what AIS takes) through the cached q, repeatedly
    for _ in range(2):
        zg = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f.log_q(zg, x).sum(), zg)
        assert torch.isfinite(g).all()
