"""Deployments and traffic: each endpoint's model, replicas, the split in force and its history, scaling
decisions, shadow comparisons, and latency over the last hour."""
from __future__ import annotations

import pandas as pd
import streamlit as st

import _common
from aimass import monitoring, serving
from aimass.errors import NotFoundError

s = _common.settings()
st.title("Deployments and traffic")
deployments = _common.deployments()
if not deployments:
    _common.nothing_deployed()
    st.stop()
st.dataframe(pd.DataFrame([{k: d[k] for k in ("endpoint", "model", "version", "family", "status", "min_replicas",
                                              "max_replicas", "url")} for d in deployments]), hide_index=True)
endpoint = st.selectbox("Endpoint", [d["endpoint"] for d in deployments])
try:
    view = serving.traffic(endpoint, settings=s)
except NotFoundError:  # deleted since the listing was read (a few seconds ago): read afresh on the next run
    _common.deployments.clear()
    st.info(f"{endpoint!r} was deleted a moment ago.")
    st.stop()
split = view.split
st.subheader("Split in force")
if split is not None:
    st.dataframe(pd.DataFrame(split.arms), hide_index=True)
    st.caption(f"experiment {split.experiment_id} · shadow: {split.shadow or 'none'} · "
               f"since {(split.decided_at or split.created_at):%Y-%m-%d %H:%M:%S} UTC")
st.subheader("History")
st.dataframe(pd.DataFrame([{"id": h.id, "state": h.state,
                            "arms": " ".join(f"{a['ref']}={a['weight']}" for a in h.arms),
                            "reason": h.reason, "actor": h.actor, "at": h.created_at} for h in view.history]),
             hide_index=True)
st.subheader("Replicas and scaling decisions")
scaling = serving.scaling(endpoint, settings=s)  # live from Serve when the cluster runs; decisions from the catalog
if scaling["deployments"]:
    st.dataframe(pd.DataFrame([{k: d.get(k) for k in ("deployment", "status", "replicas", "target_replicas",
                                                       "min_replicas", "max_replicas", "ongoing_per_replica")}
                               for d in scaling["deployments"]]), hide_index=True)
else:
    st.caption(f"not running now ({scaling['status'].lower().replace('_', ' ')})")
if scaling["decisions"]:
    st.dataframe(pd.DataFrame([{"at": e["at"], "deployment": e["deployment"],
                                "replicas": f"{e['replicas_from']} -> {e['replicas_to']}", "trigger": e["trigger"],
                                "ongoing per replica": e["ongoing_per_replica"]} for e in scaling["decisions"]]),
                 hide_index=True)
else:
    st.caption("no scaling decision recorded")
st.subheader("Shadow comparisons")
shadow = monitoring.shadow_comparison(endpoint, settings=s)
if len(shadow):
    st.caption("what each shadow would have answered on its copy of the requests, against what consumers got")
    st.dataframe(shadow.rename(columns={"copies": "requests copied", "mean_overlap": "mean overlap@k",
                                        "identical": "identical lists"}), hide_index=True)
else:
    st.caption("no shadow has run on this endpoint (aimass traffic set ENDPOINT --arms ... --shadow REF)")
sig = monitoring.golden_signals(endpoint, window_s=3600, bucket_s=60, settings=s)
st.subheader("Latency, last hour")
st.line_chart(sig.buckets.set_index("start")[["p50_ms", "p99_ms"]], y_label="ms")
