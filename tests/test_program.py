"""Any Pyro model/guide pair, measured: pgm.inference.program and evaluate(model, guide, x).

Known answers: a Gamma-Poisson model (a positive latent, moved to R by biject_to) whose
marginal is negative binomial; a Gaussian mixture with a continuous offset (an enumerated
discrete latent) whose marginal is a mixture of Gaussians; a hand-written joint density of
several constrained sites; and pgm's own VAE against the same network written as a
tutorial-style Pyro program.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoNormal
from torch import nn
from torch.distributions import biject_to, constraints

import pgm
from pgm.errors import DataError
from pgm.evaluation import EvalConfig, evaluate
from pgm.inference.adapter import latent_callables
from pgm.inference.program import Program, ProgramError
from pgm.report import write_evaluation
from pgm.representation import incommensurable

# ---- a constrained latent with a closed-form marginal ------------------------------------------

A, B_RATE = 2.0, 1.0  # lam ~ Gamma(A, B_RATE), x | lam ~ Poisson(lam): x ~ NegBin(A, 1/(1+B))


def gamma_poisson(x):
    with pyro.plate("data", len(x)):
        lam = pyro.sample("lam", dist.Gamma(A, B_RATE))
        pyro.sample("count", dist.Poisson(lam), obs=x)


def rough_guide(x):
    """Gamma with the posterior's shape but a rate 30% off: every bound is strict."""
    with pyro.plate("data", len(x)):
        pyro.sample("lam", dist.Gamma(A + x, 1.3 * (B_RATE + 1)))


def negbin_log_marginal(x):
    return dist.NegativeBinomial(total_count=A, probs=torch.tensor(1 / (1 + B_RATE))).log_prob(x)


def _le(lo, hi, slack=0.0):
    """lo <= hi on the shared datapoints, within 3 SE of the paired difference."""
    m = min(len(lo), len(hi))
    d = (lo[:m] - hi[:m]).double()
    assert d.mean() <= 3 * d.std() / math.sqrt(m) + slack, (d.mean(), d.std() / math.sqrt(m))


def test_every_bound_sits_on_its_side_of_a_known_marginal():
    torch.manual_seed(0)
    x = dist.NegativeBinomial(A, torch.tensor(0.5)).sample((60,))
    exact = negbin_log_marginal(x).double()
    cfg = EvalConfig(ks=(1, 10, 1000), n=60, ais_steps=200, ais_chains=8, ais_n=30, bdmc=True,
                     posterior_check=0, batch_size=30, device="cpu")
    ev = evaluate(gamma_poisson, rough_guide, x, config=cfg)
    est = ev.estimators
    # the 1-D unconstrained latent is integrated numerically (log-Jacobian included)
    quad = est["quadrature"]
    assert quad.bound == "numerical"
    torch.testing.assert_close(quad.per_datapoint, exact, atol=2e-3, rtol=0)
    for name in ("elbo", "iwae_10", "iwae_1000", "ais"):
        assert est[name].bound == "lower"
        _le(est[name].per_datapoint, exact)
    # the guide is 30% off: the ELBO is strictly below, IWAE_1000 within MC error of exact
    assert (exact - est["elbo"].per_datapoint).mean() > 0.05
    _le(exact, est["iwae_1000"].per_datapoint)
    assert (est["iwae_1000"].per_datapoint - exact).abs().mean() < 0.03
    assert (est["ais"].per_datapoint - exact[:30]).abs().mean() < 0.05
    # BDMC sandwich on data simulated from the program
    assert est["bdmc_upper"].bound == "upper" and est["bdmc_upper"].data == "simulated"
    _le(est["bdmc_lower"].per_datapoint, est["bdmc_upper"].per_datapoint)
    assert ev.best() == "quadrature"


def test_an_enumerated_discrete_latent_is_summed_out_exactly():
    mus, w = torch.tensor([-3.0, 0.0, 4.0]), torch.tensor([0.2, 0.5, 0.3])

    @config_enumerate
    def model(x):
        with pyro.plate("data", len(x)):
            m = pyro.sample("m", dist.Categorical(w))
            pyro.sample("x", dist.Normal(mus[m], 1.0), obs=x)

    def guide(x):
        pass

    x = torch.tensor([-3.0, 0.5, 4.0, 10.0])
    ev = evaluate(model, guide, x, config=EvalConfig(ks=(1,), ais_steps=0, device="cpu"))
    expected = torch.logsumexp(torch.log(w)[:, None] + dist.Normal(mus[:, None], 1.0).log_prob(x),
                               0)
    assert set(ev.estimators) == {"exact"}
    assert ev.estimators["exact"].extra["method"] == "enumeration"
    torch.testing.assert_close(ev.estimators["exact"].per_datapoint, expected.double())


