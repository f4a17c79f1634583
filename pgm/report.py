"""The likelihood-evaluation report: ``eval/results.json`` (an interface scripts read),
``eval/per_datapoint.npz``, ``eval/report.md`` and a self-contained ``eval/report.html``.

results.json (schema ``pgm-eval``, version 3)::

    {"schema": "pgm-eval", "version": 3, "run": ..., "dataset": ..., "split": "test",
     "n": 1000, "device": "cpu", "world_size": 1, "versions": {...}, "config": {...},
     "estimators": {"elbo": {"mean", "se", "n", "seconds", "bound", "data",
                             ...settings, diagnostics},
                    "iwae_1": ..., "iwae_10": ..., "ais": ..., "bdmc_upper": ...,
                    "exact" or "quadrature": ...},
     "best": "ais",
     "checks": [{"lower", "upper", "n", "diff_mean", "diff_se", "ok"}, ...],
     (``ok`` None: a lower estimate above its reference on one shared datapoint, whose
     difference has no standard error to judge it by)
     "representation": {...}, "test_images": {...},
     "sample_quality": {"nearest_neighbour", "frechet", "classes"}, ...}

``sample_quality`` (with ``--sample-quality``, always for a GAN) is
:func:`pgm.sample_quality.sample_quality`'s dict; its ``classes`` (labelled data only, added
within version 3) is the class histogram of 10,000 samples beside the test set's
(:mod:`pgm.mode_coverage`), ``classes.samples.ratio`` the rarest class's count over the most
common one's, ``classes.samples.confident`` the share of samples the classifier labels with
probability at least 0.9 (added within version 3; absent from older files).

Values are nats per datapoint. Each estimator says what it is: ``bound`` is ``lower``,
``upper``, ``exact``, ``numerical`` (quadrature, to its ``tol``) or ``none``, and ``data`` is
``test`` or ``simulated``. ``best`` names the best estimate of log p(x) by the rule of
:func:`pgm.evaluation.best_log_px_name`. ``checks`` test, on the datapoints both share, that
each lower bound sits below each quantity it bounds on the same data (paired differences,
within 3 SE), and that the IWAE bounds rise with K.

Version 2 (from version 1): every estimator gained ``bound`` and ``data``; quadrature is
reported as ``quadrature`` (bound ``numerical``), no longer as ``exact``; ``best`` was added.
Version-1 files are read through :func:`upgrade`.

Version 3 (from version 2): a conditional model (the CVAE) is measured as log p(x), its label
summed out (:mod:`pgm.evaluation`): its estimators without a suffix are of log p(x) (in
version 2 they were of log p(x | y)) and those named ``<estimator>_given_y`` of log p(x | y);
each of its estimators says which in ``quantity``, ``best_given_y`` names the best of the
latter, ``label_prior`` records p(y) (``source``, ``probs``) and ``representation`` says
``"quantity": "log p(x)"`` with ``labels``. Other models' results are unchanged; a version-2
file reads as it is (its ``representation.quantity`` says what a CVAE's numbers were).
"""

from __future__ import annotations

import base64
import html
import io as _io
import math
import shutil
from pathlib import Path

import numpy as np

from pgm import io, plots

SCHEMA, SCHEMA_VERSION = "pgm-eval", 3
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


#: The suffix of a conditional model's log p(x | y) estimates beside its log p(x) ones.
GIVEN_SUFFIX = "_given_y"


def _sort_key(name: str):
    given = name.endswith(GIVEN_SUFFIX)  # log p(x | y) after every log p(x)
    name = name.removesuffix(GIVEN_SUFFIX)
    for i, prefix in enumerate(ORDER):
        if name == prefix or (prefix == "iwae" and name.startswith("iwae_")):
            k = name.rsplit("_", 1)[-1]
            return (given, i, "prior" in name, int(k) if k.isdigit() else 0)
    return (given, len(ORDER), False, 0)


