"""The MLflow pyfunc model of every family, logged as code (MLflow's models-from-code): loading it imports
this file and reads the family's own files; nothing is unpickled.

Input: a DataFrame with `history` (raw item ids, oldest first) and optional `k`. Output: `items` (top-k raw
item ids, history excluded) and `scores`."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from aimass.errors import InvalidInputError


class AimassRecommender(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        a = context.artifacts
        family = json.loads(Path(a["family"]).read_text())["family"]
        self._load(Path(a["model"]), Path(a["item_ids"]), family)

    @classmethod
    def from_files(cls, model_dir: Path, ids_file: Path, family: str) -> AimassRecommender:
        rec = cls()
        rec._load(model_dir, ids_file, family)
        return rec

    def _load(self, model_dir: Path, ids_file: Path, family: str) -> None:
        from aimass.zoo import load_estimator

        self.estimator = load_estimator(model_dir, family)
        self.item_ids = np.load(ids_file, allow_pickle=False)

    def dense(self, raw: list[int]) -> np.ndarray:
        """Raw item ids -> dense ids; unknown ids are dropped (they carry no learned signal)."""
        raw = np.asarray(list(raw), dtype=np.int64)
        pos = np.searchsorted(self.item_ids, raw)
        ok = (pos < len(self.item_ids)) & (self.item_ids[np.minimum(pos, len(self.item_ids) - 1)] == raw)
        return (pos[ok] + 1).astype(np.int64)

    def recommend(self, df: pd.DataFrame) -> pd.DataFrame:
        from aimass.evaluation import exclusion_mask, top_k

        if "history" not in df.columns:
            raise InvalidInputError("the input needs a 'history' column: each row a list of item ids, oldest first")
        histories = [self.dense(_whole(h, f"row {i}'s history")) for i, h in enumerate(df["history"])]
        ks = [_k(k, i) for i, k in enumerate(df["k"])] if "k" in df.columns else [10] * len(df)
        scores = self.estimator.score(histories)
        allowed = exclusion_mask(scores.shape[1], histories)
        items, out_scores = [], []
        for row, ok, k in zip(scores, allowed, ks, strict=True):
            top, vals = top_k(row, max(1, k), ok)
            items.append(self.item_ids[top - 1].tolist())
            out_scores.append(vals.astype(float).tolist())
        return pd.DataFrame({"items": items, "scores": out_scores})

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.recommend(model_input)


def _whole(values, what: str) -> np.ndarray:
    """Item ids as given, refused unless whole numbers: 1.5 read as item 1 (a truncation), and a string as an
    error from deep inside numpy."""
    arr = np.asarray(list(values))
    if arr.size and arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InvalidInputError(f"{what} must hold whole item ids, got {list(arr[:5])!r}")
        arr = arr.astype(np.int64)
    return arr


def _k(k, row: int) -> int:
    """How many items a row asks for: a whole number, 1 or more (k=-5 and k=0 answered one item, 2.7 two)."""
    if isinstance(k, bool | np.bool_) or not isinstance(k, int | float | np.integer | np.floating) \
            or not np.isfinite(k) or k != int(k) or k < 1:
        raise InvalidInputError(f"row {row}'s k must be a whole number, 1 or more, got {k!r}")
    return int(k)


mlflow.models.set_model(AimassRecommender())
