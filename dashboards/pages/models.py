"""Runs and models: training curves, every registered version with its metrics across compression methods
(size against NDCG@10 against latency), aliases and forced promotions, and each version's lineage."""
from __future__ import annotations

import math

import pandas as pd
import streamlit as st

import _common
import aimass

s = _common.settings()
st.title("Runs and models")
runs, models = _common.runs(), _common.models()

st.subheader("Model versions")
if not models:
    st.info("No model registered yet: `aimass models register RUN_ID --name NAME`.")
else:
    # an original version's size and latency are measured only by its compressions, which log them as parent_*
    by_child = {(m["name"], m["parent_version"]): {k.removeprefix("parent_"): v for k, v in m["metrics"].items()
                                                   if k.startswith("parent_")}
                for m in models if m["parent_version"]}

    def figure(m: dict, key: str):
        return m["metrics"].get(key, by_child.get((m["name"], m["version"]), {}).get(key))

    table = pd.DataFrame([{
        "model": f"{m['name']}/{m['version']}", "family": m["family"], "method": m["method"],
        "parent": f"{m['name']}/{m['parent_version']}" if m["parent_version"] else "-",
        "aliases": ", ".join(m["aliases"]), "dataset": m["dataset"],
        "test NDCG@10": m["metrics"].get("test_ndcg_at_10"),
        "size MB": (figure(m, "size_bytes") or 0) / 1e6 or None,
        "p99 ms (batch 1)": figure(m, "latency_b1_p99_ms"),
        "promoted to champion": m["tags"].get("aimass.promoted_champion_at", ""),
        "forced promotion": m["tags"].get("aimass.forced_promotion", ""),
        "last gate decision": m["tags"].get("aimass.gate", ""), "run": m["run_id"]} for m in models])
    display = table.copy()
    for col, fmt in (("test NDCG@10", "{:.4f}"), ("size MB", "{:.3f}"), ("p99 ms (batch 1)", "{:.1f}")):
        display[col] = [fmt.format(v) if pd.notna(v) else "-" for v in table[col]]  # a missing figure, not "None"
    st.dataframe(display, hide_index=True)
    sized = table.dropna(subset=["size MB", "test NDCG@10"])
    if len(sized):
        st.markdown("**Size against test NDCG@10** (each version; compressed children beside their parents)")
        st.scatter_chart(sized, x="size MB", y="test NDCG@10", color="method")

st.subheader("Gate decisions")
decided = sorted(((m["tags"]["aimass.gate"], f"{m['name']}/{m['version']}") for m in models
                  if m["tags"].get("aimass.gate")), reverse=True)
if decided:
    st.markdown("**The last promotion attempt of each version** (refused ones too; newest first)")
    st.dataframe(pd.DataFrame([{"version": ref, "at": text.split(" ", 1)[0], "decision": text.split(" ", 1)[1]}
                               for text, ref in decided]), hide_index=True)
else:
    st.caption("no promotion attempted yet (`aimass models promote NAME VERSION`)")
st.markdown("**Retrains**")
attempts = [r for d in _common.deployments() for r in aimass.retraining.history(d["endpoint"], limit=20, settings=s)]
if attempts:
    st.dataframe(pd.DataFrame([{
        "endpoint": r.endpoint, "started": r.started_at, "champion": r.champion, "challenger": r.challenger,
        "dataset": r.dataset, "gate": {True: "passed", False: "refused", None: "-"}[r.gate_passed], "status": r.status,
        "checks": "; ".join(f"{'pass' if c.passed else 'FAIL'} {c.check}" for c in r.gate)} for r in attempts]),
        hide_index=True)
else:
    st.caption("no retrain yet")

st.subheader("Training runs")
if not runs:
    st.info("No training run yet: `aimass train FAMILY --dataset NAME`.")
    st.stop()
st.dataframe(pd.DataFrame([{k: r[k] or "" for k in ("name", "status", "error")} | {
    k: r[k] for k in ("family", "dataset", "val_ndcg_at_10", "test_ndcg_at_10", "run_id")} for r in runs]),
    hide_index=True)
run_id = st.selectbox("Run", [r["run_id"] for r in runs],
                      format_func=lambda i: next(f"{r['name']} ({i[:8]})" for r in runs if r["run_id"] == i))
shown = aimass.runs.show(run_id, settings=s)
if shown["status"] == "FAILED":
    st.error(f"{shown['name']} failed: {shown['error'] or 'no reason recorded'}")
elif shown["status"] != "FINISHED":
    st.caption(f"status: {shown['status']}")
left, right = st.columns(2)
for col, (key, label) in zip((left, right), (("loss", "training loss"), ("val_ndcg_at_10", "validation NDCG@10")),
                             strict=True):
    logged = shown["history"].get(key, [])
    points = [(epoch, v) for epoch, v in logged if math.isfinite(v)]  # a diverged epoch's NaN draws nothing
    col.markdown(f"**{label}** per epoch")
    if points:
        col.line_chart(pd.DataFrame(points, columns=["epoch", label]).set_index("epoch"))
    elif logged:
        col.caption(f"no finite value in its {len(logged)} epoch(s): the training diverged")
    else:
        col.caption("not recorded for this family (a single pass)")
st.markdown("**Lineage**: " + " -> ".join(
    [f"dataset {shown['dataset']}", f"run {run_id[:8]}"]
    + [f"model {m['name']}/{m['version']}" for m in models if m["run_id"] == run_id]
    + [f"endpoint {d['endpoint']}" for d in _common.deployments()
       if any(m["run_id"] == run_id and m["name"] == d["model"] and m["version"] == d["version"] for m in models)]))