def describe(name: str) -> str:
    if name.endswith(GIVEN_SUFFIX):
        d = describe(name.removesuffix(GIVEN_SUFFIX)).replace("log p(x)", "log p(x | y)")
        return (d if "log p(x | y)" in d else f"{d} of log p(x | y)") + ", the datapoint's label"
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

    def of(e):  # what it estimates: log p(x), or a conditional model's log p(x | y)
        return e.extra.get("quantity", "log p(x)")

    for group in {(e.extra.get("proposal"), of(e)) for _, e in lower if "K" in e.extra}:
        chain = sorted(((e.extra["K"], k) for k, e in lower
                        if "K" in e.extra and (e.extra.get("proposal"), of(e)) == group))
        pairs += [(a, b, 0.0) for (_, a), (_, b) in zip(chain[:-1], chain[1:])]
    for ref, r in estimators.items():
        if r.bound in ("exact", "numerical", "upper"):
            slack = r.extra.get("tol", 0.0) if r.bound == "numerical" else 0.0
            pairs += [(k, ref, slack) for k, e in lower if e.data == r.data and of(e) == of(r)]
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
        # one datapoint: an excess has no standard error to judge it by (None, not a violation)
        ok = (bool(mean <= 3 * se + slack + rounding) if m > 1
              else True if mean <= slack + rounding else None)
        checks.append({"lower": lo_name, "upper": hi_name, "n": m, "diff_mean": mean,
                       "diff_se": se, "ok": ok})
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
            **({"best_given_y": evaluation.best("log p(x | y)")} if any(
                e.extra.get("quantity") == "log p(x | y)" for e in est.values()) else {}),
            "checks": bound_checks(est)}


def _figures(evaluation, out_dir: Path) -> list[Path]:
    # log p(x) only: a conditional model's log p(x | y) estimates are in the tables
    est = {k: e for k, e in evaluation.estimators.items()
           if e.extra.get("quantity", "log p(x)") == "log p(x)"}
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
        elbo = "elbo" if "elbo" in est else iwae[0][1]
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
            "method", "log_px_from", "data", "labels")
DIAGNOSTICS = ("khat_max", "khat_frac_above_0_7", "acceptance", "divergences", "ess_mean",
               "sandwich_mean", "change_max", "converged_frac", "final_gain_max", "rhat_max",
               "ess_bulk_min", "dropped_share_max")


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


def check_mark(check: dict) -> str:
    """A bound check's verdict in words."""
    return {True: "ok", False: "VIOLATED"}.get(
        check["ok"], "above, on one datapoint: no standard error to judge it by")


def _checks_md(checks) -> str:
    lines = []
    for c in checks:
        lines.append(f"- {c['lower']} <= {c['upper']} on {c['n']} shared "
                     f"datapoint{'s' * (c['n'] != 1)}: paired difference "
                     f"{c['diff_mean']:.3f} ± {_fmt(c['diff_se'], 3)} nats — {check_mark(c)}")
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
                        f"{rep['density']}; observation model: {rep['observation']}.\n"
                        + (f"\n{_labels_line(results)}\n" if rep.get("labels") else ""))
    if results["config"].get("preset"):
        parts.insert(3, f"Protocol preset: `{results['config']['preset']}`.\n")
    for fig in figures:
        parts += [f"![{fig.stem}](figures/{fig.name})", ""]
    return "\n".join(parts)


CSS = """body{font-family:system-ui,sans-serif;font-size:15px;max-width:1200px;margin:1.5em auto;
padding:0 1em;color:#222}h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.5em}
table{border-collapse:collapse;font-size:13px;max-width:100%}
td,th{border:1px solid #ccc;padding:3px 7px;vertical-align:top}th{background:#f3f3f3}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td:first-child{white-space:nowrap}
.wide{overflow-x:auto}.note{background:#f7f6f1;border-left:3px solid #c8b98a;margin:.8em 0;
padding:.3em .9em;font-size:13px;color:#444}.small{font-size:12px;color:#666}
.bad{color:#b00;font-weight:bold}img{max-width:100%;margin:1em 0}
code{background:#f3f3f3;padding:0 3px}"""


