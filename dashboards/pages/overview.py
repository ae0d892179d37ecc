"""Overview: per endpoint the golden signals of the last hour over all replicas, feedback, the last training
and drift report; what is failing comes first."""
from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import streamlit as st

import _common
import aimass
from aimass import monitoring

s = _common.settings()
st.title("Overview")
deployments = _common.deployments()
runs = _common.runs()
if not deployments:
    _common.nothing_deployed()

rows, problems = [], []
for d in deployments:
    e = d["endpoint"]
    sig = monitoring.golden_signals(e, window_s=3600, bucket_s=60, settings=s)
    fb = aimass.events.count(e, settings=s)
    reports = monitoring.reports(e, limit=1, settings=s)
    last = reports[0] if reports else None
    if d["status"] != "RUNNING":
        problems.append(f"**{e}**: {d['status'].lower().replace('_', ' ')}")
    if sig.errors:
        problems.append(f"**{e}**: {sig.errors} failed requests in the last hour ({sig.error_rate:.1%})")
    if last is not None and last.drifted:
        problems.append(f"**{e}**: the last drift report ({_common.ago(last.created_at)}) flags drift")
    rows.append({"endpoint": e, "model": f"{d['model']}/{d['version']}", "status": d["status"],
                 "requests/s (1 h)": round(sig.requests_per_s, 3), "p50": _common.ms(sig.p50_ms),
                 "p99": _common.ms(sig.p99_ms), "error rate": f"{sig.error_rate:.2%}",
                 "replicas": f"{d['min_replicas']}-{d['max_replicas']}", "feedback events": fb,
                 "last drift report": _common.ago(last.created_at) if last else "none",
                 "drift": ("yes" if last.drifted else "no") if last else "-", "_signals": sig})
failed_runs = [r for r in runs if r["status"] == "FAILED"]
if failed_runs:
    last_failed = failed_runs[0]
    problems.append(f"{len(failed_runs)} failed training run(s), the last {last_failed['name']}"
                    + (f": {last_failed['error']}" if last_failed["error"] else ""))

st.subheader("Failing")
if problems:
    for p in problems:
        st.error(p)
elif deployments or runs:
    st.success("Nothing is failing.")
else:  # an empty home (or a mistyped one) is no sign of health
    st.caption("nothing to judge yet: no endpoint and no training run")

st.subheader("Endpoints, last hour")
if rows:
    st.dataframe(pd.DataFrame([{k: v for k, v in r.items() if k != "_signals"} for r in rows]), hide_index=True)
    for r in rows:
        b = r["_signals"].buckets.set_index("start")
        st.markdown(f"**{r['endpoint']}**: {r['_signals'].requests:,} requests in the hour")
        left, middle, right = st.columns(3)
        left.line_chart(b[["requests_per_s"]], y_label="requests/s")
        middle.line_chart(b[["p50_ms", "p99_ms"]], y_label="ms")
        right.line_chart(b[["error_rate"]], y_label="error rate")
else:
    st.caption("no endpoint deployed")

# events sent to a name no endpoint has (a client's typo, an endpoint deleted since): no deployed endpoint's
# monitoring or retrain reads them
deployed = {d["endpoint"] for d in deployments}
strays = [{"endpoint": e, "feedback events": aimass.events.count(e, settings=s)}
          for e in aimass.events.EventLog(s).endpoints() if e and e not in deployed]
if strays:
    st.markdown("**Feedback for endpoints not deployed**")
    st.dataframe(pd.DataFrame(strays), hide_index=True)

st.subheader("Last training")
if runs:
    r = runs[0]
    started = datetime.fromtimestamp(r["start_time"] / 1000, UTC) if r["start_time"] else None
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("run", r["name"] or r["run_id"][:8], help=r["run_id"])
    c2.metric("status", r["status"])
    c3.metric("test NDCG@10", "-" if r["test_ndcg_at_10"] is None else f"{r['test_ndcg_at_10']:.4f}")
    c4.metric("started", _common.ago(started))
    if r["status"] == "FAILED":
        st.error(f"it failed: {r['error'] or 'no reason recorded'}")
else:
    st.info("No training run yet: `aimass train FAMILY --dataset NAME`.")
