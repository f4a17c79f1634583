"""The conditional VAE honours the contract with y, trains, generates the requested class, and
the half-image completion task runs beside its deterministic baseline."""

import dataclasses

import pyro
import pytest
import torch
from contract import check_sites
from pyro.infer import Trace_ELBO
from sklearn.linear_model import LogisticRegression

from pgm import fit, load_dataset
from pgm.completion import conditional_log_likelihood, fit_completion
from pgm.errors import DataError
from pgm.inference.adapter import latent_callables
from pgm.models import CVAE, get_model_class
from pgm.models.cvae import HalfImageCVAE, completion_dataset
from pgm.models.cvae_figures import completion_figure, write_cvae_figures

CONFIGS = [
    dict(data_dim=64, latent_dim=3, hidden=(32,), prior="standard"),
    dict(data_dim=64, latent_dim=2, hidden=(32,), prior="learned", likelihood="gaussian-learned"),
    dict(data_dim=64, latent_dim=2, arch="conv", image_shape=(8, 8), prior="learned"),
]


pytestmark = pytest.mark.usefixtures("pyro_validation")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained(digits):
    """A CVAE fitted on digits for a few seconds, with its history."""
    pyro.set_rng_seed(0)
    model = CVAE(data_dim=64, latent_dim=2, hidden=(128,), prior="learned")
    history = fit(model, digits, epochs=25, lr=3e-3, batch_size=64, progress=False)
    return model.eval(), history


@pytest.mark.parametrize("config", CONFIGS)
def test_model_guide_sites_and_shapes_with_y(config):
    model = CVAE(**config)
    x = torch.rand(5, 64).bernoulli()
    y = torch.tensor([0, 3, 9, 3, 1])
    check_sites(model, x, y)
    L = config["latent_dim"]
    assert torch.isfinite(Trace_ELBO().differentiable_loss(model.model, model.guide, x, y))
    # the decoder and the (learned) prior see y: another label changes them
    z = torch.randn(5, L)
    y2 = (y + 1) % 10
    assert not torch.allclose(model.decode(z, y).mean, model.decode(z, y2).mean)
    if config["prior"] == "learned":
        torch.testing.assert_close(model.prior(5, y).log_prob(z),
                                   model.prior(5, y2).log_prob(z))  # zero init: N(0, I)
        with torch.no_grad():
            model.prior_net.bias.add_(0.5)
            model.prior_net.weight.normal_()
        assert not torch.allclose(model.prior(5, y).log_prob(z), model.prior(5, y2).log_prob(z))
    assert model.sample(7).shape == (7, 64)
    assert model.reconstruct(x, y).shape == x.shape


def test_adapter_binds_y_and_matches_plain_distributions():
    torch.manual_seed(0)
    model = CVAE(data_dim=20, latent_dim=3, hidden=(8,), prior="learned")
    with torch.no_grad():
        model.prior_net.weight.normal_()
    x, y = torch.rand(4, 20).bernoulli(), torch.tensor([1, 2, 2, 7])
    f = latent_callables(model, y)
    z = f.sample_q(x, 6)
    assert z.shape == (6, 4, 3)
    prior = model.prior(4, y)
    torch.testing.assert_close(f.log_q(z, x), model.encode(x, y).log_prob(z))
    torch.testing.assert_close(f.log_prior(z), prior.log_prob(z))
    torch.testing.assert_close(f.log_joint(x, z),
                               prior.log_prob(z) + model.decode(z, y).log_prob(x))
    assert f.sample_prior(4, 3).shape == (3, 4, 3)


def test_labels_are_required_and_checked():
    model = CVAE(data_dim=16, latent_dim=2, hidden=(8,), n_classes=3)
    x = torch.rand(2, 16).bernoulli()
    with pytest.raises(ValueError, match="needs labels y"):
        model.guide(x)
    with pytest.raises(DataError, match="0..2"):
        model.encode(x, torch.tensor([0, 3]))
    assert model.sample(6).shape == (6, 16)  # y=None: classes 0, 1, 2, 0, 1, 2
    torch.testing.assert_close(model._labels(6, None), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert model.transfer(x, torch.tensor([0, 2])).shape == (2, 3, 16)
    assert get_model_class("cvae") is CVAE and CVAE.conditional


def test_fit_raises_the_valid_elbo_and_samples_have_the_requested_class(trained, digits):
    model, history = trained
    assert history[-1]["valid_elbo"] > history[0]["valid_elbo"] + 3
    clf = LogisticRegression(max_iter=2000).fit(digits.x_train.numpy(), digits.y_train.numpy())
    assert clf.score(digits.x_test.numpy(), digits.y_test.numpy()) > 0.75  # binarised 8x8
    pyro.set_rng_seed(1)
    y = torch.arange(10).repeat_interleave(30)
    x = model.sample(len(y), y, mean=True)
    acc = clf.score(x.numpy(), y.numpy())
    print(f"classifier accuracy on conditional samples: {acc:.3f}; history {len(history)} epochs")
    assert acc > 0.6, f"conditional samples classified as their label in {acc:.0%} of cases"


def test_cvae_figures(trained, digits, tmp_path):
    model, history = trained
    paths = write_cvae_figures(tmp_path, model, digits, history)
    assert {p.name for p in paths} == {"style_transfer.png", "class_samples.png",
                                       "reconstructions.png", "elbo.png", "latent.png"}


def test_completion_dataset_splits_images(digits):
    cd = completion_dataset(digits)
    assert cd.x_train.shape == (len(digits.x_train), 32)
    assert cd.y_train.shape == (len(digits.x_train), 32)
    torch.testing.assert_close(torch.cat([cd.y_test, cd.x_test], 1), digits.x_test)
    with pytest.raises(DataError, match="fixed pixels"):
        completion_dataset(dataclasses.replace(digits, binarize="dynamic"))


def test_completion_task_runs_and_both_log_likelihoods_are_finite(digits, tmp_path):
    result = fit_completion(digits, epochs=8, latent_dim=4, hidden=(64,), K=50)
    s = result.summary()
    assert torch.isfinite(result.cvae_cll).all() and torch.isfinite(result.baseline_cll).all()
    assert result.cvae_cll.shape == result.baseline_cll.shape == (len(digits.x_test),)
    assert s["cvae"]["mean"] < 0 and s["baseline"]["mean"] < 0
    # the importance-weighted bound tightens with K (in expectation; 180 images average it)
    cd = result.data
    pyro.set_rng_seed(0)
    k1 = conditional_log_likelihood(result.cvae, cd.x_test, cd.y_test, K=1).mean()
    assert k1 <= result.cvae_cll.mean() + 0.05
    completions = result.cvae.complete(cd.y_test[:3], n=2)
    assert completions.shape == (2, 3, 32)
    assert isinstance(result.cvae, HalfImageCVAE)
    fig = completion_figure(result, n=4, draws=2)
    assert len(fig.axes) == 1
