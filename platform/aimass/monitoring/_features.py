"""What is measured of each answer, and of a window of answers, vectorised over the served-answer rows.

Per answer (compared column by column): history_length, user_activity (training interactions of the user; 0
for a new user or a history-only request), history_popularity (mean log1p training popularity of the last
items of the history), history_label (the most frequent item label, e.g. genre, of those items),
items_popularity (mean log1p training popularity of the listed items), score_top and score_spread (first
minus last score; of model answers only) and strategy. Lists are cut to the reference's first K items first:
a client asking for 50 items is not drift. Per window (one figure each): catalogue coverage and label
diversity of the lists of K items (a shorter list covers less by construction)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

NUMERIC = ["history_length", "user_activity", "history_popularity", "items_popularity", "score_top",
           "score_spread"]
CATEGORICAL = ["strategy", "history_label"]
COLUMNS = NUMERIC + CATEGORICAL


@dataclass
class Catalogue:
    """The training facts of one model version, by raw id: item popularity (training interactions) and label,
    user activity. Item ids are the model's catalogue, sorted (as the scorer keeps them)."""

    item_ids: np.ndarray
    popularity: np.ndarray
    labels: np.ndarray | None
    label: str | None
    user_ids: np.ndarray
    activity: np.ndarray

    def __post_init__(self) -> None:
        order = np.argsort(self.user_ids, kind="stable")
        self.user_ids, self.activity = self.user_ids[order], self.activity[order]
        self._log_pop = np.log1p(self.popularity)

    @property
    def size(self) -> int:
        return len(self.item_ids)

    def item_positions(self, raw: np.ndarray) -> np.ndarray:
        """Position of each raw item id in the catalogue; -1 for an item the model does not know."""
        return _positions(self.item_ids, raw)

    def log_popularity(self, pos: np.ndarray) -> np.ndarray:
        return np.where(pos >= 0, self._log_pop[np.maximum(pos, 0)], 0.0)

    def user_activity(self, raw: np.ndarray) -> np.ndarray:
        pos = _positions(self.user_ids, raw)
        return np.where(pos >= 0, self.activity[np.maximum(pos, 0)], 0)


def _positions(sorted_ids: np.ndarray, raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw, dtype=np.int64)
    if not len(sorted_ids):
        return np.full(len(raw), -1, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, raw)
    hit = (pos < len(sorted_ids)) & (sorted_ids[np.minimum(pos, len(sorted_ids) - 1)] == raw)
    return np.where(hit, pos, -1)


def _flat(lists: pd.Series, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row index, value) of every element of a column of lists, each list cut to its first k."""
    cut = [x[:k] for x in lists] if k is not None else list(lists)
    lengths = np.fromiter(map(len, cut), dtype=np.int64, count=len(cut))
    # item ids: int64, exact (through a float, ids past 2**53 would merge and miss the catalogue)
    values = np.fromiter(itertools.chain.from_iterable(cut), dtype=np.int64, count=int(lengths.sum()))
    return np.repeat(np.arange(len(cut)), lengths), values


def _row_mean(rows: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    total = np.bincount(rows, weights=values, minlength=n)
    count = np.bincount(rows, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def per_answer(answers: pd.DataFrame, catalogue: Catalogue, k: int = 10) -> pd.DataFrame:
    """The compared columns of served-answer rows (user_id, history_length, history_tail, items, scores,
    strategy). NaN where there is nothing to measure (no history, an empty list; for the list's popularity and
    score spread, a list shorter than k)."""
    n = len(answers)
    out = pd.DataFrame(index=pd.RangeIndex(n))
    out["history_length"] = answers["history_length"].to_numpy(dtype=np.float64)
    users = pd.to_numeric(answers["user_id"], errors="coerce")
    known = users.notna().to_numpy()
    activity = np.zeros(n, dtype=np.float64)
    activity[known] = catalogue.user_activity(users[known].to_numpy(np.int64))
    out["user_activity"] = activity

    rows, tail = _flat(answers["history_tail"])
    tail_pos = catalogue.item_positions(tail.astype(np.int64))
    out["history_popularity"] = _row_mean(rows, catalogue.log_popularity(tail_pos), n)
    out["history_label"] = _mode_label(rows, tail_pos, catalogue, n)

    # a list shorter than k (a client asking for 5) is not measured on what depends on the length: its mean
    # popularity and its score spread sit above a full list's by construction, which is not drift
    full = np.fromiter(map(len, answers["items"]), dtype=np.int64, count=n) >= k
    rows, listed = _flat(answers["items"], k)
    popularity = _row_mean(rows, catalogue.log_popularity(catalogue.item_positions(listed.astype(np.int64))), n)
    out["items_popularity"] = np.where(full, popularity, np.nan)
    top = np.full(n, np.nan)
    last = np.full(n, np.nan)
    strategy = answers["strategy"].astype(str).to_numpy()
    # a cold start's scores are popularity counts, another scale: the strategy column counts cold starts
    for i, (s, how) in enumerate(zip(answers["scores"], strategy, strict=True)):
        if len(s) and how == "model":
            top[i] = s[0]
            if len(s) >= k:
                last[i] = s[k - 1]
    out["score_top"] = top
    out["score_spread"] = top - last
    out["strategy"] = strategy
    return out


def _mode_label(rows: np.ndarray, pos: np.ndarray, catalogue: Catalogue, n: int) -> np.ndarray:
    out = np.full(n, None, dtype=object)
    if catalogue.labels is None:
        return out
    ok = pos >= 0
    f = pd.DataFrame({"row": rows[ok], "label": catalogue.labels[pos[ok]]})
    f = f[f["label"] != ""]
    if len(f):
        counts = f.groupby(["row", "label"], sort=True).size().reset_index(name="n")
        # ties go to the label that sorts first, so a window and its reference break them alike
        best = counts.sort_values(["row", "n", "label"], ascending=[True, False, True]).drop_duplicates("row")
        out[best["row"].to_numpy()] = best["label"].to_numpy()
    return out


def full_lists(items: pd.Series, k: int) -> pd.Series:
    """The lists of at least k items."""
    return items[np.fromiter(map(len, items), dtype=np.int64, count=len(items)) >= k]


def window_figures(items: pd.Series, catalogue: Catalogue, k: int = 10, size: int | None = None) -> dict:
    """Catalogue coverage (distinct listed items / catalogue size) and, when items carry a label, diversity
    (mean over lists of distinct labels / k) of the lists of at least k items, each cut to its first k; with
    `size`, of a fixed-seed sample of `size` of them (coverage grows with the number of lists). A shorter list
    (a client asking for 5) is left out, as per_answer leaves it out of what depends on the length: 5-item lists
    against the reference's 10 halve the coverage. `answers`: the lists measured; `short_lists`: those left
    out for being shorter than k. Coverage and diversity are None when no list was measured."""
    full = full_lists(items, k)
    measured = full.sample(n=size, random_state=0) if size is not None and size < len(full) else full
    rows, listed = _flat(measured, k)
    pos = catalogue.item_positions(listed.astype(np.int64))
    out: dict = {"answers": len(measured), "short_lists": len(items) - len(full),
                 "coverage": (round(len(np.unique(listed)) / catalogue.size, 6)
                              if catalogue.size and len(measured) else None),
                 "diversity": None, "diversity_label": catalogue.label}
    if catalogue.labels is not None and len(rows):
        f = pd.DataFrame({"row": rows, "label": np.where(pos >= 0, catalogue.labels[np.maximum(pos, 0)], "?")})
        g = f.groupby("row")["label"]
        out["diversity"] = round(float((g.nunique() / g.size()).mean()), 6)
    return out
