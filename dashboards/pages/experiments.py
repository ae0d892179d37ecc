"""Experiments: per arm the metric with its interval, latency and errors; each treatment against the control
with the always-valid p-value, significance, sample size and the decision."""
from __future__ import annotations

import pandas as pd
import streamlit as st

import _common
from aimass import experiments

s = _common.settings()
st.title("Experiments")
deployments = _common.deployments()
shown = 0
for d in deployments:
    e = experiments.get(d["endpoint"], settings=s)
    if e is None:
        continue
    shown += 1
    view = experiments.show(d["endpoint"], experiment_id=e.experiment_id, settings=s)
    st.subheader(f"{d['endpoint']}: {e.experiment_id}")
    st.caption(f"{'canary (automatic)' if e.auto else 'A/B'} on {e.metric} · {e.state} · started "
               f"{_common.ago(e.started_at)}" + (f" · decision: {e.decision}" if e.decision else ""))
    st.dataframe(pd.DataFrame([{"arm": a.arm, "weight %": a.weight, "users": a.users, "answers": a.answers,
                                e.metric: round(a.rate, 4), "interval": f"{a.interval[0]:.3f}-{a.interval[1]:.3f}",
                                "errors": a.errors, "p50": _common.ms(a.latency_p50_ms),
                                "p99": _common.ms(a.latency_p99_ms)} for a in view.arms]), hide_index=True)
    if view.comparisons:
        st.dataframe(pd.DataFrame([{"treatment": c.treatment.name, "difference": c.difference, "lift": c.lift,
                                    "always-valid p": round(c.min_p, 4), "alpha": c.alpha,
                                    "significant": c.significant, "winner": c.winner or "-",
                                    "samples (smaller arm)": c.samples, "needed per arm": c.samples_needed,
                                    "state": c.state} for c in view.comparisons]), hide_index=True)
    for g in view.guardrails_broken:
        st.error(f"guardrail broken: {g}")
if not deployments:
    _common.nothing_deployed()
elif not shown:
    st.info("No experiment yet: `aimass experiments start ENDPOINT --arms A=50 B=50`.")
