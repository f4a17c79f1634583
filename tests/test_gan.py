"""The GAN: the 1-D toy learns the data, each player's step leaves the other untouched, the
explicit view honours the contract and is measurable, runs save and resume exactly."""

import json
import math

import pytest
import torch
from contract import check_sites
from pyro.infer import Trace_ELBO
from torch import nn
from torch.nn.utils import parametrize

import pgm
from pgm import io
from pgm.errors import CheckpointError, DataError
from pgm.evaluation import EvalConfig, evaluate
from pgm.inference.adversarial import (
    GANFitConfig,
    discriminator_step,
    fit_gan,
    generator_step,
    make_optimizers,
    train_gan,
)
from pgm.models import GAN, get_model_class
from pgm.models.explicit import choose_sigma
from pgm.models.gan import GANConfig, _Separable
from pgm.models.gan_figures import save_epoch_samples, write_gan_figures

TOY_EPOCHS = 40


@pytest.fixture(scope="module")
def gauss1d():
    return pgm.load_dataset("gauss1d")


@pytest.fixture(scope="module")
def toy(gauss1d, tmp_path_factory):
    """The paper's toy, trained once with train_gan's defaults for 1-D data."""
    out = tmp_path_factory.mktemp("toy") / "run"
    gan, history = train_gan(gauss1d, out, epochs=TOY_EPOCHS, seed=0, progress=False,
                             sample_every=20, on_epoch=save_epoch_samples)
    return gan, history, out


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- the toy


def test_toy_generator_matches_the_data_and_d_ends_near_one_half(toy, gauss1d):
    gan, history, _ = toy
    n = 20_000
    s = gan.sample(n, generator=torch.Generator().manual_seed(1))[:, 0].double()
    x = gauss1d.x_train[:, 0].double()
    mu, sd = x.mean().item(), x.std().item()  # 4.006, 0.502 (4,000 draws of N(4, 0.5^2))
    # Sampling error of the comparison: SE(mean) = sd * sqrt(1/n + 1/4000) ~ 0.009, SE(std) ~
    # sd * sqrt(1/(2n) + 1/8000) ~ 0.006. Training slack: the last iterate of a GAN oscillates
    # about the equilibrium; over seeds 0-9 of these settings the generator's mean was within
    # 0.061 and its std within 0.059 of the data's (gan_settings_for's docstring), so the
    # tolerances are slack + 4 SE: 0.1 and 0.085 (20% and 17% of sd).
    assert abs(s.mean().item() - mu) < 0.10
    assert abs(s.std().item() - sd) < 0.085
    last = history[-1]
    assert abs(last["d_valid"] - 0.5) < 0.1 and abs(last["d_gen"] - 0.5) < 0.1
    assert abs(last["d_loss"] - 2 * math.log(2)) < 0.1  # D's loss at D = 1/2
    first = history[0]
    assert first["d_accuracy"] > last["d_accuracy"]  # D wins early, is fooled at the end


def test_toy_run_directory(toy, gauss1d):
    gan, history, out = toy
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "gan" and config["model_config"]["z_dist"] == "uniform"
    for name in ("model.safetensors", "checkpoint.pt", "history.csv", "steps.csv",
                 "snapshots.json", "figures/samples_epoch020.png",
                 f"figures/samples_epoch{TOY_EPOCHS:03d}.png"):
        assert (out / name).is_file(), name
    run = pgm.load_run(out)
    assert isinstance(run.model, GAN) and get_model_class("gan") is GAN
    z = gan.sample_z(50, torch.Generator().manual_seed(0))
    torch.testing.assert_close(run.model.generate(z), gan.generate(z), rtol=0, atol=0)
    assert len(run.history) == TOY_EPOCHS == len(history)
    for key in ("d_loss", "g_loss", "d_real", "d_fake", "d_accuracy", "d_valid", "d_gen",
                "seconds"):
        assert key in history[0]
    snaps = json.loads((out / "snapshots.json").read_text())["snapshots"]
    assert [s["epoch"] for s in snaps] == list(range(TOY_EPOCHS + 1))
    written = write_gan_figures(out, run.model, gauss1d, run.history)
    assert {p.name for p in written} == {"training_curves.png", "toy_series.png"}
    assert all(p.stat().st_size > 10_000 for p in written)


# ----------------------------------------------------------------------------- the two steps


@pytest.mark.parametrize("game,loss", [("cross-entropy", "non-saturating"),
                                       ("cross-entropy", "minimax"), ("hinge", "non-saturating")])
def test_each_step_leaves_the_other_player_bitwise_unchanged(game, loss):
    torch.manual_seed(0)
    gan = GAN(data_dim=3, latent_dim=2, hidden=(8,), output="identity", d_dropout=0.1)
    opt_g, opt_d = make_optimizers(gan, GANFitConfig())
    x = torch.randn(16, 3)
    g0, d0 = _state(gan.generator), _state(gan.discriminator)
    discriminator_step(gan, opt_d, x, label_smoothing=0.1 if game == "cross-entropy" else 0.0,
                       loss=game)
    _assert_same(_state(gan.generator), g0)
    assert not all(torch.equal(a, b) for a, b in zip(_state(gan.discriminator).values(),
                                                     d0.values()))
    d1 = _state(gan.discriminator)
    d_grads = [p.grad.clone() for p in gan.discriminator.parameters()]  # from the D step
    generator_step(gan, opt_g, 16, generator_loss=loss, loss=game)
    _assert_same(_state(gan.discriminator), d1)
    for p, g in zip(gan.discriminator.parameters(), d_grads):  # no gradient reached D
        assert torch.equal(p.grad, g)
    assert not all(torch.equal(a, b) for a, b in zip(_state(gan.generator).values(),
                                                     g0.values()))
    assert all(p.requires_grad for p in gan.discriminator.parameters())  # unfrozen again


