"""An endpoint's feedback events as the interactions of a new dataset version. Only positive events become
interactions (a skip is not something the user wants more of); each event is folded once along a lineage,
since a version derived from the parent starts after the last position any ancestor folded for the endpoint.

Each folded interaction is also marked exposed or organic. Feedback is mostly caused by what was served: an
event on an item the endpoint had shown that user is a target the serving model picked itself, so on a test
split made of such targets that model looks far better than any other (a feedback loop). The gate leaves
exposed targets out (aimass.registry's gate). The marks live in an exposure record per derived version
(`aimass.datasets.exposure`, `home/exposure/<name>/v<N>.parquet`), not in the version's interactions: the
canonical layout refuses extra
columns, a new column would change the dataset's schema (which `register` refuses for the next plain version)
and would reach training, and whether an item was shown is a fact about the serving log, not about the data."""
from __future__ import annotations

import dataclasses
import logging
from datetime import datetime

import numpy as np
import orjson
import pandas as pd

from aimass.datasets import EXPOSURE_KEY
from aimass.settings import Settings

log = logging.getLogger(__name__)
KEY = EXPOSURE_KEY  # an interaction of a version, as its exposure record names it


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
    shown: pd.DataFrame  # per row of `rows`: seq, request_id, event_time, via ('request', 'earlier' or '')

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
    if info.timestamp_kind == "unix" and len(rows):
        # An event stamped before the user's last interaction in the parent (a client's clock, a late batch)
        # is folded at that interaction's time, not before it: it is new data, and leave-one-out must make it
        # the user's target rather than a row the served model was trained on (which would favour that model
        # in the gate). Equal times keep row order, and derive appends these rows after the parent's.
        last = datasets.load(info.ref, settings=settings).interactions.groupby("user_id")["timestamp"].max()
        floor = rows["user_id"].map(last).fillna(np.iinfo(np.int64).min).astype(np.int64).to_numpy()
        rows["timestamp"] = np.maximum(rows["timestamp"].to_numpy(), floor)
    columns = info.columns["interactions"]
    if "event" in columns:
        rows["event"] = pos["type"].to_numpy()
    if "value" in columns:  # an event without a value counts as one unit (one play, one click)
        rows["value"] = pos["value"].fillna(1.0).astype(np.float64).to_numpy()
    shown = pd.DataFrame({"seq": pos["seq"].astype(np.int64).to_numpy(),
                          "request_id": pos["request_id"].astype(object).where(pos["request_id"].notna(), None)
                          .to_numpy(),
                          "event_time": pos["timestamp"].reset_index(drop=True),
                          "via": _shown(pos, endpoint, settings)})
    return Fold(parent=info.ref, endpoint=endpoint, after_seq=after,
                through_seq=int(f["seq"].max()) if len(f) else after,
                through_time=f["received_at"].max().to_pydatetime() if len(f) else None,
                seq=f["seq"].to_numpy(dtype=np.int64), polarity=pol, rows=rows, shown=shown)


def _shown(events: pd.DataFrame, endpoint: str, settings: Settings) -> np.ndarray:
    """How the endpoint had shown each event's item to its user: 'request' (the answer the event's request_id
    names lists it), 'earlier' (an answer to that user served at or before the event, by its timestamp or its
    receipt, lists it), '' (neither: organic). Either way the serving model put the item in front of the user,
    so both count as exposed; the second catches events sent without a request_id and answers whose record was
    lost (that log is best effort). An answer without a user_id (a history-only request) is joined by
    request_id only."""
    from aimass.events import ServedLog

    via = np.full(len(events), "", dtype=object)
    if not len(events):
        return via
    # "before the event" by either clock: the client's timestamp may run slow, the server's receipt never
    # precedes the event; an answer served before either showed the item first (so: exposed, the safe side)
    stamped = events["timestamp"].reset_index(drop=True)
    received = events["received_at"].reset_index(drop=True)
    ev = pd.DataFrame({"user_id": events["user_id"].astype(np.int64).to_numpy(),
                       "item_id": events["item_id"].astype(np.int64).to_numpy(),
                       "timestamp": stamped.where(stamped >= received, received),
                       "request_id": events["request_id"].astype(object).to_numpy()})
    # the endpoint's whole log up to the last event is scanned, but only these events' answers are kept (a long
    # lived endpoint's log holds millions), with only the columns joined, and their item lists decoded here
    served = ServedLog(settings).frame(endpoint, end=ev["timestamp"].max() + pd.Timedelta(seconds=1),
                                       columns=["request_id", "user_id", "items", "served_at"],
                                       users=ev["user_id"].tolist(), request_ids=ev["request_id"].dropna().tolist())
    if served.empty:
        return via
    served = served.assign(items=[orjson.loads(v) if isinstance(v, str | bytes) else v for v in served["items"]])
    shown = served.explode("items").dropna(subset=["items"])
    shown["item_id"] = shown["items"].astype(np.int64)
    answered = set(zip(shown["request_id"], shown["item_id"], strict=True))
    by_request = np.array([r is not None and not pd.isna(r) and (r, i) in answered
                           for r, i in zip(ev["request_id"], ev["item_id"], strict=True)], dtype=bool)
    to_user = shown.dropna(subset=["user_id"]).astype({"user_id": np.int64})
    first = to_user.groupby(["user_id", "item_id"], as_index=False)["served_at"].min()
    # a left merge on unique right keys keeps the events' order and count
    when = ev[["user_id", "item_id"]].merge(first, on=["user_id", "item_id"], how="left")["served_at"]
    earlier = (when.notna() & (when <= ev["timestamp"])).to_numpy(dtype=bool)
    via[earlier] = "earlier"
    via[by_request] = "request"
    return via


def save_exposure(fold: Fold, new, settings: Settings):
    """Write the exposure record of `new` (the version `fold` was derived into), atomically."""

    from aimass import datasets

    rows = fold.rows[KEY].reset_index(drop=True).copy()
    if new.timestamp_kind == "order":
        # derive renumbers the added rows after the parent's last position, in the order given: they are the
        # version's last rows; their user and item must line up, or the marks would land on other rows
        tail = datasets.load(new.ref, settings=settings).interactions[KEY].tail(len(rows)).reset_index(drop=True)
        if not tail[["user_id", "item_id"]].equals(rows[["user_id", "item_id"]]):
            from aimass.errors import ConflictError

            raise ConflictError(f"{new.ref}'s last {len(rows)} interactions are not the events folded into it: "
                                "its exposure record cannot be written")
        rows["timestamp"] = tail["timestamp"]
    rows = pd.concat([rows, fold.shown.reset_index(drop=True)], axis=1)
    rows["exposed"] = rows["via"] != ""
    return datasets.write_exposure(new.ref, fold.endpoint, rows, settings=settings,
                                   meta={"after_seq": fold.after_seq, "through_seq": fold.through_seq})


