"""Online state: what the feedback log changes in serving without retraining. A replica applies every
acknowledged event of its endpoint after its model's training cut-off (the dataset version's lineage: events
already folded into the training data are not applied twice): positive events extend the user's history (so
the sequential model reads them on the next /recommend) and add to item popularity and to the decayed
"trending" counts; negative ones only hide the item from that user. Its own acknowledged events apply at
once; other replicas' arrive by polling the log every `online_poll_s`, so an event is in every replica's
next answer within a second. Of the events up to the cut-off, a retrain folded only the positive ones into
the data: the negative ones still hide their items, and the recent positive ones still count as trending."""
from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import OrderedDict

import numpy as np

from aimass.events import EventLog, Rules, as_utc
from aimass.settings import Settings

log = logging.getLogger(__name__)
HALF_LIFE_S = 86400.0  # trending: an event counts half as much a day later
MIN_TRENDING = 20.0  # decayed positive events before "trending" replaces all-time popularity for cold starts
TREND_RESTORE_S = 5 * HALF_LIFE_S  # folded positive events older than this weigh under 1/32: not re-read
# Bounds of what a replica keeps of the events after its cut-off, which grow until the next retrain folds them:
# a user's last MAX_EXTRA positive items (more than any family reads: Mult-VAE's longest history is 1,000), and
# the MAX_USERS users whose latest event is newest (an app sending a new id per visit must not grow a replica
# without end). A user beyond them is served from the training data alone, as before the events.
MAX_EXTRA = 1000
MAX_USERS = 500_000


