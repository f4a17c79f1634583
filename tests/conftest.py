"""Test-suite settings: one torch thread, and a fixture for Pyro-validated tests.

The suite's models are tiny; with two threads on two shared cores, torch's thread pool spends
more time waiting than computing (a 10x slowdown when anything else runs beside it).
"""

import pyro
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def pyro_validation():
    """Pyro's validation on (shape and support checks at every site), seed 0; off after."""
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.enable_validation(False)
