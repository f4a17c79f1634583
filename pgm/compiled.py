r"""Optional compiled kernels: a likelihood head's passes over every pixel fused by
``torch.compile``.

Eager PyTorch runs each elementwise operation as its own pass over the ``(..., D)`` decoder
output. The Bernoulli log density (:func:`pgm.likelihoods.bernoulli_log_prob`) takes five
(|h|, the dot product with x − ½, the sum of |h|, the sigmoid, the block products), its score
x − σ(h) two; IWAE spends a third of its products' time in them. Compiled (inductor), each is
one loop over the pixels. On one CPU thread, (4, 1000, 784) logits: the log density 3.0–3.2
against 5.3–5.4 ms; (20, 100, 784), AIS's shape: 1.4–1.6 against 2.4–2.5 ms.

Off by default: the first call of a kernel compiles (about 2 s on a CPU, which needs a C++
compiler; 0.2–0.3 s once inductor's on-disk cache holds it), and a new shape may compile again,
which a short evaluation does not win back. Turn on with :func:`enable` or ``PGM_COMPILE=1`` in
the environment (read when pgm is imported). Where compiling fails (no compiler, a platform
inductor does not support) the kernels run eager, with one warning.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable

import torch

_state = {"on": os.environ.get("PGM_COMPILE", "0") not in ("", "0")}


def enable(on: bool = True) -> None:
    """Run the kernels marked :func:`kernel` compiled (``on``) or eager."""
    _state["on"] = bool(on)


def enabled() -> bool:
    return _state["on"]


def kernel(fn: Callable) -> Callable:
    """``fn``, run through ``torch.compile`` while compiled kernels are enabled. ``fn`` must be a
    pure function of tensors; ``.eager`` is ``fn`` itself."""
    compiled: list = []

    @functools.wraps(fn)
    def run(*args):
        if not _state["on"]:
            return fn(*args)
        if not compiled:
            compiled.append(torch.compile(fn))
        try:
            return compiled[0](*args)
        except Exception as err:  # noqa: BLE001 - the backend's failures have no common type
            out = fn(*args)  # bad input raises here, as it would uncompiled
            _state["on"] = False
            warnings.warn(f"pgm: compiled kernels are off, compiling {fn.__name__} failed "
                          f"({type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]})",
                          RuntimeWarning, stacklevel=2)
            return out

    run.eager = fn
    return run
