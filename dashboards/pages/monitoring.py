"""Monitoring: drift per feature over time, the Evidently reports themselves, and online metrics (click-through,
hit rate, with 95% intervals) per model version and arm."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

import _common
from aimass import monitoring
from aimass.errors import NotFoundError

s = _common.settings()
st.title("Monitoring")
deployments = _common.deployments()
if not deployments:
    _common.nothing_deployed()
    st.stop()
endpoint = st.selectbox("Endpoint", [d["endpoint"] for d in deployments])
reports = monitoring.reports(endpoint, limit=100, settings=s)  # the newest; older ones stay on disk
st.subheader("Drift reports")
if not reports:
    st.info(f"No drift report yet: `aimass monitor drift {endpoint}`, or the schedule in the serving cluster.")
else:
    st.dataframe(pd.DataFrame([{"created": r.created_at, "model": f"{r.model}/{r.version}", "answers": r.n_current,
                                "drift": r.drifted, "drifted share": r.drifted_share,
                                "drifted columns": ", ".join(r.drifted_columns)} for r in reports]), hide_index=True)
    scores = {}
    for r in reports[:50]:
        summary = monitoring.DriftReport.model_validate_json(Path(r.summary).read_text())
        scores[r.created_at] = {c: d.score for c, d in summary.columns.items()}
    st.markdown("**Drift score per feature over time** (normed Wasserstein or Jensen-Shannon distance)")
    st.line_chart(pd.DataFrame.from_dict(scores, orient="index").sort_index())
    pick = st.selectbox("Report", range(len(reports)),
                        format_func=lambda i: f"{reports[i].created_at:%Y-%m-%d %H:%M:%S} UTC")
    html = Path(reports[pick].html)
    if html.is_file():  # written by aimass.monitoring with Evidently, never uploaded by a user
        st.iframe(html, height=700)
st.subheader("Online metrics per model version and arm, last 24 hours")
online = []
# joining a day of answers to their feedback takes seconds on a busy endpoint: on demand, not on every visit
if st.toggle("Compute them", key="online-metrics"):
    try:
        online = monitoring.online_metrics(endpoint, window_s=86400, settings=s)
    except NotFoundError as e:
        st.info(str(e))
if online:
    def interval(r) -> str:
        return f"{r.low:.3f}-{r.high:.3f}" if r.low is not None else "-"

    st.dataframe(pd.DataFrame([{
        "model": f"{m.model}/{m.version}", "arm": m.arm or "-", "answers": m.answers,
        "click-through": m.click_through.rate, "click-through 95%": interval(m.click_through),
        "hit rate": m.hit_rate.rate, "hit rate 95%": interval(m.hit_rate), "negative": m.negative.rate,
        "negative 95%": interval(m.negative)}
        for m in online]), hide_index=True)
    if note := monitoring.sample_note(online, "day"):
        st.caption(note)
