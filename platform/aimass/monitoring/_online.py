"""Online metrics of served lists, from the served-answer log and the feedback log, per model version (and
per arm, once answers carry one).

- click-through rate: answers with at least one positive event naming their request_id / answers;
- rate per event type: answers with at least one event of that type naming their request_id / answers;
- hit rate: answers to a known user after which that user had a positive event on one of the listed items
  (event timestamp at or after the answer; request_id or not) / answers with a user_id.
Each with its 95% Wilson interval."""
from __future__ import annotations

import numpy as np
import pandas as pd

from aimass.monitoring._stats import wilson


def rate(successes: int, trials: int) -> dict:
    r, low, high = wilson(successes, trials)
    return {"successes": int(successes), "trials": int(trials), "rate": r, "low": low, "high": high}


def _missing(k) -> bool:
    return k is None or (isinstance(k, float) and np.isnan(k))


def metrics(answers: pd.DataFrame, events: pd.DataFrame, polarity: np.ndarray, types: list[str]) -> list[dict]:
    """One dict per (model, version[, arm]) of `answers` (served-answer rows) given the endpoint's `events`
    (feedback rows: those naming a request and the positive ones) and their polarities (+1/0/-1); a rate per
    event type of `types`."""
    keys = ["model", "version"] + (["arm"] if "arm" in answers.columns else [])
    answers = answers.reset_index(drop=True)
    ev = events.assign(polarity=polarity)
    joined = _by_request(answers, ev)
    hits = _hits(answers, ev[ev["polarity"] > 0])
    out = []
    for key, group in answers.groupby(keys, sort=True, dropna=False):  # answers logged before splits: arm None
        key = key if isinstance(key, tuple) else (key,)
        idx = group.index.to_numpy()
        j = joined[joined["answer"].isin(idx)]
        n = len(idx)
        with_user = int(group["user_id"].notna().sum())
        out.append({
            **dict(zip(keys, (None if _missing(k) else k.item() if hasattr(k, "item") else k for k in key),
                       strict=True)),
            "answers": n,
            "answers_with_request_events": int(j["answer"].nunique()),
            "click_through": rate(j.loc[j["polarity"] > 0, "answer"].nunique(), n),
            "negative": rate(j.loc[j["polarity"] < 0, "answer"].nunique(), n),
            "by_type": {t: rate(j.loc[j["type"] == t, "answer"].nunique(), n) for t in types},
            "hit_rate": rate(int(np.isin(idx, hits).sum()), with_user),
            "first_served": group["served_at"].min(), "last_served": group["served_at"].max(),
        })
    return out


def _by_request(answers: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """(answer, type, polarity) of every event whose request_id names an answer of the window. A client may
    send the same X-Request-Id with several requests: its events go to the last of those answers only, so one
    event never counts for many."""
    rid = answers[["request_id"]].assign(answer=answers.index)
    rid = rid[rid["request_id"].astype(str) != ""].drop_duplicates("request_id", keep="last")
    ev = events[events["request_id"].notna() & (events["request_id"].astype(str) != "")]
    return ev[["request_id", "type", "polarity"]].merge(rid, on="request_id", how="inner")


def _hits(answers: pd.DataFrame, positive: pd.DataFrame) -> np.ndarray:
    """Indexes of answers to a user who later had a positive event on one of the listed items."""
    known = answers[answers["user_id"].notna()]
    if not len(known) or not len(positive):
        return np.zeros(0, dtype=np.int64)
    lengths = known["items"].map(len).to_numpy()
    listed = pd.DataFrame({
        "answer": np.repeat(known.index.to_numpy(), lengths),
        "user_id": np.repeat(known["user_id"].astype(np.int64).to_numpy(), lengths),
        "item_id": np.fromiter((i for x in known["items"] for i in x), dtype=np.int64, count=int(lengths.sum())),
        "served_at": np.repeat(_utc(known["served_at"]), lengths),
    })
    pos = pd.DataFrame({"user_id": positive["user_id"].to_numpy(np.int64),
                        "item_id": positive["item_id"].to_numpy(np.int64), "timestamp": _utc(positive["timestamp"])})
    # "some positive event at or after the answer" is "the latest one at or after it": one row per (user, item),
    # so the join is at most one row per listed item (joined whole, 2,000 answers listing an item its user then
    # played 2,000 times made 4 million rows)
    pos = pos.groupby(["user_id", "item_id"], sort=False, as_index=False)["timestamp"].max()
    m = listed.merge(pos, on=["user_id", "item_id"], how="inner")
    return m.loc[m["timestamp"] >= m["served_at"], "answer"].unique()


def _utc(times: pd.Series) -> np.ndarray:
    """Naive UTC datetime64[ns]: one unit on both sides of a comparison, whatever each frame holds."""
    return pd.to_datetime(times, utc=True).dt.tz_convert(None).to_numpy(dtype="datetime64[ns]")