def test_averaged_generator_follows_the_trained_one_and_serves_eval_mode():
    torch.manual_seed(0)
    gan = GAN(data_dim=3, latent_dim=2, hidden=(8,), output="identity", ema=0.75)
    opt_g, _ = make_optimizers(gan, GANFitConfig(lr=0.1))
    before = [p.clone() for p in gan.generator_ema.parameters()]
    generator_step(gan, opt_g, 16)
    gan.update_ema()
    for avg, old, new in zip(gan.generator_ema.parameters(), before, gan.generator.parameters()):
        torch.testing.assert_close(avg, 0.75 * old + 0.25 * new)
        assert not avg.requires_grad
    z = torch.randn(5, 2)
    torch.testing.assert_close(gan.train().generate(z), gan.generator(z))
    torch.testing.assert_close(gan.eval().generate(z), gan.generator_ema(z))
    assert "generator_ema.net.0.weight" in gan.state_dict()  # saved and resumed with the run


@pytest.mark.parametrize("arch,coarse", [("mlp", None), ("mlp", (8,)), ("dcgan", None)])
def test_spectral_norm_bounds_every_layer_of_the_discriminator(arch, coarse):
    torch.manual_seed(0)
    gan = GAN(data_dim=64, latent_dim=4, hidden=(32,), image_shape=(8, 8), arch=arch,
              channels=4, spectral_norm=True, d_coarse=coarse)
    layers = [m for m in gan.discriminator.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
    assert not any(parametrize.is_parametrized(m) for m in gan.generator.modules())
    x = torch.rand(16, 64)
    for _ in range(30):  # power iterations, one per training-mode forward pass
        gan.discriminate(x)
    for m in layers:
        w = m.weight.reshape(m.weight.shape[0], -1)
        assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1, abs=0.05)
    with pytest.raises(ValueError, match="spectral_norm must be true or false"):
        GANConfig(data_dim=4, spectral_norm="yes")


def test_coarse_discriminator_adds_the_logit_of_the_image_pooled_2x2():
    """With ``d_coarse`` the MLP GAN's D(x) = D_full(x) + D_coarse(avgpool_2x2(x)), both on
    the discriminator's own input 2x - 1; without it D is built (and named) as before."""
    torch.manual_seed(0)
    kw = dict(data_dim=16, latent_dim=2, hidden=(8,), image_shape=(4, 4))
    gan = GAN(**kw, d_coarse=(6, 5)).eval()
    x = torch.rand(3, 16)
    views = gan.discriminator.net[1]
    xd = 2 * x - 1
    pooled = xd.reshape(3, 2, 2, 2, 2).mean((2, 4)).reshape(3, 4)  # (row block, col block)
    assert views.coarse.net[0].in_features == 4
    with torch.no_grad():
        expected = views.full(xd) + views.coarse.net(pooled)
        torch.testing.assert_close(gan.discriminate(x), expected.squeeze(-1))
    torch.manual_seed(0)
    plain = GAN(**kw)
    assert not any("coarse" in k or "full" in k for k in plain.state_dict())
    with pytest.raises(ValueError, match="d_coarse applies"):
        GANConfig(data_dim=16, d_coarse=(4,))  # no image
    with pytest.raises(ValueError, match="even"):
        GANConfig(data_dim=15, image_shape=(3, 5), d_coarse=(4,))
    with pytest.raises(ValueError, match="positive layer sizes"):
        GANConfig(**kw, d_coarse=(0,))


def test_image_defaults_halve_the_sides_only_where_they_are_even():
    """The MLP GAN's defaults draw at half resolution and judge a 2x2-pooled view; images with
    an odd side get neither, and the defaults build a GAN for both."""
    from types import SimpleNamespace

    from pgm.inference.adversarial import gan_settings_for

    keys = set(GANConfig.__dataclass_fields__)
    for shape, halves in (((6, 4), True), ((5, 4), False)):
        x = torch.rand(10, shape[0] * shape[1])
        data = SimpleNamespace(x_train=x, data_dim=x.shape[1], image_shape=shape)
        settings = gan_settings_for(data)
        assert ("d_coarse" in settings) == ("g_upsample" in settings) == halves
        GAN(GANConfig(data_dim=x.shape[1], **{k: v for k, v in settings.items() if k in keys}))


