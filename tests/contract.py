"""The model/guide contract checked the same way for every model (pgm.protocol)."""

import pyro.poutine as poutine


def check_sites(model, x, *args):
    """Trace guide and model on (x, *args): site "z" of shape (B, L) shared by both, observed
    site "x", one log-probability per datapoint under the plate. Returns (guide, model) traces."""
    guide_tr = poutine.trace(model.guide).get_trace(x, *args)
    model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(x, *args)
    guide_tr.compute_log_prob()
    model_tr.compute_log_prob()
    B = x.shape[0]
    assert guide_tr.nodes["z"]["value"].shape == (B, model.latent_dim)
    assert model_tr.nodes["z"]["value"] is guide_tr.nodes["z"]["value"]
    assert model_tr.nodes["x"]["is_observed"]
    assert model_tr.nodes["x"]["log_prob"].shape == (B,)
    assert model_tr.nodes["z"]["log_prob"].shape == (B,)
    return guide_tr, model_tr
