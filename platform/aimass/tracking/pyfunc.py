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

        histories = [self.dense(h) for h in df["history"]]
        ks = df["k"].astype(int).tolist() if "k" in df.columns else [10] * len(df)
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


mlflow.models.set_model(AimassRecommender())