def _html_table(header, rows, *, numeric=None, titles=None) -> str:
    """A table; cells in the ``numeric`` columns (indices; default: after the first) align
    right on one line; ``titles`` are the first cells' hover texts (e.g. full paths)."""
    numeric = range(1, len(header)) if numeric is None else numeric
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)

    def cell(j, c, title):
        attrs = (' class="num"' if j in numeric else "") + (
            f' title="{html.escape(title)}"' if title and j == 0 else "")
        return f"<td{attrs}>{html.escape(c)}</td>"

    body = "".join("<tr>" + "".join(cell(j, c, titles[i] if titles else None)
                                    for j, c in enumerate(r)) + "</tr>"
                   for i, r in enumerate(rows))
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def render_html(results: dict, figures: list[Path], title: str | None = None) -> str:
    checks = "".join(
        f"<li class=\"{'bad' if c['ok'] is False else ''}\">{html.escape(c['lower'])} &le; "
        f"{html.escape(c['upper'])} on {c['n']} shared datapoint{'s' * (c['n'] != 1)}: "
        f"paired difference "
        f"{c['diff_mean']:.3f} &plusmn; {_fmt(c['diff_se'], 3)} nats &mdash; "
        f"{html.escape(check_mark(c))}</li>" for c in results.get("checks", []))
    meta = (f"Dataset <code>{html.escape(results['dataset'])}</code>, split "
            f"<code>{results['split']}</code>, n = {results['n']}, device "
            f"<code>{html.escape(results['device'])}</code>, pgm {results['versions']['pgm']}. "
            "Values are nats per datapoint; SE is the standard error across datapoints.")
    about = ""
    rep, best = results.get("representation"), best_log_px(results)
    if best is not None:
        about += (f"<p>Best estimate of {html.escape((rep or {}).get('quantity', 'log p(x)'))}"
                  f": <b>{html.escape(best[0])} {_cell(best[1])}</b>.</p>")
    if rep is not None:
        about += (f"<p>Data: {html.escape(rep['values'])} (binarize <code>"
                  f"{html.escape(rep['binarize'])}</code>), so values are a "
                  f"{html.escape(rep['density'])}; observation model: "
                  f"{html.escape(rep['observation'])}.</p>")
    if (rep or {}).get("labels"):
        about += f"<p>{html.escape(_labels_line(results))}</p>"
    if results["config"].get("preset"):
        about += f"<p>Protocol preset: <code>{html.escape(results['config']['preset'])}</code>.</p>"
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>"
            f"{html.escape(title or results['run'])}</title><style>{CSS}</style></head><body>"
            f"<h1>log p(x) report: {html.escape(results['run'])}</h1><p>{meta}</p>{about}"
            f"{_html_table(HEADER, table_rows(results), numeric=(2, 3, 4, 5))}"
            f"<h2>Bound order</h2>"
            f"<ul>{checks or '<li>nothing to check</li>'}</ul>"
            + "".join(_img(f) for f in figures) + "</body></html>")


def _labels_line(results: dict) -> str:
    """What a label-summed evaluation of a conditional model reports, in one line."""
    py = results.get("label_prior") or {}
    probs = py.get("probs") or []
    prior = (f"uniform over {len(probs)} labels" if probs and max(probs) - min(probs) < 1e-9
             else ", ".join(f"{p:.3g}" for p in probs))
    g = results.get("best_given_y")
    return (f"Labels summed out, p(y) ({py.get('source', '?')}): {prior}; log p(x) = "
            "logsumexp_y [log p(y) + log p(x | y)]; the estimators named *_given_y are of "
            "log p(x | y), given each datapoint's label" + (f" (best: {g})." if g else "."))


