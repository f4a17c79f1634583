"""The likelihood-evaluation report: ``eval/results.json`` (an interface scripts read),
``eval/per_datapoint.npz``, ``eval/report.md`` and a self-contained ``eval/report.html``.

results.json (schema ``pgm-eval``, version 2)::

    {"schema": "pgm-eval", "version": 2, "run": ..., "dataset": ..., "split": "test",
     "n": 1000, "device": "cpu", "world_size": 1, "versions": {...}, "config": {...},
     "estimators": {"elbo": {"mean", "se", "n", "seconds", "bound", "data",
                             ...settings, diagnostics},
                    "iwae_1": ..., "iwae_10": ..., "ais": ..., "bdmc_upper": ...,
                    "exact" or "quadrature": ...},
     "best": "ais",
     "checks": [{"lower", "upper", "n", "diff_mean", "diff_se", "ok"}, ...],
     "representation": {...}, "test_images": {...}, ...}

Values are nats per datapoint. Each estimator says what it is: ``bound`` is ``lower``,
``upper``, ``exact``, ``numerical`` (quadrature, to its ``tol``) or ``none``, and ``data`` is
``test`` or ``simulated``. ``best`` names the best estimate of log p(x) by the rule of
:func:`pgm.evaluation.best_log_px_name`. ``checks`` test, on the datapoints both share, that
each lower bound sits below each quantity it bounds on the same data (paired differences,
within 3 SE), and that the IWAE bounds rise with K.

Version 2 (from version 1): every estimator gained ``bound`` and ``data``; quadrature is
reported as ``quadrature`` (bound ``numerical``), no longer as ``exact``; ``best`` was added.
Version-1 files are read through :func:`upgrade`.
"""

from __future__ import annotations

import base64
import html
import io as _io
import math
from pathlib import Path

import numpy as np

from pgm import io, plots

SCHEMA, SCHEMA_VERSION = "pgm-eval", 2
ORDER = ("elbo", "iwae", "ais", "exact", "quadrature", "bdmc_lower", "bdmc_upper", "elbo_q",
         "elbo_qstar", "gap_approximation", "gap_amortization", "gap_inference", "nuts_reference")
DESCRIPTIONS = {
    "elbo": "ELBO, E_q[log p(x,z) - log q(z|x)] (lower bound)",
    "ais": "AIS with HMC (stochastic lower bound)",
    "exact": "exact log p(x)",
    "quadrature": "log p(x) by quadrature (to its tolerance)",
    "bdmc_lower": "BDMC forward AIS on simulated data (lower)",
    "bdmc_upper": "BDMC reverse AIS on simulated data (upper bound)",
    "elbo_q": "ELBO of the amortized q (gap subset)",
    "elbo_qstar": "ELBO of the per-datapoint optimal Gaussian q*",
    "gap_approximation": "approximation gap log p(x) - L[q*]",
    "gap_amortization": "amortization gap L[q*] - L[q]",
    "gap_inference": "inference gap log p(x) - L[q] (the sum of both)",
    "nuts_reference": "NUTS reference posterior check (value: R-hat, not nats)",
    "parzen": "Parzen window on model samples (GAN paper's metric; not a bound)",
}


def _sort_key(name: str):
    for i, prefix in enumerate(ORDER):
        if name == prefix or (prefix == "iwae" and name.startswith("iwae_")):
            k = name.rsplit("_", 1)[-1]
            return (i, "prior" in name, int(k) if k.isdigit() else 0)
    return (len(ORDER), False, 0)


def describe(name: str) -> str:
    if name.startswith("iwae_prior_"):
        return f"IWAE bound, K={name.rsplit('_', 1)[1]}, prior as proposal"
    if name.startswith("iwae_"):
        return f"IWAE bound, K={name.split('_')[1]} (lower bound)"
    return DESCRIPTIONS.get(name, name)


