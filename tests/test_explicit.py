"""The explicit Gaussian view of every generator, and the choice of its sigma."""

import math

import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions import Normal

import pgm
from pgm.models import GAN, GMM, VAE, ExplicitGAN
from pgm.models.explicit import MeanView, choose_sigma, explicit_view, fit_sigma


def _gmm(D=5, M=3, seed=0):
    torch.manual_seed(seed)
    gmm = GMM(data_dim=D, components=M, likelihood="gaussian")
    gmm.set_parameters(torch.tensor([0.5, 0.3, 0.2]), torch.rand(M, D), 0.2 + torch.rand(M, D))
    return gmm


def test_mean_view_swaps_only_the_likelihood(pyro_validation):
    torch.manual_seed(0)
    vae = VAE(data_dim=6, latent_dim=2, hidden=(8,), likelihood="gaussian-learned").eval()
    view = explicit_view(vae, 0.3)
    assert isinstance(view, MeanView) and view.sigma == 0.3
    z = torch.randn(4, 7, 2)
    px = view.decode(z)
    torch.testing.assert_close(px.mean, vae.decode(z).mean)
    torch.testing.assert_close(px.variance, torch.full((4, 7, 6), 0.09))
    x6 = torch.rand(7, 6)
    torch.testing.assert_close(px.log_prob(x6), Normal(px.mean, 0.3).to_event(1).log_prob(x6))
    x = torch.rand(7, 6)
    q, q_vae = view.encode(x), vae.encode(x)
    torch.testing.assert_close(q.base_dist.loc, q_vae.base_dist.loc)  # the encoder is shared
    assert not list(view.parameters()) or all(
        any(p is b for b in vae.parameters()) for p in view.parameters())
    tr = poutine.trace(view.model).get_trace(x)  # honours the contract
    tr.compute_log_prob()
    assert tr.nodes["x"]["log_prob"].shape == (7,)


def test_mixture_view_is_a_gmm_with_every_scale_sigma():
    gmm = _gmm()
    view = explicit_view(gmm, 0.1)
    assert isinstance(view, GMM) and view.latent == "discrete"
    x = torch.rand(9, 5, dtype=torch.float64)
    comp = torch.distributions.Normal(gmm.means.double().detach(), 0.1)  # (M, D)
    expected = torch.logsumexp(torch.log(gmm.weights.double().detach())
                               + comp.log_prob(x[:, None]).sum(-1), -1)
    torch.testing.assert_close(view.exact_log_marginal(x), expected, rtol=1e-5, atol=1e-4)  # f32
    torch.testing.assert_close(view.scales, torch.full((3, 5), 0.1), rtol=1e-5, atol=1e-6)


def test_gan_view_is_its_own_and_other_models_are_refused():
    gan = GAN(data_dim=4, latent_dim=2, hidden=(8,), output="identity")
    assert isinstance(explicit_view(gan, 0.2), ExplicitGAN)
    with pytest.raises(TypeError, match="no explicit Gaussian view"):
        explicit_view(torch.nn.Linear(2, 2), 0.1)
    with pytest.raises(ValueError, match="sigma"):
        explicit_view(gan, 0.0)


def test_choose_sigma_on_a_mixture_is_exact_and_finds_the_data_scale():
    # data drawn from the mixture's means plus noise of sd 0.1: the exact score peaks there
    gmm = _gmm(D=20, M=3)
    g = torch.Generator().manual_seed(1)
    m = torch.multinomial(gmm.weights.detach(), 400, replacement=True, generator=g)
    x = gmm.means.detach()[m] + 0.1 * torch.randn(400, 20, generator=g)
    choice = choose_sigma(gmm, x, (0.03, 0.1, 0.3), n=400, method="ais")
    assert choice.method == "exact" and choice.sigma == 0.1
    assert choice.log_px[1] > max(choice.log_px[0], choice.log_px[2])
    with pytest.warns(UserWarning, match="edge of the grid"):
        choose_sigma(gmm, x, (0.3, 1.0), n=50)


def test_choose_sigma_for_a_vae_scores_its_view_with_the_encoder_as_proposal():
    data = pgm.load_dataset("digits", binarize="none")
    torch.manual_seed(0)
    vae = VAE(data_dim=64, latent_dim=2, hidden=(16,), likelihood="gaussian")
    choice = choose_sigma(vae, data.x_valid, (0.05, 0.3, 3.0), method="iwae", n=20, K=50)
    assert choice.sigma == 0.3 and all(math.isfinite(v) for v in choice.log_px)
    with pytest.raises(ValueError, match="exact marginal"):
        choose_sigma(vae, data.x_valid, method="exact")


