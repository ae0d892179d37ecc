"""dvc stage `train`: train the configured family on the prepared dataset with Ray Train; writes the run."""
import json
from pathlib import Path

import yaml

import aimass
from aimass import console

cfg = yaml.safe_load(Path("params.yaml").read_text())["train"]
dataset = json.loads(Path("data/prepared.json").read_text())["dataset"]
settings = aimass.Settings()
# as the CLI does: Ray's workers, MLflow and the libraries write to the home's log, the stage shows its progress bar
console.setup(settings.home)
console.stage(f"training {cfg['family']} on {dataset}; logs: {console.log_path()}")
try:
    r = aimass.train(cfg["family"], dataset, cfg.get("params", {}), workers=cfg.get("workers", 1),
                     epochs=cfg.get("epochs"), time_budget_min=cfg.get("time_budget_min"), settings=settings)
except Exception as e:  # the traceback is in the log: the terminal, which dvc shows, gets one line
    console.error(f"error: {type(e).__name__}: {e} (log: {console.log_path()})")
    raise SystemExit(1) from None
Path("metrics").mkdir(exist_ok=True)
Path("metrics/train.json").write_text(json.dumps(
    {"run_id": r.run_id, "model_uri": r.model_uri, "epochs": r.epochs, "best_epoch": r.best_epoch,
     "wall_time_s": round(r.wall_time_s, 1), **{k.replace("@", "_at_"): v for k, v in r.metrics.items()}},
    indent=2))
