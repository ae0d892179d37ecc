"""An endpoint's feedback events as the interactions of a new dataset version. Only positive events become
interactions (a skip is not something the user wants more of); each event is folded once along a lineage,
since a version derived from the parent starts after the last position any ancestor folded for the endpoint."""
from __future__ import annotations

import dataclasses
from datetime import datetime

import numpy as np
import pandas as pd

from aimass.settings import Settings


@dataclasses.dataclass
class Fold:
    parent: str
    endpoint: str
    after_seq: int
    through_seq: int
    through_time: datetime | None
    seq: np.ndarray  # of every event in (after_seq, through_seq]
    polarity: np.ndarray  # +1 / -1 / 0 of each
    rows: pd.DataFrame  # the positive ones in the parent's interaction columns, in event time order

    def counts(self, after: int | None = None) -> dict[str, int]:
        p = self.polarity[self.seq > (self.after_seq if after is None else after)]
        return {"events": len(p), "positive": int((p > 0).sum()), "negative": int((p < 0).sum()),
                "neutral": int((p == 0).sum())}

    def nothing_new(self, after: int, since: str) -> str | None:
        """Why there is nothing new to train on after log position `after` (`since` says what holds the
        events up to it), naming the counts; None when there is."""
        c = self.counts(after)
        where = f"endpoint {self.endpoint!r} after seq {after} ({since})"
        if not c["events"]:
            return f"no new events for {where}: nothing to retrain on"
        if not c["positive"]:
            return (f"no new positive events for {where}: {c['events']} new events (seq {after + 1}.."
                    f"{self.through_seq}), 0 positive, {c['negative']} negative, {c['neutral']} neutral; nothing "
                    "to retrain on")
        return None


def collect(endpoint: str, parent: str, settings: Settings) -> Fold:
    """The endpoint's events after what `parent`'s lineage folded in, as rows `datasets.derive` takes."""
    from aimass import datasets
    from aimass.events import EventLog, Rules

    info = datasets.get(parent, settings=settings)
    after = datasets.folded_through(info.ref, endpoint, settings=settings)
    f = EventLog(settings).frame(endpoint, after_seq=after)
    pol = Rules.of(settings).polarities(f["type"], f["value"]) if len(f) else np.zeros(0, dtype=np.int8)
    pos = f[pol > 0].sort_values(["timestamp", "seq"], kind="stable")
    epoch = pd.Timestamp(0, tz="UTC")
    rows = pd.DataFrame({"user_id": pos["user_id"].astype(np.int64).to_numpy(),
                         "item_id": pos["item_id"].astype(np.int64).to_numpy(),
                         "timestamp": ((pos["timestamp"] - epoch) // pd.Timedelta(seconds=1)).astype(np.int64)
                         .to_numpy()})
    columns = info.columns["interactions"]
    if "event" in columns:
        rows["event"] = pos["type"].to_numpy()
    if "value" in columns:  # an event without a value counts as one unit (one play, one click)
        rows["value"] = pos["value"].fillna(1.0).astype(np.float64).to_numpy()
    return Fold(parent=info.ref, endpoint=endpoint, after_seq=after,
                through_seq=int(f["seq"].max()) if len(f) else after,
                through_time=f["received_at"].max().to_pydatetime() if len(f) else None,
                seq=f["seq"].to_numpy(dtype=np.int64), polarity=pol, rows=rows)
