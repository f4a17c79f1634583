"""Schedules, HMC invariance, AIS and BDMC on the linear-Gaussian model.

Tolerances are standard errors: of a sample mean (1/sqrt(N)), of a sample variance
(sqrt(2/N)) or covariance, or of the mean of paired per-datapoint differences.
"""

import math

import pytest
import torch
from fixtures import linear_gaussian_callables

from pgm.inference.ais import AISInfo, AISState, ais, ais_step, bdmc_upper
from pgm.inference.hmc import HMCState, adapt_step_size, hmc_init, hmc_step, value_and_grad
from pgm.inference.schedules import check_schedule, linear_schedule, sigmoid_schedule
from pgm.models.linear_gaussian import (
    linear_gaussian_log_marginal,
    linear_gaussian_posterior,
    linear_gaussian_sample,
)

F64 = torch.float64


def linear_gaussian(L: int = 2, D: int = 5, B: int = 20, seed: int = 0, sigma: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, L, generator=g, dtype=F64)
    b = torch.randn(D, generator=g, dtype=F64)
    x, z = linear_gaussian_sample(W, b, sigma, B, generator=g)
    return W, b, sigma, x, z


def paired(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = a - b
    return d.mean().item(), (d.std() / math.sqrt(d.numel())).item()


# ------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("make", [linear_schedule, sigmoid_schedule])
def test_schedules_are_monotone_from_0_to_1(make):
    betas = make(100)
    assert betas.shape == (101,) and betas.dtype == F64
    assert betas[0].item() == 0.0 and betas[-1].item() == 1.0
    assert bool((betas[1:] >= betas[:-1]).all())
    torch.testing.assert_close(check_schedule(betas), betas)


def test_sigmoid_schedule_is_dense_at_both_ends():
    steps = torch.diff(sigmoid_schedule(100, delta=4.0))
    assert steps[0] < steps[50] / 10 and steps[-1] < steps[50] / 10
    torch.testing.assert_close(steps, steps.flip(0))  # symmetric


@pytest.mark.parametrize(
    "betas",
    [
        [0.1, 0.5, 1.0],  # does not start at 0
        [0.0, 0.5, 0.9],  # does not end at 1
        [0.0, 0.6, 0.4, 1.0],  # not monotone
        [[0.0, 1.0]],  # not 1-D
        [0.0],  # too short
        [0.0, math.nan, 1.0],  # not finite
    ],
)
def test_check_schedule_rejects_bad_schedules(betas):
    with pytest.raises(ValueError):
        check_schedule(betas)


def test_schedule_constructors_reject_bad_arguments():
    with pytest.raises(ValueError):
        linear_schedule(0)
    with pytest.raises(ValueError):
        sigmoid_schedule(10, delta=0.0)


# ------------------------------------------------------------------------------------- HMC


def standard_normal(z):
    return -0.5 * (z * z).sum(-1)


def test_hmc_leaves_standard_normal_invariant():
    g = torch.Generator().manual_seed(0)
    N = 10_000
    z = torch.randn(100, 100, 3, generator=g, dtype=F64)  # batch shape (100, 100), L = 3
    state = hmc_init(z, standard_normal, 0.6)
    for _ in range(5):
        state, info = hmc_step(state, standard_normal, num_leapfrog=5, generator=g)
    assert state.z.shape == (100, 100, 3) and info.accept_prob.shape == (100, 100)
    assert 0.5 < info.accept_prob.mean().item() < 1.0  # the chains really moved
    flat = state.z.reshape(N, 3)
    assert (flat.mean(0).abs() < 4 / math.sqrt(N)).all()
    assert ((flat.var(0) - 1).abs() < 4 * math.sqrt(2 / N)).all()


def test_hmc_with_a_gradient_alone_at_the_inner_steps_is_the_same_transition():
    # grad_fn serves the leapfrog steps whose value is unused; the last step still takes the
    # value and gradient, so the transition is the same draw for draw
    z = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    calls = []

    def grad_fn(z):
        calls.append(1)
        return -z

    out = []
    for kw in ({}, {"grad_fn": grad_fn}):
        g = torch.Generator().manual_seed(1)
        state = hmc_init(z, standard_normal, 0.5)
        for _ in range(3):
            state, info = hmc_step(state, standard_normal, num_leapfrog=4, generator=g, **kw)
        out.append((state, info))
    assert len(calls) == 3 * 3  # num_leapfrog - 1 per transition
    for a, b in zip(out[0][0][:4], out[1][0][:4]):
        torch.testing.assert_close(a, b)
    assert torch.equal(out[0][1].accepted, out[1][1].accepted)


def test_hmc_leaves_correlated_gaussian_invariant_with_per_chain_step_sizes():
    g = torch.Generator().manual_seed(1)
    N = 20_000
    cov = torch.tensor([[1.0, 0.8], [0.8, 2.0]], dtype=F64)
    precision, chol = torch.linalg.inv(cov), torch.linalg.cholesky(cov)
    mean = torch.tensor([1.0, -2.0], dtype=F64)

    def log_density(z):
        d = z - mean
        return -0.5 * ((d @ precision) * d).sum(-1)

    z = mean + torch.randn(N, 2, generator=g, dtype=F64) @ chol.T
    step_size = 0.05 + 0.5 * torch.rand(N, generator=g, dtype=F64)
    state = hmc_init(z, log_density, step_size)
    for _ in range(5):
        state, _ = hmc_step(state, log_density, generator=g)
    torch.testing.assert_close(state.step_size, step_size)
    emp_mean, emp_cov = state.z.mean(0), torch.cov(state.z.T)
    assert ((emp_mean - mean).abs() < 4 * torch.sqrt(cov.diagonal() / N)).all()
    # SE of a sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / N).
    se_cov = torch.sqrt((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / N)
    assert ((emp_cov - cov).abs() < 4 * se_cov).all()


def test_hmc_with_a_mass_matrix_leaves_an_ill_conditioned_gaussian_invariant():
    # Variances 100 and 0.01 along rotated axes: with C C^T = cov the target looks isotropic,
    # so a step of 0.8 is accepted almost surely and the chains stay distributed as the target;
    # without it the same step diverges. C = I is the identity-mass kernel draw for draw.
    g = torch.Generator().manual_seed(3)
    N = 20_000
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=F64)
    cov = rot @ torch.diag(torch.tensor([100.0, 0.01], dtype=F64)) @ rot.T
    precision, chol = torch.linalg.inv(cov), torch.linalg.cholesky(cov)

    def log_density(z):
        return -0.5 * ((z @ precision) * z).sum(-1)

    z = torch.randn(N, 2, generator=g, dtype=F64) @ chol.T
    state = hmc_init(z, log_density, 0.8)
    for _ in range(5):
        state, info = hmc_step(state, log_density, num_leapfrog=5, generator=g,
                               inverse_mass_sqrt=chol)
        assert info.accept_prob.mean() > 0.9
    emp_mean, emp_cov = state.z.mean(0), torch.cov(state.z.T)
    assert ((emp_mean).abs() < 4 * torch.sqrt(cov.diagonal() / N)).all()
    se_cov = torch.sqrt((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / N)
    assert ((emp_cov - cov).abs() < 4 * se_cov).all()
    assert (torch.linalg.solve(chol, (state.z - z).T).T.std(0) > 0.5).all()  # it moved along both
    _, info = hmc_step(hmc_init(z, log_density, 0.8), log_density, num_leapfrog=5,
                       generator=g)
    assert info.accept_prob.mean() < 0.01  # identity mass: the narrow direction blows up
    out = []
    for c in (None, torch.eye(2, dtype=F64).expand(N, 2, 2)):
        gen = torch.Generator().manual_seed(4)
        out.append(hmc_step(hmc_init(z, log_density, 0.05), log_density, generator=gen,
                            inverse_mass_sqrt=c)[0])
    torch.testing.assert_close(out[0].z, out[1].z, rtol=0, atol=0)
    with pytest.raises(ValueError, match="inverse_mass_sqrt"):
        hmc_step(state, log_density, inverse_mass_sqrt=torch.eye(3, dtype=F64))


def test_hmc_accepts_almost_surely_for_tiny_steps():
    g = torch.Generator().manual_seed(2)
    state = hmc_init(torch.randn(500, 2, generator=g, dtype=F64), standard_normal, 1e-3)
    new, info = hmc_step(state, standard_normal, generator=g)
    assert info.accept_prob.min().item() > 0.999
    assert not info.divergent.any()
    torch.testing.assert_close(new.log_density, standard_normal(new.z))
    torch.testing.assert_close(new.grad, -new.z)


def test_hmc_flags_divergences_and_keeps_the_state():
    g = torch.Generator().manual_seed(3)
    state = hmc_init(torch.randn(50, 2, generator=g, dtype=F64), standard_normal, 1e3)
    new, info = hmc_step(state, standard_normal, generator=g)
    assert info.divergent.all() and not info.accepted.any()
    assert (info.accept_prob == 0).all()
    torch.testing.assert_close(new.z, state.z)


def test_adapt_step_size_moves_towards_target_and_clamps():
    eps = torch.tensor([0.1, 0.1, 0.9999, 2e-4])
    new = adapt_step_size(eps, torch.tensor([0.9, 0.3, 0.9, 0.0]), target=0.65)
    torch.testing.assert_close(new, torch.tensor([0.102, 0.098, 1.0, 1.96e-4]))
    assert adapt_step_size(torch.tensor([1e-4]), torch.tensor([0.0]))[0] == pytest.approx(1e-4)
    with pytest.raises(ValueError):
        adapt_step_size(eps, eps, target=1.5)


def test_value_and_grad_checks_the_shape():
    with pytest.raises(ValueError, match="batch shape"):
        value_and_grad(lambda z: z.sum(), torch.zeros(3, 2))
    value, grad = value_and_grad(lambda z: torch.zeros(z.shape[:-1]), torch.zeros(3, 2))
    assert (grad == 0).all()
    assert isinstance(HMCState(*[value] * 4), tuple)


# ------------------------------------------------------------------------------ AIS, BDMC


@pytest.fixture(scope="module")
def model():
    W, b, sigma, x, z = linear_gaussian()
    return W, b, sigma, x, z, linear_gaussian_log_marginal(x, W, b, sigma)


def test_ais_from_the_exact_posterior_is_exact(model):
    # With p_0 = q = p(z|x), ell(z) = log p(x) everywhere: every log weight is log p(x).
    W, b, sigma, x, _, exact = model
    torch.manual_seed(0)
    f = linear_gaussian_callables(W, b, sigma, q="exact")
    est = ais(f, x, schedule=linear_schedule(10), num_chains=4, initial="q")
    torch.testing.assert_close(est.extra["log_weights"], exact.expand(4, -1), rtol=0, atol=1e-9)
    torch.testing.assert_close(est.per_datapoint, exact, rtol=0, atol=1e-9)


@pytest.fixture(scope="module")
def ais_and_bdmc(model):
    W, b, sigma, x, z, _ = model
    f = linear_gaussian_callables(W, b, sigma, q="perturbed")
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(1001)  # (never seeded like the global RNG: see ais())
    schedule = sigmoid_schedule(500)
    lower = ais(f, x, schedule=schedule, num_chains=16, generator=g)
    upper = bdmc_upper(
        f,
        x,
        z,
        schedule=schedule,
        num_chains=16,
        generator=g,
        step_size=lower.extra["step_sizes"],
        adapt="none",
    )
    return lower, upper


def test_ais_is_close_to_exact_and_below_it(model, ais_and_bdmc):
    *_, exact = model
    lower, _ = ais_and_bdmc
    assert lower.n == 20 and lower.extra["num_steps"] == 500 and lower.extra["num_chains"] == 16
    assert lower.extra["log_weights"].shape == (16, 20)
    assert lower.extra["z_final"].shape == (16, 20, 2)
    assert lower.extra["se_chains"].shape == (20,)
    assert 0.4 < lower.extra["acceptance"] < 0.95
    # A few divergences while beta grows faster than the 2%-per-step adaptation shrinks steps,
    # more with 4 pilot chains' noisy acceptance than with 16 (measured: 0.18% of the
    # transitions against 0.01%); a divergent proposal is rejected, so they cost only moves.
    assert lower.extra["divergences"] < 5e-3 * 500 * 16 * 20
    # Within 0.1 nat of log p(x) on average, and a (stochastic) lower bound.
    assert abs((lower.per_datapoint - exact).mean().item()) < 0.1
    mean, se = paired(exact, lower.per_datapoint)
    assert mean >= -3 * se


def test_bdmc_sandwiches_log_px(model, ais_and_bdmc):
    *_, exact = model
    lower, upper = ais_and_bdmc
    assert upper.extra["acceptance_per_step"].shape == (499,)  # no transition at beta = 0
    # A stochastic upper bound ...
    mean, se = paired(upper.per_datapoint, exact)
    assert mean >= -3 * se
    # ... and the sandwich upper - lower is non-negative within SE and small.
    gap, se = paired(upper.per_datapoint, lower.per_datapoint)
    assert gap >= -3 * se
    assert gap < 0.1 + 3 * se


def test_ais_from_q_with_datapoint_batches(model):
    W, b, sigma, x, _, exact = model
    f = linear_gaussian_callables(W, b, sigma, q="perturbed")
    torch.manual_seed(2)
    calls = []
    est = ais(
        f,
        x,
        schedule=sigmoid_schedule(100),
        num_chains=8,
        initial="q",
        batch_size=7,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls[-1] == (300, 300)  # 3 batches of 100 steps
    assert est.extra["step_sizes"].shape == (101, 20)
    mean, se = paired(exact, est.per_datapoint)
    assert mean >= -3 * se and abs(mean) < 0.05


def test_ais_rejects_invalid_settings(model):
    W, b, sigma, x, z, _ = model
    f = linear_gaussian_callables(W, b, sigma, q="perturbed")
    schedule = linear_schedule(5)
    with pytest.raises(ValueError, match="initial"):
        ais(f, x, schedule=schedule, initial="posterior")
    with pytest.raises(ValueError, match="sample_prior"):
        ais(f._replace(sample_prior=None), x, schedule=schedule)
    with pytest.raises(ValueError, match="start at 0"):
        ais(f, x, schedule=schedule.flip(0))
    with pytest.raises(ValueError, match="num_chains"):
        ais(f, x, schedule=schedule, num_chains=0)
    with pytest.raises(ValueError, match="num_chains"):
        bdmc_upper(f, x, z.expand(4, -1, -1), schedule=schedule, num_chains=3)
    with pytest.raises(ValueError, match="datapoints"):
        bdmc_upper(f, x, z[:5], schedule=schedule)


def test_a_loop_over_ais_step_is_ais(model):
    # The kernel is the whole algorithm: a hand-written loop over ais_step (fixed step sizes)
    # reproduces ais() draw for draw.
    W, b, sigma, x, _, _ = model
    f = linear_gaussian_callables(W, b, sigma, q="perturbed")
    betas = sigmoid_schedule(20)
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(4)
    kw = dict(num_chains=4, initial="q", step_size=0.2, adapt="none", generator=g)
    est = ais(f, x, schedule=betas, **kw)
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(4)
    log_w, step_size = torch.zeros(4, 20, dtype=F64), torch.full((4, 20), 0.2, dtype=F64)
    state = AISState(f.sample_q(x, 4), log_w, step_size)
    for t in range(1, 21):
        state, info = ais_step(state, x, betas[t - 1], betas[t], f, initial="q", generator=g)
        assert info.accept_prob.shape == info.divergent.shape == (4, 20)
    assert torch.equal(state.log_w, est.extra["log_weights"])
    assert torch.equal(state.z, est.extra["z_final"])
    state, info = ais_step(state, x, 1.0, 1.0, f, initial="q", transition=False)
    assert info == AISInfo(None, None) and torch.equal(state.log_w, est.extra["log_weights"])


@pytest.mark.parametrize("initial", ["q", "prior"])
def test_the_gradient_route_changes_no_draw(model, initial):
    # grad_log_joint and grad_log_prior (closed forms in the fixture) at the inner leapfrog
    # steps, or autograd of log_joint and log p_0 at every step: the same chains and weights,
    # for AIS and BDMC from q and from the prior; a gradient of the wrong shape is an error
    # naming it
    W, b, sigma, x, _, _ = model
    f = linear_gaussian_callables(W, b, sigma, q="perturbed")
    assert f.grad_log_joint is not None and f.grad_log_prior is not None
    out = []
    for callables in (f, f._replace(grad_log_joint=None, grad_log_prior=None)):
        torch.manual_seed(3)
        g = torch.Generator().manual_seed(4)
        est = ais(callables, x, schedule=sigmoid_schedule(20), num_chains=4, initial=initial,
                  num_leapfrog=4, generator=g)
        z_sim = callables.sample_prior(len(x), 1)[0]
        up = bdmc_upper(callables, x, z_sim, schedule=sigmoid_schedule(20), num_chains=4,
                        step_size=est.extra["step_sizes"], adapt="none", num_leapfrog=4,
                        initial=initial, generator=g)
        out.append((est.extra["log_weights"], est.extra["z_final"], up.per_datapoint))
    for a, b_ in zip(*out):
        torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-10)
    bad = f._replace(grad_log_joint=lambda x, z: z[0])
    with pytest.raises(ValueError, match="grad_log_joint must return the shape of z"):
        ais(bad, x, schedule=sigmoid_schedule(5), num_chains=4, initial=initial)
    if initial == "prior":
        bad = f._replace(grad_log_prior=lambda z: z[0])
        with pytest.raises(ValueError, match="grad_log_prior must return the shape of z"):
            ais(bad, x, schedule=sigmoid_schedule(5), num_chains=4, initial=initial)


# ------------------------------------------------------- AIS and BDMC stay bounds, over seeds


def _gamma_poisson(n: int):
    """A positive latent reached through Program (moved to R by its log, Jacobian included):
    data x and simulated (x, z) with z an exact posterior sample, and their exact log p(x)."""
    from pgm.inference.program import Program
    from pgm.models.gamma_poisson import GammaPoisson

    m = GammaPoisson()
    torch.manual_seed(100)
    x = m.sample(n, 1)
    lam = torch.distributions.Gamma(m.a, m.b).sample((n, 1))
    x_sim = torch.poisson(lam)
    f = Program(m.model, m.guide, x).callables()
    return f, x, m.log_marginal(x), x_sim, lam.log(), m.log_marginal(x_sim)


def _linear_gaussian(n: int):
    W, b, sigma, x, _ = linear_gaussian(B=n, seed=5)
    g = torch.Generator().manual_seed(6)
    x_sim, z_sim = linear_gaussian_sample(W, b, sigma, n, generator=g)
    f = linear_gaussian_callables(W, b, sigma, q="perturbed")
    exact = linear_gaussian_log_marginal
    return f, x, exact(x, W, b, sigma), x_sim, z_sim, exact(x_sim, W, b, sigma)


@pytest.mark.parametrize("build,steps,initial", [(_gamma_poisson, 50, "prior"),
                                                  (_linear_gaussian, 150, "prior"),
                                                  (_linear_gaussian, 50, "q")])
def test_pilot_tuned_ais_and_bdmc_stay_on_their_side_of_the_exact_value_over_seeds(
        build, steps, initial):
    # The seeds' means are independent (a seed's datapoints share its random stream); over
    # them AIS - exact must not be positive, nor BDMC - exact negative, beyond 3 SE. (The
    # Gamma-Poisson program is traced at every evaluation: fewer steps keep it quick.) From
    # q(z|x), AIS and BDMC's path runs between the guide and the posterior.
    f, x, exact, x_sim, z_sim, exact_sim = build(30)
    lower, upper = [], []
    for seed in range(4):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(1000 + seed)
        kw = dict(schedule=sigmoid_schedule(steps), num_chains=8, initial=initial, generator=g)
        est = ais(f, x, **kw)
        assert est.extra["adapt"] == "pilot" and est.extra["pilot_chains"] == 4
        lower.append((est.per_datapoint - exact).mean())
        up = bdmc_upper(f, x_sim, z_sim, **kw)
        assert up.extra["pilot_seconds"] > 0
        upper.append((up.per_datapoint - exact_sim).mean())
    lower, upper = torch.stack(lower), torch.stack(upper)
    se_lower, se_upper = lower.std() / 2, upper.std() / 2
    assert lower.mean() <= 3 * se_lower, (lower, se_lower)
    assert upper.mean() >= -3 * se_upper, (upper, se_upper)
    assert lower.mean().abs() < 0.1 and upper.mean().abs() < 0.1


def test_ais_and_bdmc_with_a_mass_matrix_stay_on_their_side_of_the_exact_value_over_seeds():
    # The mass matrix is a function of x alone (here 1.5x a square root of the posterior's
    # covariance, deliberately not exact): every transition is a fixed kernel, so over seeds
    # AIS - exact must not be positive, nor BDMC - exact negative, beyond 3 SE; from the
    # perturbed guide q(z|x), at fewer steps than the identity mass needs.
    f, x, exact, x_sim, z_sim, exact_sim = _linear_gaussian(30)
    W, b, sigma, *_ = linear_gaussian(B=30, seed=5)
    _, cov = linear_gaussian_posterior(x, W, b, sigma)
    c = (1.5 * torch.linalg.cholesky(cov)).expand(30, *cov.shape[-2:])
    lower, upper = [], []
    for seed in range(4):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(1000 + seed)
        kw = dict(schedule=sigmoid_schedule(20), num_chains=8, initial="q", generator=g,
                  inverse_mass_sqrt=c)
        est = ais(f, x, **kw)
        assert est.extra["mass"] == "given"
        lower.append((est.per_datapoint - exact).mean())
        upper.append((bdmc_upper(f, x_sim, z_sim, **kw).per_datapoint - exact_sim).mean())
    lower, upper = torch.stack(lower), torch.stack(upper)
    se_lower, se_upper = lower.std() / 2, upper.std() / 2
    assert lower.mean() <= 3 * se_lower, (lower, se_lower)
    assert upper.mean() >= -3 * se_upper, (upper, se_upper)
    assert lower.mean().abs() < 0.1 and upper.mean().abs() < 0.1
    with pytest.raises(ValueError, match=r"inverse_mass_sqrt must have shape \(30, L, L\)"):
        ais(f, x, schedule=sigmoid_schedule(2), initial="q", inverse_mass_sqrt=c[:5])


def test_pilot_chains_set_the_step_sizes_and_the_run_only_follows_them(model):
    # The run's chains follow the table; with a given table and adapt="none" the table comes
    # back unchanged, and "in-run" on its own chains records where they took it.
    W, b, sigma, x, _, _ = model
    f = linear_gaussian_callables(W, b, sigma, q="perturbed")
    schedule = sigmoid_schedule(50)
    torch.manual_seed(0)
    piloted = ais(f, x, schedule=schedule, num_chains=4, pilot_chains=3)
    table = piloted.extra["step_sizes"]
    assert table.shape == (51, 20) and not torch.equal(table[1], table[-1])
    assert torch.equal(table[0], table[1])
    frozen = ais(f, x, schedule=schedule, num_chains=4, step_size=table, adapt="none")
    assert torch.equal(frozen.extra["step_sizes"], table)
    assert frozen.extra["pilot_chains"] == 0
    per_datapoint = ais(f, x, schedule=schedule, num_chains=2, step_size=table[-1], adapt="none")
    assert torch.equal(per_datapoint.extra["step_sizes"], table[-1].expand(51, 20))
    with pytest.raises(ValueError, match="step_size"):
        ais(f, x, schedule=schedule, step_size=torch.ones(3, 20), adapt="none")
    with pytest.raises(ValueError, match="adapt"):
        ais(f, x, schedule=schedule, adapt=True)
    with pytest.raises(ValueError, match="pilot_chains"):
        ais(f, x, schedule=schedule, pilot_chains=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ais_kernel_on_a_gpu_never_waits_for_the_host():
    """One AIS step (value, gradient, HMC move, step-size update) on CUDA tensors issues no
    host synchronisation once argument checks are off, as inside ais()'s loop."""
    import pyro

    from pgm import VAE
    from pgm.inference.adapter import latent_callables

    torch.manual_seed(0)
    model = VAE(data_dim=20, latent_dim=3, hidden=(16,)).cuda().eval()
    x = torch.rand(8, 20, device="cuda").round()
    f = latent_callables(model)
    z = f.sample_q(x, 4)
    state = AISState(z, torch.zeros(4, 8, dtype=F64, device="cuda"),
                     torch.full((4, 8), 0.1, device="cuda"))
    gen = torch.Generator(device="cuda").manual_seed(1)
    ais_step(state, x, 0.0, 0.01, f, initial="q", generator=gen)  # warm-up: caches, lazy init
    torch.cuda.synchronize()
    with pyro.validation_enabled(False):
        torch.cuda.set_sync_debug_mode("error")
        try:
            state, info = ais_step(state, x, 0.01, 0.02, f, initial="q", generator=gen)
            step = adapt_step_size(state.step_size[:1], info.accept_prob.mean(0, keepdim=True))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert state.z.is_cuda and step.is_cuda


def test_nan_in_the_weights_is_one_error_naming_the_step_and_datapoint(model):
    # a log-density that turns NaN in part of the latent space: the weights of the chains that
    # reach it become NaN; AIS says where instead of returning NaN
    from pgm.errors import EstimatorError

    W, b, sigma, x, _, _ = model
    f = linear_gaussian_callables(W, b, sigma, q="perturbed")

    def log_joint(x_, z):
        v = f.log_joint(x_, z)
        return torch.where(z[..., 0] > 1.0, torch.nan, v)

    g = f._replace(log_joint=log_joint)
    with pytest.raises(EstimatorError, match=r"NaN at step \d+ of 20 for datapoint \d+"):
        ais(g, x, schedule=linear_schedule(20), num_chains=4, initial="prior",
            generator=torch.Generator().manual_seed(0))
