"""Compiled kernels (pgm.compiled): the same values as eager, eager where compiling fails."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

import pgm
from pgm import compiled
from pgm.inference.adapter import latent_callables
from pgm.inference.bounds import log_importance_weights
from pgm.likelihoods import bernoulli_log_prob, bernoulli_score


@pytest.fixture
def compiled_on():
    before = compiled.enabled()
    compiled.enable(True)
    yield
    compiled.enable(before)


def _skip_unless_compiled():
    if not compiled.enabled():  # the kernel warned and fell back: no C++ compiler here
        pytest.skip("torch.compile cannot build kernels on this machine")


def test_compiled_bernoulli_kernels_equal_eager(compiled_on):
    """The Bernoulli log density and score, compiled, equal the eager kernels to float32
    rounding of the summed terms (the test of the eager form's exactness bounds both), for
    logits up to 200 in magnitude, x binary and grey, and an IWAE run from the same draws."""
    torch.manual_seed(0)
    for lead, scale in (((4,), 30.0), ((2,), 0.05)):
        h = torch.randn(*lead, 3, 784) * scale
        h[..., 0, :] = 200.0 * torch.sign(h[..., 0, :])
        for x in ((torch.rand(3, 784) < 0.5).float(), torch.rand(3, 784)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # inductor's own notices
                out = bernoulli_log_prob(h, x)
            _skip_unless_compiled()
            ref = bernoulli_log_prob.eager(h, x)
            tol = 8 * 2.0**-24 * (h.abs().sum(-1) + 784)
            assert ((out - ref).abs() <= tol).all()
            torch.testing.assert_close(bernoulli_score(h, x), bernoulli_score.eager(h, x),
                                       rtol=1e-6, atol=1e-6)

    data = pgm.load_dataset("digits")
    torch.manual_seed(1)
    model = pgm.VAE(data_dim=64, latent_dim=2, hidden=(16,)).eval()
    f, x = latent_callables(model), data.x_test[:20]
    weights = {}
    for on in (True, False):
        compiled.enable(on)
        torch.manual_seed(2)
        weights[on] = log_importance_weights(f, x, 50)
    torch.testing.assert_close(weights[True], weights[False], rtol=1e-5, atol=1e-5)


def test_a_failed_compile_warns_once_and_runs_eager(compiled_on, monkeypatch):
    """Where torch.compile cannot build a kernel (no C++ compiler), the call returns the eager
    value with one warning and the kernels stay eager; bad input raises the eager error and
    leaves them on."""
    calls = []

    def broken_compile(fn, **kwargs):
        def run(*args):
            calls.append(1)
            raise RuntimeError("InductorError: no working C++ compiler found\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)

    @compiled.kernel
    def double(a):
        return 2 * a

    with pytest.raises(RuntimeError, match="size of tensor"):  # the eager error, kernels on
        compiled.kernel(lambda a, b: a + b)(torch.ones(2), torch.ones(3))
    assert compiled.enabled()

    with pytest.warns(RuntimeWarning, match="compiled kernels are off.*no working C"):
        out = double(torch.ones(3))
    torch.testing.assert_close(out, torch.full((3,), 2.0))
    assert not compiled.enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        double(torch.ones(3))  # eager now: no second warning, no second compile
    assert len(calls) == 2  # the bad input's try and double's


@pytest.mark.parametrize("value, on", [("1", True), ("0", False), ("", False)])
def test_pgm_compile_environment_variable(value, on):
    env = {**os.environ, "PGM_COMPILE": value}
    out = subprocess.run([sys.executable, "-c", "import pgm.compiled as c; print(c.enabled())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(on)
