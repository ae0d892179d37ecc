"""dvc stage `evaluate`: load the trained model back from MLflow (models:/...) and evaluate it on the test
split, full ranking and, labelled as such, the sampled protocol of older papers."""
import json
from pathlib import Path

import numpy as np

import aimass
from aimass.evaluation import evaluate, make_splits
from aimass.tracking import metric_key

trained = json.loads(Path("metrics/train.json").read_text())
dataset = json.loads(Path("data/prepared.json").read_text())["dataset"]
settings = aimass.Settings()
# built from the model's own files: MLflow's loader would run the Python file stored with it
model = aimass.models.load_logged(trained["model_uri"], settings=settings)
ds = aimass.datasets.load(dataset, settings=settings)
splits = make_splits(ds.interactions)  # the protocol the dataset calls for, as training used
# The loaded model speaks raw item ids; the splits are dense. Map through the model's own item index.
assert np.array_equal(model.item_ids, splits.item_ids), "model and dataset item spaces differ"
est = model.estimator
hist, targets = list(splits.test_histories), np.asarray(splits.test_targets)
out = {"model_uri": trained["model_uri"], "dataset": dataset}
for protocol, ks in (("full", (10, 20)), ("sampled", (10,))):
    m = evaluate(est.score, hist, targets, splits.n_items, ks=ks, protocol=protocol)
    out.update({metric_key(f"test_{k}"): v for k, v in m.items()})
Path("metrics/eval.json").write_text(json.dumps(out, indent=2))
print(json.dumps(out, indent=2))
