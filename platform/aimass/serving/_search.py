"""Search over a served `search` model (aimass.zoo.search): the engine's facts (ids, filters, the user's
history with its online feedback) around the index's own search and suggest, and the endpoint's popular past
queries, which suggestions complete beside the titles."""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from aimass.errors import InvalidInputError
from aimass.serving._engine import Engine, _finite
from aimass.zoo.search import plain  # the index's own folding: ガラス is not カラス, as for titles

log = logging.getLogger(__name__)


def _index(engine: Engine):
    est = engine.scorer.estimator
    if not hasattr(est, "search"):
        i = engine.info
        raise InvalidInputError(f"model {i.name}/{i.version} ({i.family}) is no search index: deploy a model of "
                                "family 'search' (aimass train search --dataset D)")
    return est


def search(engine: Engine, query: str, k: int, mode: str | None, user_id: int | None,
           filters: dict[str, list[str]] | None) -> dict:
    est = _index(engine)
    # An unknown user is no error: the results are simply not personalised (history_length 0).
    seen = engine.history(user_id, None) if user_id is not None else None
    out = est.search(query, k=k, mode=mode, history=seen, allowed=_allowed(engine, user_id, filters))
    dense = np.asarray(out["items"], dtype=np.int64)
    titles = [est.titles_[i - 1] for i in dense.tolist()]  # the index's own: what /suggest shows too
    return {"query": query, "items": engine.item_ids[dense - 1].tolist(), "titles": titles,
            "scores": _finite(np.asarray(out["scores"])), "mode": out["mode"], "corrected": out.get("corrected"),
            "personalised": bool(out.get("personalised")), "history_length": 0 if seen is None else len(seen),
            "history_tail": engine.raw(seen), "strategy": "model" if len(dense) else "no_results",
            "logged_mode": out["mode"] + ("+personal" if out.get("personalised") else "")}


def _allowed(engine: Engine, user_id: int | None, filters: dict[str, list[str]] | None) -> np.ndarray | None:
    """The items an answer may show: the filters' ones, less those the user disliked (a negative event hides the
    item from that user, as on /recommend); None, no mask built, when neither applies (the common request)."""
    online = engine.online
    hides = user_id is not None and online is not None and bool(online.hidden_of(int(user_id)))
    return engine.allowed(None, False, [], filters or {}, user_id) if filters or hides else None


def loggable(query: str) -> str:
    """The query as the served-answer log keeps it: printable characters only (Postgres text cannot hold NUL)."""
    return "".join(c if c.isprintable() else " " for c in query)[:1000]


class PastQueries:
    """The endpoint's popular past queries, refreshed from the served-answer log every `interval` seconds in
    a thread of its own (never on the request path). Only a query that `min_users` different users asked in the
    last `days` is suggested: one person's query (an e-mail address, a name) never reaches anyone else. Users are
    counted by the user_id the application sends, which it vouches for: a key is an application's, shared by all
    its users, so counting keys would keep every query of a one-app deployment out, and an application that
    sends made-up user ids can plant suggestions (revoke its key)."""

    def __init__(self, served_log, endpoint: str, interval: float = 30.0, min_users: int = 3, days: float = 30):
        self.served_log, self.endpoint, self.interval = served_log, endpoint, interval
        self.min_users, self.days = min_users, days
        self.table: list[tuple[str, str, int]] = []  # (folded, as asked, times)
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="aimass-past-queries", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                asked = self.served_log.queries(self.endpoint, min_users=self.min_users, days=self.days)
                self.table = [(plain(q), q, n) for q, n in asked]
            except Exception:  # the catalog is away: keep the last table
                log.exception("reading past queries failed")
            # the read covers `days` of searches, which grow with traffic: at most about 5% of a core goes to it,
            # the table refreshed less often instead
            self._stop.wait(max(self.interval, 20 * (time.monotonic() - t0)))

    def stop(self) -> None:
        self._stop.set()

    def matching(self, prefix: str, k: int) -> list[tuple[str, int]]:
        p = plain(prefix).strip()
        return [(q, n) for f, q, n in self.table if f.startswith(p)][:k] if p else []


def suggest(engine: Engine, prefix: str, k: int, past: PastQueries | None, user_id: int | None = None) -> dict:
    """Item titles first (the index's own ranking: by popularity, and by the user's history when the user is
    known; never an item the user disliked), then the past queries that extend the prefix; past queries keep up
    to half of the places when there are enough titles to fill them all. An unknown user is no error: the titles
    are not personalised."""
    est = _index(engine)
    seen = engine.history(user_id, None) if user_id is not None else None
    titles = est.suggest(prefix, k=k, history=seen, allowed=_allowed(engine, user_id, None))
    # the past queries that are not one of these titles, before the titles' share is set: sized on all of them,
    # a past query equal to a title took a place from the titles and then was dropped itself (fewer than k)
    shown = {plain(s["text"]) for s in titles}
    asked = []
    for q, n in past.matching(prefix, k) if past is not None else []:
        if plain(q) not in shown:
            asked.append({"text": q, "item_id": None, "score": float(n)})
            shown.add(plain(q))
    titles = titles[:max(k - len(asked), (k + 1) // 2)]
    out = [{"text": s["text"], "item_id": None if s.get("item") is None else int(engine.item_ids[int(s["item"]) - 1]),
            "score": float(s["score"])} for s in titles]
    out += asked[:k - len(out)]
    n_seen = 0 if seen is None else len(seen)
    return {"suggestions": out, "personalised": any(bool(s.get("personal")) for s in titles),
            "history_length": n_seen}
