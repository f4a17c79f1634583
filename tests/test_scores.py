"""Closed-form gradients of log densities in their value (pgm.inference.scores) against
autograd of the same log_prob."""

import pyro.distributions as dist
import torch

from pgm.inference.scores import grad_log_prob


def _autograd(d, z):
    z = z.clone().requires_grad_(True)
    return torch.autograd.grad(d.log_prob(z).sum(), z)[0]


def test_gaussians_match_autograd_also_broadcast_and_as_one_event():
    torch.manual_seed(0)
    loc, scale = torch.randn(5, 3), torch.rand(5, 3) + 0.5
    z = torch.randn(4, 5, 3)  # (K, B, L) against a (B, L) distribution
    for d in (dist.Normal(loc, scale), dist.Normal(loc, scale).to_event(1),
              torch.distributions.Normal(loc, scale), dist.Normal(0.0, 2.0).expand([3]),
              dist.Normal(loc, scale).to_event(2)):
        g = grad_log_prob(d, z)
        assert g.shape == z.shape
        torch.testing.assert_close(g, _autograd(d, z))
    # a distribution with more batch dimensions than z: the gradient is summed to z's shape
    d, z1 = dist.Normal(torch.randn(2, 3), 1.0), torch.randn(3)
    torch.testing.assert_close(grad_log_prob(d, z1), _autograd(d, z1))


def test_no_closed_form_is_none_also_for_a_subclass_that_redefines_the_density():
    class Tempered(dist.Normal):
        def log_prob(self, value):
            return 0.5 * super().log_prob(value)

    z = torch.randn(4, 3)
    assert grad_log_prob(dist.Laplace(0.0, 1.0).expand([3]).to_event(1), z) is None
    assert grad_log_prob(Tempered(0.0, 1.0).expand([3]), z) is None
    assert grad_log_prob(Tempered(0.0, 1.0).expand([3]).to_event(1), z) is None