def upgrade(results: dict) -> dict:
    """A results dict of any schema version in the current one's terms: version-1 files
    (before estimators said what they are) get ``bound`` and ``data`` from their names."""
    if results.get("version", 1) >= 2:
        return results
    est = {}
    for name, s in results.get("estimators", {}).items():
        if name == "bdmc_upper":
            bound = "upper"
        elif name == "exact":
            bound = "numerical" if s.get("method") == "quadrature" else "exact"
        elif name in ("elbo", "ais", "bdmc_lower", "elbo_q", "elbo_qstar") or \
                name.startswith("iwae_"):
            bound = "lower"
        else:
            bound = "none"
        proposal = "prior" if name.startswith("iwae_prior") else s.get("proposal", "q")
        est[name] = {**s, "bound": bound, "proposal": proposal,
                     "data": "simulated" if name.startswith("bdmc") else "test"}
    return {**results, "estimators": est}


def bound_checks(estimators) -> list[dict]:
    """Paired checks lower <= upper on shared datapoints (the first min(n) of the split):
    every lower bound against every exact, numerical or upper value on the same data, and
    the IWAE bounds of one proposal in increasing K."""
    pairs, seen = [], set()
    lower = [(k, e) for k, e in estimators.items() if e.bound == "lower"
             and id(e) not in seen and not seen.add(id(e))]
    for proposal in {e.extra.get("proposal") for _, e in lower if "K" in e.extra}:
        chain = sorted(((e.extra["K"], k) for k, e in lower
                        if "K" in e.extra and e.extra.get("proposal") == proposal))
        pairs += [(a, b, 0.0) for (_, a), (_, b) in zip(chain[:-1], chain[1:])]
    for ref, r in estimators.items():
        if r.bound in ("exact", "numerical", "upper"):
            slack = r.extra.get("tol", 0.0) if r.bound == "numerical" else 0.0
            pairs += [(k, ref, slack) for k, e in lower if e.data == r.data]
    checks = []
    for lo_name, hi_name, slack in pairs:
        a, b = estimators[lo_name].per_datapoint, estimators[hi_name].per_datapoint
        m = min(len(a), len(b))
        d = (a[:m] - b[:m]).double()
        se = (d.std() / math.sqrt(m)).item() if m > 1 else math.nan
        mean = d.mean().item()
        # float32 rounding: a bound that equals the exact value (a guide equal to the
        # posterior, as PPCA's after EM) sits ~1e-8 relative above the float64 exact value
        rounding = 1e-5 * (1 + abs(b[:m].double().mean().item()))
        checks.append({"lower": lo_name, "upper": hi_name, "n": m, "diff_mean": mean,
                       "diff_se": se,
                       "ok": bool(mean <= 3 * (se if se == se else 0) + slack + rounding)})
    return checks


def results_dict(evaluation, *, run: str, dataset: str, device: str,
                 world_size: int = 1) -> dict:
    from pgm.config import to_dict

    est = dict(sorted(evaluation.estimators.items(), key=lambda kv: _sort_key(kv[0])))
    return {"schema": SCHEMA, "version": SCHEMA_VERSION, "run": run, "dataset": dataset,
            "split": evaluation.config.split, "n": len(evaluation.index), "device": device,
            "world_size": world_size, "versions": io.versions(),
            "config": to_dict(evaluation.config),
            "estimators": {name: e.summary() for name, e in est.items()},
            "best": evaluation.best(),
            "checks": bound_checks(est)}


