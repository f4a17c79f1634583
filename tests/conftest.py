"""Test-suite settings: one torch thread.

The suite's models are tiny; with two threads on two shared cores, torch's thread pool spends
more time waiting than computing (a 10x slowdown when anything else runs beside it).
"""

import torch

torch.set_num_threads(1)
