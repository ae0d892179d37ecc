"""The MLflow pyfunc model of compressed versions (int8, fp16, bf16, prune, distill, onnx), logged as code
like the training one: loading imports this file and reads the compressed folder (safetensors + JSON, or
ONNX); nothing is unpickled. Same input and output as every version, so serving never knows the method."""
from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np

from aimass.tracking.pyfunc import AimassRecommender


class CompressedRecommender(AimassRecommender):
    def _load(self, model_dir: Path, ids_file: Path, family: str) -> None:
        from aimass.registry._codecs import load_compressed

        self.estimator = load_compressed(model_dir)
        self.item_ids = np.load(ids_file, allow_pickle=False)


mlflow.models.set_model(CompressedRecommender())