def test_dcgan_discriminator_drops_out_in_training_only_and_keeps_its_weight_names():
    """d_dropout reaches the DCGAN's D (after each activation), is off in eval mode and at 0,
    and adds no weights: a DCGAN saved before dropout existed there loads as it was; its
    activation is d_activation's."""
    torch.manual_seed(0)
    kw = dict(data_dim=64, latent_dim=4, arch="dcgan", image_shape=(8, 8), channels=4)
    gan, plain = GAN(**kw, d_dropout=0.5), GAN(**kw, d_dropout=0.0)
    x = torch.rand(16, 64)
    assert not torch.equal(gan.train().discriminate(x), gan.discriminate(x))
    assert torch.equal(plain.train().discriminate(x), plain.discriminate(x))
    assert torch.equal(gan.eval().discriminate(x), gan.discriminate(x))
    names = [k for k in gan.state_dict() if k.startswith("discriminator.")]
    assert names == [f"discriminator.net.1.{i}.{w}" for i in (1, 3, 6) for w in ("weight", "bias")]
    plain.load_state_dict(gan.state_dict())
    torch.testing.assert_close(plain.eval().discriminate(x), gan.discriminate(x))
    # d_activation reaches it too (DCGAN's leaky ReLU of slope 0.2 by default)
    acts = [type(m[0]) for m in gan.discriminator.net[1] if isinstance(m, torch.nn.Sequential)]
    assert acts == [torch.nn.LeakyReLU] * 2
    tanh = GAN(**kw, d_activation="tanh").discriminator.net[1]
    assert [type(m[0]) for m in tanh if isinstance(m, torch.nn.Sequential)] == [torch.nn.Tanh] * 2


def test_dcgan_mlp_branch_sums_two_discriminators_and_old_dcgans_still_load():
    """d_mlp_branch adds a spectrally normalised MLP D beside the conv D, the logits summed;
    the conv D keeps its weights' names inside it; a DCGAN without the branch (every run saved
    before it existed) builds and loads as before; the MLP GAN refuses it."""
    from pgm.config import from_dict, to_dict

    torch.manual_seed(0)
    kw = dict(data_dim=64, latent_dim=4, arch="dcgan", image_shape=(8, 8), channels=4)
    both, conv = GAN(**kw, d_mlp_branch=(16, 8)).eval(), GAN(**kw).eval()
    x = torch.rand(16, 64)
    d = both.discriminator.net[1]  # after the (2x - 1) affine
    torch.testing.assert_close(both.discriminate(x), (d.conv(2 * x - 1) + d.mlp(2 * x - 1))[:, 0])
    mlp = [m for m in d.mlp.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in mlp] == [16, 8, 1]
    assert all(parametrize.is_parametrized(m, "weight") for m in mlp)
    assert not any(parametrize.is_parametrized(m) for m in d.conv.modules())
    # the conv half is the plain DCGAN's D, weight for weight
    conv.load_state_dict({k.replace("net.1.conv.", "net.1."): v for k, v in
                          both.state_dict().items() if ".mlp." not in k})
    torch.testing.assert_close(conv.discriminate(x), d.conv(2 * x - 1)[:, 0])
    assert [k for k in conv.state_dict() if k.startswith("discriminator.")] == [
        f"discriminator.net.1.{i}.{w}" for i in (1, 3, 6) for w in ("weight", "bias")]
    # written as JSON and read back, the config is the same
    cfg = from_dict(GANConfig, json.loads(json.dumps(to_dict(both.config))))
    assert cfg == both.config and cfg.d_mlp_branch == (16, 8)
    assert from_dict(GANConfig, {k: v for k, v in to_dict(conv.config).items()
                                 if k != "d_mlp_branch"}).d_mlp_branch is None
    with pytest.raises(ValueError, match="d_mlp_branch applies to arch='dcgan' only"):
        GANConfig(data_dim=64, d_mlp_branch=(16,))
    with pytest.raises(ValueError, match="d_mlp_branch must be positive layer sizes"):
        GANConfig(**kw, d_mlp_branch=(0,))


def test_dcgan_wide_generator_adds_a_stride_1_stage_and_old_generators_keep_their_names():
    """g_wide: the Linear to 4c maps at H/4 x W/4, a 3x3 stride-1 transposed convolution to 2c,
    then the plain DCGAN's two upsampling stages; without it G is built, named and drawn as
    every DCGAN before it; the MLP GAN refuses it."""
    from pgm.config import from_dict, to_dict

    kw = dict(data_dim=64, latent_dim=4, arch="dcgan", image_shape=(8, 8), channels=4)
    torch.manual_seed(0)
    wide = GAN(**kw, g_wide=True)
    torch.manual_seed(0)
    narrow = GAN(**kw)
    convs = [m for m in wide.generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in convs] == [
        (16, 8, (3, 3), (1, 1)), (8, 4, (4, 4), (2, 2)), (4, 1, (4, 4), (2, 2))]
    assert wide.generator.net[0][0].out_features == 16 * 2 * 2
    z = torch.randn(5, 4)
    assert wide.eval().generate(z).shape == (5, 64)
    assert 0 <= wide.generate(z).min() and wide.generate(z).max() <= 1
    assert [k for k in narrow.state_dict() if k.startswith("generator.")
            and k.endswith("weight")] == [f"generator.net.0.{i}.weight" for i in (0, 1, 4, 5, 7)]
    # the discriminator is built alike either way: its weights keep their names
    assert [k for k in wide.state_dict() if k.startswith("discriminator.")] == [
        k for k in narrow.state_dict() if k.startswith("discriminator.")]
    cfg = from_dict(GANConfig, json.loads(json.dumps(to_dict(wide.config))))
    assert cfg == wide.config and cfg.g_wide is True
    assert from_dict(GANConfig, {k: v for k, v in to_dict(narrow.config).items()
                                 if k != "g_wide"}).g_wide is False
    with pytest.raises(ValueError, match="g_wide applies to arch='dcgan' only"):
        GANConfig(data_dim=64, g_wide=True)
    with pytest.raises(ValueError, match="g_wide must be true or false"):
        GANConfig(**kw, g_wide=1)


