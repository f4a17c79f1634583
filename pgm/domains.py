"""The domain of every numeric option of ``pgm train``, ``pgm evaluate`` and ``pgm sample``,
checked before anything runs.

argparse checks that ``--kl-warmup`` is an integer; it cannot know that -1 would make the KL
weight negative, that ``--clip-norm -5`` flips the gradient, or that ``--patience -1`` later
fails with a message about elbo curves. Each option here names its smallest valid value and
what it means, and a value outside stops the command with one line:
``--clip-norm must be >= 0 (0 turns clipping off), got -5``. An option left at its default
(None: "the model's own") is not checked.
"""

from __future__ import annotations

import math

from pgm.errors import PgmError

#: command -> option (argparse's dest) -> (lowest valid value, strict: value must exceed it,
#: what the bound means)
DOMAINS: dict[str, dict[str, tuple[float, bool, str]]] = {
    "train": {
        "latent_dim": (1, False, ""),
        "components": (1, False, ""),
        "particles": (1, False, ""),
        "epochs": (1, False, ""),
        "batch_size": (1, False, ""),
        "lr": (0, True, ""),
        "likelihood_scale": (0, True, ""),
        "clip_norm": (0, False, "0 turns clipping off"),
        "kl_warmup": (0, False, "0: no warm-up"),
        "patience": (0, False, "0 turns early stopping off"),
        "min_epochs": (0, False, ""),
    },
    "evaluate": {
        "n": (1, False, ""),
        "ais_steps": (0, False, "0 turns AIS off"),
        "ais_chains": (1, False, ""),
        "ais_pilot_chains": (1, False, ""),
        "ais_leapfrog": (1, False, ""),
        "ais_n": (1, False, ""),
        "gaps_n": (1, False, ""),
        "posterior_check": (0, False, "0 turns it off"),
        "batch_size": (1, False, ""),
    },
    "sample": {"n": (1, False, "")},
}


#: Seeds of every command: Pyro seeds numpy's generator too, which takes [0, 2^32).
SEEDS = 2**32


class OptionError(PgmError, ValueError):
    """A command-line option outside its domain."""


def check(command: str, args) -> None:
    """OptionError naming the first option of ``command`` whose value in ``args`` (an
    argparse Namespace) lies outside :data:`DOMAINS`; finite floats only."""
    for dest, (low, strict, meaning) in DOMAINS.get(command, {}).items():
        value = getattr(args, dest, None)
        if value is None or not isinstance(value, int | float):
            continue
        flag = "-n" if command == "sample" else "--" + dest.replace("_", "-")
        bad = not math.isfinite(value) or (value <= low if strict else value < low)
        if bad:
            rule = f"> {low:g}" if strict else f">= {low:g}"
            note = f" ({meaning})" if meaning else ""
            raise OptionError(f"{flag} must be {rule}{note}, got {value:g}")
    seed = getattr(args, "seed", None)
    if isinstance(seed, int) and not 0 <= seed < SEEDS:
        raise OptionError(f"--seed must be an integer in [0, 2^32), got {seed}")