class Online:
    def __init__(self, endpoint: str, settings: Settings, dense_of: dict[int, int], popularity: np.ndarray,
                 cutoff: int = 0):
        self.endpoint, self.rules = endpoint, Rules.of(settings)
        self.log = EventLog(settings)
        self.dense_of, self.popularity = dense_of, popularity
        self.trend = np.zeros_like(popularity)
        self.trend[0] = -np.inf
        self.t0 = time.time()
        # user -> (seq, dense item) of their positive events after the cut-off, kept in log (seq) order: an
        # own event applies before the poll brings the user's earlier ones from other replicas
        self.extra: dict[int, list[tuple[int, int]]] = {}
        # the users with online state, in the order of their latest event (the oldest dropped first: MAX_USERS)
        self.recent: OrderedDict[int, None] = OrderedDict()
        self.hidden: dict[int, set[int]] = {}  # user -> dense items with a negative event
        # user -> the change count when their state last changed (the answer cache's key). One counter for all:
        # a user dropped under MAX_USERS and back never meets an old number, so never an answer cached since
        self.generation: dict[int, int] = {}
        self.changes = 0
        self.seq = cutoff  # everything up to here is applied (or was in the training data)
        self.applied: set[int] = set()  # own events applied ahead of the poll
        self.lock = threading.Lock()
        self.poll_s = settings.online_poll_s
        self.stopped = threading.Event()
        if cutoff:
            self._restore(cutoff)
        self.catch_up()
        threading.Thread(target=self._poll, name="aimass-online", daemon=True).start()

    def apply(self, rows: list[tuple], own: bool = False) -> None:
        """rows: (seq, user_id, item_id, type, value, timestamp) in log order."""
        now = time.time()
        with self.lock:
            for seq, user, item, type_, value, ts in rows:
                if seq <= self.seq:
                    continue
                if own:
                    if seq in self.applied:
                        continue
                    self.applied.add(seq)
                else:
                    self.seq = seq  # the poll reads in log order: everything up to here is seen
                    if seq in self.applied:
                        continue
                sign, dense = self._effect(item, type_, value)
                if not sign:
                    continue
                if sign > 0:
                    mine = self.extra.setdefault(int(user), [])
                    # by seq, not arrival: mostly an append; an own event ahead of the poll lands its earlier ones
                    # before it (SASRec reads order, and every replica must read the log's)
                    bisect.insort(mine, (int(seq), dense))
                    if len(mine) > 2 * MAX_EXTRA:  # cut in steps: amortised, not at every event
                        del mine[:-MAX_EXTRA]
                    self.popularity[dense] += 1.0
                    # weighed by its own time (never ahead of now): a replica starting on a month of events after
                    # its cut-off, or a backfill through ingest, must not count them all as today's
                    self.trend[dense] += self._trend_weight(min(_unix(ts, now), now))
                else:
                    self.hidden.setdefault(int(user), set()).add(dense)
                self._changed(int(user))
            if not own:
                self.applied = {s for s in self.applied if s > self.seq}

    def _changed(self, user: int) -> None:
        """After a change of `user`'s state (under the lock): newest in `recent`, the oldest user beyond
        MAX_USERS dropped, and a new generation for the answer cache."""
        self.recent[user] = None
        self.recent.move_to_end(user)
        if len(self.recent) > MAX_USERS:
            # back to the training data alone: generation 0, which only an answer cached before any of the
            # user's events carries (computed from the training data alone, so still right)
            gone, _ = self.recent.popitem(last=False)
            self.extra.pop(gone, None)
            self.hidden.pop(gone, None)
            self.generation.pop(gone, None)
        # after the change (readers take no lock): a request that sees the new generation sees the new state,
        # and an answer computed from the old state is kept under the old one, never taken again
        self.changes += 1
        self.generation[user] = self.changes

    def _restore(self, cutoff: int) -> None:
        """What the events up to the cut-off still change (see the module's docstring): hidden items, and the
        trending counts of the last days, each weighted by its age as a live event would be by now."""
        from datetime import UTC, datetime

        now = time.time()
        rows = self.log.folded(self.endpoint, cutoff, self.rules.negative_types, self.rules.positive_types,
                               datetime.fromtimestamp(now - TREND_RESTORE_S, UTC))
        for user, item, type_, value, ts, received in rows:
            sign, dense = self._effect(item, type_, value)
            if sign < 0:  # under the same bound as live events: a long-lived endpoint's skips are many
                self.hidden.setdefault(int(user), set()).add(dense)
                self._changed(int(user))
            elif sign > 0:
                # by its own time, as a live event weighs (apply): a backfill of old events received lately is old
                at = min(_unix(ts, now), as_utc(received).timestamp())
                if now - at <= TREND_RESTORE_S:  # a type with rules of both signs (rating) brings older ones too
                    self.trend[dense] += self._trend_weight(at)

    def _effect(self, item: int, type_: str, value: float | None) -> tuple[int, int]:
        """(polarity, dense item) of an event; polarity 0 also for an item the model cannot score, which
        changes nothing here."""
        dense = self.dense_of.get(int(item))
        return (0, 0) if dense is None else (self.rules.polarity(type_, value), dense)

    def _trend_weight(self, at: float) -> float:
        """An event at unix time `at` in the trending counts: they grow by 2^(t / half-life) from t0 on, and
        trending() scales them back by now, so each weighs 2^-(its age / half-life) when read."""
        return 2.0 ** ((at - self.t0) / HALF_LIFE_S)

    def catch_up(self) -> int:
        n = 0
        while True:
            rows = self.log.since(self.endpoint, self.seq)
            if not rows:
                return n
            self.apply(rows)
            n += len(rows)

    def stop(self) -> None:
        """No more polling (the model this state serves was dropped from the split)."""
        self.stopped.set()

    def _poll(self) -> None:
        while not self.stopped.wait(self.poll_s):
            try:
                self.catch_up()
            except Exception:  # the store is away for a moment: keep serving what we have
                log.exception("reading new events of %s failed", self.endpoint)

    def history(self, user_id: int, base: np.ndarray | None) -> np.ndarray | None:
        extra = self.extra.get(user_id)
        if not extra:
            return base
        tail = np.fromiter((dense for _, dense in extra[-MAX_EXTRA:]), dtype=np.int64)
        return tail if base is None or not len(base) else np.concatenate([base, tail])

    def hidden_of(self, user_id: int | None) -> set[int]:
        return self.hidden.get(user_id, set()) if user_id is not None else set()

    def trending(self) -> np.ndarray | None:
        """Decayed positive-event counts when there are enough of them to stand for today's taste."""
        scale = 2.0 ** (-(time.time() - self.t0) / HALF_LIFE_S)
        mass = float(np.sum(self.trend[1:])) * scale
        if not math.isfinite(mass) or mass < MIN_TRENDING:
            return None
        return self.trend + 1e-9 * self.popularity  # ties broken by all-time popularity


def _unix(ts, default: float) -> float:
    """An event's timestamp (a datetime from the log, or a number) as unix seconds."""
    if hasattr(ts, "timestamp"):
        return as_utc(ts).timestamp()
    return float(ts) if isinstance(ts, int | float) else default