def test_a_conditional_view_scores_with_its_labels():
    from pgm.models import CVAE

    data = pgm.load_dataset("digits", binarize="none")
    torch.manual_seed(0)
    cvae = CVAE(data_dim=64, latent_dim=2, hidden=(16,), n_classes=10, likelihood="gaussian")
    with pytest.raises(ValueError, match="y_valid"):
        choose_sigma(cvae, data.x_valid, method="iwae")
    kw = dict(sigmas=(0.05, 0.3, 3.0), method="iwae", n=10, K=30)
    right = choose_sigma(cvae, data.x_valid, y_valid=data.y_valid, **kw)
    wrong = choose_sigma(cvae, data.x_valid, y_valid=(data.y_valid + 1) % 10, **kw)
    assert right.log_px != wrong.log_px  # the label reaches the decoder


def test_an_autoencoders_view_keeps_its_point_mass_out_of_the_bounds():
    ae = pgm.Autoencoder(data_dim=6, latent_dim=2, hidden=(8,), likelihood="gaussian-learned")
    assert not explicit_view(ae, 0.3).guide_density
    assert explicit_view(VAE(data_dim=6), 0.3).guide_density


def test_fit_sigma_by_em_finds_the_maximum_likelihood_sigma_of_a_linear_generator():
    # Data from a linear generator with noise sd 0.1: the view's log p_sigma(x) is closed form
    # (N(b, WW^T + sigma^2 I)), so its maximiser over sigma is known; EM with AIS as E-step
    # reaches it in a few AIS runs from the IWAE start of an untrained encoder.
    from pgm.models.linear_gaussian import LinearGaussian, linear_gaussian_log_marginal

    torch.manual_seed(0)
    model = LinearGaussian(data_dim=20, latent_dim=2, sigma=0.1)
    with torch.no_grad():
        x = model.decode(model.prior(60).sample()).sample()
    W, b = model.decoder.weight.detach(), model.decoder.bias.detach()
    grid = torch.linspace(0.05, 0.2, 301)
    exact = torch.stack([linear_gaussian_log_marginal(x, W, b, s).mean() for s in grid])
    best = grid[exact.argmax()].item()
    choice = fit_sigma(model, x, n=60, ais_steps=100, ais_chains=8, max_iter=6)
    assert choice.method == "em" and choice.sigma in choice.sigmas and len(choice.sigmas) <= 6
    assert abs(choice.sigma / best - 1) < 0.05, (choice.sigmas, best)
    # its AIS score at the chosen sigma is a (stochastic) lower bound, within a nat of the
    # exact value there (AIS from an untrained encoder, 100 steps)
    i = choice.sigmas.index(choice.sigma)
    at = linear_gaussian_log_marginal(x, W, b, choice.sigma).mean().item()
    assert at - 1.0 < choice.log_px[i] <= at + 3 * choice.se[i], (choice, at)


def test_fit_sigma_without_a_guide_runs_em_from_laplace_fits():
    # The same closed form through a GAN whose generator is one linear layer: its view has no
    # guide, so each EM step's AIS starts from a Laplace fit, warm-started after the first.
    from pgm.models.gan import GAN
    from pgm.models.linear_gaussian import linear_gaussian_log_marginal

    torch.manual_seed(1)
    gan = GAN(data_dim=20, latent_dim=2, hidden=(), output="identity")
    lin = gan.generator.net[0]
    with torch.no_grad():
        x = lin(torch.randn(60, 2)) + 0.1 * torch.randn(60, 20)
    W, b = lin.weight.detach(), lin.bias.detach()
    grid = torch.linspace(0.05, 0.2, 301)
    exact = torch.stack([linear_gaussian_log_marginal(x, W, b, s).mean() for s in grid])
    best = grid[exact.argmax()].item()
    assert not explicit_view(gan, 0.3).amortized_guide
    choice = fit_sigma(gan, x, n=60, ais_steps=50, ais_chains=4, max_iter=6)
    assert len(choice.sigmas) >= 2  # a warm-started fit ran
    assert abs(choice.sigma / best - 1) < 0.05, (choice.sigmas, best)
    i = choice.sigmas.index(choice.sigma)
    at = linear_gaussian_log_marginal(x, W, b, choice.sigma).mean().item()
    assert at - 0.05 < choice.log_px[i] <= at + 3 * choice.se[i], (choice, at)


def test_fit_sigma_on_a_mixture_is_the_exact_grid():
    gmm = _gmm(D=20, M=3)
    g = torch.Generator().manual_seed(1)
    m = torch.multinomial(gmm.weights.detach(), 200, replacement=True, generator=g)
    x = gmm.means.detach()[m] + 0.1 * torch.randn(200, 20, generator=g)
    choice = fit_sigma(gmm, x, n=200)
    assert choice.method == "exact" and choice.sigma == 0.1
