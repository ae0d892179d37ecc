"""`aimass monitor drift|reports|metrics`: drift reports of a served endpoint's traffic against the training
reference (Evidently; each stored in the home with its HTML and JSON) and the online metrics of its lists."""
from __future__ import annotations

import typer

from aimass.cli._common import DURATION_UNITS, JSON, emit, rows, seconds, state

app = typer.Typer(no_args_is_help=True)


def _rate(r) -> str:
    if r.rate is None:
        return "-"
    return f"{r.rate:.3f} [{r.low:.3f}, {r.high:.3f}]"


def _span(s: float) -> str:
    for unit in ("w", "d", "h", "m"):
        if s >= DURATION_UNITS[unit] and s % DURATION_UNITS[unit] == 0:
            return f"{s / DURATION_UNITS[unit]:g}{unit}"
    return f"{s:g}s"


def _num(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


@app.command()
def drift(endpoint: str, window: str = typer.Option("1h", "--window", "-w", help="How far back: 30m, 1h, 1d, ..."),
          as_json: bool = JSON):
    """Compare the endpoint's recent recommend answers with the training reference; store and summarise."""
    from aimass import monitoring

    r = monitoring.drift(endpoint, window_s=seconds(window), settings=state.settings)
    verdict = (f"drift: yes ({len(r.drifted_columns)} of {len(r.columns)} columns: {', '.join(r.drifted_columns)})"
               if r.drifted else f"drift: no ({len(r.drifted_columns)} of {len(r.columns)} columns drifted"
               + (f": {', '.join(r.drifted_columns)})" if r.drifted_columns else ")"))
    table = [{"column": c, "kind": v.kind, "score": f"{v.score:.3f}", "threshold": v.threshold,
              "p": f"{v.p_value:.2g}", "drifted": "yes" if v.drifted else "", "current": _num(v.current),
              "reference": _num(v.reference)} for c, v in r.columns.items()]
    cur, ref = r.current, r.reference
    div = (f"; diversity ({cur['diversity_label']}) {cur['diversity']:.3f} (reference {ref['diversity']:.3f})"
           if cur.get("diversity") is not None and ref.get("diversity") is not None else "")
    fb = cur["feedback"]
    lines = [verdict,
             f"window: {r.window_start:%Y-%m-%d %H:%M:%S} to {r.window_end:%Y-%m-%d %H:%M:%S} UTC; {r.n_current} "
             f"answers of {r.model}/{r.version} against {r.n_reference} reference answers ({r.dataset})",
             *(f"a column drifts when its score is at or above its threshold and its p is below {a:g}"
               for a in {v.alpha for v in r.columns.values()}),
             *rows(table, ["column", "kind", "score", "threshold", "p", "drifted", "current", "reference"]),
             (f"coverage {cur['coverage']:.3f} (reference at the same size {ref['coverage']:.3f}){div}"
              if cur.get("coverage") is not None and ref.get("coverage") is not None
              else "coverage: not measured (no full-length list in the window)")
             + (f"; {cur['short_lists']} shorter lists left out" if cur.get("short_lists") else ""),
             f"feedback: {fb['events']} events in the window"
             + (f", positive share {fb['positive_share']:.3f}" if fb["positive_share"] is not None else "")
             + f", click-through {_rate(monitoring.Rate(**fb['click_through']))}"
             + (f"; training data: positive share {ref['feedback']['positive_share']:.3f}" if ref["feedback"] else ""),
             f"report: {r.html}"]
    if r.not_compared:
        lines.insert(2, "not compared (another route's or version's answers): "
                     + ", ".join(f"{k} {v}" for k, v in r.not_compared.items()))
    emit(r, as_json, lines)


@app.command()
def reports(endpoint: str, as_json: bool = JSON):
    """The endpoint's stored drift reports, newest first."""
    from aimass import monitoring

    found = monitoring.reports(endpoint, settings=state.settings)
    if not found:  # an endpoint deleted since keeps its reports; a name never deployed is a mistake, said so
        from aimass import serving

        serving.check_deployed(endpoint, settings=state.settings)
    table = [{"created_at": f"{r.created_at:%Y-%m-%d %H:%M:%S}", "model": f"{r.model}/{r.version}",
              "window": _span((r.window_end - r.window_start).total_seconds()), "answers": r.n_current,
              "drifted": f"yes ({len(r.drifted_columns)})" if r.drifted else "no", "html": r.html} for r in found]
    emit(found, as_json, rows(table, ["created_at", "model", "window", "answers", "drifted", "html"])
         if found else [f"no drift reports for {endpoint!r} yet: aimass monitor drift {endpoint}"])


@app.command()
def metrics(endpoint: str, window: str = typer.Option("1h", "--window", "-w", help="How far back: 1h, 1d, ..."),
            as_json: bool = JSON):
    """Click-through, per-event-type and hit rates of the served lists (95% intervals), per model version."""
    from aimass import monitoring

    found = monitoring.online_metrics(endpoint, window_s=seconds(window), settings=state.settings)
    types = sorted({t for m in found for t in m.by_type})
    table = [{"model": f"{m.model}/{m.version}" + (f" ({m.arm})" if m.arm and m.arm != f"{m.model}/{m.version}"
                                                   else ""), "answers": m.answers,
              "click_through": _rate(m.click_through), "hit_rate": _rate(m.hit_rate),
              **{t: _rate(m.by_type[t]) if t in m.by_type else "-" for t in types}} for m in found]
    sampled = [note] if (note := monitoring.sample_note(found)) else []
    emit(found, as_json, rows(table, ["model", "answers", "click_through", "hit_rate", *types]) + sampled
         if found else [f"no answers of {endpoint!r} in the last {window}"])