def _figures(evaluation, out_dir: Path) -> list[Path]:
    est = evaluation.estimators
    written = []
    iwae = sorted((e.extra["K"], k) for k, e in est.items() if e.bound == "lower" and
                  e.extra.get("proposal") == "q" and "K" in e.extra and e.data == "test")
    iwae = list(dict((K, k) for K, k in iwae).items())  # elbo and iwae_1 are one estimate
    refs = [k for k, e in est.items() if e.data == "test" and (
        e.bound in ("exact", "numerical") or (e.bound == "lower" and "num_steps" in e.extra))]
    if iwae:
        m = min([est[k].n for _, k in iwae] + [est[r].n for r in refs])

        def stat(name):
            v = est[name].per_datapoint[:m]
            return v.mean().item(), (v.std() / math.sqrt(m)).item() if m > 1 else math.nan

        means, ses = zip(*(stat(k) for _, k in iwae))
        lines = {r.upper() if r == "ais" else r: stat(r) for r in refs}
        written.append(plots.save_figure(
            plots.bounds_vs_k([K for K, _ in iwae], means, ses, lines=lines, n=m),
            out_dir / "bounds_vs_k.png"))
        best = evaluation.best()
        elbo = iwae[0][1]
        m2 = min(est[elbo].n, est[best].n)
        gaps = {f"{best} - ELBO": (est[best].per_datapoint[:m2] - est[elbo].per_datapoint[:m2])}
        if "gap_amortization" in est:
            gaps["amortization gap"] = est["gap_amortization"].per_datapoint
            gaps["approximation gap"] = est["gap_approximation"].per_datapoint
        written.append(plots.save_figure(
            plots.gap_histogram(gaps, title="per-datapoint gap: log p(x) - ELBO = KL(q || p(z|x))"),
            out_dir / "gap_histogram.png"))
    for name, fig in evaluation.figures_data.items():
        written.append(plots.save_figure(fig, out_dir / f"{name}.png"))
    return written


def _fmt(v, digits=2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


SETTINGS = ("K", "num_blocks", "num_steps", "num_chains", "num_leapfrog", "schedule", "initial",
            "method", "log_px_from", "data")
DIAGNOSTICS = ("khat_max", "khat_frac_above_0_7", "acceptance", "divergences", "ess_mean",
               "sandwich_mean", "change_max", "converged_frac", "final_gain_max", "rhat_max",
               "ess_bulk_min")


def table_rows(results: dict) -> list[list[str]]:
    rows = []
    for name, s in results["estimators"].items():
        settings = ", ".join(f"{k}={s[k]}" for k in SETTINGS
                             if k in s and (k, s[k]) != ("data", "test"))
        diags = ", ".join(f"{k}={_fmt(s[k], 3)}" for k in DIAGNOSTICS if k in s)
        rows.append([name, describe(name), _fmt(s["mean"]), _fmt(s["se"], 3), str(s["n"]),
                     _fmt(s["seconds"], 1), settings, diags])
    return rows


HEADER = ["estimator", "what", "mean (nats)", "SE", "n", "seconds", "settings", "diagnostics"]


def _md_table(header, rows) -> str:
    def line(cells):  # a "|" inside a cell (log p(x | y)) would split it
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)])


def _checks_md(checks) -> str:
    lines = []
    for c in checks:
        mark = "ok" if c["ok"] else "VIOLATED"
        lines.append(f"- {c['lower']} <= {c['upper']} on {c['n']} shared datapoints: paired "
                     f"difference {c['diff_mean']:.3f} ± {c['diff_se']:.3f} nats — {mark}")
    return "\n".join(lines)


def render_markdown(results: dict, figures: list[Path]) -> str:
    parts = [f"# log p(x) report: {results['run']}", "",
             f"Dataset `{results['dataset']}`, split `{results['split']}`, "
             f"n = {results['n']}, device `{results['device']}`, "
             f"pgm {results['versions']['pgm']}, torch {results['versions']['torch']}, "
             f"pyro {results['versions']['pyro']}. Values are nats per datapoint; SE is the "
             "standard error across datapoints.", "",
             _md_table(HEADER, table_rows(results)), "", "## Bound order", "",
             _checks_md(results["checks"]) or "(nothing to check)", ""]
    rep = results.get("representation")
    if rep is not None:
        parts.insert(3, f"\nData: {rep['values']} (binarize `{rep['binarize']}`), so values are a "
                        f"{rep['density']}; observation model: {rep['observation']}.\n")
    if results["config"].get("preset"):
        parts.insert(3, f"Protocol preset: `{results['config']['preset']}`.\n")
    for fig in figures:
        parts += [f"![{fig.stem}](figures/{fig.name})", ""]
    return "\n".join(parts)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px}