def test_enumerated_and_continuous_latents_together():
    """m ~ Cat(w), z ~ N(0, 1), x ~ N(mu_m + z, 1): x ~ sum_m w_m N(mu_m, 2)."""
    mus, w = torch.tensor([-3.0, 0.0, 4.0]), torch.tensor([0.2, 0.5, 0.3])

    @config_enumerate
    def model(x):
        with pyro.plate("data", len(x)):
            m = pyro.sample("m", dist.Categorical(w))
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(mus[m] + z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    x = torch.tensor([-3.0, 0.5, 4.0])
    f = Program(model, guide, x).callables()
    z = torch.linspace(-6, 6, 2001)[:, None, None].expand(-1, 3, 1)
    # integrate p(x, z) over z by the trapezoid rule: the enumerated joint, marginalised
    log_px = torch.logsumexp(f.log_joint(x, z).double(), 0) + math.log(12 / 2000)
    expected = torch.logsumexp(
        torch.log(w)[:, None] + dist.Normal(mus[:, None], math.sqrt(2)).log_prob(x), 0)
    torch.testing.assert_close(log_px, expected.double(), atol=1e-4, rtol=0)
    torch.testing.assert_close(f.log_prior(z[:5]), dist.Normal(0.0, 1.0).log_prob(z[:5, :, 0]))


def test_several_sites_pack_into_one_vector_with_their_jacobians():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            a = pyro.sample("a", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            s = pyro.sample("s", dist.LogNormal(0.0, 0.5))
            p = pyro.sample("p", dist.Dirichlet(torch.ones(3)))
            with pyro.plate("pixels", x.shape[1], dim=-2):
                pyro.sample("x", dist.Normal(a.sum(-1) + p[..., 0], s), obs=x.T)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("a", dist.Normal(torch.zeros(2), 2.0).to_event(1))
            pyro.sample("s", dist.LogNormal(0.1, 0.5))
            pyro.sample("p", dist.Dirichlet(2 * torch.ones(3)))

    torch.manual_seed(0)
    x = torch.randn(5, 4)
    program = Program(model, guide, x)
    assert [s.name for s in program.latents] == ["a", "s", "p"] and program.latent_dim == 5
    f = program.callables()
    z = f.sample_q(x, 7)
    assert z.shape == (7, 5, 5) and not z.requires_grad
    a, log_s, u = z[..., :2], z[..., 2], z[..., 3:]
    simplex = biject_to(constraints.simplex)
    p, s = simplex(u), log_s.exp()
    jac = log_s + simplex.log_abs_det_jacobian(u, p)

    def prior(sd_a, loc_s, conc):
        return (dist.Normal(0.0, sd_a).log_prob(a).sum(-1) + dist.LogNormal(loc_s, 0.5)
                .log_prob(s) + dist.Dirichlet(conc * torch.ones(3)).log_prob(p) + jac)

    lik = dist.Normal((a.sum(-1) + p[..., 0])[..., None], s[..., None]).log_prob(x).sum(-1)
    torch.testing.assert_close(f.log_joint(x, z), prior(1.0, 0.0, 1.0) + lik)
    torch.testing.assert_close(f.log_prior(z), prior(1.0, 0.0, 1.0))
    torch.testing.assert_close(f.log_q(z, x), prior(2.0, 0.1, 2.0))
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f.log_joint(x, zz).sum(), zz)
    assert torch.isfinite(g).all() and (g != 0).all()
    assert f.sample_prior(5, 3).shape == (3, 5, 5)


class TutorialVAE(nn.Module):
    """Pyro's VAE tutorial, written as it is there: its own site names, no pgm class, sharing
    the networks of a pgm VAE so that both must give the same numbers."""

    def __init__(self, vae):
        super().__init__()
        self.encoder, self.decoder, self.z_dim = vae.encoder, vae.decoder, vae.latent_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("batch", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            logits = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("batch", x.shape[0]):
            z_loc, log_var = self.encoder(x).chunk(2, -1)
            pyro.sample("latent", dist.Normal(z_loc, torch.exp(0.5 * log_var)).to_event(1))


def test_a_tutorial_style_vae_and_pgms_vae_give_the_same_estimates(tmp_path):
    data = pgm.load_dataset("digits")
    torch.manual_seed(0)
    vae = pgm.VAE(data_dim=64, latent_dim=3, hidden=(32,))
    pgm.fit(vae, data, epochs=2, progress=False)
    tutorial = TutorialVAE(vae)
    cfg = EvalConfig(ks=(1, 100), n=20, batch_size=10, ais_steps=20, ais_chains=4, ais_n=10,
                     bdmc=True, gaps=True, gaps_n=4, gaps_steps=10, posterior_check=0,
                     exact=False, device="cpu")
    ours_ev = evaluate(vae, data, cfg)
    theirs_ev = evaluate(tutorial.model, tutorial.guide, data.x_test, config=cfg)
    ours, theirs = ours_ev.estimators, theirs_ev.estimators
    assert set(theirs) == set(ours) >= {"elbo", "iwae_100", "ais", "bdmc_upper", "elbo_qstar"}
    for name, est in ours.items():
        torch.testing.assert_close(theirs[name].per_datapoint, est.per_datapoint, atol=1e-4,
                                   rtol=0, msg=name)
        assert theirs[name].bound == est.bound
    # both results say what they are densities of, so pgm report sets them side by side
    rows = [write_evaluation(tmp_path / name, ev, dataset=data.name)
            for name, ev in (("pgm", ours_ev), ("tutorial", theirs_ev))]
    assert incommensurable(rows) == {}
    assert rows[1]["representation"]["density"].startswith("log-probability")
    assert rows[1]["device"] == "cpu" and rows[1]["best"] in theirs


def test_the_traced_path_equals_the_fast_path_for_pgms_models():
    torch.manual_seed(0)
    for model in (pgm.VAE(data_dim=10, latent_dim=2, hidden=(8,)),
                  pgm.CVAE(data_dim=10, latent_dim=2, hidden=(8,), n_classes=3)):
        x = torch.rand(4, 10).bernoulli()
        y = torch.tensor([0, 1, 2, 1]) if model.conditional else None
        traced, plain = latent_callables(model, y, traces=True), latent_callables(model, y)
        z = plain.sample_q(x, 5)
        for name in ("log_joint", "log_q"):
            args = (x, z) if name == "log_joint" else (z, x)
            torch.testing.assert_close(getattr(traced, name)(*args), getattr(plain, name)(*args))
        torch.testing.assert_close(traced.log_prior(z), plain.log_prior(z))


def test_ais_runs_a_program_once_per_point_it_visits():
    """AIS asks log p(x, z) and log p(z) at each point; the traced callables answer both from
    one run of the model (the second run was half of AIS's time on a traced VAE)."""
    from pgm.inference.ais import ais
    from pgm.inference.schedules import linear_schedule

    runs = {"model": 0, "log_joint": 0, "sample_prior": 0}

    def counted(x):
        runs["model"] += 1
        gamma_poisson(x)

    x = torch.tensor([0.0, 3.0, 7.0])
    f = Program(counted, rough_guide, x).callables()

    def tally(name):
        def call(*args):
            runs[name] += 1
            return getattr(f, name)(*args)
        return call

    g = f._replace(log_joint=tally("log_joint"), sample_prior=tally("sample_prior"))
    runs["model"] = 0
    torch.manual_seed(0)
    est = ais(g, x, schedule=linear_schedule(5), num_chains=2, num_leapfrog=3, adapt="none")
    assert torch.isfinite(est.per_datapoint).all()
    assert runs["log_joint"] > 0
    # and once more, validated, on x: its values and the model's parameters are checked
    assert runs["model"] == runs["log_joint"] + runs["sample_prior"] + 1


def test_latents_are_integrated_over_the_models_support_not_the_guides():
    """A positive guide (LogNormal) for a real latent (Normal): IWAE stays a bound, and
    quadrature integrates over all of R (it used the guide's support, z > 0: 8.7 nats low)."""
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.LogNormal(0.0, 1.0))

    x = torch.tensor([-2.0, -1.0, 0.0, 1.0])
    exact = dist.Normal(0.0, math.sqrt(1.25)).log_prob(x).double()
    ev = evaluate(model, guide, x, config=EvalConfig(ks=(1, 100), ais_steps=0, device="cpu"))
    torch.testing.assert_close(ev.estimators["quadrature"].per_datapoint, exact, atol=2e-3,
                               rtol=0)


def test_arguments_are_per_datapoint_by_the_length_of_all_of_x():
    """Mixture weights (3,) with n = 3 of 50 datapoints are the model's, not per datapoint,
    in batches of 2 as in one; labels are sliced given by keyword as by position."""
    mus = torch.tensor([-3.0, 0.0, 4.0])

    @config_enumerate
    def mixture(x, w):
        with pyro.plate("data", len(x)):
            m = pyro.sample("m", dist.Categorical(w))
            pyro.sample("x", dist.Normal(mus[m], 1.0), obs=x)

    w, x = torch.tensor([0.2, 0.5, 0.3]), torch.linspace(-4, 4, 50)
    true = torch.logsumexp(w.log()[:, None] + dist.Normal(mus[:, None], 1.0).log_prob(x[:3]), 0)
    ev = evaluate(mixture, lambda x, w: None, x, w,
                  config=EvalConfig(ks=(1,), n=3, batch_size=2, ais_steps=0, device="cpu"))
    torch.testing.assert_close(ev.estimators["exact"].per_datapoint, true.double())

    def labelled(x, y=None):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(mus[y], 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x, y=None):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(0.8 * x, 0.5))

    y = torch.arange(20) % 3
    x = mus[y] + torch.randn(20)
    cfg = EvalConfig(ks=(1, 10), n=20, batch_size=8, ais_steps=0, device="cpu")
    torch.manual_seed(0)
    by_position = evaluate(labelled, guide, x, y, config=cfg).estimators["iwae_10"]
    torch.manual_seed(0)
    by_keyword = evaluate(labelled, guide, x, config=cfg, y=y).estimators["iwae_10"]
    torch.testing.assert_close(by_keyword.per_datapoint, by_position.per_datapoint)