def test_mlp_generator_batchnorm_after_each_hidden_layer_and_old_generators_keep_their_names():
    """g_batchnorm: batch norm between each hidden Linear of the MLP GAN's G and its activation,
    the Linears drawn as without it; in eval mode G(z) of one row does not depend on the batch;
    without it G is built and named as every MLP GAN before it; the DCGAN refuses it."""
    from pgm.config import from_dict, to_dict

    kw = dict(data_dim=64, latent_dim=4, hidden=(8, 16), image_shape=(8, 8), ema=0.9)
    torch.manual_seed(0)
    bn = GAN(**kw, g_batchnorm=True)
    torch.manual_seed(0)
    plain = GAN(**kw)
    kinds = [type(m).__name__ for m in bn.generator.net[0]]
    assert kinds == ["Linear", "BatchNorm1d", "LeakyReLU", "Linear", "BatchNorm1d", "LeakyReLU",
                     "Linear"]
    assert [m.num_features for m in bn.generator.modules()
            if isinstance(m, nn.BatchNorm1d)] == [8, 16]
    linears = [[m.weight for m in g.generator.modules() if isinstance(m, nn.Linear)]
               for g in (bn, plain)]
    assert all(torch.equal(a, b) for a, b in zip(*linears))
    assert [k for k in plain.state_dict() if k.startswith("generator.")
            and k.endswith("weight")] == [f"generator.net.0.{i}.weight" for i in (0, 2, 4)]
    # the average follows the batch statistics too
    bn.train().generate(torch.randn(32, 4))
    bn.update_ema()
    mean = bn.generator.net[0][1].running_mean
    torch.testing.assert_close(bn.generator_ema.net[0][1].running_mean, 0.1 * mean)
    z = torch.randn(5, 4)
    x = bn.eval().generate(z)
    assert x.shape == (5, 64) and 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(bn.generate(z[:2]), x[:2])
    cfg = from_dict(GANConfig, json.loads(json.dumps(to_dict(bn.config))))
    assert cfg == bn.config and cfg.g_batchnorm is True
    assert from_dict(GANConfig, {k: v for k, v in to_dict(plain.config).items()
                                 if k != "g_batchnorm"}).g_batchnorm is False
    with pytest.raises(ValueError, match="g_batchnorm applies to arch='mlp' only"):
        GANConfig(data_dim=64, arch="dcgan", image_shape=(8, 8), g_batchnorm=True)
    with pytest.raises(ValueError, match="g_batchnorm must be true or false"):
        GANConfig(**kw, g_batchnorm=1)


def test_mlp_generator_upsampling_draws_a_coarse_image_and_interpolates_it():
    """g_upsample f: G's last Linear gives (H/f) x (W/f) pre-activations, bilinearly upsampled
    to H x W before the output activation; differentiable twice (the Laplace proposal's
    Hessian); refused where it cannot apply; a config without the key is f = 1."""
    import torch.nn.functional as F

    from pgm.config import from_dict, to_dict

    kw = dict(data_dim=64, latent_dim=4, hidden=(8,), image_shape=(8, 8), g_batchnorm=True)
    up = GAN(**kw, g_upsample=2).eval()
    net = up.generator.net[0]
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [8, 16]
    z = torch.randn(5, 4, requires_grad=True)
    coarse = net[:4](z).view(5, 1, 4, 4)  # the Linear's 4 x 4 pre-activations
    want = (1 + torch.tanh(F.interpolate(coarse, scale_factor=2, mode="bilinear"))) / 2
    x = up.generate(z)
    torch.testing.assert_close(x, want.view(5, 64))
    assert 0 <= x.min() and x.max() <= 1
    (g,) = torch.autograd.grad(x.square().sum(), z, create_graph=True)
    (h,) = torch.autograd.grad(g[:, 0].sum(), z)
    assert torch.isfinite(h).all() and h.abs().sum() > 0
    cfg = from_dict(GANConfig, json.loads(json.dumps(to_dict(up.config))))
    assert cfg == up.config and cfg.g_upsample == 2
    assert from_dict(GANConfig, {k: v for k, v in to_dict(up.config).items()
                                 if k != "g_upsample"}).g_upsample == 1
    assert [m.out_features for m in GAN(**kw).generator.modules()
            if isinstance(m, nn.Linear)] == [8, 64]
    with pytest.raises(ValueError, match="must divide the image sides"):
        GANConfig(**kw, g_upsample=3)
    with pytest.raises(ValueError, match="arch='mlp' on images only"):
        GANConfig(data_dim=64, g_upsample=2)
    with pytest.raises(ValueError, match="arch='mlp' on images only"):
        GANConfig(data_dim=64, arch="dcgan", image_shape=(8, 8), g_upsample=2)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="g_upsample must be a positive integer"):
            GANConfig(**kw, g_upsample=bad)