th{background:#f3f3f3}td:nth-child(3),td:nth-child(4),td:nth-child(5),td:nth-child(6)
{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#b00;font-weight:bold}
img{max-width:100%;margin:1em 0}code{background:#f3f3f3;padding:0 3px}"""


def _html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def render_html(results: dict, figures: list[Path], title: str | None = None) -> str:
    checks = "".join(
        f"<li class=\"{'' if c['ok'] else 'bad'}\">{html.escape(c['lower'])} &le; "
        f"{html.escape(c['upper'])} on {c['n']} shared datapoints: paired difference "
        f"{c['diff_mean']:.3f} &plusmn; {c['diff_se']:.3f} nats &mdash; "
        f"{'ok' if c['ok'] else 'VIOLATED'}</li>" for c in results.get("checks", []))
    meta = (f"Dataset <code>{html.escape(results['dataset'])}</code>, split "
            f"<code>{results['split']}</code>, n = {results['n']}, device "
            f"<code>{html.escape(results['device'])}</code>, pgm {results['versions']['pgm']}. "
            "Values are nats per datapoint; SE is the standard error across datapoints.")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>"
            f"{html.escape(title or results['run'])}</title><style>{CSS}</style></head><body>"
            f"<h1>log p(x) report: {html.escape(results['run'])}</h1><p>{meta}</p>"
            f"{_html_table(HEADER, table_rows(results))}<h2>Bound order</h2>"
            f"<ul>{checks or '<li>nothing to check</li>'}</ul>"
            + "".join(_img(f) for f in figures) + "</body></html>")


def write_evaluation(run_dir: str | Path, evaluation, *, dataset: str = "x",
                     device: str | None = None,
                     world_size: int = 1, extra: dict | None = None) -> dict:
    """Write results.json, per_datapoint.npz, figures, report.md and report.html under
    RUN/eval/; return the results dict. The evaluation's ``extra`` (representation, explicit
    view, sample quality) and ``extra`` here add top-level keys."""
    out = Path(run_dir) / "eval"
    device = evaluation.device if device is None else device
    results = results_dict(evaluation, run=str(run_dir), dataset=dataset, device=device,
                           world_size=world_size)
    results.update(evaluation.extra)
    results.update(extra or {})
    buf = _io.BytesIO()
    np.savez(buf, index=evaluation.index.numpy(),
             **{k: e.per_datapoint.numpy() for k, e in evaluation.estimators.items()})
    io.atomic_write_bytes(out / "per_datapoint.npz", buf.getvalue())
    figures = _figures(evaluation, out / "figures")
    io.atomic_write_json(out / "results.json", results)
    io.atomic_write_text(out / "report.md", render_markdown(results, figures))
    io.atomic_write_text(out / "report.html", render_html(results, figures))
    return results


def _cell(s) -> str:
    return "–" if s is None else f"{s['mean']:.2f} ± {_fmt(s['se'])} ({s['n']})"


def best_log_px(results: dict) -> tuple[str, dict] | None:
    """The best log p(x) estimate of a run: the one its results name (version 2), else the
    one :func:`pgm.evaluation.best_log_px_name` picks from its summaries."""
    from pgm.evaluation import best_log_px_name

    results = upgrade(results)
    name = results.get("best") or best_log_px_name(results["estimators"])
    return None if name is None else (name, results["estimators"][name])


def comparison_notes(results: list[dict], names: list[str]) -> tuple[dict[int, list[str]],
                                                                      list[str]]:
    """Rows that cannot share the likelihood columns with the first row (and why), and notes
    on columns whose rows were scored on different numbers of test images or under
    different observation models."""
    from pgm.representation import incommensurable

    bad = incommensurable(results)
    notes = []
    best = [best_log_px(r) for r in results]
    for col, sizes in [("log p(x)", [b[1]["n"] for b in best if b])] + [
            (n, [r["estimators"][n]["n"] for r in results if n in r["estimators"]])
            for n in names]:
        if len(set(sizes)) > 1:
            notes.append(f"column {col}: rows average over different numbers of test images "
                         f"({', '.join(map(str, sizes))}); each is the first n of the split")
    obs = {(r.get("representation") or {}).get("observation", "unknown") for r in results}
    obs = {"explicit view" if o.startswith("explicit view") else o for o in obs}
    if len(obs) > 1:
        notes.append("rows use different observation models (column 'observation'): their "
                     "densities are of the same data, but a learned per-pixel scale on 8-bit "
                     "images can grow without bound on always-black pixels; compare generators "
                     "like for like with `pgm evaluate --explicit-view` on every run")
    return bad, notes


def comparison(results: list[dict]) -> tuple[str, str]:
    """One table over several runs' results.json: each estimator's mean ± SE (n), the best
    log p(x) estimate, and the data representation and observation model of each row.

    Rows whose numbers cannot share a column with the first row's (other test images,
    binarised vs grey values, an unnormalised likelihood, an unknown representation) have
    their cells marked ⚠ and the reasons listed above the table; the nearest-neighbour and
    Fréchet columns are marked too, as they are distances in the rows' own data."""
    from pgm.representation import short_label

    names = sorted({n for r in results for n in r["estimators"]}, key=_sort_key)
    quality = any("sample_quality" in r for r in results)
    bad, notes = comparison_notes(results, names)
    header = ["run", "dataset", "data", "observation", "log p(x) (best)", *names]
    if quality:
        header += ["NN distance samples/test", "Fréchet (samples vs train)"]
    rows = []
    for i, r in enumerate(results):
        mark = "⚠ " if i in bad else ""
        best = best_log_px(r)
        cells = [mark + (f"{best[0]}: {_cell(best[1])}" if best else "–")]
        cells += [mark + _cell(r["estimators"].get(n)) if n in r["estimators"] else "–"
                  for n in names]
        if quality:  # distances in other data (or another classifier's features) too
            q = r.get("sample_quality")
            fd = q and q["frechet"]
            cells += ["–", "–"] if q is None else [
                f"{mark}{q['nearest_neighbour']['ratio']:.2f}",
                f"{mark}{fd['samples_vs_train']:.2f} (test: {fd['test_vs_train']:.2f})"]
        rep = r.get("representation") or {}
        rows.append([r["run"], r["dataset"], short_label(r), rep.get("observation", "unknown"),
                     *cells])
    warn = [f"- ⚠ {results[i]['run']}: {'; '.join(why)}" for i, why in bad.items()]
    intro = "nats per datapoint, mean ± SE (n)"
    if bad:
        intro = ("**NOT COMMENSURABLE: the numbers of the rows marked ⚠ are not comparable "
                 "with the first row's.**\n\n" + "\n".join(warn) + "\n\n" + intro)
    md = ("# Comparison of runs\n\n" + intro + "\n\n" + _md_table(header, rows) + "\n"
          + ("\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else ""))
    items = "".join(f"<li class=\"bad\">{html.escape(w[2:])}</li>" for w in warn)
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>pgm comparison</title>"
            f"<style>{CSS}</style></head><body><h1>Comparison of runs</h1>"
            + (f"<p class=\"bad\">NOT COMMENSURABLE: the numbers of the rows marked &#9888; "
               f"are not comparable with the first row's.</p><ul>{items}</ul>"
               if bad else "")
            + "<p>nats per datapoint, mean &plusmn; SE (n)</p>"
            f"{_html_table(header, rows)}"
            + ("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
               if notes else "") + "</body></html>")
    return md, page
