"""The fast paths compute the same numbers and gradients as Pyro's ELBOs for the same noise."""

import pyro
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO

from pgm import VAE, Autoencoder
from pgm.errors import UnknownNameError
from pgm.inference.objectives import ScaleLatents, make_objective


def _grads(loss, model):
    return torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("cls", [VAE, Autoencoder])
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_fast_elbo_equals_trace_elbo(cls, beta):
    model = cls(data_dim=30, latent_dim=3, hidden=(16,), likelihood="gaussian-learned")
    x = torch.randn(8, 30)
    fast = make_objective(model, "elbo")
    torch.manual_seed(1)
    a = fast(x, None, beta)
    ga = _grads(a, model)
    torch.manual_seed(1)
    with ScaleLatents(beta):
        b = Trace_ELBO().differentiable_loss(model.model, model.guide, x) / len(x)
    gb = _grads(b, model)
    torch.testing.assert_close(a, b)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v)
    # and the Pyro path of make_objective is the same number again
    torch.manual_seed(1)
    torch.testing.assert_close(make_objective(model, "elbo", use_pyro=True)(x, None, beta), a)


def test_iwae_equals_renyi_alpha_zero():
    model = VAE(data_dim=20, latent_dim=2, hidden=(8,))
    x = torch.rand(6, 20).bernoulli()
    K = 7
    torch.manual_seed(2)
    loss = make_objective(model, "iwae", K)(x)
    ga = _grads(loss, model)
    renyi = RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    for p in model.parameters():
        p.grad = None

    def registered_model(x):  # RenyiELBO only differentiates parameters Pyro knows about
        pyro.module("vae", model)
        return model.model(x)

    torch.manual_seed(2)
    ref = renyi.loss_and_grads(registered_model, model.guide, x) / len(x)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    for g, p in zip(ga, model.parameters()):
        torch.testing.assert_close(g, p.grad / len(x), rtol=1e-4, atol=1e-6)


def test_iwae_bound_is_at_least_the_elbo_on_average():
    model = VAE(data_dim=20, latent_dim=2, hidden=(8,))
    x = torch.rand(50, 20).bernoulli()
    with torch.no_grad():
        elbo = torch.stack([make_objective(model, "elbo")(x) for _ in range(200)])
        iwae = torch.stack([make_objective(model, "iwae", 10)(x) for _ in range(200)])
    se = (elbo.var() / 200 + iwae.var() / 200).sqrt()
    assert iwae.mean() <= elbo.mean() + 3 * se  # losses: -IWAE <= -ELBO


def test_bad_objective_settings():
    model = VAE(data_dim=20, latent_dim=2, hidden=(8,))
    with pytest.raises(UnknownNameError, match="known: elbo, elbo-analytic, iwae"):
        make_objective(model, "kl")
    with pytest.raises(ValueError, match="num_particles"):
        make_objective(model, "elbo", 0)