def test_discriminator_loss_is_the_binary_cross_entropy_with_one_sided_smoothing():
    torch.manual_seed(0)
    gan = GAN(data_dim=2, latent_dim=2, hidden=(8,), output="identity")
    _, opt_d = make_optimizers(gan, GANFitConfig(lr=1e-12))
    x = torch.randn(32, 2)
    torch.manual_seed(5)
    stats = discriminator_step(gan, opt_d, x, label_smoothing=0.2)
    torch.manual_seed(5)
    with torch.no_grad():
        fake = gan.generate(gan.sample_z(32))
        p_real = torch.sigmoid(gan.discriminate(x))
        p_fake = torch.sigmoid(gan.discriminate(fake))
    bce = torch.nn.functional.binary_cross_entropy
    expected = bce(p_real, torch.full_like(p_real, 0.8)) + bce(p_fake, torch.zeros_like(p_fake))
    torch.testing.assert_close(stats[0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats[1], p_real.mean(), rtol=1e-4, atol=1e-6)


def test_the_discriminator_step_scores_real_and_fake_rows_in_one_pass_as_in_two():
    """D scores each row on its own, so the D step's one pass over real and fake rows gives
    the logits of two passes; no configuration puts batch norm in D (which would not)."""
    for kw in (dict(data_dim=16, latent_dim=2, hidden=(8,), image_shape=(4, 4), d_coarse=(6,)),
               dict(data_dim=64, latent_dim=4, arch="dcgan", image_shape=(8, 8), channels=4,
                    d_mlp_branch=(8,))):
        gan = GAN(**kw).eval()  # eval: no dropout, so the two are comparable
        x, fake = torch.rand(5, kw["data_dim"]), torch.rand(7, kw["data_dim"])
        both = gan.discriminate(torch.cat([x, fake]))
        torch.testing.assert_close(both, torch.cat([gan.discriminate(x), gan.discriminate(fake)]))
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                       for m in gan.discriminator.modules())


def test_fixed_image_maps_equal_torch_interpolate_and_avg_pool():
    """G's upsampling and the coarse D's pooling, as two small matrix products, equal
    ``F.interpolate`` (bilinear) and ``F.avg_pool2d`` on non-square images, factor 3 too."""
    import torch.nn.functional as F

    from pgm.models.gan import _pooling, _upsampling
    x = torch.randn(6, 2 * 3)
    want = F.interpolate(x.view(6, 1, 2, 3), scale_factor=3, mode="bilinear")
    torch.testing.assert_close(_upsampling((2, 3), 3)(x), want.reshape(6, 54))
    x = torch.randn(6, 4 * 6)
    torch.testing.assert_close(_pooling((4, 6))(x), F.avg_pool2d(x.view(6, 1, 4, 6), 2).flatten(1))


def test_dropout_masks_keep_1_minus_p_of_the_units_and_their_mean():
    """The discriminator's dropout (a mask from uniform draws on a CPU) zeroes a share p of
    the units, scales the rest by 1 / (1 - p), and is the identity in eval mode."""
    from pgm.models.gan import _Dropout
    torch.manual_seed(0)
    drop, x = _Dropout(0.3), torch.ones(200, 500)
    y = drop(x)
    zeros = (y == 0).float().mean().item()
    assert abs(zeros - 0.3) < 4 * math.sqrt(0.3 * 0.7 / x.numel())
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
    assert torch.equal(drop.eval()(x), x)