def write_evaluation(run_dir: str | Path, evaluation, *, dataset: str = "x",
                     device: str | None = None,
                     world_size: int = 1, extra: dict | None = None,
                     overwrite: bool = False) -> dict:
    """Write results.json, per_datapoint.npz, figures, report.md and report.html under
    RUN/eval/; return the results dict. The evaluation's ``extra`` (representation, explicit
    view, sample quality) and ``extra`` here add top-level keys.

    Everything is written to a staging folder and published in one step (:mod:`pgm.publish`),
    so RUN/eval/ is the old evaluation or this one, never a mix; an existing RUN/eval/ is
    replaced only with ``overwrite`` (else ResultsExistError, before anything is written)."""
    from pgm import publish

    if not overwrite:
        publish.check_absent(run_dir)
    out = publish.staging(run_dir)
    try:
        results = _write_evaluation(out, run_dir, evaluation, dataset=dataset, device=device,
                                    world_size=world_size, extra=extra)
        publish.publish(out, run_dir, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # a kill (os._exit) leaves it to the next lock
        raise
    return results


def _write_evaluation(out: Path, run_dir, evaluation, *, dataset, device, world_size,
                      extra) -> dict:
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


def _coverage_cell(coverage: dict, with_test: bool) -> str:
    """A run's class-histogram ratio, with the classes its samples lack."""
    s, t = coverage["samples"], coverage.get("test")
    missing = s.get("missing") or []
    return (f"{s['ratio']:.2f}" + (f" (no {', '.join(map(str, missing))})" if missing else "")
            + (f" (test: {t['ratio']:.2f})" if with_test and t else ""))


def _confident_cell(coverage: dict | None, with_test: bool) -> str:
    """The share of a run's samples the classifier labels with p >= 0.9 (``–`` if unknown)."""
    s = (coverage or {}).get("samples") or {}
    if s.get("confident") is None:
        return "–"
    t = coverage.get("test") or {}
    return f"{s['confident']:.0%}" + (
        f" (test: {t['confident']:.0%})" if with_test and t.get("confident") is not None else "")


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


def short_names(paths: list[str]) -> list[str]:
    """The fewest last path components that tell the runs apart:
    ``runs/q/vae, runs/q/vae/ae-baseline, runs/q/gmm`` -> ``vae, ae-baseline, gmm``."""
    parts = [Path(p).parts or (str(p),) for p in paths]
    for k in range(1, max((len(x) for x in parts), default=0) + 1):
        names = ["/".join(x[-k:]) for x in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def paired_differences(results: list[dict], run_dirs: list[str | Path]) -> list[dict | None]:
    """Each row's best log p(x) minus the first row's, image by image on the test images both
    measured (the first n of the same split), from each run's ``eval/per_datapoint.npz``:
    ``{"mean", "se", "n", "estimators"}``. Across images log p(x) varies by tens of nats, so
    only paired differences say which model is better. A row that cannot share a column
    with the first (:func:`pgm.representation.incommensurable`) gets ``{"why": reasons}``; the
    first row, and a row whose per-datapoint values are missing, get None."""
    from pgm import publish
    from pgm.representation import incommensurable

    def values(run_dir, name):
        path = publish.evaluation_dir(run_dir) / "per_datapoint.npz"
        if not path.is_file():
            return None
        with np.load(path) as npz:
            return npz[name] if name in npz.files else None

    bad = incommensurable(results)
    best = [best_log_px(r) for r in results]
    ref = values(run_dirs[0], best[0][0]) if results and best[0] else None
    rows: list[dict | None] = [None]
    for i, (run_dir, b) in enumerate(zip(run_dirs[1:], best[1:]), 1):
        v = None if b is None or ref is None else values(run_dir, b[0])
        if i in bad:
            rows.append({"why": bad[i]})
        elif v is None:
            rows.append(None)
        else:
            k = min(len(v), len(ref))
            d = v[:k].astype(np.float64) - ref[:k]
            se = float(d.std(ddof=1) / math.sqrt(k)) if k > 1 else math.nan
            rows.append({"mean": float(d.mean()), "se": se, "n": k,
                         "estimators": f"{b[0]} − {best[0][0]}"})
    return rows


def comparison_figure(results: list[dict], paired: list[dict | None] | None = None,
                      names: list[str] | None = None):
    """Each row's best log p(x), mean ± SE, beside its paired difference to the first row
    (:func:`paired_differences`), as a matplotlib Figure."""
    from pgm.representation import incommensurable

    names = names or _names(results)
    best = [best_log_px(r) for r in results]
    paired = paired or [None] * len(results)
    return plots.log_px_comparison(
        names, [None if b is None else (b[0], b[1]["mean"], b[1]["se"]) for b in best],
        [None if p is None or "why" in p else (p["mean"], p["se"]) for p in paired],
        flagged=set(incommensurable(results)) - {0})


def _names(results: list[dict]) -> list[str]:
    """A row's label (the quickstart's "VAE", ...), else the short form of its run path."""
    short = short_names([r["run"] for r in results])
    return [r.get("label") or s for r, s in zip(results, short)]


def _observation(rep: dict | None) -> str:
    """'explicit view N(mean, s^2 I), s=0.144435 chosen on ...' -> 'explicit view, s=0.144'."""
    obs = (rep or {}).get("observation", "unknown")
    if obs.startswith("explicit view"):
        sigma = obs.split("s=", 1)[1].split()[0] if "s=" in obs else "?"
        try:
            sigma = f"{float(sigma.rstrip(',')):.3g}"
        except ValueError:
            pass
        return f"explicit view, s={sigma}"
    return obs


def _uniform(values: list) -> bool:
    return len(values) > 1 and len({repr(v) for v in values}) == 1


def comparison(results: list[dict], *, paired: list[dict | None] | None = None,
               figure: Path | None = None, names: list[str] | None = None,
               paths: list[str] | None = None) -> tuple[str, str]:
    """The comparison of several runs' results.json as markdown and a self-contained HTML page
    that fits a 1280-pixel screen.

    The main table has a row per run (short names; the full path, ``paths`` or each results'
    ``run``, on hover and in the list of runs): what its numbers are densities of, its best
    log p(x) estimate, its paired difference to the first row (``paired``, from
    :func:`paired_differences`) and the sample quality; columns equal in every row are said
    once above it. Below it: a note on rows
    whose numbers cannot share a column with the first row's (other test images, binarised
    vs grey values, an unnormalised likelihood, log p(x | y), an unknown representation; their
    cells marked ⚠, the nearest-neighbour and Fréchet ones too, as they are distances in the
    rows' own data), ``figure`` (a PNG, embedded), and a table of every estimator."""
    from pgm.representation import short_label

    names = names or _names(results)
    full = [str(p) for p in paths] if paths else [r["run"] for r in results]
    est_names = sorted({n for r in results for n in r["estimators"]}, key=_sort_key)
    same_as_elbo = {"elbo", "iwae_1"} <= set(est_names) and all(
        r["estimators"].get("iwae_1") == r["estimators"].get("elbo") for r in results)
    if same_as_elbo:  # one estimate, one column
        est_names.remove("iwae_1")
    quality = any("sample_quality" in r for r in results)
    bad, notes = comparison_notes(results, est_names)
    for i, r in enumerate(results):  # a conditional model measured with its label summed out
        if (r.get("representation") or {}).get("labels"):
            g = r.get("best_given_y")
            s = r["estimators"].get(g) if g else None
            notes.append(f"{names[i]}: log p(x) with the label summed out, log p(x) = "
                         "logsumexp_y [log p(y) + log p(x | y)] (p(y): "
                         f"{(r.get('label_prior') or {}).get('source', '?')})"
                         + (f"; given its label, log p(x | y) = {_cell(s)} ({g})" if s else "")
                         + "; every log p(x | y) in the *_given_y columns below")
    mark = ["⚠ " if i in bad else "" for i in range(len(results))]
    reps = [r.get("representation") or {} for r in results]

    columns = {"dataset": [r["dataset"] for r in results],
               "data": [short_label(r) for r in results],
               "observation": [_observation(rep) for rep in reps]}
    shared = {k: v[0] for k, v in columns.items() if _uniform(v) and k != "observation"}
    header = ["run", *[k for k in columns if k not in shared], "log p(x), best (n)"]
    best = [best_log_px(r) for r in results]
    rows = [[names[i], *[columns[k][i] for k in columns if k not in shared],
             mark[i] + (f"{b[0]}: {_cell(b[1])}" if b else "–")] for i, b in enumerate(best)]
    if paired is not None and any(p is not None for p in paired):
        header.append(f"paired − {names[0]}")
        for i, (row, p) in enumerate(zip(rows, paired)):
            row.append("reference" if i == 0 else "–" if p is None else "⚠ not comparable"
                       if "why" in p else f"{p['mean']:+.2f} ± {_fmt(p['se'])} ({p['n']})")
    if quality:  # distances in other data (or another classifier's features) too
        q = [r.get("sample_quality") for r in results]
        tests = [x["frechet"]["test_vs_train"] for x in q if x]
        one_test = _uniform(tests) or len(tests) == 1
        header += ["NN ratio", "Fréchet" + (f" (test: {tests[0]:.2f})" if one_test else "")]
        covs = [(x or {}).get("classes") for x in q]
        ratios = [c["test"]["ratio"] for c in covs if c and c.get("test")]
        one_ratio = _uniform(ratios) or len(ratios) == 1
        if any(covs):
            header.append("classes: rarest/most common" + (
                f" (test: {ratios[0]:.2f})" if ratios and one_ratio else ""))
        sure = [c["test"]["confident"] for c in covs
                if c and (c.get("test") or {}).get("confident") is not None]
        one_sure = _uniform(sure) or len(sure) == 1
        if sure:  # results written before the confident share have none
            header.append("labelled with p ≥ 0.9" + (f" (test: {sure[0]:.0%})" if one_sure
                                                      else ""))
        for i, (row, x) in enumerate(zip(rows, q)):
            fd = x and x["frechet"]
            row += ["–", "–"] if x is None else [
                f"{mark[i]}{x['nearest_neighbour']['ratio']:.2f}",
                f"{mark[i]}{fd['samples_vs_train']:.2f}"
                + ("" if one_test else f" (test: {fd['test_vs_train']:.2f})")]
            if any(covs):
                c = covs[i]
                row.append("–" if c is None else _coverage_cell(c, not one_ratio))
            if sure:
                row.append(_confident_cell(covs[i], not one_sure))

    est_n = {n: [r["estimators"][n]["n"] for r in results if n in r["estimators"]]
             for n in est_names}
    est_header = ["run"] + [n + (" = iwae_1" if n == "elbo" and same_as_elbo else "")
                            + (", simulated data" if n.startswith("bdmc") else "")
                            + (f" (n={est_n[n][0]})" if len(set(est_n[n])) == 1 else "")
                            for n in est_names]
    est_rows = []
    for i, r in enumerate(results):
        cells = []
        for n in est_names:
            s = r["estimators"].get(n)
            cells.append("–" if s is None else mark[i] + f"{s['mean']:.2f} ± {_fmt(s['se'])}"
                         + ("" if len(set(est_n[n])) == 1 else f" ({s['n']})"))
        est_rows.append([names[i], *cells])

    splits = {r.get("split", "test") for r in results}
    which = {"test": "test", "valid": "validation", "train": "training"}.get(
        splits.pop(), "evaluated") if len(splits) == 1 else "evaluated"
    intro = f"Nats per {which} image, mean ± SE over the images (n)."
    if shared:
        intro += " Every row: " + ", ".join(f"{k} {v}" if k == "dataset" else v
                                            for k, v in shared.items()) + "."
    why = [f"{names[i]}: {'; '.join(reasons)}" for i, reasons in bad.items()]
    caveat = (f"⚠ Not commensurable with the first row ({names[0]}), so not ranked against "
              f"it: " + " — ".join(why)) if why else ""
    runs = [f"{n}: {p}" for n, p in zip(names, full) if n != p]

    numbers = range(header.index("log p(x), best (n)"), len(header))
    md = "\n".join(["# Comparison of runs", "", intro, "", _md_table(header, rows), "",
                    *([caveat, ""] if caveat else []),
                    *[f"- {n}" for n in notes], *([""] if notes else []),
                    *([f"![best log p(x) and paired differences]({figure.name})", ""]
                      if figure is not None else []),
                    "## Every estimator", "", _md_table(est_header, est_rows), "",
                    *(["Runs: " + "; ".join(runs), ""] if runs else [])])
    note = ""
    if caveat or notes:
        note = ("<div class=\"note\">" + (f"<p>{html.escape(caveat)}</p>" if caveat else "")
                + "".join(f"<p>{html.escape(n)}</p>" for n in notes) + "</div>")
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>pgm comparison</title>"
            f"<style>{CSS}</style></head><body><h1>Comparison of runs</h1>"
            f"<p>{html.escape(intro)}</p>"
            f"{_html_table(header, rows, numeric=numbers, titles=full)}{note}"
            + (_img(figure) if figure is not None else "")
            + "<h2>Every estimator</h2><div class=\"wide\">"
            f"{_html_table(est_header, est_rows, titles=full)}</div>"
            + (f"<p class=\"small\">Runs: {html.escape('; '.join(runs))}</p>" if runs else "")
            + "</body></html>")
    return md, page