def test_bookkeeping_sites_and_several_observed_sites():
    """pyro.deterministic records no data; BDMC needs one observed site to simulate x, so a
    program with two has none, and its other estimators stand."""
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)
            pyro.deterministic("z2", z**2)

    def two_observed(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)
            pyro.sample("x2", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(0.8 * x, 0.5))

    cfg = EvalConfig(ks=(1, 10), n=8, ais_steps=10, ais_chains=2, ais_n=4, bdmc=True,
                     posterior_check=0, device="cpu")
    x = torch.randn(8)
    assert "bdmc_upper" in evaluate(model, guide, x, config=cfg).estimators
    est = evaluate(two_observed, guide, x, config=cfg).estimators
    assert "bdmc_upper" not in est and {"iwae_10", "ais"} <= set(est)


def test_a_feature_plate_of_two_is_not_taken_for_the_data_plate():
    def model(x):
        with pyro.plate("feat", 2, dim=-1), pyro.plate("data", len(x), dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        with pyro.plate("feat", 2, dim=-1), pyro.plate("data", len(x), dim=-2):
            pyro.sample("z", dist.Normal(0.8 * x, 0.5))

    x = torch.randn(6, 2)
    ev = evaluate(model, guide, x, config=EvalConfig(ks=(1,), ais_steps=0, device="cpu"))
    exact = dist.Normal(0.0, math.sqrt(1.25)).log_prob(x).sum(-1).double()
    torch.testing.assert_close(ev.estimators["quadrature"].per_datapoint, exact, atol=2e-3,
                               rtol=0)


def test_data_outside_the_likelihoods_support_is_a_data_error(pyro_validation):
    """As Pyro's validation finds it (on by default), where the estimators run unvalidated."""
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Bernoulli(logits=z), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    x, cfg = torch.tensor([0.0, 1.0, 3.0, 1.0]), EvalConfig(ks=(1,), ais_steps=0, device="cpu")
    with pytest.raises(DataError, match="rejects this batch of x.*within the support"):
        evaluate(model, guide, x, config=cfg)  # a Bernoulli count of 3
    with pyro.validation_enabled(False):  # the user's choice stands
        assert evaluate(model, guide, x, config=cfg).estimators["elbo"].n == 4


@pytest.mark.parametrize("case, match", [
    ("global", "outside the data plate"),
    ("discrete", "discrete and not marked for enumeration"),
    ("no-observed", "no observed site"),
    ("no-plate", "no plate of size"),
    ("guide-missing", "the guide has no site"),
    ("guide-no-plate", "the guide samples 'z' outside a plate over the datapoints"),
    ("varying-support", "support that changes with the datapoint"),
    ("fixed-size-guide", "lie in plate 'data' of size 6, not in one of size"),
])
def test_programs_the_estimators_cannot_measure_say_why(case, match):
    def model(x):
        if case == "no-plate":
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x)), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)
            return
        if case == "varying-support":  # z ~ Uniform(0, c) with c per datapoint
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Uniform(torch.zeros(len(x)), 1.0 + x.abs()))
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)
            return
        t = pyro.sample("t", dist.Normal(0.0, 1.0)) if case == "global" else 0.0
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(t, 1.0))
            if case == "discrete":
                z = z + pyro.sample("c", dist.Bernoulli(0.5))
            if case != "no-observed":
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        if case == "global":
            pyro.sample("t", dist.Normal(0.0, 1.0))
        if case == "no-plate":
            pyro.sample("z", dist.Normal(torch.zeros(len(x)), 1.0).to_event(1))
            return
        if case == "guide-no-plate":
            pyro.sample("z", dist.Normal(0.0, 1.0))
        elif case == "varying-support":
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Uniform(torch.zeros(len(x)), 1.0 + x.abs()))
        elif case != "guide-missing":
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(0.0, 1.0))

    if case == "fixed-size-guide":  # an AutoGuide's plate has the whole data's size
        guide = AutoNormal(model)
        guide(torch.randn(6))
    with pytest.raises(ProgramError, match=match):
        evaluate(model, guide, torch.randn(6), config=EvalConfig(ks=(1,), ais_steps=0))