def test_hinge_losses_are_the_margins_on_the_logit():
    """D: mean max(0, 1 - d(x)) + mean max(0, 1 + d(G(z))); G: -mean d(G(z)), on the same
    draws; the statistics stay sigma(d)."""
    torch.manual_seed(0)
    gan = GAN(data_dim=2, latent_dim=2, hidden=(8,), output="identity")
    opt_g, opt_d = make_optimizers(gan, GANFitConfig(lr=1e-12))
    x = 3 * torch.randn(32, 2)  # logits on both sides of the margins
    torch.manual_seed(5)
    stats = discriminator_step(gan, opt_d, x, loss="hinge")
    torch.manual_seed(5)
    with torch.no_grad():
        fake = gan.generate(gan.sample_z(32))  # the step's order of random draws (dropout)
        d_real, d_fake = gan.discriminate(x), gan.discriminate(fake)
    expected = torch.clamp(1 - d_real, min=0).mean() + torch.clamp(1 + d_fake, min=0).mean()
    torch.testing.assert_close(stats[0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats[1], torch.sigmoid(d_real).mean(), rtol=1e-4, atol=1e-6)
    torch.manual_seed(7)
    g_loss = generator_step(gan, opt_g, 32, loss="hinge")
    torch.manual_seed(7)
    with torch.no_grad():
        expected_g = -gan.discriminate(gan.generate(gan.sample_z(32))).mean()
    torch.testing.assert_close(g_loss, expected_g, rtol=1e-4, atol=1e-6)


def test_hinge_loss_trains_an_image_gan_without_the_cross_entropy_settings(tmp_path):
    """train_gan(loss="hinge") drops the images' default label smoothing (a cross-entropy
    setting); asking for both, or for an unknown loss, is refused."""
    data = pgm.load_dataset("digits", binarize="none")
    gan, history = train_gan(data, tmp_path / "h", epochs=1, progress=False, hidden=(16,),
                             latent_dim=4, loss="hinge")
    saved = io.read_config(tmp_path / "h")["fit"]
    assert saved["loss"] == "hinge" and saved["label_smoothing"] == 0.0
    assert math.isfinite(history[0]["d_loss"]) and math.isfinite(history[0]["g_loss"])
    with pytest.raises(ValueError, match="belong to the cross-entropy"):
        train_gan(data, None, epochs=1, loss="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="belong to the cross-entropy"):
        GANFitConfig(loss="hinge", generator_loss="minimax")
    with pytest.raises(ValueError, match="unknown loss"):
        GANFitConfig(loss="wasserstein")


def test_k_discriminator_steps_per_generator_step(gauss1d):
    torch.manual_seed(0)
    gan = GAN(data_dim=1, latent_dim=1, hidden=(8,), z_dist="uniform", output="identity")
    cfg = GANFitConfig(epochs=1, batch_size=1000, k=3, snapshot_every=0, device="cpu")
    calls = []
    import pgm.inference.adversarial as adv

    original = adv.generator_step
    adv.generator_step = lambda *a, **kw: calls.append(1) or original(*a, **kw)
    try:
        fit_gan(gan, gauss1d, cfg, progress=False)  # 4 D steps per epoch -> 1 G step
    finally:
        adv.generator_step = original
    assert len(calls) == 1


# ----------------------------------------------------------------------------- explicit view


@pytest.mark.parametrize("config", [
    dict(data_dim=6, latent_dim=3, hidden=(16,), output="identity"),
    dict(data_dim=6, latent_dim=2, hidden=(16,), z_dist="uniform", output="sigmoid"),
    dict(data_dim=784, latent_dim=4, arch="dcgan", image_shape=(28, 28), channels=4),
])
def test_explicit_view_honours_the_contract(config, pyro_validation):
    gan = GAN(**config).eval()
    model = gan.explicit_view(0.1)
    x = torch.rand(5, config["data_dim"])
    guide_tr, model_tr = check_sites(model, x)
    L = config["latent_dim"]
    # guide = prior: the importance weight is the likelihood alone
    torch.testing.assert_close(guide_tr.nodes["z"]["log_prob"], model_tr.nodes["z"]["log_prob"])
    assert torch.isfinite(Trace_ELBO().differentiable_loss(model.model, model.guide, x))
    u = torch.randn(7, 5, L)
    assert model.decode(u).batch_shape == (7, 5) and model.decode(u).event_shape == (6,) \
        if config["data_dim"] == 6 else model.decode(u).batch_shape == (7, 5)
    torch.testing.assert_close(model.decode(u).mean, gan.generate(model.latent_to_z(u)))
    assert gan.sample(4).shape == (4, config["data_dim"])
    assert model.sample(4).shape == (4, config["data_dim"])
    assert gan.discriminate(x).shape == (5,)
    assert gan.discriminate(x.expand(3, 5, -1)).shape == (3, 5)


def test_uniform_latent_is_exactly_uniform():
    gan = GAN(data_dim=2, latent_dim=1, hidden=(4,), z_dist="uniform", output="identity")
    z = gan.explicit_view(1.0).latent_to_z(torch.randn(200_000, 1, generator=torch.Generator()
                                                     .manual_seed(0)))
    assert z.min() > -1 and z.max() < 1
    hist = torch.histc(z, bins=10, min=-1, max=1) / len(z)
    assert (hist - 0.1).abs().max() < 0.004  # SE of a bin's share: sqrt(.09/2e5) = 0.0007


def test_evaluate_and_choose_sigma_on_the_toy(toy, gauss1d):
    gan = toy[0]
    choice = choose_sigma(gan, gauss1d.x_valid, (0.03, 0.1, 0.3, 1.0, 3.0), method="iwae", n=100,
                          K=500)
    assert choice.sigma == choice.sigmas[max(range(5), key=lambda i: choice.log_px[i])]
    assert choice.sigma <= 0.3 < 3.0  # p_sigma = p_g * N(0, sigma^2): too wide at 3
    model = gan.explicit_view(choice.sigma)
    ev = evaluate(model, gauss1d, EvalConfig(ks=(1, 100), n=40, batch_size=40, ais_steps=200,
                                             ais_chains=8, ais_n=20, posterior_check=0,
                                             ais_initial="prior", device="cpu"))
    est = ev.estimators
    assert {"elbo", "iwae_100", "quadrature", "ais"} <= set(est)
    exact = est["quadrature"].per_datapoint
    # 1-D latent: quadrature gives log p_sigma(x) exactly; the bounds sit below it
    assert (est["elbo"].per_datapoint <= exact + 1e-3).all()
    assert (est["iwae_100"].per_datapoint.mean() - exact.mean()).abs() < 0.05
    # AIS from the prior (200 steps, 8 chains): measured mean error 0.015, worst point 0.15
    ais_err = est["ais"].per_datapoint - exact[:20]
    assert ais_err.mean().abs() < 0.06 and ais_err.abs().max() < 0.4
    # and the explicit density is close to the data's own: N(4, 0.5^2 + sigma^2)
    x = gauss1d.x_test[:40, 0].double()
    true = torch.distributions.Normal(4.0, math.sqrt(0.25 + choice.sigma ** 2)).log_prob(x)
    assert abs(exact.mean().item() - true.mean().item()) < 0.1


# ----------------------------------------------------------------------------- runs


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_resume_equals_uninterrupted(gauss1d, tmp_path, monkeypatch, spectral_norm):
    import pgm.inference.adversarial as adv

    kw = dict(epochs=4, seed=3, progress=False, sample_every=1, batch_size=200, d_dropout=0.1,
              on_epoch=save_epoch_samples, spectral_norm=spectral_norm)
    full, h_full = train_gan(gauss1d, tmp_path / "a", **kw)  # linear lr decay: 1-D default
    saves, save = [], io.save_checkpoint

    def interrupt(state, path):  # killed after the checkpoint of epoch 2 is written
        saves.append(save(state, path))
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(adv.io, "save_checkpoint", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_gan(gauss1d, tmp_path / "b", **kw)
    monkeypatch.undo()
    assert not (tmp_path / "b" / "history.csv").exists() or \
        len(io.read_history(tmp_path / "b" / "history.csv")) <= 2
    resumed, h_res = train_gan(gauss1d, tmp_path / "b", resume=True, **kw)
    drop = ("seconds", "save_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in h_res] == \
        [{k: v for k, v in r.items() if k not in drop} for r in h_full]
    _assert_same(resumed.state_dict(), full.state_dict())
    for name in ("snapshots.json", "steps.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert len(io.read_history(tmp_path / "b" / "history.csv")) == 4


def test_more_epochs_on_resume_continue_the_run(gauss1d, tmp_path):
    kw = dict(seed=1, progress=False, batch_size=500, lr_schedule="constant")
    full, h_full = train_gan(gauss1d, tmp_path / "a", epochs=3, **kw)
    train_gan(gauss1d, tmp_path / "b", epochs=1, **kw)
    resumed, h_res = train_gan(gauss1d, tmp_path / "b", epochs=3, resume=True, **kw)
    assert [r["d_loss"] for r in h_res] == [r["d_loss"] for r in h_full]
    _assert_same(resumed.state_dict(), full.state_dict())


def test_a_run_resumes_with_its_own_settings_after_the_defaults_change(gauss1d, tmp_path,
                                                                      monkeypatch):
    import pgm.inference.adversarial as adv

    today = adv.gan_settings_for

    def older(data, arch="mlp"):  # a run's defaults, before a release changed them
        return {**today(data, arch), "lr_d": 1e-3, "d_dropout": 0.2, "epochs": 2}

    monkeypatch.setattr(adv, "gan_settings_for", older)
    kw = dict(seed=2, progress=False, batch_size=500, lr_schedule="constant")
    full, h_full = train_gan(gauss1d, tmp_path / "a", **kw)
    train_gan(gauss1d, tmp_path / "b", epochs=1, **kw)
    monkeypatch.undo()
    resumed, h_res = train_gan(gauss1d, tmp_path / "b", epochs=2, resume=True, **kw)
    assert resumed.config.d_dropout == 0.2 and len(h_res) == 2
    assert [r["d_loss"] for r in h_res] == [r["d_loss"] for r in h_full]


def test_existing_run_other_settings_and_unknown_options_are_refused(gauss1d, tmp_path):
    train_gan(gauss1d, tmp_path / "r", epochs=1, progress=False, batch_size=1000)
    with pytest.raises(CheckpointError, match="already holds a run"):
        train_gan(gauss1d, tmp_path / "r", epochs=1, progress=False, batch_size=1000)
    with pytest.raises(CheckpointError, match="different settings"):
        train_gan(gauss1d, tmp_path / "r", epochs=2, progress=False, batch_size=500,
                  resume=True)
    with pytest.raises(CheckpointError, match="different model"):
        train_gan(gauss1d, tmp_path / "r", epochs=2, progress=False, batch_size=1000,
                  hidden=(4,), resume=True)
    with pytest.raises(ValueError, match="unknown GAN option"):
        train_gan(gauss1d, None, epochs=1, learning_rate=1.0)
    with pytest.raises(ValueError, match="generator_loss"):
        GANFitConfig(generator_loss="wasserstein")
    with pytest.raises(DataError, match="sigmoid"):
        fit_gan(GAN(data_dim=1, latent_dim=1, hidden=(4,)), gauss1d, epochs=1)


def test_image_gan_trains_and_draws(tmp_path):
    data = pgm.load_dataset("digits", binarize="none")
    gan, history = train_gan(data, tmp_path / "img", epochs=2, progress=False, hidden=(32,),
                             latent_dim=4, sample_every=1, on_epoch=save_epoch_samples)
    assert gan.config.output == "sigmoid" and gan.config.image_shape == (8, 8)
    s = gan.sample(10)
    assert s.shape == (10, 64) and s.min() >= 0 and s.max() <= 1
    assert (tmp_path / "img/figures/samples_epoch001.png").is_file()
    written = write_gan_figures(tmp_path / "img", gan, data, history)
    assert {p.name for p in written} == {"training_curves.png", "samples.png",
                                         "nearest_neighbours.png", "nn_histogram.png",
                                         "class_histogram.png"}
    assert (tmp_path / "img/cache/frechet_classifier.safetensors").is_file()  # for evaluate


def _resumed_old_run(tmp_path, missing: tuple[str, ...], **settings):
    """A 1-epoch run whose config.json lacks ``missing`` (written before those fields
    existed), resumed through the CLI to 2 epochs; its model as loaded."""
    from pgm.cli import main

    run = tmp_path / "old"
    train_gan(pgm.load_dataset("digits", binarize="none"), run, epochs=1, progress=False,
              **settings)
    cfg = json.loads((run / "config.json").read_text())
    for key in missing:
        del cfg["model_config"][key]
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["train", "gan", "--out", str(run), "--resume", "--epochs", "2",
                 "--no-progress"]) == 0
    assert len((run / "history.csv").read_text().splitlines()) == 3  # header, epochs 1 and 2
    return pgm.load_run(run).model


def test_a_dcgan_saved_before_the_mlp_branch_and_wide_g_resumes_and_loads_as_it_was(tmp_path):
    """A run written before ``d_mlp_branch`` and ``g_wide`` existed (no such keys in its
    config.json) resumes with its own networks, not today's defaults, and loads as saved."""
    gan = _resumed_old_run(tmp_path, ("d_mlp_branch", "g_wide"), arch="dcgan",
                           d_mlp_branch=None, g_wide=False)
    assert gan.config.d_mlp_branch is None and not hasattr(gan.discriminator.net[1], "mlp")
    assert not gan.config.g_wide and gan.generator.net[0][0].out_features == 2 * 64 * 2 * 2


def test_an_mlp_gan_saved_before_g_batchnorm_g_upsample_and_d_coarse_resumes_as_it_was(
        tmp_path):
    """A run written before ``g_batchnorm``, ``g_upsample`` and ``d_coarse`` existed (no such
    keys in its config.json) resumes with its own networks, not today's defaults, and loads
    as saved."""
    gan = _resumed_old_run(tmp_path, ("g_batchnorm", "g_upsample", "d_coarse"), hidden=(16,),
                           g_batchnorm=False, g_upsample=1, d_coarse=None)
    assert not gan.config.g_batchnorm and gan.config.g_upsample == 1
    assert not any(isinstance(m, (nn.BatchNorm1d, _Separable)) for m in gan.generator.modules())
    assert gan.config.d_coarse is None and not hasattr(gan.discriminator.net[1], "coarse")


def test_cli_trains_the_dcgan_with_its_own_defaults(tmp_path):
    """`pgm train gan --arch conv` trains the DCGAN with gan_settings_for's DCGAN defaults; a
    resume keeps the run's architecture, and another architecture is refused."""
    from pgm.cli import main

    run = tmp_path / "dc"
    assert main(["train", "gan", "--data", "digits", "--arch", "conv", "--epochs", "1",
                 "--out", str(run), "--no-progress"]) == 0
    cfg = io.read_config(run)
    assert cfg["model_config"]["arch"] == "dcgan" and cfg["model_config"]["channels"] == 64
    assert not cfg["model_config"]["spectral_norm"] and cfg["fit"]["lr_d"] is None
    assert cfg["model_config"]["d_dropout"] == 0.3 and cfg["fit"]["epochs"] == 1
    assert cfg["model_config"]["d_mlp_branch"] == [512, 256]  # the conv + MLP discriminator
    assert cfg["model_config"]["g_wide"] is True  # the wide generator
    gan = pgm.load_run(run).model
    assert gan.config.arch == "dcgan" and gan.sample(3).shape == (3, 64)
    assert main(["train", "gan", "--out", str(run), "--resume", "--epochs", "2",
                 "--no-progress"]) == 0
    assert io.read_config(run)["model_config"]["arch"] == "dcgan"
    before = io.read_config(run)
    assert main(["train", "gan", "--out", str(run), "--resume", "--arch", "mlp", "--epochs",
                 "3", "--no-progress"]) == 2  # --arch mlp said, not taken by default
    assert io.read_config(run) == before
    mlp = tmp_path / "mlp"
    assert main(["train", "gan", "--data", "digits", "--epochs", "1", "--out", str(mlp),
                 "--no-progress"]) == 0
    before = io.read_config(mlp)
    assert before["model_config"]["g_batchnorm"] is True  # the MLP GAN's own defaults
    assert before["model_config"]["g_upsample"] == 2
    assert main(["train", "gan", "--out", str(mlp), "--resume", "--arch", "conv", "--epochs",
                 "2", "--no-progress"]) == 2
    assert io.read_config(mlp) == before
